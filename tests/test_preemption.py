"""What a SLURM cluster does to long jobs: SIGTERM (preemption), submitit's USR2 checkpoint/requeue, a requeue
while the old run still holds the shard lock, mixed shard layouts, readers during writes, job errors as one line.

Every run is a real `lta` process (tests/cli_proc.py: `python -m pipelines.cli` forked from a server that
has the libraries imported; or a submitit local job); after each fault the
store is compared row for row (bit for bit) with an uninterrupted run (`test_faults_process.reference`).
Random signal points come from `fault_rng` (prints its seed; `LTA_FAULT_SEED=<seed>` replays a run).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cli_proc
from extract.shard_lock import ShardLayoutError, ShardLock, ShardLockedError, claim_layout, layout_path
from fault_seed import fault_rng
from features.exitcodes import EXIT_INTERRUPTED
from features.store import FeatureStore, load_features, open_root
from test_faults_process import EXTRACT_ARGS, FILE_LIMIT, REPO, filled_rows, reference, rows_lost, sample  # noqa: F401
from test_faults_video import record_fault

pytestmark = pytest.mark.slow


def start(command: str, args: list[str], log: Path, *, file_limit: int | None = None) -> subprocess.Popen:
    """`lta <command> args` with stderr to `log` (read while it runs)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with log.open("w") as err:
        return cli_proc.popen([command, *args], cwd=REPO, env=env, text=True, stdout=subprocess.DEVNULL, stderr=err,
                              file_limit=file_limit)


def wait_until(proc: subprocess.Popen, ready, timeout: float = 180) -> bool:
    """Poll `ready()` until it holds (True) or `proc` exits / the timeout passes (False)."""
    t_end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < t_end:
        try:
            if ready():
                return True
        except (OSError, ValueError, KeyError, RuntimeError):  # half-created files read as not ready
            pass
        time.sleep(0.02)
    return False


def stderr_lines(log: Path) -> list[str]:
    return [x for x in log.read_text().splitlines() if x.strip()]


def shard_summary(root: Path, i: int = 0, n: int = 1) -> dict:
    return json.loads((root / f"extract_summary.shard-{i}-of-{n}.json").read_text())


