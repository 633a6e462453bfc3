"""Scale-out through submitit: the same shard jobs on SLURM (a job array) or on this machine.

`launcher=slurm` submits `num_shards` jobs as one SLURM array (`AutoExecutor.map_array`) with the
partition / GPUs / time / memory given as config keys; `launcher=local` runs the very same jobs with
submitit's `LocalExecutor` (subprocesses, also what the tests use). Both wait for the jobs, then the
caller verifies the result (e.g. `verify_stores` for extraction: every row filled or a recorded failure).

Every job runs inside `ShardJob`, a `submitit.helpers.Checkpointable`:
- **Preemption / time limit.** submitit's signal (SIGUSR2, `--signal=USR2@...`) and SIGTERM / SIGINT only set
  the stop flag (`features.interrupt`); the job finishes or abandons its current unit (a clip) and stops.
  After a USR2 the job then hands over to submitit's own handler, which calls `checkpoint()` (the same
  job again: its progress is on disk, a store's done mask or a clip already resized) and requeues it, so
  the requeued job resumes where this one stopped. After a SIGTERM in a SLURM job (preemption; SLURM
  itself requeues a job whose partition says so) it exits 75 without a result, so the launcher keeps
  waiting for the requeued run; in a local job it returns an "interrupted" outcome.
- **One-line errors.** An exception inside the job comes back as the exception itself (pickled), and
  `run_array` re-raises it with ` (job <id>, log <path>)` appended: a locked shard, a full disk or a bad
  value reads exactly as without a launcher, plus where the job's log is.
- **What SLURM says.** States come from `squeue` (`extract.slurm_queue.SqueueWatcher`, no accounting needed);
  the launcher shows pending / running / done counts while it waits, refuses a request no node of the partition
  can hold before submitting, and cancels and reports jobs whose pending reason never clears (one line naming
  the `slurm_*` key to change, exit 2). Jobs cancelled from outside end the wait with their ids (exit 1).
- **Stopping the launcher.** SIGTERM / SIGINT of the launching command forwards SIGTERM to local jobs and
  waits for them to stop; SLURM jobs are left running (their ids are logged). Either way it raises
  `Interrupted` (exit 75).
"""
from __future__ import annotations

import logging
import pickle
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit

from extract import slurm_queue
from features import interrupt
from features.errors import RunFailure, UsageError
from features.exitcodes import EXIT_INTERRUPTED

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")
POLL_S = (2.0, 30.0)  # seconds between two squeue calls: 2 at first, growing by 1 every 30 s of waiting up to 30
BLOCKED_AFTER_S = 10.0  # a pending reason that never clears, seen this long with nothing running: cancel and report


@dataclass(frozen=True)
class SlurmParams:
    """Resources of one shard job (submitit `update_parameters`)."""

    partition: str = ""
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    timeout_min: int = 240
    array_parallelism: int = 64
    account: str = ""
    constraint: str = ""


def make_executor(launcher: str, folder: Path | str, params: SlurmParams, *, job_name: str = "lta") -> Any:
    """A submitit executor writing its logs under `folder`: LocalExecutor or a SLURM AutoExecutor."""
    import submitit

    if launcher == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=params.timeout_min)
        return executor
    if launcher == "slurm":
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        extra: dict[str, Any] = {}
        if params.partition:
            extra["slurm_partition"] = params.partition
        if params.account:
            extra["slurm_account"] = params.account
        if params.constraint:
            extra["slurm_constraint"] = params.constraint
        if params.mem_gb:
            extra["mem_gb"] = params.mem_gb
        executor.update_parameters(
            name=job_name, timeout_min=params.timeout_min, gpus_per_node=params.gpus_per_node,
            cpus_per_task=params.cpus_per_task, tasks_per_node=1, nodes=1,
            slurm_array_parallelism=params.array_parallelism, **extra,
        )
        return executor
    raise ValueError(f"unknown launcher {launcher!r}; available: {list(LAUNCHERS)}")


@dataclass
class JobFailure:
    """What a job returns instead of raising: the exception itself (re-raised by `run_array`) and its traceback."""

    error: BaseException
    trace: str


