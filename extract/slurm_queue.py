"""What SLURM says about our jobs: states from `squeue`, requests no node can meet, pending reasons that never clear.

- **Job states from squeue, not sacct.** submitit's `SlurmInfoWatcher` asks `sacct`, which needs accounting
  storage (slurmdbd); a cluster without it (a laptop's `make slurm-up`, many small clusters) answers "accounting
  storage is disabled", submitit logs a warning on every poll and never learns that a cancelled job ended.
  `SqueueWatcher` asks `squeue --states=all --array` instead, which every controller answers and which also
  gives the pending reason. A job squeue no longer lists (purged after the controller's `MinJobAge`, 300 s by
  default, long after the launcher, polling every few seconds, saw it end) reads as `GONE`, i.e. ended.
- **Requests no node can meet.** `check_fits` compares the request (CPUs, memory, GPUs per job) with the nodes of
  the partition (`sinfo`) before anything is submitted; `blocked_reason` recognises a pending reason that does
  not clear by waiting (`PartitionConfig`, `BadConstraints`, ...). Both end in one line naming the `slurm_*` key.
"""
from __future__ import annotations

import logging
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Iterable

from submitit.slurm.slurm import SlurmInfoWatcher

log = logging.getLogger(__name__)

GONE = "GONE"  # not listed by squeue any more: ended (and purged by the controller)
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
ENDED_OK = {"COMPLETED"}

# Pending reasons that waiting does not clear: the request exceeds what the partition / its nodes / the account
# allow, or an admin must act. `ReqNodeNotAvail` clears only when a node comes back from down / drain.
NEVER_CLEARS = {
    "PartitionConfig": "the request exceeds what the partition allows (its nodes' CPUs / memory / GPUs, or a limit)",
    "PartitionNodeLimit": "the request needs more nodes than the partition allows",
    "PartitionTimeLimit": "the time limit exceeds the partition's MaxTime",
    "BadConstraints": "the request cannot be met by any node",
    "ReqNodeNotAvail": "the nodes the job needs are down, drained or reserved",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "InvalidAccount": "the account is invalid",
    "InvalidQOS": "the QOS is invalid",
    "DependencyNeverSatisfied": "a job it depends on failed",
    "JobHeldAdmin": "an administrator holds the job",
}
# the keys a user changes, per reason; the resource keys are narrowed by `check_fits` where it can tell
RESOURCE_KEYS = ["slurm_cpus", "slurm_mem_gb", "slurm_gpus"]
REASON_KEYS = {"PartitionTimeLimit": ["slurm_time_min"], "ReqNodeNotAvail": ["slurm_partition"],
               "PartitionDown": ["slurm_partition"], "PartitionInactive": ["slurm_partition"],
               "InvalidAccount": ["slurm_account"], "InvalidQOS": ["slurm_partition"]}


