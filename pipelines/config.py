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

from features.errors import UsageError
from features.options import opt  # noqa: F401 - the schemas' field helper, re-exported here

T = TypeVar("T")


class ConfigError(UsageError):
    """A command line or config file that does not fit the command's schema (a UsageError: exit 2)."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])}?"
    if origin in (list, typing.List):
        (arg,) = typing.get_args(tp) or (Any,)
        return f"list[{_type_name(arg)}]"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "(required)"


def _list_item_schema(tp: Any) -> Any:
    """The dataclass of a `list[SomeDataclass]` annotation, else None."""
    if typing.get_origin(tp) in (list, typing.List):
        args = typing.get_args(tp)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def schema_keys(schema: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every leaf key of `schema` as (dotted key, type name, default, help), nested sections flattened.

    A list of dataclasses (e.g. `head.modalities`) contributes the keys of its first entry,
    `head.modalities.0.proj_dim`; the list itself is listed too (it can be replaced whole).
    """
    hints = typing.get_type_hints(schema)
    out: list[tuple[str, str, Any, str]] = []
    for f in dataclasses.fields(schema):
        key, tp, default, help_ = f"{prefix}{f.name}", hints[f.name], _default(f), f.metadata.get("help", "")
        if dataclasses.is_dataclass(tp):
            out += schema_keys(tp, f"{key}.")
            continue
        item = _list_item_schema(tp)
        if item is not None:
            out.append((key, f"list[{item.__name__}]", f"[{len(default)} entries]", help_))
            out += schema_keys(item, f"{key}.0.")
            continue
        out.append((key, _type_name(tp), default, help_))
    return out


def help_text(schema: type, command: str, summary: str = "") -> str:
    """Lines listing every key of `schema` (nested ones as dotted keys) with its type, default and help."""
    lines = [f"usage: lta {command} [config=FILE.yaml] [key=value ...]"]
    if summary:
        lines += ["", summary]
    lines += ["", "keys:"]
    rows = schema_keys(schema)
    width = max([22] + [len(k) + 1 for k, *_ in rows])
    slurm = [r for r in rows if r[0].startswith("slurm_")]  # pipelines.slurm_options: listed last, as one group
    for key, tp, default, help_ in [r for r in rows if r not in slurm]:
        shown = "''" if default == "" else default
        lines.append(f"  {key:<{width}} {tp:<12} default={shown!s:<14} {help_}")
    if slurm:
        lines += ["", "launcher=slurm keys (what each job asks sbatch for; the defaults fit one job per GPU of an "
                      "8-GPU node with 64 CPUs and 256 GB):"]
    for key, tp, default, help_ in slurm:
        shown = "''" if default == "" else default
        lines.append(f"  {key:<{width}} {tp:<12} default={shown!s:<14} {help_}")
    lines += ["", "Lists: key=[a,b] or key=a (one item); list entries: key.0.field=value. "
              "LTA_DEBUG=1 or --debug shows tracebacks."]
    return "\n".join(lines)


def suggest_key(key: str, schema: type) -> str:
    """`" (did you mean 'train.epochs'?)"` for the valid key closest to `key` (full or last part), else ""."""
    import difflib

    keys = [k for k, *_ in schema_keys(schema)]
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not match:  # `epoch` -> `train.epochs`: compare the last dotted part with every key's last part
        leaf = key.split(".")[-1]
        by_leaf: dict[str, str] = {}
        for k in keys:
            by_leaf.setdefault(k.split(".")[-1], k)
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        match = [by_leaf[close[0]]] if close else []
    return f" (did you mean {match[0]!r}?)" if match else ""