@dataclass
class JobInterrupted:
    """What a local job returns after a stop signal: the message of its `Interrupted`."""

    message: str


def _portable(err: BaseException) -> BaseException:
    """`err` if it survives pickling (most exceptions do), else a RuntimeError with the same text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def run_job_body(what: str, body: Callable[[], Any], *, portable_errors: bool = True) -> Any:
    """Run `body()` inside a submitit job with graceful stop, submitit's requeue and (optionally) portable errors.

    SIGTERM / SIGINT / submitit's USR2 set the stop flag; `body` finishes or abandons its unit and raises
    `Interrupted` (or returns a result that says what is unfinished). Then: after USR2, submitit's own
    handler checkpoints the job (its `checkpoint()`) and requeues it; in a SLURM job the process exits 75
    without a result (SLURM requeues a preempted job itself where the partition says so, and the launcher
    keeps waiting); in a local job the outcome is returned. `portable_errors`: an exception comes back
    as a `JobFailure` holding it (re-raised by `run_array`) instead of submitit's traceback text.
    """
    env = submitit.JobEnvironment()
    usr = env._usr_sig()
    submitit_handler = signal.getsignal(usr)  # checkpoint_and_try_requeue, installed by submitit
    out = None
    with interrupt.stop_on_signals(what, (signal.SIGTERM, signal.SIGINT, usr)) as stop:
        try:
            out = body()
        except interrupt.Interrupted as err:
            stopped = err
        except Exception as err:  # comes back to the launcher as itself, printed as one line there
            if not portable_errors:
                raise
            log.error("%s failed: %s", what, traceback.format_exc())
            return JobFailure(_portable(err), traceback.format_exc())
        else:  # a body that reports unfinished units in its result (resize) rather than raising
            if not stop.requested:
                return out
            stopped = stop.interrupted()
    if stop.signum == usr and callable(submitit_handler):
        log.warning("%s; submitit checkpoints and requeues the job, which resumes from what is written", stopped)
        submitit_handler(usr, None)  # calls the job's checkpoint(), requeues, exits
    log.warning("%s", stopped)
    if type(env).__name__ != "LocalJobEnvironment":  # SLURM: no result, the launcher waits for the requeue
        sys.exit(EXIT_INTERRUPTED)
    return out if out is not None else JobInterrupted(str(stopped))


class ShardJob(submitit.helpers.Checkpointable):
    """The body of every submitit job: `fn(arg)` with graceful stop, submitit requeue and portable errors."""

    def __init__(self, fn: Callable[[Any], Any], what: str = "job"):
        self.fn = fn
        self.what = what

    def __call__(self, arg: Any) -> Any:
        return run_job_body(self.what, lambda: self.fn(arg))

    def checkpoint(self, arg: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job: everything it finished is on disk and is skipped by the resumed run."""
        return submitit.helpers.DelayedSubmission(ShardJob(self.fn, self.what), arg)


def _with_job_log(err: BaseException, suffix: str) -> BaseException:
    """Append `suffix` (job id and log path) to the one line `err` prints as."""
    if isinstance(err, OSError) and err.strerror:
        err.strerror = f"{err.strerror}{suffix}"
    elif len(err.args) == 1 and isinstance(err.args[0], str):
        err.args = (err.args[0] + suffix,)
    else:
        err.args = (*err.args, suffix.strip())
    err.job_log = suffix  # type: ignore[attr-defined]
    return err


def _wait_local(jobs: list, stop: interrupt.StopFlag | None) -> None:
    """Wait for every local job; on a stop signal, forward SIGTERM to them (they checkpoint / stop)."""
    forwarded = False
    while not all(j.done() for j in jobs):
        if stop is not None and stop.requested and not forwarded:
            forwarded = True
            for j in jobs:
                proc = getattr(j, "_process", None)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # the local controller forwards it to the job
            log.warning("forwarded %s to %d local job(s); waiting for them to stop", stop.signal_name, len(jobs))
        time.sleep(0.2)