class SqueueWatcher(SlurmInfoWatcher):
    """submitit's job-state cache filled from `squeue` (see the module docstring); `Reason` is kept as well."""

    def _make_command(self) -> list[str] | None:
        to_check = {x.split("_")[0] for x in self._registered - self._finished}
        if not to_check:
            return None
        return ["squeue", "--states=all", "--noheader", "--array", "--format=%i|%T|%r", f"--jobs={','.join(sorted(to_check))}"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        out = {}
        for line in text.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                out[parts[0]] = {"State": parts[1].split()[0], "Reason": parts[2]}
        return out

    def update(self) -> None:
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("squeue failed (%s); job states are not updated this time", err)
            return
        purged = proc.returncode != 0 and "Invalid job id" in proc.stderr  # every id asked for is gone
        if proc.returncode != 0 and not purged:
            log.warning("squeue failed: %s; job states are not updated this time", proc.stderr.strip() or proc.returncode)
            return
        info = self.read_info(proc.stdout)
        for job_id in self._registered - self._finished:
            self._info_dict[job_id] = info.get(job_id, {"State": GONE, "Reason": ""})
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


WATCHER = SqueueWatcher(delay_s=2)


@dataclass(frozen=True)
class Request:
    """What one job asks for, with the config key of each quantity."""

    partition: str
    cpus: int
    mem_gb: int
    gpus: int
    time_min: int = 0

    def __str__(self) -> str:
        return (f"now partition={self.partition or 'default'}, cpus={self.cpus}, mem_gb={self.mem_gb}, gpus={self.gpus}, "
                f"time_min={self.time_min}")


def _gpus(gres: str) -> int:
    """GPUs in a node's GRES string (`gpu:4`, `gpu:a100:8(S:0-1)`, `(null)`)."""
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def partition_nodes(partition: str) -> tuple[str, list[dict[str, Any]], list[str]]:
    """(the partition's name (the default one for ''), its nodes' CPUs / memory MB / GPUs, every partition's name)."""
    out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%P|%c|%m|%G"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    nodes: dict[str, list[dict[str, Any]]] = {}
    default = ""
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        name = parts[0].rstrip("*")
        if parts[0].endswith("*"):
            default = name
        mem = int(re.sub(r"\D", "", parts[2]) or 0)
        nodes.setdefault(name, []).append({"cpus": int(re.sub(r"\D", "", parts[1]) or 0), "mem_mb": mem, "gpus": _gpus(parts[3])})
    name = partition or default
    return name, nodes.get(name, []), sorted(nodes)


def check_fits(req: Request) -> str | None:
    """None when some node of the partition can hold one job of `req`, else the one line saying which key to change."""
    try:
        name, nodes, names = partition_nodes(req.partition)
    except (OSError, subprocess.SubprocessError) as err:  # no sinfo here: let sbatch judge
        log.debug("sinfo failed (%s): not checking the request against the nodes", err)
        return None
    if not nodes:
        if req.partition:
            return f"slurm_partition={req.partition}: no such partition (partitions: {', '.join(names) or 'none'})"
        return "no default SLURM partition: set slurm_partition (partitions: " + (", ".join(names) or "none") + ")"
    most = {k: max(n[k] for n in nodes) for k in ("cpus", "mem_mb", "gpus")}
    over = []
    if req.cpus > most["cpus"]:
        over.append(f"slurm_cpus={req.cpus} (the largest node of partition {name} has {most['cpus']} CPUs)")
    if req.mem_gb * 1024 > most["mem_mb"]:
        over.append(f"slurm_mem_gb={req.mem_gb} (the largest node of partition {name} has {most['mem_mb'] // 1024} GB, "
                    f"{most['mem_mb']} MB)")
    if req.gpus > most["gpus"]:
        over.append(f"slurm_gpus={req.gpus} (the nodes of partition {name} have at most {most['gpus']} GPUs)")
    if not over:
        return None
    return "no SLURM node can run these jobs: lower " + "; ".join(over)


def _sinfo_field(partition: str, field: str) -> str:
    """One `sinfo --format` field of `partition` (the default one for ''), '' when sinfo cannot tell."""
    cmd = ["sinfo", "--noheader", f"--format={field}"] + ([f"--partition={partition}"] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out[0] if out else ""


def blocked_reason(reason: str) -> str | None:
    """The first word of a pending reason when it is one that waiting does not clear, else None."""
    word = reason.split(",")[0].strip()
    return word if word in NEVER_CLEARS else None


def blocked_message(job_ids: Iterable[str], reason: str, req: Request) -> str:
    """One line: which jobs cannot start, SLURM's reason, what it means and the keys to change."""
    fits = check_fits(req) if reason in ("PartitionConfig", "BadConstraints") else None
    keys = REASON_KEYS.get(reason, RESOURCE_KEYS + ["slurm_partition"])
    hint = fits if fits else "change " + " / ".join(keys) + f" ({req})"
    if reason == "PartitionTimeLimit":
        limit = _sinfo_field(req.partition, "%l")
        if limit:
            hint += f"; the MaxTime of partition {req.partition or 'default'} is {limit} ([days-][hours:]minutes:seconds)"
    return (f"SLURM job(s) {', '.join(job_ids)} cannot start: pending reason {reason} ({NEVER_CLEARS[reason]}); "
            f"{hint}; the jobs were cancelled")


def sbatch_refusal(text: str, req: Request) -> str:
    """One line for an sbatch that refused the submission (its last `error:` line), naming the key to change."""
    errors = [ln.split("error:", 1)[1].strip() for ln in text.splitlines() if "error:" in ln]
    said = errors[-1] if errors else (text.strip().splitlines() or ["sbatch failed"])[-1]
    low = " ".join(errors).lower()
    if "partition" in low:
        key = "slurm_partition"
    elif "gres" in low or "gpu" in low:
        key = "slurm_gpus"
    elif "memory" in low:
        key = "slurm_mem_gb"
    elif "time limit" in low:
        key = "slurm_time_min"
    elif "account" in low:
        key = "slurm_account"
    else:
        key = " / ".join(RESOURCE_KEYS + ["slurm_partition"])
    return f"sbatch refused the jobs: {said}; change {key} ({req})"


def cancel(job_ids: Iterable[str]) -> None:
    """scancel the given jobs (array elements or whole arrays); a failure is logged, not raised."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    proc = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        log.warning("scancel %s failed: %s", " ".join(ids), proc.stderr.strip())
