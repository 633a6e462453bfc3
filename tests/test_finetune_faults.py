"""Bad clips fed to `lta finetune-backbone`: recorded in failures.jsonl, dropped or replaced, never fatal to training.

| fault                                      | when                  | result                                                     |
|--------------------------------------------|-----------------------|------------------------------------------------------------|
| missing clip                               | probe (before training) | record "file not found", its segments dropped            |
| truncated mp4, index first (faststart)     | probe                 | record "truncated: ... lists N frames", segments dropped   |
| truncated mp4, index at the end            | probe                 | record "not a readable video file", segments dropped       |
| clip file linking outside the data root    | probe                 | record "escapes its root", segments dropped                |
| too many segments dropped                  | probe                 | exit 1 before training, no checkpoint, records kept        |
| clip damaged after the probe (train)       | decode in a worker    | record per sample (window, epoch, step), seeded replacement |
| clip damaged after the probe (val)         | decode                | record per sample, sample left out of the metrics          |

Budget: ~15 s on 2 cores (7 tiny clips, tiny SlowFast: width 8, crop 32, 8 frames, 2-4 optimiser steps).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from extract.finetune.train import TrainOptions, prepare, train_prepared  # noqa: E402
from extract.finetune.data import EpochBatchSampler, RecognitionDataset, make_loader, probe_split  # noqa: E402
from extract.finetune.model import make_spec  # noqa: E402
from extract.resize import ffmpeg_exe  # noqa: E402
from features.annotations import load_split  # noqa: E402

TINY = dict(backbone="slowfast_r50_8x8", init="random", resized=False, width_per_group=8, crop_size=32, num_frames=8,
            num_workers=0, log_every=1000, warmup_steps=1, batch_size=8, epochs=1, lr=0.05)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny backbones: one thread is faster than two and keeps the numbers reproducible."""


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """7 clips of 9-10 segments at 96x64: 5 train, 2 val."""
    from extract.render import write_sample
    from features.synthetic import plan_sample

    root = tmp_path_factory.mktemp("ft_faults")
    write_sample(plan_sample(clips=7, seed=2, segments_per_clip=(9, 10), width=96, height=64, verbs=4, nouns=6,
                             train_fraction=0.71, val_fraction=0.29), root)
    assert len(load_split(root, "train").clip_uids) == 5 and len(load_split(root, "val").clip_uids) == 2
    return root


BAD = ("missing", "cut", "link", "cut_val")  # keys of the `broken` fixture naming its bad clips


def _copy(clean: Path, dst: Path) -> Path:
    shutil.copytree(clean, dst)
    return dst


def _clip(root: Path, uid: str) -> Path:
    return root / "clips_hq" / f"{uid}.mp4"


def _truncate(path: Path, frac: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def _faststart(path: Path) -> None:
    """Remux with the mp4 index first (as streamed downloads are), in place."""
    tmp = path.with_name("faststart.mp4")
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(path), "-c", "copy",
                    "-movflags", "+faststart", str(tmp)], check=True, capture_output=True)
    tmp.replace(path)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def broken(clean, tmp_path_factory) -> dict:
    """A copy with train clip 0 missing, train clip 1 truncated (index first), train clip 2 a link out of the
    data root and val clip 0 truncated (index last)."""
    base = tmp_path_factory.mktemp("broken")
    root = _copy(clean, base / "data")
    train, val = load_split(root, "train"), load_split(root, "val")
    missing, cut, link, cut_val = train.clip_uids[0], train.clip_uids[1], train.clip_uids[2], val.clip_uids[0]
    _clip(root, missing).unlink()
    _clip(root, link).replace(base / "outside.mp4")  # a valid video, but outside the data root
    _clip(root, link).symlink_to(base / "outside.mp4")
    _faststart(_clip(root, cut))
    _truncate(_clip(root, cut), 0.6)
    _truncate(_clip(root, cut_val), 0.5)
    segs = {uid: a.clip_slices[uid].stop - a.clip_slices[uid].start for a in (train, val) for uid in a.clip_uids}
    return {"root": root, "missing": missing, "cut": cut, "link": link, "cut_val": cut_val, "segments": segs,
            "train": train, "val": val}


def test_bad_clips_are_recorded_dropped_and_training_completes(broken, tmp_path):
    train, val, segs = broken["train"], broken["val"], broken["segments"]
    prepared = prepare(TrainOptions(data=str(broken["root"]), out=str(tmp_path / "run"), **TINY, max_failed_frac=0.7))
    seen = {"train": prepared.probes[0], "val": prepared.probes[1]}
    result = train_prepared(prepared)
    records = {r["clip_uid"]: r for r in _records(tmp_path / "run")}
    assert set(records) == {broken[k] for k in BAD}
    miss, cut, cut_val = (records[broken[k]] for k in ("missing", "cut", "cut_val"))
    assert miss["reason"] == f"{_clip(broken['root'], broken['missing'])}: file not found"
    assert "truncated: the container lists" in cut["reason"] and str(_clip(broken["root"], broken["cut"])) in cut["reason"]
    assert "not a readable video file" in cut_val["reason"] and cut_val["split"] == "val"
    assert records[broken["link"]]["reason"].startswith("ValueError: path ") and "escapes its root" in records[broken["link"]]["reason"]
    for uid, rec in records.items():
        assert rec["stage"] == "finetune-probe" and rec["rows"] == segs[uid] and rec["path"] == str(_clip(broken["root"], uid))
    # the kept rows are exactly the segments of the good clips ...
    good_train = [u for u in train.clip_uids if u not in records]
    assert sorted(set(train.clip_uid[seen["train"].rows])) == sorted(good_train)
    assert len(seen["train"].rows) == sum(segs[u] for u in good_train)
    assert set(val.clip_uid[seen["val"].rows]) == {val.clip_uids[1]}
    assert result["dropped"] == sum(segs[broken[k]] for k in BAD)
    # ... and training ran over them only: one epoch of the kept rows, no decode failure, val on the good clip
    assert result["step"] == len(seen["train"].rows) // 8 >= 2 and result["decode_failures"] == 0
    assert result["val"]["num_samples"] == segs[val.clip_uids[1]]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file() and (tmp_path / "run" / "backbone.pt").is_file()


