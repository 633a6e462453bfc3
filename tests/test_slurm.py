"""launcher=slurm against a real SLURM controller (`make slurm-up`: slurmctld + slurmd on this machine).

Every test runs the real CLI (`python -m pipelines.cli ...` in a process of its own, tests/cli_proc.py), which submits real sbatch arrays through submitit and
watches them with squeue; the faults come from outside, as on a cluster (`scontrol requeue`, `scancel`). Each
store is compared array by array, bit for bit, with the one `launcher=local` writes (every array of every
`<key>.zarr`: features, windows, row table, done mask). Jobs ask for 1 CPU, 2 GB and no GPU, so they share the
machine with anything else SLURM does not know about. No controller answering: the tests skip with the reason,
unless LTA_REQUIRE_SLURM=1 (set by .ci/run once tools/slurm-up started one), which makes them fail instead.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import cli_proc
from extract.shard_lock import ShardLock
from features.exitcodes import EXIT_INTERRUPTED
from test_faults_process import EXTRACT_ARGS, REPO, filled_rows, sample  # noqa: F401
from test_preemption import stderr_lines, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM = ["launcher=slurm", "slurm_cpus=1", "slurm_mem_gb=2", "slurm_gpus=0"]
# the process tests' extraction with one SlowFast forward per row (slot_independent): ~3x faster jobs
ARGS = [*EXTRACT_ARGS, "slow_pathway=slot_independent"]


def controller_problem() -> str | None:
    """None when a SLURM controller answers and has a node that can run jobs, else why not."""
    if not shutil.which("sbatch"):
        return "no sbatch on PATH (start a one-node cluster with `make slurm-up`)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        nodes = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"scontrol / sinfo failed: {err}"
    if "UP" not in ping.stdout:
        return f"no SLURM controller answers (scontrol ping: {(ping.stdout + ping.stderr).strip()}); run `make slurm-up`"
    if not {s.rstrip("*~#") for s in nodes.stdout.split()} & {"idle", "mix", "alloc", "comp"}:
        return f"the SLURM controller has no node up (sinfo: {nodes.stdout.split()}); run `make slurm-up`"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_controller():
    problem = controller_problem()
    if problem:
        if os.environ.get("LTA_REQUIRE_SLURM", "") not in ("", "0"):  # set by .ci/run once it started a cluster
            pytest.fail(f"LTA_REQUIRE_SLURM is set but {problem}")
        pytest.skip(problem)


def start(command: str, args: list[str], log: Path) -> subprocess.Popen:
    """`lta <command> args` with stderr to `log`, torch on one thread (the SLURM jobs inherit the environment)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("LTA_DEBUG", None)
    with log.open("w") as err:
        return cli_proc.popen([command, *args], cwd=REPO, env=env, text=True, stdout=subprocess.DEVNULL, stderr=err)


def run(command: str, args: list[str], log: Path, timeout: float = 240) -> int:
    return start(command, args, log).wait(timeout=timeout)


def job_ids(log: Path) -> list[str]:
    """The SLURM job ids the launcher logged (`submitted N slurm job(s): ['12_0', '12_1']`)."""
    m = re.search(r"submitted \d+ slurm job\(s\): \[([^\]]*)\]", log.read_text())
    return re.findall(r"'([^']+)'", m.group(1)) if m else []


def scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def store_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every array of every `<key>.zarr` under `root`, by path."""
    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix: str) -> None:
        for name, arr in group.arrays():
            out[f"{prefix}/{name}"] = np.asarray(arr[...])
        for name, sub in group.groups():
            walk(sub, f"{prefix}/{name}")

    for path in sorted(root.glob("*.zarr")):
        walk(zarr.open_group(str(path), mode="r"), path.name)
    return out


def differences(root: Path, ref: dict[str, np.ndarray]) -> list[str]:
    """Names of the arrays that differ (dtype, shape or bytes) from `ref`, or are missing / extra."""
    got = store_arrays(root)
    diff = sorted(set(got) ^ set(ref))
    for name in sorted(set(got) & set(ref)):
        a, b = got[name], ref[name]
        same = a.dtype == b.dtype and a.shape == b.shape and (
            np.array_equal(a, b) if a.dtype.kind in "OUS" else a.tobytes() == b.tobytes())
        if not same:
            diff.append(name)
    return diff


def store_verify(root: Path, tmp_path: Path) -> int:
    return run("store", ["verify", f"store={root}"], tmp_path / "verify.err", timeout=120)


@pytest.fixture(scope="module")
def local_store(sample, tmp_path_factory):  # noqa: F811
    """`lta extract launcher=local num_shards=2` of the sample: every array of its store."""
    root = tmp_path_factory.mktemp("slurm_local_ref")
    log = root.parent / f"{root.name}.err"
    assert run("extract", [f"data={sample}", f"store={root}", *ARGS, "launcher=local", "num_shards=2"], log) == 0, \
        log.read_text()[-2000:]
    arrays = store_arrays(root)
    assert arrays and all(m.all() for k, m in arrays.items() if k.endswith("/done"))
    return arrays


def extract_args(sample: Path, root: Path) -> list[str]:  # noqa: F811
    return [f"data={sample}", f"store={root}", *ARGS, *SLURM, "num_shards=2"]


# -- the same stores as launcher=local --------------------------------------------------------------
def test_slurm_resize_equals_local(sample, tmp_path):  # noqa: F811
    """`lta resize launcher=slurm jobs=2` on a 2-job array writes the same clips (bytes) as launcher=local."""
    outs = {}
    for launcher in ("local", "slurm"):
        data = tmp_path / launcher
        shutil.copytree(sample / "clips_hq", data / "clips_hq")
        args = [f"data={data}", "jobs=2", "short_side=64", "preset=ultrafast", f"launcher={launcher}"]
        args += ["slurm_cpus=1", "slurm_mem_gb=2"] if launcher == "slurm" else []
        log = tmp_path / f"{launcher}.err"
        assert run("resize", args, log) == 0, log.read_text()[-2000:]
        outs[launcher] = {p.name: p.read_bytes() for p in sorted((data / "clips").glob("*.mp4"))}
    assert len(job_ids(tmp_path / "slurm.err")) == 2
    assert outs["slurm"] and outs["slurm"].keys() == outs["local"].keys()
    assert [k for k in outs["slurm"] if outs["slurm"][k] != outs["local"][k]] == []


def test_slurm_extract_equals_local_and_verifies(sample, local_store, tmp_path):  # noqa: F811
    """`lta extract launcher=slurm num_shards=2`: a 2-job SLURM array, the store equals launcher=local's, verify passes;
    the launcher showed SLURM's pending / running / done counts and never called sacct."""
    root, log = tmp_path / "store", tmp_path / "slurm.err"
    assert run("extract", extract_args(sample, root), log) == 0, log.read_text()[-2000:]
    assert len(job_ids(log)) == 2
    assert differences(root, local_store) == []
    assert store_verify(root, tmp_path) == 0
    text = log.read_text()
    assert re.search(r"lta-extract: 0 pending, 0 running, 2 done of 2 SLURM job\(s\)", text), text[-2000:]
    assert "sacct" not in text


# -- faults from outside: requeue, scancel ------------------------------------------------------------
def _when_rows_are_written(proc: subprocess.Popen, root: Path, log: Path) -> list[str]:
    """Wait until the array runs and has written rows (but not all); its job ids."""
    assert wait_until(proc, lambda: len(job_ids(log)) == 2 and filled_rows(root) > 0, timeout=120), log.read_text()[-2000:]
    return job_ids(log)


def _shards_filled(root: Path) -> list[int]:
    """Rows marked done in each of the 2 shards' row ranges."""
    from features.store import FeatureStore

    (path,) = root.glob("*.zarr")
    with FeatureStore.open(path) as store:
        done = store.filled()
        return [int(done[slice(*store.shard_range(i, 2))].sum()) for i in range(2)]


