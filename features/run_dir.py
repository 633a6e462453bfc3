"""The run-dir policy of the training commands, torch-free: a dir that holds a run is continued or replaced, never
silently written over.

`lta train-heads` and `lta finetune-backbone` (and `lta sweep`, which checks its jobs before launching them) follow
one rule: when `out` already holds a run, the command needs resume=true (continue it) or overwrite=true (remove the
run's outputs first, then train afresh); both at once contradict each other. Each command only says what marks a
run in its dir and what it writes there, as a `RunLayout`.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from features.errors import UsageError

log = logging.getLogger(__name__)


class RunDirError(UsageError):
    """The run dir does not fit the request: an existing run without resume/overwrite, or a changed config."""


@dataclass(frozen=True)
class RunLayout:
    """What marks a run in a run dir and what a run writes there.

    marks: paths relative to the run dir; any of them present means the dir holds (part of) a run.
    outputs: glob patterns relative to the run dir, removed by overwrite=true (what the run wrote; its config,
        failures.jsonl and anything else stay).
    describe: the run in a few words for the messages ("finished run (3 epochs done, ...)"); default "run".
    resume_hint: what resume=true would do, appended to "pass resume=true"; default " to continue it".
    """

    marks: tuple[str, ...]
    outputs: tuple[str, ...]
    describe: Callable[[Path], str] = lambda _run_dir: "run"
    resume_hint: Callable[[Path], str] = lambda _run_dir: " to continue it"

    def holds_run(self, run_dir: str | Path) -> bool:
        return any((Path(run_dir) / mark).is_file() for mark in self.marks)


def prepare_run_dir(run_dir: str | Path, layout: RunLayout, *, resume: bool, overwrite: bool,
                    remove: bool = True) -> None:
    """Refuse to write over a run unless `resume` or `overwrite`; with `overwrite`, remove its outputs first.

    `remove=False` checks only (under DDP every rank checks, one removes).

    Raises:
        RunDirError: both `resume` and `overwrite` are set, or `run_dir` holds a run and neither is.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("resume=true and overwrite=true contradict each other: pass one of them")
    if resume or not layout.holds_run(run_dir):
        return
    what = layout.describe(run_dir)
    if not overwrite:
        raise RunDirError(f"out={run_dir} already holds a {what}; pass resume=true{layout.resume_hint(run_dir)}, "
                          f"overwrite=true to replace it, or another out=DIR")
    if not remove:
        return
    log.warning("overwrite=true: removing the %s in %s", what, run_dir)
    for pattern in layout.outputs:
        for path in sorted(run_dir.glob(pattern)):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
