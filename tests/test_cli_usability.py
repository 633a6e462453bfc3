"""Everyday use of the `lta` CLI (issue 16): one-line errors, the predict default, self-contained run dirs,
discoverable keys, reproducible numbers.

The error tests run the real CLI entry point in a process of its own (tests/cli_proc.py) and fail early
(before any data is loaded). The run they use is a tiny head trained in-process on a synthetic store (a few
seconds).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cli_proc
from features.store import RowTable  # noqa: F401 - features first (import order of the project)
from pipelines import cmd_evaluate, cmd_predict, cmd_score, cmd_train_heads
from pipelines.config import ConfigError, help_text, parse_config

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = {"slowfast": ("slowfast_r101_8x8.synthetic", (16,))}
TRAIN = ["head.num_input=2", "train.epochs=2", "train.lr=2e-3", "train.warmup_steps=2", "train.batch_size=32",
         "train.log_every=1000", "num_seen=4", "head.modalities=[{name: slowfast, proj_dim: 16}]", "train.device=cpu"]


def lta(*args: str, cwd: Path | str = ROOT, debug: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LTA_DEBUG"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **({"LTA_DEBUG": "1"} if debug else {}))
    return cli_proc.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_one_line(res: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == rc, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    from synthetic_store import write_synthetic_dataset, write_synthetic_stores

    root = tmp_path_factory.mktemp("usability")
    plan = write_synthetic_dataset(root / "data", clips=16, seed=5)
    write_synthetic_stores(root / "data", root / "store", plan, modalities=MODALITIES, noise=1.0)
    run = root / "run"
    assert cmd_train_heads.main([f"data={root / 'data'}", f"store={root / 'store'}", f"out={run}", *TRAIN]) == 0
    return {"root": root, "data": root / "data", "store": root / "store", "run": run}


# --- item 2: one error boundary, names checked before any data is loaded ---------------------------------

@pytest.mark.slow
def test_usage_errors_are_one_line_exit_2_before_loading(tiny, tmp_path):
    data, store, run = tiny["data"], tiny["store"], tiny["run"]
    empty = tmp_path / "empty_store"
    empty.mkdir()
    th = ["train-heads", f"data={data}", f"store={store}", f"out={tmp_path / 'never'}", *TRAIN]
    cases = [
        (["train-heads", f"data={tmp_path / 'no_data'}", f"store={store}"], ["data=", "no_data", "does not exist"]),
        (["train-heads", f"data={data}", f"store={empty}"], ["store=", "holds no stores"]),
        ([*th, "head.aggregator=concatt"], ["head.aggregator=concatt", "did you mean 'concat'", "transformer"]),
        ([*th, "train.optimizer=adamm"], ["train.optimizer=adamm", "adamw"]),
        ([*th, "head.aggregator=transformer", "head.aggregator_kwargs={depht: 2}"],
         ["head.aggregator_kwargs.depht", "did you mean 'depth'", "heads"]),
        ([*th, "head.decoder_kwargs={dropuot: 0.1}"], ["head.decoder_kwargs.dropuot", "did you mean 'dropout'"]),
        ([*th, "epoch=3"], ["epoch", "did you mean 'train.epochs'"]),
        (["evaluate", f"run={run}", "generators=[sample,greedy+sampel]"], ["greedy+sampel", "did you mean 'greedy+sample'"]),
        (["evaluate", f"run={run}", "baselines=[markov,markov_knnn]"], ["markov_knnn", "markov_knn"]),
        (["evaluate", f"run={run}", "split=vall"], ["split=vall", "did you mean 'val'"]),
        (["predict", f"run={run}", "generator=greedy", f"out={tmp_path / 'o.json'}"], ["generator=greedy", "greedy+sample"]),
        (["evaluate", f"run={tmp_path / 'no_run'}"], ["run=", "no_run", "does not exist"]),
        (["evaluate", f"run={run}", "checkpoint=bestt"], ["checkpoint=bestt", "did you mean 'best'", "last"]),
        (["extract", f"data={data}", f"store={tmp_path / 'x'}", "extractors=[slowfast_r101_8x9.ego4d]", "device=cpu"],
         ["slowfast_r101_8x9.ego4d", "did you mean 'slowfast_r101_8x8.ego4d'"]),
        (["resize", f"data={tmp_path / 'no_data'}"], ["data=", "no_data", "does not exist"]),
        (["import-checkpoint", f"ckpt={tmp_path / 'x.ckpt'}", f"out={tmp_path / 'never'}"], ["ckpt=", "does not exist"]),
        (["evalute", f"run={run}"], ["unknown command 'evalute'", "did you mean 'evaluate'"]),
    ]
    for argv, needles in cases:
        assert_one_line(lta(*argv), 2, *needles)
    assert not (tmp_path / "never").exists() and not (tmp_path / "x").exists()


def test_device_cuda_without_cuda_is_one_line(tiny):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line(lta("evaluate", f"run={tiny['run']}", "device=cuda"), 2, "device=cuda", "CUDA is not available")
    assert_one_line(lta("train-heads", f"data={tiny['data']}", f"store={tiny['store']}", "train.device=cuda"), 2,
                    "train.device=cuda")


@pytest.mark.slow
def test_runtime_failure_is_one_line_exit_1_and_debug_shows_the_traceback(tiny, tmp_path):
    # the run's store with its feature chunks damaged: every check passes, reading the features fails, exit 1
    # (a store root without the run's features is a usage error now, caught before loading: tests/test_first_day.py)
    shutil.copytree(tiny["store"], tmp_path / "damaged")
    chunks = [p for p in (tmp_path / "damaged").glob("*.zarr/features/c/**/*") if p.is_file()]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(b"garbage")
    argv = ["evaluate", f"run={tiny['run']}", f"store={tmp_path / 'damaged'}", "device=cpu"]
    res = lta(*argv)
    assert res.returncode == 1, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("lta evaluate:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr and "LTA_DEBUG=1" in errors[0], res.stderr[-2000:]
    assert "Traceback" in lta(*argv, debug=True).stderr
    assert "Traceback" in lta(*argv, "--debug").stderr


def test_markov_knn_is_a_baseline_one_can_ask_for(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    assert cmd_evaluate.main([f"run={run}", "split=val", "generators=[sample]", "baselines=[markov_knn]", "device=cpu"]) == 0
    m = json.loads((run / "metrics_val.json").read_text())
    assert 0 <= m["markov_knn.action_ed"] <= 1 and "markov.action_ed" not in m and "markov_oracle.action_ed" not in m


# --- items 1 and 6: predict defaults to the run's val selection; evaluate == predict + score ------------

def test_predict_uses_the_generator_selected_on_val_and_matches_evaluate(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    # the generator of interest second in the list: its draws must not depend on the position
    assert cmd_evaluate.main([f"run={run}", "split=val", "generators=[sample,greedy+sample,mbr]", "mbr_samples=16",
                              "baselines=[frequency_prior]", "device=cpu"]) == 0
    ev = json.loads((run / "metrics_val.json").read_text())
    chosen = min(("sample", "greedy+sample", "mbr"), key=lambda g: ev[f"model.{g}.action_ed"])
    capsys.readouterr()
    out = tmp_path / "val_outputs.json"
    assert cmd_predict.main([f"run={run}", "split=val", f"out={out}", "mbr_samples=16", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"generator {chosen} (lowest val action ED" in printed, printed
    for gen in ("sample", "greedy+sample", "mbr"):
        one = tmp_path / f"{gen}.json"
        assert cmd_predict.main([f"run={run}", "split=val", f"out={one}", f"generator={gen}", "mbr_samples=16",
                                 "device=cpu"]) == 0
        assert cmd_score.main([f"data={tiny['data']}", "split=val", f"predictions={one}", "num_seen=4",
                               f"out={tmp_path / (gen + '.score.json')}"]) == 0
        score = json.loads((tmp_path / (gen + ".score.json")).read_text())
        for what in ("verb_ed", "noun_ed", "action_ed"):
            assert score[what] == ev[f"model.{gen}.{what}"], (gen, what, score[what], ev[f"model.{gen}.{what}"])
        if gen == chosen:
            assert json.loads(one.read_text()) == json.loads(out.read_text())


def test_predict_ignores_a_selection_made_on_another_checkpoint(tiny, tmp_path, capsys):
    """The val selection belongs to the checkpoint's bytes: after the checkpoint changes (a retrain or resume
    wrote it again), predict says so and falls back to the run's train.val_generator."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    assert cmd_evaluate.main([f"run={run}", "split=val", "generators=[greedy+sample]", "baselines=[frequency_prior]",
                              "device=cpu"]) == 0
    assert json.loads((run / "metrics_val.json").read_text())["selected_generator"] == "greedy+sample"
    ckpt = run / "checkpoints" / "best.pt"
    state = torch.load(ckpt, weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = state["model"][first] + 0.01
    torch.save(state, ckpt)
    capsys.readouterr()
    assert cmd_predict.main([f"run={run}", "split=val", f"out={tmp_path / 'o.json'}", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "scored another best.pt" in printed and "generator sample (" in printed, printed


def test_predict_without_an_evaluation_says_which_generator(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    (run / "metrics_val.json").unlink(missing_ok=True)
    assert cmd_predict.main([f"run={run}", "split=val", f"out={tmp_path / 'o.json'}", "device=cpu"]) == 0
    assert "generator sample (the run's train.val_generator" in capsys.readouterr().out


# --- item 3: run dirs work from any directory ---------------------------------------------------------

def test_run_dir_works_from_any_directory(tiny, tmp_path, monkeypatch):
    work = tmp_path / "project"
    shutil.copytree(tiny["data"], work / "data")
    shutil.copytree(tiny["store"], work / "store")
    monkeypatch.chdir(work)
    assert cmd_train_heads.main(["data=data", "store=store", "out=runs/rel", *TRAIN]) == 0
    cfg = (work / "runs" / "rel" / "config.yaml").read_text()
    assert f"data: {work / 'data'}" in cfg and f"store: {work / 'store'}" in cfg
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = lta("evaluate", f"run={work / 'runs' / 'rel'}", "generators=[sample]", "baselines=[frequency_prior]",
              "device=cpu", cwd=elsewhere)
    assert res.returncode == 0, res.stderr[-2000:]
    # a run dir moved together with its data and store, recording paths relative to the run dir
    moved = tmp_path / "moved"
    shutil.copytree(work, moved)
    cfg_path = moved / "runs" / "rel" / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace(f"data: {work / 'data'}", "data: ../../data")
                        .replace(f"store: {work / 'store'}", "store: ../../store"))
    from train_heads.run import read_run_config, recorded_roots

    monkeypatch.chdir(elsewhere)
    data, store = recorded_roots(moved / "runs" / "rel", read_run_config(moved / "runs" / "rel"))
    assert Path(data) == moved / "data" and Path(store) == moved / "store"


# --- item 4: discoverable keys, fast help, list overrides ----------------------------------------------

def test_help_lists_nested_keys_without_importing_torch():
    code = ("import sys, contextlib, io\nfrom pipelines import cli\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    rc = cli.main(['train-heads', '--help'])\n"
            "print(rc, 'torch' in sys.modules)\nprint(buf.getvalue())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    first, text = res.stdout.split("\n", 1)
    assert first == "0 False", res.stdout[:500] + res.stderr[-1000:]
    from train_heads.schemas import TrainConfig

    epochs = TrainConfig().epochs
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ")}
    assert "head.modalities.0.proj_dim" in lines and "head.aggregator_kwargs" in lines
    assert f"default={epochs}" in lines["train.epochs"] and "epochs" in lines["train.epochs"].split("default=")[1]


def test_list_index_and_single_value_overrides():
    from pipelines.cmd_extract import ExtractConfig
    from pipelines.cmd_train_heads import TrainHeadsConfig

    cfg = parse_config(TrainHeadsConfig, ["head.modalities=[{name: slowfast}, {name: clip}]",
                                          "head.modalities.1.proj_dim=128", "features=one_key"])
    assert [m.proj_dim for m in cfg.head.modalities] == [0, 128] and cfg.features == ["one_key"]
    assert parse_config(ExtractConfig, ["extractors=clip_vit_b32.openai"]).extractors == ["clip_vit_b32.openai"]
    with pytest.raises(ConfigError, match=r"head\.modalities\.2.*2 entries"):
        parse_config(TrainHeadsConfig, ["head.modalities=[{name: a}, {name: b}]", "head.modalities.2.proj_dim=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'train\.epochs'"):
        parse_config(TrainHeadsConfig, ["epoch=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'head\.modalities\.0\.proj_dim'"):
        parse_config(TrainHeadsConfig, ["head.modalities.0.projdim=3"])
    assert "head.modalities.0.frame_pool" in help_text(TrainHeadsConfig, "train-heads")


def test_sample_with_bad_sizes_is_a_usage_error(tmp_path):
    """`lta sample clips=0` (and other impossible sample sizes) is a wrong command line: exit 2, one line."""
    for bad in ("clips=0", "width=33", "min_segments=5 max_segments=2"):
        res = lta("sample", f"out={tmp_path / 's'}", *bad.split())
        errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, (bad, res.stderr)
        assert errors[0].startswith("lta sample: ") and bad.split("=")[0].split("_")[-1] in errors[0], (bad, errors)
        assert not (tmp_path / "s").exists()
