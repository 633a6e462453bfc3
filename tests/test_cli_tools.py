"""Issue 16, items 10-12: one name per knob, `lta sweep grid=...`, and the store / extract rough edges.

Fast: the subprocess runs fail before loading data, the sweep trains 1-epoch heads on a tiny synthetic
store, and the extraction is one random-weight CLIP at a 32 px crop over the val split of the tiny sample.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import cli_proc
from pipelines import cmd_store, cmd_sweep
from pipelines.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = {"slowfast": ("slowfast_r101_8x8.synthetic", (16,))}
FAST = ["train.epochs=1", "train.warmup_steps=1", "train.batch_size=32", "train.log_every=1000", "train.device=cpu",
        "num_seen=4"]


def lta(*args: str, cwd: Path | str = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LTA_DEBUG"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return cli_proc.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def store(tmp_path_factory, one_torch_thread):
    from synthetic_store import write_synthetic_dataset, write_synthetic_stores

    root = tmp_path_factory.mktemp("tools")
    plan = write_synthetic_dataset(root / "data", clips=16, seed=5)
    write_synthetic_stores(root / "data", root / "store", plan, modalities=MODALITIES, noise=1.0)
    for folder in ("a", "b"):  # two configs with the same file name
        (root / folder).mkdir()
        (root / folder / "head.yaml").write_text("head:\n  modalities: [{name: slowfast, proj_dim: 16}]\n  num_input: 2\n")
    return root


# --- item 11: lta sweep grid=... ------------------------------------------------------------------------

def test_sweep_grid_unique_run_dirs_and_table(store, tmp_path):
    out = tmp_path / "sweep"
    configs = [str(store / "a" / "head.yaml"), str(store / "b" / "head.yaml")]
    argv = [f"data={store / 'data'}", f"store={store / 'store'}", f"out={out}", f"configs=[{','.join(configs)}]",
            "grid={train.lr: [0.002, 0.0005]}", f"overrides=[{','.join(FAST)}]"]
    assert cmd_sweep.main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    runs = [Path(r["run"]) for r in rows]
    assert len(rows) == 4 and len(set(runs)) == 4  # 2 configs x 2 values, no collision of the same-named configs
    from train_heads.run import read_run_config

    got = sorted((Path(r["run"]).name.split("__")[0], read_run_config(r["run"])["train"]["lr"]) for r in rows)
    assert got == sorted((f"{f}_head", lr) for f in ("a", "b") for lr in (0.002, 0.0005))
    for r in rows:
        assert r["grid"] == {"train.lr": read_run_config(r["run"])["train"]["lr"]}
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 2 + 4 and all("train.lr=" in line for line in table[2:])
    eds = [float(line.split("|")[2]) for line in table[2:]]
    assert eds == sorted(eds)


def test_sweep_validates_every_job_before_launching(store, tmp_path):
    out = tmp_path / "sweep"
    base = [f"data={store / 'data'}", f"store={store / 'store'}", f"out={out}", f"configs=[{store / 'a' / 'head.yaml'}]",
            f"overrides=[{','.join(FAST)}]"]
    res = lta("sweep", *base, "grid={head.aggregator: [concat, concatt]}")  # the second job is bad
    assert res.returncode == 2 and "concatt" in res.stderr and "did you mean 'concat'" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not out.exists()  # the good job was not trained either
    res = lta("sweep", *base, "grid={train.lrr: [0.1]}")
    assert res.returncode == 2 and "did you mean 'train.lr'" in res.stderr and not out.exists(), res.stderr[-2000:]


def test_sweep_into_existing_runs_is_refused_before_launching(store, tmp_path):
    out = tmp_path / "sweep"
    base = [f"data={store / 'data'}", f"store={store / 'store'}", f"out={out}", f"configs=[{store / 'a' / 'head.yaml'}]"]
    assert cmd_sweep.main([*base, "grid={train.lr: [0.002]}", f"overrides=[{','.join(FAST)}]"]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    before = (run / "checkpoints" / "last.pt").read_bytes()
    res = lta("sweep", *base, "grid={train.lr: [0.002, 0.0005]}", f"overrides=[{','.join(FAST)}]")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "1 of 2 run dirs already hold a trained run" in lines[0] and str(run) in lines[0], lines
    assert "resume=true" in lines[0] and "overwrite=true" in lines[0] and "nothing was launched" in lines[0]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [run.name]  # the new job was not trained
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    res = lta("sweep", *base, "grid={train.lr: [0.002, 0.0005]}", f"overrides=[{','.join(FAST)},resume=true]")
    assert res.returncode == 0, res.stderr[-2000:]


# --- item 10: one name per knob -------------------------------------------------------------------------

def test_one_name_per_knob_old_names_accepted_with_a_deprecation(capsys):
    from pipelines.cmd_extract import ExtractConfig
    from pipelines.cmd_finetune import FinetuneConfig
    from pipelines.cmd_resize import ResizeConfig
    from pipelines.cmd_store import LsConfig, VerifyConfig
    from pipelines.cmd_sweep import SweepConfig

    assert parse_config(VerifyConfig, ["root=/x"]).store == "/x" and parse_config(LsConfig, ["root=/y"]).store == "/y"
    assert parse_config(SweepConfig, ["slurm_timeout_min=7"]).slurm_time_min == 7
    assert parse_config(FinetuneConfig, ["timeout_min=9", "partition=p"]).slurm_time_min == 9
    assert parse_config(ResizeConfig, ["launcher=joblib"]).launcher == "none"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 6 and all("deprecated" in line for line in err), err  # one line per old name
    # the same knob has the same name (and launchers one vocabulary) in every command that has it
    schemas = [ExtractConfig, FinetuneConfig, ResizeConfig, SweepConfig]
    for knob in ("slurm_time_min", "slurm_partition", "launcher"):
        assert all(knob in {f for f in s.__dataclass_fields__} for s in schemas), knob
    from pipelines.checks import LAUNCHERS

    for schema in schemas:
        default = schema().launcher
        assert default == "none" and all(f"{name} (" in schema.__dataclass_fields__["launcher"].metadata["help"]
                                         for name in LAUNCHERS), schema
    for schema in (VerifyConfig, LsConfig):
        assert "store" in schema.__dataclass_fields__ and "root" not in schema.__dataclass_fields__
    with pytest.raises(ConfigError, match="did you mean 'slurm_time_min'"):
        parse_config(ExtractConfig, ["slurm_time_mn=3"])


def test_tensorboard_folder_and_resume_default_are_the_same_everywhere():
    from pipelines.cmd_finetune import FinetuneConfig
    from pipelines.cmd_train_heads import TrainHeadsConfig

    assert FinetuneConfig().resume == TrainHeadsConfig().resume is False
    assert "overwrite" in FinetuneConfig.__dataclass_fields__ and "overwrite" in TrainHeadsConfig.__dataclass_fields__
    text = (ROOT / "extract" / "finetune" / "train.py").read_text()
    assert 'out / "tensorboard"' in text and 'out / "tb"' not in text


def test_finetune_refuses_to_overwrite_a_run_without_resume_or_overwrite(tmp_path):
    (tmp_path / "ft" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ft" / "checkpoints" / "last.pt").write_bytes(b"x")
    res = lta("finetune-backbone", f"out={tmp_path / 'ft'}", f"data={tmp_path}")
    assert res.returncode == 2 and "resume=true" in res.stderr and "overwrite=true" in res.stderr, res.stderr[-2000:]
    assert (tmp_path / "ft" / "checkpoints" / "last.pt").read_bytes() == b"x"


# --- item 12: store verify on an empty root, extract with nothing to do, export keeps `created` -------

def test_store_verify_on_an_empty_root_is_an_error(tmp_path):
    res = lta("store", "verify", f"store={tmp_path}")
    assert res.returncode == 2 and "no stores" in res.stderr and str(tmp_path) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = lta("store", "verify", f"store={tmp_path / 'missing'}")
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_extract_with_nothing_to_do_builds_no_model_and_export_keeps_created(tiny_sample, tmp_path, monkeypatch,
                                                                              one_torch_thread, capsys):
    import extract.extractors
    from features.store import FeatureStore, store_paths
    from pipelines import cmd_extract

    store = tmp_path / "store"
    argv = [f"data={tiny_sample}", f"store={store}", "raw_clips=true", "extractors=[clip_vit_b32.openai]",
            "weights=random", "crop_size=32", "batch_size=8", "views=1", "chunk_rows=8", "device=cpu",
            "progress=true", "decode_workers=1", "splits=[val]"]
    capsys.readouterr()
    assert cmd_extract.main(argv) == 0
    assert "clip/s" not in capsys.readouterr().err  # progress=true, but stderr is no terminal: no tqdm bar
    (path,) = store_paths(store)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built although every row is cached")

    monkeypatch.setattr(extract.extractors, "create_extractor", no_model)
    capsys.readouterr()
    assert cmd_extract.main([*argv, "batch_size=4", "progress=true"]) == 0  # operational keys only: still cached
    assert "nothing to do" in capsys.readouterr().out
    summary = json.loads((store / "extract_summary.json").read_text())[0]
    assert summary["rows_done"] == 0 and summary["rows_skipped"] == summary["rows_total"] > 0
    recorded = (store / "extract_config.yaml").read_bytes()
    assert f"data: {tiny_sample.resolve()}" in recorded.decode() and f"store: {store.resolve()}" in recorded.decode()
    monkeypatch.chdir(tmp_path)  # the same data and store given as relative paths: still nothing to do, nothing rewritten
    rel = [a for a in argv if not a.startswith(("data=", "store="))]
    assert cmd_extract.main([f"data={os.path.relpath(tiny_sample, tmp_path)}", "store=store", *rel]) == 0
    assert "nothing to do" in capsys.readouterr().out and (store / "extract_config.yaml").read_bytes() == recorded
    with pytest.raises(AssertionError, match="a model was built"):  # a content key changed: extraction runs
        cmd_extract.main([*argv, "crop_size=48"])
    monkeypatch.undo()

    with FeatureStore.open(path) as src:
        created, code = src.attrs["created"], src.attrs["code_version"]
    import time

    time.sleep(1.1)  # `created` has one-second resolution: a reset would show
    assert cmd_store.main(["export", f"src={path}", f"dst={tmp_path / 'h5'}"]) == 0
    (exported,) = store_paths(tmp_path / "h5")
    with FeatureStore.open(exported) as out:
        assert out.attrs["created"] == created and out.attrs["code_version"] == code
