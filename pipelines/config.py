"""Structured configs for every `lta` command: dataclass schema + optional YAML + `key=value` overrides.

Each command declares a dataclass whose fields carry a default and a one-line help string
(`opt(default, "help")`). `parse_config(Schema, argv)` merges, in order: the schema defaults,
an optional `config=FILE.yaml`, then the `key=value` overrides (OmegaConf dotlist syntax, so
`extractors=[a,b]` and `optim.lr=1e-3` work). Unknown keys and wrong types are errors.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A command line or config file that does not fit the command's schema."""


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A config field with a default and a one-line help string shown by `--help`."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])}?"
    if origin in (list, typing.List):
        (arg,) = typing.get_args(tp) or (Any,)
        return f"list[{_type_name(arg)}]"
    return getattr(tp, "__name__", str(tp))


def help_text(schema: type, command: str, summary: str = "") -> str:
    """Lines listing every key of `schema` with its type, default and help."""
    hints = typing.get_type_hints(schema)
    lines = [f"usage: lta {command} [config=FILE.yaml] [key=value ...]"]
    if summary:
        lines += ["", summary]
    lines += ["", "keys:"]
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        if dataclasses.is_dataclass(default):
            default = "{...}"
        lines.append(f"  {f.name:<22} {_type_name(hints[f.name]):<12} default={default!s:<14} {f.metadata.get('help', '')}")
    return "\n".join(lines)


MAX_YAML_ALIASES = 100  # a config needs few; thousands of nested aliases expand exponentially (a "YAML bomb")


def load_yaml(path: Path | str) -> Any:
    """A YAML config file as an OmegaConf node, loaded safely.

    OmegaConf parses with a yaml.SafeLoader subclass, so tags such as `!!python/object/apply:os.system`
    construct nothing; they, invalid YAML and alias bombs become a ConfigError naming the file.
    """
    import yaml
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_YAML_ALIASES:
            raise ConfigError(f"{path}: {aliases} YAML aliases (more than {MAX_YAML_ALIASES}); refusing a possible alias bomb")
        return OmegaConf.load(path)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not a plain YAML config ({first}); python tags and other unsafe YAML are refused") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file ({err})") from None


def parse_config(schema: type[T], argv: Sequence[str]) -> T:
    """Build a frozen config object of type `schema` from `argv` (`key=value` items, optional `config=FILE`).

    Raises:
        ConfigError: unknown key, wrong type, malformed item or unreadable config file.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides: list[str] = []
    config_files: list[Path] = []
    for item in argv:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r} (see --help)")
        key, value = item.split("=", 1)
        if key == "config":
            config_files.append(Path(value))
        else:
            overrides.append(item)
    try:
        cfg = OmegaConf.structured(schema)
        for path in config_files:
            cfg = OmegaConf.merge(cfg, load_yaml(path))
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        where = f"key '{key}': " if key and f"'{key}'" not in msg else ""
        raise ConfigError(f"{where}{msg} (see `lta ... --help` for the keys)") from None
    return obj  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, for saving next to a command's outputs."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
