"""`opt(default, help)`: a config field with a default and a one-line help string, for every schema.

It lives in the bottom layer so that schemas outside pipelines/ (extract.finetune.options.TrainOptions, which
`lta finetune-backbone` inherits) declare their keys the same way the commands do; `pipelines.config.opt` is this.
"""
from __future__ import annotations

import dataclasses
from typing import Any


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field with a default and a one-line help string shown by `--help`."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})
