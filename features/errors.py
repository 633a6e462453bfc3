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


def closest(value: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `value` (difflib ratio >= 0.6), or None."""
    match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`" (did you mean 'x'?)"` for the closest choice, else "": the tail of a UsageError about a name."""
    best = closest(value, choices)
    return f" (did you mean {best!r}?)" if best else ""
