"""Feature store under SIGKILL and concurrent writer processes (real subprocesses, real files)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fault_seed import fault_rng
from features.store import FeatureStore, cache_key, store_path

REPO = Path(__file__).resolve().parents[1]
NUM_ROWS, VIEWS, DIM, CHUNK = 1200, 2, 96, 16
SPEC = {"arch": "crash-test", "dim": DIM}

# A writer process: create (or resume) the store, write its shard in batches that straddle chunk
# boundaries (partial-chunk read-modify-writes), skipping batches already done.
WRITER = r"""
import sys
import numpy as np
from features.store import FeatureStore, RowTable, cache_key, store_path
root, backend, shard, num_shards, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
R, V, D, CHUNK = %d, %d, %d, %d
SPEC = %r
rows = RowTable(clip_uid=np.array([f"c{r // 10:04d}" for r in range(R)]), action_idx=np.arange(R) %% 10,
                split=np.array(["train"] * R), start_sec=np.arange(R) * 0.5, end_sec=np.arange(R) * 0.5 + 2)
rng = np.random.default_rng(0)
feats = rng.standard_normal((R, V, D)).astype(np.float16)
wins = rng.uniform(0, 100, (R, V, 2))
path = store_path(root, cache_key("crash", SPEC), backend)
if backend == "h5" and num_shards > 1:
    from features.store import shard_path
    path = shard_path(path, shard, num_shards)
store = FeatureStore.create(path, name="crash", spec=SPEC, rows=rows, view_shape=(D,), num_views=V, chunk_rows=CHUNK)
lo, hi = store.shard_range(shard, num_shards)
done = store.filled()
print("ready", flush=True)
for s in range(lo, hi, batch):
    e = min(s + batch, hi)
    if not done[s:e].all():
        store.write(s, feats[s:e], wins[s:e])
    print("wrote", e, flush=True)
print("finished", flush=True)
""" % (NUM_ROWS, VIEWS, DIM, CHUNK, SPEC)


def expected():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((NUM_ROWS, VIEWS, DIM)).astype(np.float16)
    return feats, rng.uniform(0, 100, (NUM_ROWS, VIEWS, 2))


def start_writer(root, backend, shard=0, num_shards=1, batch=24):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), backend, str(shard), str(num_shards), str(batch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def wait_line(proc, want):
    line = proc.stdout.readline().strip()
    assert line == want, f"writer said {line!r}, stderr: {proc.stderr.read()}"


def run_writer(root, backend, **kw):
    proc = start_writer(root, backend, **kw)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.split()[0] == "ready" and out.split()[-1] == "finished", err


def assert_consistent(path, feats, wins):
    """Every row marked done holds exactly the expected bytes; nothing unreadable."""
    store = FeatureStore.open(path)
    done = store.filled()
    if done.any():
        idx = np.flatnonzero(done)
        assert np.array_equal(store.read(idx).view(np.uint16), feats[idx].view(np.uint16))
        assert np.array_equal(store.read_windows(idx), wins[idx])
    report = store.verify()
    assert report["bad_rows"] == [] and report["errors"] == []
    store.close()
    return int(done.sum())


@pytest.mark.slow
@pytest.mark.parametrize("backend,trials", [("zarr", 5), ("h5", 3)])
def test_kill9_during_write_then_resume_equals_uninterrupted(tmp_path, backend, trials):
    feats, wins = expected()
    ref_root = tmp_path / "ref"
    run_writer(ref_root, backend)
    num_batches = -(-NUM_ROWS // 24)
    ref_path = store_path(ref_root, cache_key("crash", SPEC), backend)
    assert assert_consistent(ref_path, feats, wins) == NUM_ROWS

    rng = fault_rng(f"SIGKILL store writer ({backend})")
    partial = []
    for trial in range(trials):
        root = tmp_path / f"trial{trial}"
        proc = start_writer(root, backend)
        wait_line(proc, "ready")
        for _ in range(rng.integers(1, num_batches - 4)):  # let a random number of batches finish ...
            assert proc.stdout.readline().startswith("wrote")
        time.sleep(rng.uniform(0, 0.005))  # ... then kill at a random instant of a later one
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        path = store_path(root, cache_key("crash", SPEC), backend)
        partial.append(assert_consistent(path, feats, wins))  # re-opens; finished rows exact
        run_writer(root, backend)  # resume
        assert assert_consistent(path, feats, wins) == NUM_ROWS
        final = FeatureStore.open(path)
        ref = FeatureStore.open(ref_path)
        assert np.array_equal(final.read(slice(None)).view(np.uint16), ref.read(slice(None)).view(np.uint16))
        assert np.array_equal(final.read_windows(slice(None)), ref.read_windows(slice(None)))
        final.close(), ref.close()
    print("rows done at kill:", partial)
    assert any(0 < n < NUM_ROWS for n in partial), f"no trial was killed mid-write: {partial}"


@pytest.mark.slow
def test_two_concurrent_zarr_writers_equal_one_serial_writer(tmp_path):
    feats, wins = expected()
    run_writer(tmp_path / "serial", "zarr")
    root = tmp_path / "parallel"
    procs = [start_writer(root, "zarr", shard=i, num_shards=2, batch=40) for i in range(2)]  # both race `create`
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.split()[-1] == "finished", err
    key = cache_key("crash", SPEC)
    par, ser = FeatureStore.open(store_path(root, key)), FeatureStore.open(store_path(tmp_path / "serial", key))
    assert par.filled().all()
    assert np.array_equal(par.read(slice(None)).view(np.uint16), ser.read(slice(None)).view(np.uint16))
    assert np.array_equal(par.read_windows(slice(None)), ser.read_windows(slice(None)))
    assert np.array_equal(par.read(slice(None)), feats)
    assert not list(root.glob(".*tmp-*"))  # the loser of the create race cleaned up
