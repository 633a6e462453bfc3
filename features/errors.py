"""The project's expected errors: what the `lta` CLI prints as one line instead of a traceback.

Raise one of these for a failure the user can act on; the message is the whole story (name the file,
key or value, and the valid choices). The CLI boundary (`pipelines.common.error_boundary`) prints
`lta <command>: <message>` and exits with `err.exit_code`; `LTA_DEBUG=1` (or `--debug`) shows the
traceback instead. Anything else that escapes a command is printed on one line too (exit 1), with the
hint to re-run with `LTA_DEBUG=1`.

    UsageError     exit 2  the command line asks for something that does not exist or is invalid
                           (unknown key or registry name, missing path, device=cuda without CUDA)
    RunFailure     exit 1  a run that started could not finish (bad data, full disk, failed jobs)

Both take an optional `exit_code=` for a specific status (e.g. 128 + signal for a terminated run).
`features/` is the lowest layer, so every package (features, extract, train_heads, pipelines) may raise them.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class LtaError(Exception):
    """Base class: an expected failure with a one-line message and an exit status."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(LtaError, ValueError):
    """A wrong command line or config (exit 2): the message names the key, the value and the valid choices."""

    exit_code = 2


class RunFailure(LtaError, RuntimeError):
    """A run that could not finish (exit 1): the message names the file / record / job and what to do."""

    exit_code = 1


def check_failed_fraction(failed: int, total: int, max_failed_frac: float, *, what: str, where: object,
                          outcome: str = "", error: type[LtaError] = RunFailure) -> None:
    """Raise `error` (a RunFailure by default, exit 1) when more than `max_failed_frac` of `total` items failed.

    Every command with a `max_failed_frac` key ends this way once each item was attempted; the one line names the
    count, the share, the threshold and where the reasons are, e.g. `12 of 32 rows failed (37.5%), more than
    max_failed_frac=0.5; reasons in out/failures.jsonl; the rows written are kept`.

    Args:
        what: the items and how they failed, read after the count: "rows failed", "clips failed to resize".
        where: the failures file (or where else the reasons are).
        outcome: what became of the run, appended when given: "the rows written are kept".
    """
    if failed > max_failed_frac * max(total, 1):
        tail = f"; {outcome}" if outcome else ""
        raise error(f"{failed} of {total} {what} ({failed / max(total, 1):.1%}), more than "
                    f"max_failed_frac={max_failed_frac}; reasons in {where}{tail}")


def closest(value: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `value` (difflib ratio >= 0.6), or None."""
    match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`" (did you mean 'x'?)"` for the closest choice, else "": the tail of a UsageError about a name."""
    best = closest(value, choices)
    return f" (did you mean {best!r}?)" if best else ""