def descendants(pid: int) -> list[int]:
    """Pids of every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def job_tasks(launcher_pid: int) -> list[int]:
    """The submitit job processes (`submitit.core._submit`) started by a launcher."""
    found = []
    for pid in descendants(launcher_pid):
        try:
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


# -- SIGTERM: plain CLI -----------------------------------------------------------------------------
def test_sigterm_extract_then_rerun_equals_uninterrupted(sample, reference, tmp_path):
    """2 trials: SIGTERM early in the loop / after a random number of rows -> exit 75, one line, a summary that
    says so, only whole clips; the re-run (trial 1: while the test still holds the shard lock, as a requeued
    job meets its old run) waits for the lock, resumes and equals an uninterrupted run."""
    num_rows = len(reference[0])
    rng = fault_rng("SIGTERM lta extract")
    lost, at_stop, clean, waited = [], [], [], 0
    for trial in range(2):
        root, log = tmp_path / f"trial{trial}", tmp_path / f"trial{trial}.err"
        args = [f"data={sample}", f"store={root}", *EXTRACT_ARGS]
        proc = start("extract", args, log)
        if trial == 0:
            assert wait_until(proc, lambda: "rows [0," in log.read_text())  # the loop starts
        else:
            k = int(rng.integers(1, num_rows - 5))
            assert wait_until(proc, lambda: filled_rows(root) >= k)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        lines = stderr_lines(log)
        done = filled_rows(root)
        at_stop.append(done)
        summary = shard_summary(root)
        ok = (rc == EXIT_INTERRUPTED and lines[-1].startswith("lta extract: extract interrupted by SIGTERM after ")
              and "re-run the same command to resume" in lines[-1] and "Traceback" not in log.read_text()
              and summary["interrupted"] is True and summary["rows_done"] == done
              and not (root / "extract_summary.json").exists() and not (root / "failures.jsonl").exists())
        assert ok, (rc, lines[-5:], summary)
        if done:
            assert rows_lost(root, reference) == num_rows - done  # every filled row is exact
        if trial == 1:  # the re-run meets the shard lock still held (the old job stopping) and waits for it
            held = ShardLock(root, 0, 1).acquire()
            rerun = start("extract", [*args, "lock_wait_sec=60"], log)
            try:
                assert wait_until(rerun, lambda: "waiting up to 60 s for it to be released" in log.read_text())
                waited += 1
            finally:
                held.release()
            assert rerun.wait(timeout=300) == 0, log.read_text()[-2000:]
        else:
            assert start("extract", args, log).wait(timeout=300) == 0, log.read_text()[-2000:]
        summary = shard_summary(root)
        assert summary["interrupted"] is False and summary["rows_skipped"] == done
        assert summary["rows_done"] == num_rows - done and summary["rows_failed"] == 0
        lost.append(rows_lost(root, reference))
        clean.append(ok and lost[-1] == 0)
    print("rows filled at SIGTERM:", at_stop, "of", num_rows)
    record_fault("SIGTERM lta extract (random point), re-run", 2, sum(clean), sum(lost))
    record_fault("requeue while the old run holds the shard lock (waits, resumes)", 1, int(waited == 1 and lost[1] == 0), lost[1])
    assert lost == [0, 0] and waited == 1
    assert any(0 < n < num_rows for n in at_stop), at_stop


# -- SIGTERM / USR2 with launcher=local -------------------------------------------------------------
def test_sigterm_local_launcher_then_rerun_equals_uninterrupted(sample, reference, tmp_path):
    """SIGTERM to `lta extract launcher=local num_shards=2` mid-run: forwarded to the jobs, exit 75; a re-run resumes."""
    num_rows = len(reference[0])
    rng = fault_rng("SIGTERM lta extract launcher=local")
    root, log = tmp_path / "store", tmp_path / "launcher.err"
    args = [f"data={sample}", f"store={root}", *EXTRACT_ARGS, "launcher=local", "num_shards=2"]
    proc = start("extract", args, log)
    k = int(rng.integers(1, num_rows // 2))
    assert wait_until(proc, lambda: filled_rows(root) >= k)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=90)
    done = filled_rows(root)
    lines = stderr_lines(log)
    assert rc == EXIT_INTERRUPTED, log.read_text()[-3000:]
    assert lines[-1].startswith("lta extract: ") and "job(s) stopped on SIGTERM" in lines[-1], lines[-5:]
    assert "Traceback" not in log.read_text() and not (root / "extract_summary.json").exists()
    assert not job_tasks(proc.pid)
    assert rows_lost(root, reference) == num_rows - done
    assert start("extract", args, log).wait(timeout=300) == 0, log.read_text()[-3000:]
    lost = rows_lost(root, reference)
    print("rows filled at SIGTERM:", done, "of", num_rows)
    record_fault("SIGTERM lta extract launcher=local (2 jobs), re-run", 1, int(lost == 0), lost)
    assert lost == 0 and done < num_rows


def test_preempted_local_job_is_requeued_by_submitit_and_resumes(sample, reference, tmp_path):
    """submitit's preemption signal (USR2) to a running job: it stops after its current clip, submitit checkpoints
    and requeues it, the requeued job skips the finished rows; the launcher ends with exit 0 and a full store."""
    num_rows = len(reference[0])
    rng = fault_rng("USR2 preemption of a local job")
    root, log = tmp_path / "store", tmp_path / "launcher.err"
    proc = start("extract", [f"data={sample}", f"store={root}", *EXTRACT_ARGS, "launcher=local", "num_shards=1"], log)
    k = int(rng.integers(1, num_rows - 5))
    assert wait_until(proc, lambda: filled_rows(root) >= k and job_tasks(proc.pid))
    (task,) = job_tasks(proc.pid)
    os.kill(task, signal.SIGUSR2)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    job_logs = "".join(p.read_text() for p in (root / ".submitit").glob("*_log.*"))
    summary = json.loads((root / "extract_summary.json").read_text())[0]
    lost = rows_lost(root, reference)
    requeued = "Requeued job" in job_logs and "submitit checkpoints and requeues the job" in job_logs
    record_fault("preemption (USR2) of a local job: submitit requeue resumes", 1, int(requeued and lost == 0), lost)
    assert requeued, job_logs[-3000:]
    assert lost == 0 and k <= summary["rows_skipped"] < num_rows and summary["rows_failed"] == 0


# -- shard lock: bounded wait; filelock ------------------------------------------------------------
def test_shard_lock_waits_for_the_holder(tmp_path, caplog):
    held = ShardLock(tmp_path, 0, 2).acquire()
    threading.Timer(0.8, held.release).start()
    with caplog.at_level("INFO"), ShardLock(tmp_path, 0, 2, wait_sec=30, poll_sec=0.05) as second:
        assert 0.5 < second.waited_sec < 30
    assert "waiting up to 30 s for it to be released" in caplog.text and "got lock" in caplog.text
    held = ShardLock(tmp_path, 0, 2).acquire()
    try:
        t0 = time.monotonic()
        with pytest.raises(ShardLockedError, match=r"is held by pid .* \(waited 1 s\)"):
            ShardLock(tmp_path, 0, 2, wait_sec=1.2, poll_sec=0.05).acquire()
        assert time.monotonic() - t0 < 20  # bounded (generous: a loaded machine)
    finally:
        held.release()


def test_a_stop_signal_ends_the_lock_wait(tmp_path):
    from features.interrupt import Interrupted, stop_on_signals

    held = ShardLock(tmp_path, 0, 1).acquire()
    try:
        with stop_on_signals("test"):
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
            with pytest.raises(Interrupted, match=r"test interrupted by SIGTERM after waiting \d+ s for lock"):
                ShardLock(tmp_path, 0, 1, wait_sec=60, poll_sec=0.05).acquire()
    finally:
        held.release()


def test_filelock_alone_does_not_fall_back_on_enolck(tmp_path, monkeypatch):
    """Why the shard lock picks the marker fallback itself: filelock only falls back on ENOSYS, NFS says ENOLCK."""
    import fcntl

    import filelock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(OSError) as err:
        filelock.FileLock(str(tmp_path / "x.lock")).acquire(timeout=0)
    assert err.value.errno == errno.ENOLCK and not isinstance(err.value, filelock.Timeout)
    with ShardLock(tmp_path, 0, 1) as held:  # ours falls back to filelock's SoftFileLock
        assert held.excl_path is not None and held.excl_path.exists()


# -- mixed shard layouts ----------------------------------------------------------------------------
def test_claim_layout(tmp_path):
    claim_layout(tmp_path, "k", 2, finished=False)
    claim_layout(tmp_path, "k", 2, finished=False)  # the same layout again (other shards, a resume)
    with pytest.raises(ShardLayoutError) as err:
        claim_layout(tmp_path, "k", 3, finished=False)
    assert "num_shards=2" in str(err.value) and "num_shards=3" in str(err.value) and "\n" not in str(err.value)
    claim_layout(tmp_path, "k", 3, finished=True)  # a finished store is re-sharded freely
    assert json.loads(layout_path(tmp_path, "k").read_text())["num_shards"] == 3
    with pytest.raises(ShardLayoutError, match="num_shards=3"):
        claim_layout(tmp_path, "k", 2, finished=False)


def test_mixed_num_shards_on_an_unfinished_store_is_refused(sample, reference, tmp_path, capsys, one_torch_thread):
    from pipelines import cli, cmd_extract

    root = tmp_path / "store"
    args = [f"data={sample}", f"store={root}", *EXTRACT_ARGS]
    assert cmd_extract.main([*args, "shard=0/2"]) == 0
    before = filled_rows(root)
    capsys.readouterr()
    assert cli.main(["extract", *args, "shard=1/3"]) == 1  # the boundary prints the refusal
    err = [x for x in capsys.readouterr().err.splitlines() if "ShardLayoutError" in x]
    assert len(err) == 1 and err[0].startswith("lta extract: ShardLayoutError: store ")
    assert "num_shards=2" in err[0] and "num_shards=3" in err[0]
    assert filled_rows(root) == before  # refused before writing
    assert cmd_extract.main([*args, "shard=1/2"]) == 0  # finish with the recorded layout
    assert cmd_extract.main([*args, "shard=0/3"]) == 0  # finished: any layout
    lost = rows_lost(root, reference)
    record_fault("mixed num_shards on an unfinished store (refused)", 1, int(lost == 0 and len(err) == 1), lost)
    assert lost == 0


# -- readers during writes --------------------------------------------------------------------------
def test_readers_during_an_extraction_see_only_done_rows(sample, reference, tmp_path):
    """`lta store verify`, load_features (what train-heads reads) and `lta train-heads` while `lta extract` writes."""
    from pipelines import cmd_store

    feats, wins = reference
    num_rows = len(feats)
    root, log = tmp_path / "store", tmp_path / "extract.err"
    proc = start("extract", [f"data={sample}", f"store={root}", *EXTRACT_ARGS], log)
    assert wait_until(proc, lambda: filled_rows(root) >= 1)
    heads_log = tmp_path / "heads.err"
    heads = start("train-heads", [f"data={sample}", f"store={root}", f"out={tmp_path / 'run'}", "train.device=cpu",
                                  "head.modalities=[{name: slowfast, proj_dim: 16}]", "head.num_input=2",
                                  "head.num_future=2", "num_seen=2", "train.epochs=2", "train.batch_size=4",
                                  "train.warmup_steps=1", "train.log_every=1000"], heads_log)
    snapshots, mid, torn, verify_rc = 0, 0, 0, []
    (path,) = root.glob("*.zarr")
    while proc.poll() is None:
        loaded = load_features([path])
        key = loaded.keys[0]
        valid = loaded.valid[key]
        got = loaded.arrays[key]
        torn += sum(not np.array_equal(got[r].view(np.uint16), feats[r].view(np.uint16))
                    or not np.array_equal(loaded.windows_sec[key][r], wins[r]) for r in np.flatnonzero(valid))
        torn += int(not np.isnan(got[~valid].astype(np.float32)).all())  # rows not done read as NaN, never stale
        with FeatureStore.open(path) as store:
            read = store.read(slice(None), allow_missing=True)
            done = ~np.isnan(read.reshape(num_rows, -1).astype(np.float32)).all(1)
            torn += sum(not np.array_equal(read[r].view(np.uint16), feats[r].view(np.uint16)) for r in np.flatnonzero(done))
        verify_rc.append(cmd_store.main(["verify", f"root={root}"]))
        snapshots += 1
        mid += int(0 < valid.sum() < num_rows)
    assert proc.wait() == 0, log.read_text()[-2000:]
    heads_rc = heads.wait(timeout=300)
    heads_err = heads_log.read_text()
    heads_ok = heads_rc == 0 or ("Traceback" not in heads_err and "StoreCorrupt" not in heads_err
                                 and "windows" in stderr_lines(heads_log)[-1])
    lost = rows_lost(root, reference)
    print(f"{snapshots} snapshots ({mid} mid-write), verify exit codes {set(verify_rc)}, train-heads exit {heads_rc}")
    record_fault("readers during extraction (store verify, load_features, train-heads)", 1,
                 int(torn == 0 and set(verify_rc) == {0} and heads_ok and mid > 0), lost)
    assert torn == 0 and set(verify_rc) == {0} and mid > 0 and lost == 0
    assert heads_ok, heads_err[-3000:]


# -- one-line errors from jobs ----------------------------------------------------------------------
def _one(lines: list[str], word: str) -> str:
    """The one error line the command printed (`lta extract: ...`) that names `word`."""
    hits = [x for x in lines if x.startswith("lta extract: ") and word in x]
    assert len(hits) == 1, lines[-10:]
    return hits[0]


def test_job_errors_read_as_without_a_launcher(sample, reference, tmp_path):
    """A locked shard, a mixed layout and a full disk inside a local job: the launcher prints the same one line
    as a plain run, plus the job id and its log path."""
    ok = 0
    base = [*EXTRACT_ARGS, "lock_wait_sec=0"]
    # a locked shard
    root = tmp_path / "locked"
    with ShardLock(root, 0, 1):
        plain, job = tmp_path / "p1.err", tmp_path / "j1.err"
        assert start("extract", [f"data={sample}", f"store={root}", *base], plain).wait(timeout=300) == 1
        assert start("extract", [f"data={sample}", f"store={root}", *base, "launcher=local"], job).wait(timeout=300) == 1
    p, j = _one(stderr_lines(plain), "ShardLockedError"), _one(stderr_lines(job), "ShardLockedError")
    suffix = j[len(p):]
    ok += (j.startswith(p) and suffix.startswith(" (job ") and Path(suffix.split(", log ")[1].rstrip(")")).is_file()
           and "Traceback" not in job.read_text())
    assert ok == 1, (p, j)
    # a store unfinished with another layout
    root = tmp_path / "layout"
    plain, job = tmp_path / "p2.err", tmp_path / "j2.err"
    assert start("extract", [f"data={sample}", f"store={root}", *base, "shard=0/3"], plain).wait(timeout=300) == 0
    assert start("extract", [f"data={sample}", f"store={root}", *base, "shard=0/2"], plain).wait(timeout=300) == 1
    assert start("extract", [f"data={sample}", f"store={root}", *base, "launcher=local", "num_shards=2"],
                 job).wait(timeout=300) == 1
    p, j = _one(stderr_lines(plain), "ShardLayoutError"), _one(stderr_lines(job), "ShardLayoutError")
    ok += int(j.startswith(p) and " (job " in j[len(p):] and "num_shards=3" in p and "num_shards=2" in p)
    assert ok == 2, (p, j)
    # a full disk inside the job
    root, job = tmp_path / "full", tmp_path / "j3.err"
    assert start("extract", [f"data={sample}", f"store={root}", *base, "launcher=local"], job,
                 file_limit=FILE_LIMIT).wait(timeout=300) == 1
    j = _one(stderr_lines(job), "StoreWriteError")
    ok += int(j.startswith("lta extract: StoreWriteError: ") and "cannot write rows" in j and "File too large" in j
              and " (job " in j and "Traceback" not in job.read_text())
    record_fault("job errors as one line (lock / layout / full disk), local launcher", 3, ok, 0)
    assert ok == 3, j


# -- SIGTERM: lta resize -----------------------------------------------------------------------------
def test_sigterm_resize_then_rerun_equals_uninterrupted(tmp_path):
    """SIGTERM to `lta resize` (plain, then launcher=local) after a random number of clips: exit 75, no failure
    records, no temp files, every output present is a finished clip; the re-run gives the clean run's bytes."""
    import shutil

    from test_decode import write_video

    rng = fault_rng("SIGTERM lta resize")
    src = tmp_path / "src" / "clips_hq"
    for i in range(6):
        write_video(src / f"c{i}.mp4", 60, width=320, height=240, lossless=False, seed=i)
    args = ["jobs=1", "short_side=160", "keyframe_interval=30", "preset=slow"]
    ref = tmp_path / "ref"
    shutil.copytree(src, ref / "clips_hq")
    log = tmp_path / "ref.err"
    assert start("resize", [f"data={ref}", *args], log).wait(timeout=300) == 0, log.read_text()[-2000:]
    want = {p.name: p.read_bytes() for p in (ref / "clips").glob("*.mp4")}
    assert len(want) == 6
    clean, lost = 0, 0
    for trial, extra in enumerate([[], ["launcher=local", "jobs=2"]]):
        root, log = tmp_path / f"trial{trial}", tmp_path / f"trial{trial}.err"
        shutil.copytree(src, root / "clips_hq")
        outputs = lambda: sorted((root / "clips").glob("[!.]*.mp4"))  # noqa: E731
        proc = start("resize", [f"data={root}", *args, *extra], log)
        k = int(rng.integers(1, 4))
        assert wait_until(proc, lambda: len(outputs()) >= k)
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=90)
        lines = stderr_lines(log)
        done = outputs()
        ok = (rc == EXIT_INTERRUPTED and lines[-1].startswith("lta resize: ") and "interrupted by SIGTERM" in lines[-1]
              and "Traceback" not in log.read_text() and not (root / "clips" / "failures.jsonl").exists()
              and not list((root / "clips").glob(".*tmp*")) and len(done) < 6
              and all(p.read_bytes() == want[p.name] for p in done))
        assert ok, (rc, lines[-5:], [p.name for p in done])
        assert start("resize", [f"data={root}", *args, *extra], log).wait(timeout=300) == 0, log.read_text()[-2000:]
        got = {p.name: p.read_bytes() for p in (root / "clips").glob("*.mp4")}
        lost += sum(got.get(name) != data for name, data in want.items())
        clean += int(ok and got == want)
        print(f"trial {trial}: {len(done)} of 6 clips done at SIGTERM")
    record_fault("SIGTERM lta resize (plain / launcher=local), re-run", 2, clean, lost)
    assert clean == 2 and lost == 0