def _apply_override(cfg: Any, schema: type, key: str, value: Any, command: str = "") -> None:
    """Set dotted `key` (list entries by index: `head.modalities.0.proj_dim`) in the structured `cfg`.

    A key outside the schema is a ConfigError with the closest valid key; a single value given for a
    list key becomes a one-item list (`extractors=name`).
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"key '{key}': '{here}' is not an entry of '{'.'.join(parts[:depth])}' "
                                  f"(a list with {len(node)} entries: indices 0..{len(node) - 1})")
            if not last:
                node = node[int(part)]
            continue
        if isinstance(node, DictConfig):
            fixed = dataclasses.is_dataclass(node._metadata.object_type)
            if fixed and part not in node:
                raise ConfigError(f"unknown key '{key}'{suggest_key(key, schema)}; {_keys_hint(command)}")
            if not last:
                node = node[part] if part in node else None
                if node is None:
                    break  # a new key inside an open dict (*_kwargs): OmegaConf.update creates it
            continue
        raise ConfigError(f"key '{key}': '{'.'.join(parts[:depth])}' is a value, not a section")
    target = OmegaConf.select(cfg, key, throw_on_missing=False) if key else None
    if isinstance(target, ListConfig) and not isinstance(value, (list, tuple)) and value is not None:
        value = [value]
    OmegaConf.update(cfg, key, value, merge=True)  # dicts merge, lists are replaced (as OmegaConf.merge)


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


def _renamed(schema: type, item: str) -> str:
    """`item` with a deprecated key or value replaced by its new name, printing a one-line deprecation.

    A schema lists them as class attributes: `RENAMED_KEYS = {"root": "store"}` and
    `RENAMED_VALUES = {"launcher": {"joblib": "none"}}`.
    """
    import sys

    key, value = item.split("=", 1)
    new_key = getattr(schema, "RENAMED_KEYS", {}).get(key)
    if new_key:
        print(f"lta: {key}= is deprecated, use {new_key}= (accepted this time)", file=sys.stderr)
        key = new_key
    new_value = getattr(schema, "RENAMED_VALUES", {}).get(key, {}).get(value)
    if new_value is not None:
        print(f"lta: {key}={value} is deprecated, use {key}={new_value} (accepted this time)", file=sys.stderr)
        value = new_value
    return f"{key}={value}"


def _keys_hint(command: str) -> str:
    return f"`lta {command} --help` lists the keys" if command else "`--help` lists the keys"


def _omegaconf_error(err: Exception, schema: type, command: str, source: str = "") -> "ConfigError":
    """An OmegaConf error as one ConfigError line: `<file>: ` (when from a config file), the dotted key, what is
    wrong with it (an unknown key with the closest valid one), and where the keys are listed."""
    msg = str(err).splitlines()[0]
    key = str(getattr(err, "full_key", "") or "").replace("[", ".").replace("]", "")
    if key and "not in" in msg:  # OmegaConf's "Key 'epoch' not in 'TrainConfig'. Did you mean..." for a dotted key
        text = f"unknown key '{key}'{suggest_key(key, schema)}"
    else:
        text = (f"key '{key}': " if key and f"'{key}'" not in msg else "") + msg
    return ConfigError(f"{source + ': ' if source else ''}{text}; {_keys_hint(command)}")


def parse_config(schema: type[T], argv: Sequence[str], command: str = "") -> T:
    """Build a frozen config object of type `schema` from `argv` (`key=value` items, optional `config=FILE`).

    Raises:
        ConfigError: unknown key, wrong type, malformed item or unreadable config file (naming the file).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    overrides: list[str] = []
    config_files: list[Path] = []
    for item in argv:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r} (see --help)")
        item = _renamed(schema, item)
        key, value = item.split("=", 1)
        if key == "config":
            config_files.append(Path(value))
        else:
            overrides.append(item)
    try:
        cfg = OmegaConf.structured(schema)
        for path in config_files:
            try:
                cfg = OmegaConf.merge(cfg, load_yaml(path))
                OmegaConf.to_object(cfg)  # a wrong value type in the file is reported as the file's
            except MissingMandatoryValue:
                pass  # a value the command line may still give
            except OmegaConfBaseException as err:
                raise _omegaconf_error(err, schema, command, str(path)) from None
        for item in overrides:
            key, raw = item.split("=", 1)
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]), resolve=False)["v"]
            _apply_override(cfg, schema, key.strip(), value, command)
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, schema, command) from None
    return obj  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, for saving next to a command's outputs."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
