"""Scale-out through submitit: the same shard jobs on SLURM (a job array) or on this machine.

`launcher=slurm` submits `num_shards` jobs as one SLURM array (`AutoExecutor.map_array`) with the
partition / GPUs / time / memory given as config keys; `launcher=local` runs the very same jobs with
submitit's `LocalExecutor` (subprocesses, also what the tests use). Both wait for the jobs, then the
caller verifies the result (e.g. `verify_stores` for extraction: every row filled or a recorded failure).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmParams:
    """Resources of one shard job (submitit `update_parameters`)."""

    partition: str = ""
    gpus_per_node: int = 1
    cpus_per_task: int = 10
    mem_gb: int = 32
    timeout_min: int = 240
    array_parallelism: int = 64
    account: str = ""


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
        executor.update_parameters(
            name=job_name, timeout_min=params.timeout_min, gpus_per_node=params.gpus_per_node,
            cpus_per_task=params.cpus_per_task, mem_gb=params.mem_gb, tasks_per_node=1, nodes=1,
            slurm_array_parallelism=params.array_parallelism, **extra,
        )
        return executor
    raise ValueError(f"unknown launcher {launcher!r}; available: {list(LAUNCHERS)}")


def run_array(fn: Callable[..., Any], args: Sequence[Any], *, launcher: str, folder: Path | str,
              params: SlurmParams = SlurmParams(), job_name: str = "lta") -> list[Any]:
    """Run `fn(arg)` for every arg as one job each (a SLURM array or local subprocesses); return the results.

    Raises:
        RuntimeError: naming every job that failed and where its log is.
    """
    executor = make_executor(launcher, folder, params, job_name=job_name)
    if launcher == "local":  # LocalExecutor has no arrays: submit one by one (all start at once)
        jobs = [executor.submit(fn, a) for a in args]
    else:
        jobs = executor.map_array(fn, list(args))
    log.info("submitted %d %s job(s): %s (logs in %s)", len(jobs), launcher, [j.job_id for j in jobs], folder)
    results, errors = [], []
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as err:  # submitit re-raises the job's exception; collect them all
            errors.append(f"job {job.job_id}: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
                          f" (stderr: {job.paths.stderr})")
            results.append(None)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(jobs)} job(s) failed:\n  " + "\n  ".join(errors))
    return results
