"""Run dirs of train-heads when a run is already there, torch-free: the run-dir policy (resume / overwrite, see
features.run_dir) and the resume checks, run before any data is loaded and again when training starts.

A resume needs the run's own config: `check_resume_config` names every key that differs (paths and knobs that do
not change the result aside, and keys added to the schema since the run was trained when they hold their
defaults, what the older code did); more `train.epochs` extend a run; `finished_run_note` says when there is
nothing left to do.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from features import run_dir as run_dir_policy
from features.run_dir import RunDirError
from train_heads.run import CONFIG_FILE, RUN_LAYOUT, describe_run, read_metrics

log = logging.getLogger(__name__)


# keys that may differ between a run's config.yaml and a resume: paths, and knobs that do not change the result
RESUME_IGNORED_KEYS = ("resume", "overwrite", "out", "data", "store", "train.device", "train.log_every",
                       "train.eval_batch_size")


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {"train.lr": 0.002, "head.modalities.0.name": "slowfast", ...}."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    if not out and prefix:
        out[prefix] = tree  # an empty list / dict is a value of its own
    return out


def config_differences(saved: dict, new: dict, ignore: tuple[str, ...] = RESUME_IGNORED_KEYS) -> list[str]:
    """`key (saved -> new)` for every flattened key whose value differs, minus `ignore` (and keys under them)."""
    a, b = flatten_config(saved), flatten_config(new)
    skip = lambda key: any(key == i or key.startswith(i + ".") for i in ignore)  # noqa: E731
    missing = object()
    return [f"{key} ({a.get(key, '<absent>')} -> {b.get(key, '<absent>')})"
            for key in sorted(set(a) | set(b)) if not skip(key) and a.get(key, missing) != b.get(key, missing)]


def prepare_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """train-heads' run-dir policy (features.run_dir.prepare_run_dir with train_heads.run.RUN_LAYOUT).

    Raises:
        RunDirError: `run_dir` holds a checkpoint or metrics and neither `resume` nor `overwrite` is set, or both are.
    """
    run_dir_policy.prepare_run_dir(run_dir, RUN_LAYOUT, resume=resume, overwrite=overwrite)


def keys_added_since(saved: dict, new: dict, full_cfg: Any) -> list[str]:
    """The keys of `new` that the saved config lacks and whose value is the schema's default (the schema being
    `full_cfg`'s dataclass; list entries compared with the default of entry 0): keys added to the schema after the
    run was trained, at the value that reproduces what the older code did. A key set to anything else is a change."""
    if not dataclasses.is_dataclass(full_cfg):
        return []
    from train_heads.run import _plain

    try:
        defaults = flatten_config(_plain(type(full_cfg)()))
    except TypeError:  # a schema with required fields: no defaults to compare with
        return []
    have, missing = flatten_config(saved), object()
    generic = lambda key: ".".join("0" if part.isdigit() else part for part in key.split("."))  # noqa: E731
    return [key for key, value in flatten_config(new).items()
            if key not in have and defaults.get(key, defaults.get(generic(key), missing)) == value]


def check_resume_config(run_dir: Path, full_cfg: Any, *, before_loading: bool = False) -> None:
    """RunDirError naming every key in which `full_cfg` differs from the run's saved config (one line).

    `before_loading`: the check train-heads runs before any data is loaded, when the values filled from the
    store and taxonomy (`head.modalities.N.in_dim` / `frames`, `head.num_verbs` / `num_nouns`) are not known yet;
    they are compared again, with everything else, when training starts."""
    from omegaconf import OmegaConf

    from train_heads.run import _plain

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    new = _plain(full_cfg)
    ignore = RESUME_IGNORED_KEYS
    if int(new["train"]["epochs"]) > int(saved.get("train", {}).get("epochs", 0)):
        ignore += ("train.epochs",)  # more epochs extend the run (see `finished_run_note`)
        if not before_loading:
            log.info("extending the run from %d to %d epochs: the cosine schedule now ends at the new last step, so "
                     "the lr rises again from where it was", saved["train"]["epochs"], new["train"]["epochs"])
    if before_loading:
        modalities = range(max(len(saved.get("head", {}).get("modalities", [])), len(new["head"]["modalities"])))
        ignore += (*(f"head.modalities.{i}.{k}" for i in modalities for k in ("in_dim", "frames")),
                   "head.num_verbs", "head.num_nouns")
    added = keys_added_since(saved, new, full_cfg)  # a run trained before these keys existed trained as their defaults do
    diff = config_differences(saved, new, ignore + tuple(added))
    if diff:
        raise RunDirError(f"resume=true: this config differs from {path} in {len(diff)} key(s): {'; '.join(diff)}. "
                          f"Resume with the run's config, or train into another out=DIR (or overwrite=true)")
    if added and not before_loading:
        log.info("resume: %s not in %s (added to the schema since the run was trained); their defaults are what it "
                 "trained with", ", ".join(added), path)


def finished_run_note(run_dir: Path, epochs: int) -> str | None:
    """What `resume=true` on a finished run with `epochs` (train.epochs) would do when that is nothing: a note
    saying the run is done and how to extend it; None when there is something to train (an unfinished run, or
    more epochs than the run's own, which extend it)."""
    from train_heads.run import read_run_config

    metrics = read_metrics(run_dir)
    saved = int(read_run_config(run_dir).get("train", {}).get("epochs", 0))
    if not metrics.get("finished") or epochs > saved:
        return None
    done = len(metrics.get("history", []))
    if done < saved:
        return (f"{run_dir} is a finished run: it stopped early after {done} of {saved} epochs (no val improvement "
                f"for train.patience epochs); nothing to resume")
    return (f"{run_dir} is a {describe_run(run_dir)}; nothing to resume. To train it longer: "
            f"lta train-heads config={run_dir / CONFIG_FILE} resume=true train.epochs={2 * saved}")