def test_slurm_usr2_and_requeue_of_running_shards_resume(sample, local_store, tmp_path):  # noqa: F811
    """Both shard jobs running and part-way: shard 0 gets USR2 (what SLURM sends before the time limit,
    `--signal=USR2@120`, here sent the way submitit's own tests do, `scancel --signal=USR2`): it stops after its
    clip, submitit checkpoints and requeues it; shard 1 is requeued from outside (`scontrol requeue`, as a
    preemption): it stops (exit 75). SLURM starts both again after the requeue hold (cred_expire, 10 s in
    tools/slurm-up), they resume from the store, the launcher ends with exit 0 and the store equals launcher=local's."""
    root, log = tmp_path / "store", tmp_path / "slurm.err"
    proc = start("extract", extract_args(sample, root), log)
    ids = _when_rows_are_written(proc, root, log)
    assert wait_until(proc, lambda: all(n > 0 for n in _shards_filled(root)), timeout=120), log.read_text()[-2000:]
    filled = _shards_filled(root)
    assert not list(root.glob("extract_summary.shard-*.json")), "a shard finished before the signals"
    subprocess.run(["scancel", "--signal=USR2", ids[0]], check=True, capture_output=True)
    subprocess.run(["scontrol", "requeue", ids[1]], check=True, capture_output=True)
    assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    for job_id in ids:
        assert "Restarts=1" in scontrol_job(job_id), scontrol_job(job_id)
    usr2_log = next((root / ".submitit").glob(f"{ids[0]}_0_log.err")).read_text()
    assert "submitit checkpoints and requeues the job" in usr2_log, usr2_log[-2000:]
    assert differences(root, local_store) == []
    assert store_verify(root, tmp_path) == 0
    print(f"signalled with {filled} rows done per shard")


def test_slurm_scancel_stops_the_wait_then_rerun_resumes(sample, local_store, tmp_path):  # noqa: F811
    """`scancel` of the whole array from outside: the launcher stops waiting, exit 1, one line naming the cancelled
    jobs and their logs. The re-run resumes; while it writes, the whole array is requeued (`scontrol requeue
    <array id>`): both jobs restart, the launcher ends with exit 0 and the store equals launcher=local's."""
    root, log = tmp_path / "store", tmp_path / "slurm.err"
    proc = start("extract", extract_args(sample, root), log)
    ids = _when_rows_are_written(proc, root, log)
    subprocess.run(["scancel", ids[0].split("_")[0]], check=True, capture_output=True)
    assert proc.wait(timeout=60) == 1, log.read_text()[-3000:]
    lines = [x for x in stderr_lines(log) if x.startswith("lta extract: ")]
    assert len(lines) == 1 and "cancelled (scancel)" in lines[0] and all(f"job {i} CANCELLED" in lines[0] for i in ids), lines
    assert "Traceback" not in log.read_text()
    filled = filled_rows(root)
    assert 0 < filled < len(local_store[next(k for k in local_store if k.endswith("/done"))])
    rerun = tmp_path / "rerun.err"
    proc = start("extract", extract_args(sample, root), rerun)
    assert wait_until(proc, lambda: len(job_ids(rerun)) == 2 and filled_rows(root) > filled, timeout=120), \
        rerun.read_text()[-2000:]
    again = job_ids(rerun)
    subprocess.run(["scontrol", "requeue", again[0].split("_")[0]], check=True, capture_output=True)
    assert proc.wait(timeout=180) == 0, rerun.read_text()[-3000:]
    for job_id in again:
        assert "Restarts=1" in scontrol_job(job_id), scontrol_job(job_id)
    assert differences(root, local_store) == []


# -- a job that fails inside ----------------------------------------------------------------------------
def test_slurm_job_error_reads_as_without_a_launcher(sample, tmp_path):  # noqa: F811
    """A shard locked by another run: the SLURM job raises ShardLockedError, the launcher prints the same one line
    as a plain `shard=0/2` run plus ` (job <id>, log <path>)`, exit 1, no traceback."""
    root = tmp_path / "locked"
    base = [f"data={sample}", f"store={root}", *ARGS, "lock_wait_sec=0"]
    plain, job = tmp_path / "plain.err", tmp_path / "job.err"
    with ShardLock(root, 0, 2):
        assert run("extract", [*base, "shard=0/2"], plain) == 1
        assert run("extract", [*base, *SLURM, "num_shards=2"], job) == 1
    p = [x for x in stderr_lines(plain) if x.startswith("lta extract: ") and "ShardLockedError" in x]
    j = [x for x in stderr_lines(job) if x.startswith("lta extract: ") and "ShardLockedError" in x]
    assert len(p) == 1 and len(j) == 1, (stderr_lines(plain)[-5:], stderr_lines(job)[-5:])
    suffix = j[0][len(p[0]):]
    assert j[0].startswith(p[0]) and re.fullmatch(r" \(job \d+_0, log .+\)", suffix), (p, j)
    assert Path(suffix.split(", log ")[1].rstrip(")")).is_file()
    assert "Traceback" not in job.read_text()


