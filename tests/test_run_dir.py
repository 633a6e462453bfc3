"""The run-dir policy (features.run_dir), one rule for train-heads and finetune-backbone: a dir that holds a run
needs resume=true or overwrite=true, both contradict, overwrite removes only the run's outputs. Torch-free."""
from __future__ import annotations

import json

import pytest

from extract.finetune.options import RUN_LAYOUT as FINETUNE_RUN
from features.errors import UsageError
from features.run_dir import RunDirError, prepare_run_dir
from train_heads.run import RUN_LAYOUT as HEADS_RUN


def _finetune_run(run):
    for name in ("checkpoints/last.pt", "checkpoints/rng_rank0.pt", "tensorboard/events", "metrics.jsonl",
                 "backbone.pt", "backbone.json", "heads.pt", "failures.jsonl", "config.yaml"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    return run


def _heads_run(run, *, finished: bool):
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_text("x")
    (run / "tensorboard").mkdir()
    history = [{"epoch": 1}, {"epoch": 2}]
    metrics = {"finished": finished, "history": history, "select_metric": "model.naive.action_ed", "best": 0.9,
               "best_epoch": 2}
    (run / "metrics.json").write_text(json.dumps(metrics))
    for name in ("train.log", "metrics_val.json", "ed_curve_val.png", "config.yaml", "cache_keys.json"):
        (run / name).write_text("x")
    return run


@pytest.mark.parametrize("layout", [FINETUNE_RUN, HEADS_RUN], ids=["finetune-backbone", "train-heads"])
def test_empty_or_new_dir_is_taken_and_both_flags_contradict(tmp_path, layout):
    prepare_run_dir(tmp_path / "new", layout, resume=False, overwrite=False)
    prepare_run_dir(tmp_path, layout, resume=False, overwrite=True)  # nothing to remove
    assert not (tmp_path / "new").exists()
    with pytest.raises(RunDirError, match="resume=true and overwrite=true contradict each other"):
        prepare_run_dir(tmp_path, layout, resume=True, overwrite=True)
    assert issubclass(RunDirError, UsageError)  # exit 2 at the error boundary


def test_finetune_run_is_refused_resumed_or_replaced(tmp_path):
    run = _finetune_run(tmp_path / "run")
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(run, FINETUNE_RUN, resume=False, overwrite=False)
    assert str(err.value) == (f"out={run} already holds a run ({run / 'checkpoints/last.pt'}); pass resume=true to "
                              f"continue it, overwrite=true to replace it, or another out=DIR")
    prepare_run_dir(run, FINETUNE_RUN, resume=True, overwrite=False)
    prepare_run_dir(run, FINETUNE_RUN, resume=False, overwrite=True, remove=False)  # a DDP rank other than 0
    assert (run / "checkpoints" / "last.pt").is_file()
    prepare_run_dir(run, FINETUNE_RUN, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "failures.jsonl"]


@pytest.mark.parametrize("finished", [False, True])
def test_heads_run_is_refused_resumed_or_replaced(tmp_path, finished):
    run = _heads_run(tmp_path / "run", finished=finished)
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(run, HEADS_RUN, resume=False, overwrite=False)
    state = "finished" if finished else "unfinished"
    hint = "with more train.epochs to train it longer" if finished else "to continue it"
    assert str(err.value) == (f"out={run} already holds a {state} run (2 epochs done, best model.naive.action_ed "
                              f"0.9000 at epoch 2); pass resume=true {hint}, overwrite=true to replace it, or "
                              f"another out=DIR")
    prepare_run_dir(run, HEADS_RUN, resume=True, overwrite=False)
    prepare_run_dir(run, HEADS_RUN, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["cache_keys.json", "config.yaml"]
    (run / "metrics.json").write_text("{}")  # metrics alone mark a run too
    with pytest.raises(RunDirError, match="already holds an? "):
        prepare_run_dir(run, HEADS_RUN, resume=False, overwrite=False)
