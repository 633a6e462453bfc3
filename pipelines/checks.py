"""Checks run by the commands before any data is loaded: paths, registry names, devices.

Each raises `features.errors.UsageError` (exit 2) with one line naming the key, the value and the valid
choices (with a "did you mean" when a choice is close), so a typo costs nothing instead of minutes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from features.devices import check_device, resolve_device  # noqa: F401 - the commands' device checks
from features.errors import UsageError, closest, did_you_mean  # noqa: F401 - re-exported for the commands

# one launcher vocabulary for every command that can fan out (resize, extract, sweep, finetune-backbone)
LAUNCHERS = ("none", "local", "slurm")  # this process | submitit local subprocesses | submitit SLURM jobs


def check_choice(key: str, value: str, choices: Sequence[str], what: str = "") -> str:
    """`value` must be one of `choices`; else UsageError `key=value: unknown <what>; valid: [...]`."""
    if value not in choices:
        raise UsageError(f"{key}={value}: unknown {what or key}{did_you_mean(value, choices)}; valid: {sorted(choices)}")
    return value


def check_choices(key: str, values: Sequence[str], choices: Sequence[str], what: str = "") -> list[str]:
    """Every item of the list `values` must be one of `choices` (see `check_choice`); an empty list is an error."""
    if not values:
        raise UsageError(f"{key}=[]: give at least one {what or key}; valid: {sorted(choices)}")
    for v in values:
        check_choice(key, v, choices, what)
    return list(values)


def _named(key: str, path: str | Path, label: str | None) -> str:
    """How a message names the checked path: `label` when given (a path that came from elsewhere than the
    command line, e.g. a run's config), else `key=path` and the current directory it is relative to."""
    return label or f"{key}={path}"


def check_dir(key: str, path: str | Path, what: str, *, label: str | None = None) -> Path:
    """`path` must be an existing directory."""
    p = Path(path)
    if not p.is_dir():
        state = "is a file, not a directory" if p.exists() else "does not exist"
        raise UsageError(f"{_named(key, path, label)}: {what} {state}" + ("" if label else f" (cwd {Path.cwd()})"))
    return p


def check_file(key: str, path: str | Path, what: str) -> Path:
    """`path` must be an existing file."""
    p = Path(path)
    if not p.is_file():
        state = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise UsageError(f"{key}={path}: {what} {state} (cwd {Path.cwd()})")
    return p


def check_new_file(key: str, path: str | Path, overwrite: bool) -> Path:
    """`path` is a file to write: refused when it exists and `overwrite` is false (nothing is replaced silently)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{key}={path}: is a directory; give a file name")
    if p.exists() and not overwrite:
        raise UsageError(f"{key}={path}: already exists; pass overwrite=true to replace it, or another {key}=")
    return p


def check_data_root(key: str, path: str | Path, splits: Sequence[str] = (), *, label: str | None = None) -> Path:
    """A dataset root: a directory with `annotations/` and the annotation file of every split in `splits`."""
    from features.annotations import ANNOTATION_DIR, SPLIT_FILES

    root = check_dir(key, path, "dataset root", label=label)
    name = _named(key, path, label)
    if not (root / ANNOTATION_DIR).is_dir():
        raise UsageError(f"{name}: dataset root has no {ANNOTATION_DIR}/ folder (expected {root / ANNOTATION_DIR})")
    for split in dict.fromkeys(splits):
        check_split("split", split)
        f = root / ANNOTATION_DIR / SPLIT_FILES[split]
        if not f.is_file():
            raise UsageError(f"{name}: no annotations of split {split!r} ({f} does not exist)")
    return root


def check_split(key: str, split: str) -> str:
    from features.annotations import SPLIT_FILES

    return check_choice(key, split, list(SPLIT_FILES), "split")


def check_store_root(key: str, path: str | Path, *, label: str | None = None) -> Path:
    """A feature store root holding at least one `<key>.zarr` / `<key>.h5` store."""
    from features.store import store_paths

    name = _named(key, path, label)
    p = Path(path)
    if p.suffix in (".zarr", ".h5") and p.exists():
        raise UsageError(f"{name}: is one feature store, not a store root; pass {key}={p.parent} (the folder holding "
                         f"{p.name})")
    root = check_dir(key, path, "feature store root", label=label)
    if not store_paths(root):
        below = sorted({q.parent for q in root.glob("*/*") if q.suffix in (".zarr", ".h5") and not q.name.startswith(".")})
        if below:
            raise UsageError(f"{name}: holds no stores directly, {below[0]} does; pass {key}={below[0]}"
                             + (f" (or one of {[str(b) for b in below[1:]]})" if len(below) > 1 else ""))
        raise UsageError(f"{name}: feature store root holds no stores (no <key>.zarr / <key>.h5; "
                         f"run `lta extract store={path}` first)")
    return root


def check_cache_keys(store_root: str | Path, cache_keys: dict[str, str], *, label: str) -> None:
    """Every cache key a run was trained on (modality -> key) is a store under `store_root`; else one UsageError
    naming the missing keys and the stores there."""
    from features.store import store_paths

    available = sorted(p.stem for p in store_paths(store_root))
    missing = {m: k for m, k in cache_keys.items() if k not in available}
    if missing:
        raise UsageError(f"{label}: no store of the run's features {missing} (the store root holds {available}); "
                         "pass store= the root its features were extracted into")


def check_at_least(values: Sequence[tuple[str, float, float]]) -> None:
    """Each (key, value, lowest) must have value >= lowest: `train.epochs=0` is a usage error, not a crash later."""
    for key, value, low in values:
        if value < low:
            raise UsageError(f"{key}={value}: must be >= {low}")


def check_generators_fit(key: str, generators: Sequence[str], decoder: str) -> None:
    """Generators that need an autoregressive decoder (beam_search) refused on a run whose decoder is not one."""
    from train_heads.decoders import DECODERS
    from train_heads.generators import GENERATORS

    autoregressive = getattr(DECODERS.get(decoder), "autoregressive", False)
    for name in generators:
        if getattr(GENERATORS.get(name), "requires_autoregressive", False) and not autoregressive:
            raise UsageError(f"{key}={name}: needs an autoregressive decoder (head.decoder=autoregressive), "
                             f"not head.decoder={decoder}; use sample, greedy+sample, mbr or mbr_set")


def check_run_roots(run_dir: str | Path, cfg: dict, *, data: str = "", store: str = "",
                    splits: Sequence[str] = ()) -> tuple:
    """The dataset and store roots a run uses (see `train_heads.run.locate_roots`), both checked: every one
    that is missing or wrong is named in ONE UsageError, by where it came from (`data=...` only when the
    command line gave it). Prints one line saying which roots the command reads and where each came from."""
    from train_heads.run import ARGUMENT, locate_root

    def label(root) -> str | None:  # an argument is named key=value (and the cwd), anything else by its source
        return None if root.source == ARGUMENT else root.describe()

    problems, roots = [], []
    for key, given, check in (("data", data, lambda r: check_data_root("data", r.path, splits, label=label(r))),
                              ("store", store, lambda r: check_store_root("store", r.path, label=label(r)))):
        try:
            root = locate_root(run_dir, cfg, key, given)
            check(root)
            roots.append(root)
        except UsageError as err:
            advice = "" if given or "pass " in str(err) else f"; pass {key}=DIR"
            problems.append(f"{err}{advice}")
    if problems:
        raise UsageError("; ".join(problems))
    data_root, store_root = roots
    keys_file = Path(run_dir) / "cache_keys.json"
    if keys_file.is_file():
        import json

        check_cache_keys(store_root.path, json.loads(keys_file.read_text())["modalities"],
                         label=label(store_root) or f"store={store_root.path}")
    print(f"run {run_dir}: {data_root.describe()}, {store_root.describe()}", flush=True)
    return data_root, store_root


def check_run_dir(key: str, run: str | Path, checkpoint: str | None = "best") -> Path:
    """A run dir (config.yaml) holding `checkpoints/<checkpoint>.pt`; the message lists the checkpoints there."""
    from train_heads.run import CHECKPOINT_DIR, CONFIG_FILE

    run_dir = check_dir(key, run, "run dir")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"{key}={run}: not a run dir (no {CONFIG_FILE}); train one with `lta train-heads out={run}`")
    if checkpoint is not None:
        names = sorted(p.stem for p in (run_dir / CHECKPOINT_DIR).glob("*.pt"))
        if checkpoint not in names:
            hint = did_you_mean(checkpoint, names) or (f" (pass checkpoint={names[0]})" if len(names) == 1 else "")
            raise UsageError(f"checkpoint={checkpoint}: no {run_dir / CHECKPOINT_DIR / (checkpoint + '.pt')}"
                             f"{hint}; checkpoints in the run: {names}")
    return run_dir


def check_registry(key: str, value: str, registry) -> str:
    """`value` must be registered in `registry` (a `train_heads.registry.Registry`)."""
    return check_choice(key, value, registry.names(), registry.kind)


def check_kwargs(key: str, kwargs: dict, constructor, *, filled: Sequence[str] = ()) -> dict:
    """Every key of `kwargs` must be a keyword of `constructor` (a class or function); `filled` ones are set by the code."""
    import inspect

    target = constructor.__init__ if isinstance(constructor, type) else constructor
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    valid = [n for n, p in params.items() if n not in ("self", *filled)
             and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name in kwargs:
        if name in filled:
            raise UsageError(f"{key}.{name}: set by the code from the data, not configurable; valid: {sorted(valid)}")
        if name not in valid:
            raise UsageError(f"{key}.{name}: unknown option of {getattr(constructor, '__name__', constructor)}"
                             f"{did_you_mean(name, valid)}; valid: {sorted(valid)}")
    return kwargs