# -- no silent waits -------------------------------------------------------------------------------------
def _no_job_left(ids: list[str]) -> bool:
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T", f"--jobs={ids[0].split('_')[0]}"],
                         capture_output=True, text=True).stdout
    return all(s in ("CANCELLED", "") for s in (ln.split("|")[-1] for ln in out.splitlines()))


def test_slurm_requests_that_cannot_run_are_reported(sample, tmp_path):  # noqa: F811
    """Within a minute, one line naming the key, exit 2: more CPUs, memory or GPUs than any node has and an unknown
    partition (refused before submitting), and a time limit beyond the partition's MaxTime (submitted, pending with reason
    PartitionTimeLimit, which never clears: the jobs are cancelled)."""
    cpus = int(subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True).stdout.split()[0])
    cases = [(["slurm_cpus=%d" % (cpus + 1)], "slurm_cpus"), (["slurm_mem_gb=100000"], "slurm_mem_gb"),
             (["slurm_gpus=64"], "slurm_gpus"), (["slurm_partition=no_such_partition"], "slurm_partition"),
             (["slurm_partition=short", "slurm_time_min=5"], "slurm_time_min")]
    for extra, key in cases:
        root, log = tmp_path / key, tmp_path / f"{key}.err"
        t0 = time.monotonic()
        rc = run("extract", [*extract_args(sample, root), *extra], log, timeout=90)
        took = time.monotonic() - t0
        lines = [x for x in stderr_lines(log) if x.startswith("lta extract: ")]
        assert rc == 2 and len(lines) == 1 and key in lines[0] and took < 60, (extra, rc, took, stderr_lines(log)[-5:])
        if key == "slurm_time_min":
            ids = job_ids(log)
            assert ids and "PartitionTimeLimit" in lines[0] and "cancelled" in lines[0], lines
            assert _no_job_left(ids)
        else:
            assert job_ids(log) == [], "nothing should have been submitted"


# -- lta sweep -------------------------------------------------------------------------------------------
def test_slurm_sweep_over_two_configs_equals_no_launcher(tmp_path):
    """`lta sweep launcher=slurm` over two train-heads configs: a 2-job array whose results table (val EDs, best
    epochs) equals a `launcher=none` sweep's."""
    import json

    from synthetic_store import write_synthetic_dataset, write_synthetic_stores

    plan = write_synthetic_dataset(tmp_path / "data", clips=16, seed=5)
    write_synthetic_stores(tmp_path / "data", tmp_path / "store", plan,
                           modalities={"slowfast": ("slowfast_r101_8x8.synthetic", (16,))}, noise=1.0)
    configs = []
    for name, proj in (("a", 16), ("b", 8)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"head:\n  modalities: [{{name: slowfast, proj_dim: {proj}}}]\n  num_input: 2\n")
        configs.append(str(path))
    fast = ["train.epochs=1", "train.warmup_steps=1", "train.batch_size=32", "train.log_every=1000",
            "train.device=cpu", "num_seen=4"]
    base = [f"data={tmp_path / 'data'}", f"store={tmp_path / 'store'}", f"configs=[{','.join(configs)}]",
            f"overrides=[{','.join(fast)}]"]
    rows = {}
    for launcher, extra in (("none", []), ("slurm", SLURM[1:])):
        out, log = tmp_path / f"sweep_{launcher}", tmp_path / f"{launcher}.err"
        assert run("sweep", [*base, f"out={out}", f"launcher={launcher}", *extra], log) == 0, log.read_text()[-2000:]
        rows[launcher] = sorted(({k: v for k, v in r.items() if k != "run"} for r in json.loads((out / "results.json").read_text())),
                                key=lambda r: r["config"])
    assert len(job_ids(tmp_path / "slurm.err")) == 2
    assert len(rows["slurm"]) == 2 and all("error" not in r for r in rows["slurm"]), rows
    assert rows["slurm"] == rows["none"]


