"""Config convention and CLI dispatch: --help, config files, unknown keys and wrong types."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.cmd_sample import SampleConfig
from pipelines.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_lta_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("sample", "score", "extract", "train-heads", "demo"):
        assert f"  {name} " in out


def test_lta_help_console_script_is_fast():
    lta = Path(sys.executable).with_name("lta")
    exe = [str(lta)] if lta.exists() else [sys.executable, "-m", "pipelines.cli"]
    proc = subprocess.run(exe + ["--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and "sample" in proc.stdout
    proc = subprocess.run(exe + ["no-such-command"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and "unknown command 'no-such-command'" in proc.stderr


@pytest.mark.parametrize("command,keys", [
    ("sample", ["out", "clips", "seed", "verbs", "nouns", "train_fraction", "videos"]),
    ("score", ["data", "split", "predictions", "allow_missing", "out", "transpositions", "num_seen"]),
])
def test_command_help_lists_keys_and_defaults(capsys, command, keys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lta {command}")
    for key in keys:
        assert f"  {key} " in out
    if command == "sample":
        assert "default=12" in out and "default=0" in out


def test_unknown_key_and_wrong_type_exit_2(capsys, tmp_path):
    assert cli.main(["sample", f"out={tmp_path}", "clip=3"]) == 2
    assert "clip" in capsys.readouterr().err
    assert cli.main(["sample", f"out={tmp_path}", "clips=many"]) == 2
    assert "clips" in capsys.readouterr().err
    assert cli.main(["score", "allow_missing=maybe"]) == 2
    assert cli.main(["score", "positional"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert not (tmp_path / "annotations").exists()


def test_config_file_merge_and_override_order(tmp_path):
    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text("clips: 3\nseed: 9\nwidth: 160\n")
    cfg = parse_config(SampleConfig, [f"config={cfg_file}", "seed=4"])
    assert (cfg.clips, cfg.seed, cfg.width, cfg.height) == (3, 4, 160, 360)
    bad = tmp_path / "bad.yaml"
    bad.write_text("clipz: 3\n")
    with pytest.raises(ConfigError, match="clipz"):
        parse_config(SampleConfig, [f"config={bad}"])
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(SampleConfig, [f"config={tmp_path / 'missing.yaml'}"])
    assert cli.main(["sample", f"config={bad}"]) == 2
