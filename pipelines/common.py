"""Shared wiring for command entry points: help handling and config errors."""
from __future__ import annotations

import sys
from typing import Callable, Sequence, TypeVar

from pipelines.config import ConfigError, help_text, parse_config

T = TypeVar("T")


def run_command(
    name: str, schema: type[T], argv: Sequence[str], body: Callable[[T], int], summary: str = ""
) -> int:
    """Parse `argv` into `schema` (printing `--help` when asked) and run `body(cfg)`.

    Config errors print one line and return 2; errors raised by `body` propagate so that
    tests see them and the console shows the traceback.
    """
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(schema, name, summary))
        return 0
    try:
        cfg = parse_config(schema, argv)
    except ConfigError as err:
        print(f"lta {name}: {err}", file=sys.stderr)
        return 2
    return int(body(cfg) or 0)
