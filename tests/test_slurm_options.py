"""Every command key has one definition: the `slurm_*` keys live in pipelines.slurm_options.SlurmOptions, shared by
every launching command, and a command schema that composes another schema (inherits it: SlurmOptions, the
fine-tuning trainer's TrainOptions) never declares one of that schema's keys again."""
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


# -- a command schema never redeclares a key of a schema it composes ----------------------------------------

def redeclared(schema: type) -> list[str]:
    """`Schema.key (owned by Base)` for each field written in `schema`'s own body that a dataclass it inherits
    already defines. The classes `slurm_options(...)` makes (new defaults for SlurmOptions' keys) are the one
    sanctioned exception; they live in pipelines.slurm_options, never in a command module."""
    own = vars(schema).get("__annotations__", {})
    found = []
    for base in schema.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            found += [f"{schema.__name__}.{key} (owned by {base.__name__})"
                      for key in own if key in {f.name for f in dataclasses.fields(base)}]
    return found


def test_no_command_schema_redeclares_a_key_it_inherits():
    found = [line for schemas in _schemas().values() for schema in schemas for line in redeclared(schema)]
    assert found == [], f"declare each key once, in the schema that owns it: {found}"
    # the check does catch a copy: a schema that inherits TrainOptions and declares lr again
    from extract.finetune.options import TrainOptions

    @dataclasses.dataclass
    class Copy(TrainOptions):
        lr: float = 0.3
        launcher: str = "none"

    assert redeclared(Copy) == ["Copy.lr (owned by TrainOptions)"]


def test_finetune_command_composes_the_trainer_options():
    """`lta finetune-backbone`'s schema inherits the trainer's TrainOptions, so each trainer key (and its default,
    e.g. resume) is the trainer's own field, and the command's config maps onto TrainOptions key for key."""
    from extract.finetune.options import TrainOptions
    from extract.finetune.train import TrainOptions as reexported
    from pipelines.cmd_finetune import FinetuneConfig, train_options

    assert reexported is TrainOptions and issubclass(FinetuneConfig, TrainOptions)
    for f in dataclasses.fields(TrainOptions):
        assert FinetuneConfig.__dataclass_fields__[f.name] is f, f.name  # the same Field: one default, one help line
    assert FinetuneConfig().resume is TrainOptions().resume is False
    cfg = parse_config(FinetuneConfig, ["lr=0.05", "resume=true", "val_split=", "slurm_gpus=2", "launcher=local"])
    opts = train_options(cfg)
    assert type(opts) is TrainOptions and (opts.lr, opts.resume, opts.val_split) == (0.05, True, None)
    assert dataclasses.asdict(opts) == {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainOptions)}
    text = help_text(FinetuneConfig, "finetune-backbone")
    assert all(f" {f.name} " in text for f in dataclasses.fields(TrainOptions))