# -- SIGTERM: lta finetune-backbone ------------------------------------------------------------------
def _finetune_reference(tmp_path: Path, epochs: int = 2) -> tuple[list[str], dict]:
    """(args, last.pt of an uninterrupted run) of a tiny `lta finetune-backbone` on a 6-clip sample (3 steps an epoch)."""
    import torch

    from extract.render import write_sample
    from features.synthetic import plan_sample

    data = tmp_path / "data"
    write_sample(plan_sample(clips=6, seed=1, segments_per_clip=(9, 10), width=96, height=64, verbs=4, nouns=6,
                             train_fraction=0.5, val_fraction=0.5), data)
    args = [f"data={data}", "backbone=slowfast_r50_8x8", "init=random", "resized=false", "width_per_group=8",
            "crop_size=32", "num_frames=8", "batch_size=8", f"epochs={epochs}", "num_workers=0", "val_split=",
            "log_every=1", "warmup_steps=2", "lr=0.05"]
    log = tmp_path / "ref.err"
    assert start("finetune-backbone", [*args, f"out={tmp_path / 'ref'}"], log).wait(timeout=600) == 0, log.read_text()[-2000:]
    return args, torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def _finetune_resume(args: list[str], run: Path, log: Path, ref: dict) -> tuple[dict, list[str]]:
    """`resume=true` of the interrupted `run` (no launcher): (its last.pt, names of tensors that differ from `ref`)."""
    import torch

    assert start("finetune-backbone", [*args, f"out={run}", "resume=true"], log).wait(timeout=600) == 0, log.read_text()[-2000:]
    got = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return got, [name for name, t in ref["model"].items() if not torch.equal(t, got["model"][name])]