def test_too_many_failures_exit_1_before_training(broken, tmp_path, capsys):
    """The command raises TooManyFailures (a RunFailure); the CLI's error boundary prints it as one line, exit 1."""
    from pipelines.cli import main as lta

    run = tmp_path / "run"
    args = [f"data={broken['root']}", f"out={run}", "backbone=slowfast_r50_8x8", "init=random", "resized=false",
            "width_per_group=8", "crop_size=32", "num_frames=8", "batch_size=8", "epochs=1", "num_workers=0"]
    assert lta(["finetune-backbone", *args]) == 1  # default max_failed_frac=0.01
    err = capsys.readouterr().err.strip().splitlines()
    dropped = sum(broken["segments"][broken[k]] for k in BAD)
    total = sum(broken["segments"].values())
    assert err[-1].startswith(f"lta finetune-backbone: {dropped} of {total} segments dropped by the clip probe"), err[-3:]
    assert "max_failed_frac=0.01" in err[-1] and str(run / "failures.jsonl") in err[-1] and "Traceback" not in "\n".join(err)
    assert len(_records(run)) == len(BAD)
    assert not (run / "checkpoints").exists() and not (run / "backbone.pt").exists() and not (run / "tensorboard").exists()


def test_clip_damaged_after_the_probe_is_recorded_and_replaced(clean, tmp_path):
    root = _copy(clean, tmp_path / "data")
    train, val = load_split(root, "train"), load_split(root, "val")
    bad, bad_val = train.clip_uids[2], val.clip_uids[1]

    def damage(probes):  # the clips change on disk between the probe and training (network FS, a re-download, ...)
        assert not probes[0].failures and not probes[1].failures
        _truncate(_clip(root, bad))
        _clip(root, bad_val).unlink()

    prepared = prepare(TrainOptions(data=str(root), out=str(tmp_path / "run"), **dict(TINY, num_workers=2)))
    damage(prepared.probes)
    result = train_prepared(prepared)
    steps = train.num_segments // 8
    assert result["step"] == steps
    records = _records(tmp_path / "run")
    assert all(r["stage"] == "finetune-decode" for r in records) and len(records) == result["decode_failures"]
    in_train = [r for r in records if r["split"] == "train"]
    in_val = [r for r in records if r["split"] == "val"]
    # every training sample drawn from the damaged clip was replaced; val leaves its samples out
    assert in_train and {r["clip_uid"] for r in in_train} == {bad}
    for r in in_train:
        assert r["path"] == str(_clip(root, bad)) and str(_clip(root, bad)) in r["reason"]
        assert r["epoch"] == 0 and 0 <= r["step"] < steps and r["replaced_by"] >= 0
        seg = train.clip_slices[bad]
        row = seg.start + list(train.action_idx[seg]).index(r["action_idx"])
        assert train.start_sec[row] <= r["window_sec"][0] <= max(train.start_sec[row], train.end_sec[row] - 64 / 30) + 1e-3
    n_bad_val = val.clip_slices[bad_val].stop - val.clip_slices[bad_val].start
    assert sorted(r["action_idx"] for r in in_val) == sorted(val.action_idx[val.clip_slices[bad_val]].tolist())
    assert all("file not found" in r["reason"] or "No such file" in r["reason"] for r in in_val)
    assert result["val"]["num_samples"] == val.num_segments - n_bad_val


def test_replacement_is_deterministic_across_workers(clean, tmp_path):
    root = _copy(clean, tmp_path / "data")
    ann = load_split(root, "train")
    spec = make_spec("slowfast_r50_8x8", width_per_group=8, crop_size=32, num_frames=8)
    probe = probe_split(root, ann, spec, train=True, resized=False)
    ds = RecognitionDataset(root, ann, spec, train=True, seed=3, resized=False, probe=probe)
    _truncate(_clip(root, ann.clip_uids[0]))
    bad_rows = np.arange(ann.clip_slices[ann.clip_uids[0]].start, ann.clip_slices[ann.clip_uids[0]].stop)
    first = ds[int(bad_rows[0])]
    again = ds[int(bad_rows[0])]
    assert len(first[4]) >= 1 and first[4] == again[4] and first[3] == again[3] == first[4][-1]["replaced_by"]
    assert first[3] not in bad_rows and torch.equal(first[0][1], again[0][1])
    assert torch.equal(first[0][1], ds[first[3]][0][1])  # the replacement is that sample, with its own draws
    batches = {}
    for workers in (0, 2):
        sampler = EpochBatchSampler(len(ds), 8, shuffle=True, seed=3)
        batches[workers] = list(make_loader(ds, sampler, num_workers=workers))
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a[0][1], b[0][1]) and torch.equal(a[3], b[3]) and a[4] == b[4]
    used = torch.cat([b[3] for b in batches[0]])
    assert not np.isin(used.numpy(), bad_rows).any()  # the damaged clip's samples never reach a batch
    assert sum(len(b[4]) for b in batches[0]) >= 1