class _Progress:
    """pending / running / done counts of the SLURM jobs: a tqdm bar on a terminal, else a log line per change."""

    def __init__(self, total: int, job_name: str):
        self.total, self.job_name, self.last = total, job_name, None
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"{job_name} SLURM jobs", unit="job", leave=False)

    def show(self, pending: int, running: int, done: int) -> None:
        counts = (pending, running, done)
        if counts == self.last:
            return
        self.last = counts
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"{pending} pending, {running} running")
        else:
            log.info("%s: %d pending, %d running, %d done of %d SLURM job(s)", self.job_name, pending, running, done,
                     self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _wait_slurm(jobs: list, request: slurm_queue.Request, stop: interrupt.StopFlag | None, job_name: str) -> None:
    """Poll squeue until every job ended; show the counts; a pending reason that never clears ends the wait.

    A stop signal of this process leaves the jobs running (Interrupted); a reason in `slurm_queue.NEVER_CLEARS`
    seen for `BLOCKED_AFTER_S` cancels the jobs and raises UsageError naming the key to change.
    """
    progress = _Progress(len(jobs), job_name)
    blocked_since: float | None = None
    t0 = time.monotonic()
    try:
        while True:
            if stop is not None and stop.requested:
                raise interrupt.Interrupted(
                    f"stopped waiting for SLURM job(s) {[j.job_id for j in jobs]} on {stop.signal_name}; they keep "
                    "running (scancel them to stop); re-running the command later skips what they finished",
                    signal_name=stop.signal_name)
            slurm_queue.WATCHER.update()
            info = {j.job_id: slurm_queue.WATCHER.get_info(j.job_id, mode="cache") for j in jobs}
            done = [j for j in jobs if j.done()]
            running = sum(info[j.job_id].get("State") in slurm_queue.RUNNING_STATES for j in jobs if j not in done)
            progress.show(len(jobs) - len(done) - running, running, len(done))
            if len(done) == len(jobs):
                return
            blocked = {j.job_id: slurm_queue.blocked_reason(info[j.job_id].get("Reason", ""))
                       for j in jobs if j not in done and info[j.job_id].get("State") == "PENDING"}
            blocked = {k: v for k, v in blocked.items() if v}
            if blocked and running == 0:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since >= BLOCKED_AFTER_S:
                    slurm_queue.cancel(j.job_id for j in jobs if j not in done)
                    raise UsageError(slurm_queue.blocked_message(sorted(blocked), next(iter(blocked.values())), request))
            else:
                blocked_since = None
            wake = time.monotonic() + min(POLL_S[1], POLL_S[0] + (time.monotonic() - t0) / 30)  # a long run polls gently
            while time.monotonic() < wake and not (stop is not None and stop.requested):
                time.sleep(0.2)
    finally:
        progress.close()


def run_array(fn: Callable[..., Any], args: Sequence[Any], *, launcher: str, folder: Path | str,
              params: SlurmParams = SlurmParams(), job_name: str = "lta") -> list[Any]:
    """Run `fn(arg)` for every arg as one job each (a SLURM array or local subprocesses); return the results.

    Raises:
        the job's own exception (with its job id and log path appended): the first job that raised.
        Interrupted: a stop signal reached a job or this process (what finished is on disk; re-run to resume).
        UsageError: launcher=slurm and no node can run the jobs (a request beyond every node, an unknown partition,
            sbatch refusing them, or a pending reason that never clears: the jobs are cancelled); names the key.
        RunFailure: jobs that ended without a result (cancelled, killed), each with its state and log path.
    """
    executor = make_executor(launcher, folder, params, job_name=job_name)
    jobs, request = _submit(executor, ShardJob(fn, job_name), args, launcher=launcher, params=params)
    log.info("submitted %d %s job(s): %s (logs in %s)", len(jobs), launcher, [j.job_id for j in jobs], folder)
    if launcher == "local":
        _wait_local(jobs, interrupt.current())
    else:
        _wait_slurm(jobs, request, interrupt.current(), job_name)
    outcomes = _collect(jobs, launcher)
    _raise_for(outcomes, len(jobs), job_name)
    return outcomes.results


def _submit(executor: Any, body: ShardJob, args: Sequence[Any], *, launcher: str,
            params: SlurmParams) -> tuple[list, slurm_queue.Request | None]:
    """The submitted jobs (and, for SLURM, the request checked against the cluster's nodes before submitting)."""
    if launcher == "local":  # LocalExecutor has no arrays: submit one by one (all start at once)
        return [executor.submit(body, a) for a in args], None
    request = slurm_queue.Request(params.partition, params.cpus_per_task, params.mem_gb, params.gpus_per_node,
                                  params.timeout_min)
    refused = slurm_queue.check_fits(request)
    if refused:
        raise UsageError(refused)
    try:
        jobs = executor.map_array(body, list(args))
    except submitit.core.utils.FailedJobError as err:  # sbatch said no (unknown partition, bad gres, ...)
        raise UsageError(slurm_queue.sbatch_refusal(str(err), request)) from err
    for job in jobs:  # states from squeue (see extract.slurm_queue): no sacct, no warning per poll
        job.watcher = slurm_queue.WATCHER
    return jobs, request


@dataclass
class _Outcomes:
    """What the jobs of an array ended with: one result per job (None where it gave none) and the reasons."""

    results: list[Any]
    failures: list[BaseException]  # the jobs' own exceptions, with job id and log path
    stopped: list[str]  # jobs that stopped on a signal
    lost: list[str]  # jobs that ended without a result (killed, or a state other than cancelled)
    cancelled: list[str]  # SLURM jobs cancelled (scancel)


def _collect(jobs: list, launcher: str) -> _Outcomes:
    out = _Outcomes([], [], [], [], [])
    for job in jobs:
        where = f" (job {job.job_id}, log {job.paths.stderr})"
        state = slurm_queue.WATCHER.get_state(job.job_id, mode="cache") if launcher == "slurm" else ""
        if state and state not in slurm_queue.ENDED_OK and not job.paths.result_pickle.exists():
            (out.cancelled if state.startswith("CANCELLED") else out.lost).append(
                f"job {job.job_id} {state} (log {job.paths.stderr})")
            out.results.append(None)
            continue
        try:
            result = job.result()
        except Exception as err:  # ended without a result (killed, cancelled) or raised outside ShardJob
            text = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            out.lost.append(f"job {job.job_id}: {type(err).__name__}: {text[-1] if text else ''}{where}")
            out.results.append(None)
            continue
        if isinstance(result, JobFailure):
            out.failures.append(_with_job_log(result.error, where))
            result = None
        elif isinstance(result, JobInterrupted):
            out.stopped.append(f"job {job.job_id}: {result.message}")
            result = None
        out.results.append(result)
    return out


def _raise_for(o: _Outcomes, num_jobs: int, job_name: str) -> None:
    """Raise for the first job failure, else for a stop, cancelled jobs or lost jobs, in that order."""
    for err in o.failures[1:]:
        log.error("also failed: %s: %s", type(err).__name__, err)
    if o.failures:
        raise o.failures[0]
    stop = interrupt.current()
    if o.stopped or (o.lost and stop is not None and stop.requested):
        raise interrupt.Interrupted(f"{len(o.stopped) + len(o.lost)} of {num_jobs} {job_name} job(s) stopped on "
                                    f"{stop.signal_name if stop and stop.requested else 'a signal'}; what they finished "
                                    "is on disk, re-run the same command to resume",
                                    signal_name=stop.signal_name if stop else "")
    if o.cancelled:
        raise RunFailure(f"{len(o.cancelled)} of {num_jobs} SLURM job(s) were cancelled (scancel): "
                         + "; ".join(o.cancelled) + (("; also ended without a result: " + "; ".join(o.lost)) if o.lost else "")
                         + "; what they finished is on disk, re-run the same command to resume")
    if o.lost:
        raise RunFailure(f"{len(o.lost)} of {num_jobs} job(s) ended without a result: " + "; ".join(o.lost)
                         + "; what they finished is on disk, re-run the same command to resume")