def test_sigterm_finetune_then_resume_equals_uninterrupted(tmp_path):
    """SIGTERM after a random optimiser step: exit 75 with a checkpoint of that step; resume=true ends with the
    same weights as an uninterrupted run."""
    import torch

    args, ref = _finetune_reference(tmp_path)
    total = ref["state"]["step"]
    rng = fault_rng("SIGTERM lta finetune-backbone")
    k = int(rng.integers(1, total - 1))
    run, log = tmp_path / "run", tmp_path / "run.err"
    proc = start("finetune-backbone", [*args, f"out={run}"], log)
    assert wait_until(proc, lambda: f"step {k}/{total} " in log.read_text())
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    lines = stderr_lines(log)
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    stopped_at = ckpt["state"]["step"]
    ok = (rc == EXIT_INTERRUPTED and lines[-1].startswith("lta finetune-backbone: finetune-backbone interrupted by SIGTERM "
                                                          f"after step {stopped_at} of {total}")
          and "Traceback" not in log.read_text() and k <= stopped_at < total)
    assert ok, (rc, lines[-5:], stopped_at)
    got, diffs = _finetune_resume(args, run, log, ref)
    print(f"stopped at step {stopped_at} of {total}; {len(diffs)} tensors differ after resume")
    record_fault("SIGTERM lta finetune-backbone (random step), resume", 1, int(ok and not diffs), 0)
    assert not diffs and got["state"]["step"] == total


