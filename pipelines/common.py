"""Shared wiring for command entry points: help handling, config errors and the CLI error boundary.

Raise `UsageError` (exit 2) or `RunFailure` (exit 1) from `features.errors` for an expected failure, and
let `features.interrupt.Interrupted` (exit 75) propagate; `error_boundary` (used by `lta`, the console entry
point) turns it, and any other exception, into one line on stderr. A command prints no error line of its
own (tests/test_cli_boundary.py checks). `LTA_DEBUG=1` or `--debug` shows the traceback instead.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence, TypeVar

from features.errors import LtaError, RunFailure, UsageError  # noqa: F401 - re-exported for the commands
from pipelines.config import help_text, parse_config

DEBUG_ENV = "LTA_DEBUG"


def debug_enabled() -> bool:
    """True when tracebacks are wanted (`LTA_DEBUG=1`, or `--debug` on the command line)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), plus a count of the rest."""
    text = str(err.args[0]) if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    return lines[0] + (f" [+{len(lines) - 1} more lines]" if len(lines) > 1 else "")


def error_boundary(name: str, fn: Callable[[], int]) -> int:
    """Run `fn()`; an exception becomes one line `lta <name>: ...` on stderr and an exit status.

    `LtaError` (UsageError 2, RunFailure 1, or its own `exit_code`) prints its message; any other
    exception prints `<Type>: <first line>` and exits 1 with the hint to set LTA_DEBUG=1. Ctrl-C that
    nothing handled exits 130. With `LTA_DEBUG=1` the exception propagates (full traceback).
    """
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"lta {name}: interrupted", file=sys.stderr)
        return 130
    except LtaError as err:
        if debug_enabled():
            raise
        print(f"lta {name}: {one_line(err)}", file=sys.stderr)
        return int(err.exit_code)
    except Exception as err:  # noqa: BLE001 - the boundary: one line for everything, the traceback on request
        if debug_enabled():
            raise
        print(f"lta {name}: {type(err).__name__}: {one_line(err)} (LTA_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1

T = TypeVar("T")


def run_command(
    name: str, schema: type[T], argv: Sequence[str], body: Callable[[T], int], summary: str = ""
) -> int:
    """Parse `argv` into `schema` (printing `--help` when asked) and run `body(cfg)`.

    A config error is a `ConfigError` (a `UsageError`, exit 2) and propagates like every error of `body`:
    the boundary (`error_boundary`, the `lta` entry point) prints it as one line; a test calling
    `main(argv)` directly sees the exception.
    """
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(schema, name, summary))
        return 0
    cfg = parse_config(schema, argv, name)
    return int(body(cfg) or 0)