# -- lta finetune-backbone: 2 DDP tasks (gloo) -----------------------------------------------------------
def _wait_for_job(job_id: str, timeout: float = 180) -> str:
    """Poll squeue until SLURM job `job_id` ended; its final state."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%T", f"--jobs={job_id}"],
                             capture_output=True, text=True).stdout.split()
        if out and all(s not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING") for s in out):
            return out[0]
        time.sleep(1)
    raise AssertionError(f"SLURM job {job_id} still running after {timeout} s")


def test_slurm_finetune_two_ddp_tasks_then_resume(tmp_path):
    """`lta finetune-backbone launcher=slurm tasks_per_node=2` on the CPU: one SLURM job of 2 tasks trains with
    gloo DDP (batch split over 2 processes) for 2 steps; `resume=true` submits again and continues from step 2
    to the end of the schedule."""
    import torch

    from extract.render import write_sample
    from features.synthetic import plan_sample

    data = tmp_path / "data"
    write_sample(plan_sample(clips=6, seed=1, segments_per_clip=(9, 10), width=96, height=64, verbs=4, nouns=6,
                             train_fraction=0.5, val_fraction=0.5), data)
    run_dir = tmp_path / "run"
    args = [f"data={data}", "backbone=slowfast_r50_8x8", "init=random", "resized=false", "width_per_group=8",
            "crop_size=32", "num_frames=8", "batch_size=8", "epochs=2", "num_workers=0", "val_split=", "log_every=1",
            "warmup_steps=2", "lr=0.05", "device=cpu", f"out={run_dir}", *SLURM[:3], "slurm_gpus=0", "tasks_per_node=2"]
    steps = []
    for extra in (["max_steps=2"], ["resume=true"]):
        log = tmp_path / f"launch{len(steps)}.err"
        assert run("finetune-backbone", [*args, *extra], log) == 0, log.read_text()[-2000:]
        job_id = re.search(r"submitted job (\d+)", log.read_text()).group(1)
        assert _wait_for_job(job_id) == "COMPLETED", scontrol_job(job_id)
        job_log = (run_dir / "slurm" / f"{job_id}_0_log.err").read_text()
        assert "batch 8 = 2 proc" in job_log, job_log[-2000:]
        steps.append(torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["state"]["step"])
    assert "resumed" in job_log and " at step 2" in job_log, job_log[-2000:]
    assert steps == [2, 6], steps


# -- stopping the launcher ----------------------------------------------------------------------------------
def test_slurm_sigterm_to_the_launcher_leaves_the_jobs_running(sample, tmp_path):  # noqa: F811
    """SIGTERM to the launching command while its array is queued / running: it stops waiting at once (exit 75,
    one line naming the jobs) and the SLURM jobs keep going (scancel stops them)."""
    root, log = tmp_path / "store", tmp_path / "slurm.err"
    proc = start("extract", extract_args(sample, root), log)
    assert wait_until(proc, lambda: len(job_ids(log)) == 2, timeout=120), log.read_text()[-2000:]
    ids = job_ids(log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == EXIT_INTERRUPTED, log.read_text()[-2000:]
    lines = [x for x in stderr_lines(log) if x.startswith("lta extract: ")]
    assert len(lines) == 1 and "they keep running" in lines[0] and all(i in lines[0] for i in ids), lines
    states = subprocess.run(["squeue", "--noheader", "--array", "--format=%T", f"--jobs={ids[0].split('_')[0]}"],
                            capture_output=True, text=True).stdout.split()
    subprocess.run(["scancel", ids[0].split("_")[0]], capture_output=True)
    assert len(states) == 2 and set(states) <= {"PENDING", "RUNNING", "CONFIGURING"}, states
