"""The `slurm_*` keys have one definition (pipelines.slurm_options.SlurmOptions) shared by every launching command."""
from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS
from pipelines.config import help_text, parse_config
from pipelines.slurm_options import SLURM_KEYS, SlurmOptions, slurm_options

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
LAUNCHING = {"resize", "extract", "sweep", "finetune-backbone"}


def _schemas() -> dict[str, type]:
    """Every command's config dataclass (the dataclasses defined in its module), by command name."""
    out = {}
    for name, (module, _) in COMMANDS.items():
        mod = importlib.import_module(module)
        for obj in vars(mod).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == mod.__name__:
                out.setdefault(name, []).append(obj)
    return out


def test_no_command_declares_a_slurm_key_of_its_own():
    """A `slurm_*` field in a command module's own source (not inherited from SlurmOptions) fails this test."""
    own = []
    for path in sorted(PIPELINES.glob("cmd_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                            and item.target.id.startswith("slurm_"):
                        own.append(f"{path.name}:{item.lineno} {node.name}.{item.target.id}")
    assert own == [], f"declare slurm_* keys only in pipelines/slurm_options.py: {own}"


def test_every_launching_command_has_the_whole_key_set():
    schemas = _schemas()
    for command in sorted(schemas):
        for schema in schemas[command]:
            keys = {f.name for f in dataclasses.fields(schema) if f.name.startswith("slurm_")}
            if command in LAUNCHING and issubclass(schema, SlurmOptions):
                assert keys == set(SLURM_KEYS), (command, keys)
            else:
                assert keys == set(), f"{command}: {schema.__name__} has slurm keys but is not a launching command"
    assert LAUNCHING <= {c for c, ss in schemas.items() if any(issubclass(s, SlurmOptions) for s in ss)}


def test_per_command_defaults_and_help():
    from pipelines.cmd_extract import ExtractConfig
    from pipelines.cmd_resize import ResizeConfig

    assert ResizeConfig().slurm_gpus == 0 and ResizeConfig().slurm_cpus == 4
    assert ExtractConfig().slurm_gpus == 1 and ExtractConfig().slurm_mem_gb == 32
    text = help_text(ResizeConfig, "resize")
    assert "launcher=slurm keys" in text and text.index("slurm_cpus") > text.index("max_failed_frac")
    cfg = parse_config(ExtractConfig, ["slurm_cpus=2", "slurm_partition=debug", "slurm_constraint=v100"])
    params = cfg.slurm_params()
    assert (params.cpus_per_task, params.partition, params.constraint, params.gpus_per_node) == (2, "debug", "v100", 1)
    with pytest.raises(TypeError, match="unknown defaults"):
        slurm_options(gpu=1)