def test_sigterm_finetune_local_launcher_then_resume_equals_uninterrupted(tmp_path):
    """SIGTERM to `lta finetune-backbone launcher=local` while its submitit job trains: the signal is forwarded,
    the job checkpoints after its current step, the launcher exits 75 in one line and leaves no job process;
    resume=true (without a launcher) ends with the weights of an uninterrupted run."""
    import torch

    # 12 steps of ~0.2 s and a step from the first half: the signal goes launcher -> submitit controller -> job
    # (the launcher polls every 0.2 s), so it must be sent while several steps are left
    args, ref = _finetune_reference(tmp_path, epochs=4)
    total = ref["state"]["step"]
    rng = fault_rng("SIGTERM lta finetune-backbone launcher=local")
    k = int(rng.integers(1, total // 2 + 1))
    run, log = tmp_path / "run", tmp_path / "run.err"
    proc = start("finetune-backbone", [*args, f"out={run}", "launcher=local"], log)
    job_log = lambda: "".join(p.read_text() for p in (run / "slurm").glob("*_log.err"))  # noqa: E731
    assert wait_until(proc, lambda: f"step {k}/{total} " in job_log() and job_tasks(proc.pid))
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    lines = stderr_lines(log)
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    stopped_at = ckpt["state"]["step"]
    ok = (rc == EXIT_INTERRUPTED and lines[-1].startswith("lta finetune-backbone: ") and "SIGTERM" in lines[-1]
          and f"after step {stopped_at} of {total}" in lines[-1] and "Traceback" not in log.read_text()
          and k <= stopped_at < total and not job_tasks(proc.pid))
    assert ok, (rc, lines[-5:], stopped_at, job_log()[-2000:])
    got, diffs = _finetune_resume(args, run, log, ref)
    print(f"stopped at step {stopped_at} of {total}; {len(diffs)} tensors differ after resume")
    record_fault("SIGTERM lta finetune-backbone launcher=local (random step), resume", 1, int(ok and not diffs), 0)
    assert not diffs and got["state"]["step"] == total
