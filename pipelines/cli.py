"""`lta <command> key=value ...`: the single entry point of the project.

Commands are registered by name -> "module:function" and imported only when run, so
`lta --help` is instant. Every command is a `main(argv) -> int` that tests call directly; its errors are
exceptions, which `main` here turns into the one line and the exit status (`pipelines.common.error_boundary`).
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable, Sequence

# name -> (module path, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("pipelines.cmd_sample", "write a synthetic, learnable Ego4D-format LTA dataset"),
    "score": ("pipelines.cmd_score", "score a challenge outputs.json against a split's annotations"),
    "resize": ("pipelines.cmd_resize", "resize clips_hq -> clips (short side 320) with ffmpeg"),
    "extract": ("pipelines.cmd_extract", "decode each window once and cache SlowFast / MViT / CLIP embeddings"),
    "store": ("pipelines.cmd_store", "feature store tools: ls, verify, export, merge, import-ego4d"),
    "train-heads": ("pipelines.cmd_train_heads", "train a forecasting head on cached features"),
    "evaluate": ("pipelines.cmd_evaluate", "ED@20 of a run and of the no-training baselines"),
    "predict": ("pipelines.cmd_predict", "write the challenge outputs.json of a run"),
    "sweep": ("pipelines.cmd_sweep", "train several head configs over the same cache"),
    "report": ("pipelines.cmd_report", "HTML report of a run's predictions"),
    "import-checkpoint": ("pipelines.cmd_import_checkpoint", "turn a released Ego4D LTA checkpoint into a run dir"),
    "finetune-backbone": ("pipelines.cmd_finetune", "fine-tune a video backbone on Ego4D recognition"),
    "demo": ("pipelines.cmd_demo", "the whole pipeline on a synthetic sample, on the CPU"),
    "import-annotations": ("pipelines.cmd_import_annotations", "convert EPIC-KITCHENS-100 annotations to the Ego4D LTA layout"),
}


def _usage() -> str:
    lines = ["usage: lta <command> [config=FILE.yaml] [key=value ...]   (lta --version: the code version)", "",
             "commands:"]
    lines += [f"  {name:<18} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`lta <command> --help` lists the command's keys and defaults."]
    return "\n".join(lines)


def resolve(command: str) -> Callable[[Sequence[str]], int]:
    """The `main(argv)` of a command; ValueError naming the available ones for an unknown name."""
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown command {command!r}{hint}; available: {sorted(COMMANDS)}")
    module = importlib.import_module(COMMANDS[command][0])
    return module.main


def setup_logging(level: int = logging.INFO) -> None:
    """Configure logging once, in the entry point."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # anywhere on the line: tracebacks instead of one-line errors
        argv = [a for a in argv if a != "--debug"]
        os.environ["LTA_DEBUG"] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        from features.version import code_version

        print(f"lta {code_version()}")
        return 0
    try:
        command_main = resolve(argv[0])
    except ValueError as err:
        print(f"lta: {err}", file=sys.stderr)
        return 2
    setup_logging()
    from pipelines.common import error_boundary

    return error_boundary(argv[0], lambda: command_main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
