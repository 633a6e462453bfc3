"""Process faults: `lta extract` and `lta train-heads` killed (SIGKILL) at random points, racing shards, a full disk.

Every run is a real `lta` process (tests/cli_proc.py; OMP_NUM_THREADS=1, so values are
bit-reproducible). After each fault the same command is re-run; the final store (or run dir) must
equal an uninterrupted run: every row filled once, byte-identical features and windows, no failure
records; metrics and checkpoints identical. The full disk is a file-size limit (RLIMIT_FSIZE, with
SIGXFSZ ignored, so writes fail with EFBIG as they would with ENOSPC).
Store-level SIGKILL tests (writer processes on a bare store) live in tests/test_store_crash.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import cli_proc
from fault_seed import fault_rng
from features.store import FeatureStore, open_root
from test_faults_video import record_fault

REPO = Path(__file__).resolve().parents[1]
# slot_independent: one SlowFast forward per row instead of the reference's 6 per-slot variants (6x less model time;
# a row is written the same way either way, and the per-slot values are proven in tests/test_e2e_extract.py)
EXTRACT_ARGS = ["raw_clips=true", "extractors=[slowfast_r50_8x8.kinetics]", "weights=random", "crop_size=32",
                "batch_size=1", "views=1", "chunk_rows=4", "device=cpu", "progress=false", "decode_workers=1",
                "slow_pathway=slot_independent"]
TRAIN_ARGS = ["head.modalities=[{name: slowfast, proj_dim: 32}]", "head.num_input=2", "head.aggregator=concat",
              "train.epochs=8", "train.lr=2e-3", "train.warmup_steps=5", "train.batch_size=32", "train.log_every=1000",
              "train.device=cpu", "num_seen=4", "resume=true"]
FILE_LIMIT = 8000  # bytes: store metadata and configs fit, a feature chunk (4 x 2304 float16) or a checkpoint does not
pytestmark = pytest.mark.slow


def start(command: str, args: list[str], *, file_limit: int | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    # file_limit: RLIMIT_FSIZE (Python ignores SIGXFSZ, so writes past it fail with EFBIG, as a full disk gives ENOSPC)
    return cli_proc.popen([command, *args], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          file_limit=file_limit)


def finish(proc: subprocess.Popen, want_rc: int | None = 0) -> str:
    out, err = proc.communicate(timeout=300)
    if want_rc is not None:
        assert proc.returncode == want_rc, err[-3000:]
    return err


def kill_when(proc: subprocess.Popen, ready, rng: np.random.Generator, *, max_delay: float = 0.3, timeout: float = 120) -> None:
    """SIGKILL `proc` a random 0-`max_delay` s after `ready()` first holds (unless it exited by then)."""
    t_end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < t_end:
        try:
            if ready():
                break
        except (OSError, ValueError, KeyError, RuntimeError):  # half-created files read as not ready
            pass
        time.sleep(0.02)
    time.sleep(rng.uniform(0, max_delay))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


# -- extract ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """6 short clips (5-6 segments each, 96x72): 34 rows in train/val/test, about 8 s per extract run."""
    from extract.render import write_sample
    from features.synthetic import plan_sample

    root = tmp_path_factory.mktemp("proc_sample")
    write_sample(plan_sample(clips=6, seed=5, segments_per_clip=(5, 6), segment_sec=(1.0, 1.6), width=96, height=72), root)
    return root


@pytest.fixture(scope="module")
def reference(sample, tmp_path_factory):
    """An uninterrupted extract run: (features, windows) of every row."""
    root = tmp_path_factory.mktemp("proc_ref")
    finish(start("extract", [f"data={sample}", f"store={root}", *EXTRACT_ARGS]))
    (store,) = open_root(root)
    assert store.filled().all()
    return store.read(slice(None)), store.read_windows(slice(None))


def filled_rows(root: Path) -> int:
    paths = list(root.glob("*.zarr"))
    if not paths:
        return 0
    with FeatureStore.open(paths[0]) as store:
        return int(store.filled().sum())


def rows_lost(root: Path, reference) -> int:
    """Rows of the reference missing or different in the store under `root` (after checking it reads cleanly)."""
    (store,) = open_root(root)
    report = store.verify()
    assert report["bad_rows"] == [] and report["errors"] == [], report
    feats, wins = reference
    got = store.read(slice(None), allow_missing=True)
    got_wins = store.read_windows(slice(None), allow_missing=True)
    same = [store.filled()[r] and np.array_equal(got[r].view(np.uint16), feats[r].view(np.uint16))
            and np.array_equal(got_wins[r], wins[r]) for r in range(len(feats))]
    return len(feats) - int(sum(same))


def summary(root: Path) -> dict:
    return json.loads((root / "extract_summary.json").read_text())[0]


def test_sigkill_extract_then_rerun_equals_uninterrupted(sample, reference, tmp_path):
    """3 trials: killed during start-up, or after a random number of rows; trial 1 then meets a full disk."""
    num_rows = len(reference[0])
    rng = fault_rng("SIGKILL lta extract")
    at_kill, lost, disk = [], [], {"trials": 0, "survived": 0}
    for trial in range(3):
        root = tmp_path / f"trial{trial}"
        args = [f"data={sample}", f"store={root}", *EXTRACT_ARGS]
        proc = start("extract", args)
        if trial == 0:
            kill_when(proc, lambda t_kill=time.monotonic() + rng.uniform(0.2, 2.5): time.monotonic() > t_kill, rng)
        else:
            k = int(rng.integers(1, num_rows - 5))
            kill_when(proc, lambda: filled_rows(root) >= k, rng)
        done = filled_rows(root)
        at_kill.append(done)
        if done:
            rows_lost(root, reference)  # what the kill left reads cleanly (its count is checked after the re-run)
        if trial == 1 and done < num_rows:  # the re-run meets a full disk first: it fails, the store stays intact
            disk["trials"] += 1
            err = finish(start("extract", args, file_limit=FILE_LIMIT), want_rc=None)
            (line,) = [x for x in err.splitlines() if "StoreWriteError" in x] or [""]  # one line, no traceback
            clean_error = (line.startswith("lta extract: StoreWriteError: ") and "cannot write rows" in line
                           and "File too large" in line and "Traceback" not in err)
            intact = filled_rows(root) >= done and (done == 0 or rows_lost(root, reference) == num_rows - filled_rows(root))
            disk["survived"] += clean_error and intact
            assert clean_error and intact, err[-2000:]
            done = filled_rows(root)
        finish(start("extract", args))
        s = summary(root)
        assert s["rows_skipped"] == done and s["rows_done"] == num_rows - done and s["rows_failed"] == 0
        assert not (root / "failures.jsonl").exists()
        lost.append(rows_lost(root, reference))
    record_fault("SIGKILL lta extract (random point)", 3, sum(n == 0 for n in lost), sum(lost))
    record_fault("full disk during extract (RLIMIT_FSIZE)", disk["trials"], disk["survived"], 0)
    print("rows filled at kill:", at_kill, "of", num_rows)
    assert lost == [0, 0, 0]
    assert disk["trials"] == 1
    assert any(0 < n < num_rows for n in at_kill), f"no trial was killed mid-run: {at_kill}"


def test_two_shards_racing_on_one_store(sample, reference, tmp_path):
    """Shards 0/2 and 1/2 started together on one store: both race `create`, write disjoint chunks."""
    procs = [start("extract", [f"data={sample}", f"store={tmp_path}", *EXTRACT_ARGS, f"shard={i}/2"]) for i in range(2)]
    for p in procs:
        finish(p)
    lost = rows_lost(tmp_path, reference)
    leftovers = list(tmp_path.glob(".*tmp-*"))
    record_fault("two extract shards racing on one store", 1, int(lost == 0 and not leftovers), lost)
    assert lost == 0 and not leftovers and not (tmp_path / "failures.jsonl").exists()
    shard_summaries = [json.loads((tmp_path / f"extract_summary.shard-{i}-of-2.json").read_text()) for i in range(2)]
    assert sum(s["rows_done"] for s in shard_summaries) == len(reference[0])  # each shard kept its own summary


def test_same_shard_twice_at_once(sample, reference, tmp_path):
    """The same shard started twice (a SLURM requeue while the old job runs): the second is refused by the lock."""
    procs = [start("extract", [f"data={sample}", f"store={tmp_path}", *EXTRACT_ARGS, "lock_wait_sec=0"]) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errs)]
    refused = [err for rc, err in results if rc == 1 and "ShardLockedError" in err]
    lost = rows_lost(tmp_path, reference)
    one_line = len(refused) == 1 and "Traceback" not in refused[0] and ".locks/shard-0-of-1.lock is held by " in refused[0]
    record_fault("same extract shard twice at once", 1, int(lost == 0 and one_line), lost)
    assert sorted(rc for rc, _ in results) == [0, 1] and one_line, [err[-1500:] for _, err in results]
    assert lost == 0 and summary(tmp_path)["rows_done"] == len(reference[0])


# -- train-heads ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heads_data(tmp_path_factory):
    from synthetic_store import write_synthetic_dataset, write_synthetic_stores

    root = tmp_path_factory.mktemp("proc_heads")
    plan = write_synthetic_dataset(root / "data", clips=16, seed=3)
    write_synthetic_stores(root / "data", root / "store", plan, modalities={"slowfast": ("slowfast_r101_8x8.synthetic", (32,))},
                           noise=2.0)
    return root


def heads_args(root: Path, out: Path) -> list[str]:
    return [f"data={root / 'data'}", f"store={root / 'store'}", f"out={out}", *TRAIN_ARGS]


def _without_timing(metrics: dict) -> dict:
    history = [{k: v for k, v in h.items() if k not in ("train_sec", "windows_per_sec")} for h in metrics["history"]]
    return dict(metrics, history=history)


def run_differences(run: Path, ref: Path) -> list[str]:
    """What differs between two run dirs: metrics (timing aside) and every checkpoint tensor."""
    import torch

    diffs = []
    if _without_timing(json.loads((run / "metrics.json").read_text())) != _without_timing(json.loads((ref / "metrics.json").read_text())):
        diffs.append("metrics.json")
    for name in ("best", "last"):
        a = torch.load(run / "checkpoints" / f"{name}.pt", weights_only=True)
        b = torch.load(ref / "checkpoints" / f"{name}.pt", weights_only=True)
        diffs += [f"{name}.pt:{k}" for k in b["model"] if not torch.equal(a["model"][k], b["model"][k])]
        if a.get("epoch") != b.get("epoch"):
            diffs.append(f"{name}.pt:epoch")
    diffs += [p.name for p in (run / "checkpoints").iterdir() if p.suffix != ".pt"]  # no temp files left
    return diffs


def epochs_done(run: Path) -> int:
    path = run / "metrics.json"
    return len(json.loads(path.read_text())["history"]) if path.is_file() else 0


def test_sigkill_train_heads_then_resume_equals_uninterrupted(heads_data, tmp_path):
    """3 trials killed after a random number of epochs; trial 1 then meets a full disk before resuming."""
    ref = tmp_path / "ref"
    finish(start("train-heads", heads_args(heads_data, ref)))
    epochs = len(json.loads((ref / "metrics.json").read_text())["history"])
    assert epochs == 8
    rng = fault_rng("SIGKILL lta train-heads")
    at_kill, failed, disk = [], [], {"trials": 0, "survived": 0}
    for trial in range(3):
        run = tmp_path / f"trial{trial}"
        k = int(rng.integers(1, epochs - 1))  # then a random instant of the next epochs (one takes ~0.1 s)
        kill_when(start("train-heads", heads_args(heads_data, run)), lambda: epochs_done(run) >= k, rng, max_delay=0.05)
        at_kill.append(epochs_done(run))
        if trial == 1 and at_kill[-1] < epochs:
            disk["trials"] += 1
            last_pt = run / "checkpoints" / "last.pt"
            last = last_pt.read_bytes() if last_pt.is_file() else None
            err = finish(start("train-heads", heads_args(heads_data, run), file_limit=FILE_LIMIT), want_rc=None)
            ok = "File too large" in err and (last_pt.read_bytes() if last_pt.is_file() else None) == last
            ok &= not list((run / "checkpoints").glob("*.tmp"))
            disk["survived"] += ok
            assert ok, err[-2000:]
        finish(start("train-heads", heads_args(heads_data, run)))
        failed.append(run_differences(run, ref))
    record_fault("SIGKILL lta train-heads (random epoch)", 3, sum(not d for d in failed), 0)
    record_fault("full disk during train-heads (RLIMIT_FSIZE)", disk["trials"], disk["survived"], 0)
    print("epochs done at kill:", at_kill, "of", epochs)
    assert failed == [[], [], []]
    assert disk["trials"] == 1 and any(0 < n < epochs for n in at_kill), at_kill
