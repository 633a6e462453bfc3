"""From disk to training data: pick cache keys for modalities, load them, build split windows.

Shared by `lta train-heads`, `evaluate`, `predict` and `sweep` so that a run's data is rebuilt
exactly as it was trained (same keys, same window settings).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from features.annotations import load_split
from features.errors import UsageError
from train_heads.data import FeatureBank, SplitWindows, make_split_windows
from train_heads.model import ModelConfig

log = logging.getLogger(__name__)


def _stores(root: str | Path) -> dict[str, Path]:
    from features.store import store_paths

    return {p.stem: p for p in store_paths(root)}


def resolve_feature_keys(store_root: str | Path, modalities: Sequence[str], features: Sequence[str] = ()) -> dict[str, str]:
    """modality -> cache key.

    With `features` (cache keys, one per modality, in order) each key must exist in the store and
    start with its modality's name. Without, each modality picks the one key under `store_root`
    whose name starts with the modality (`slowfast` -> `slowfast_r101_8x8.ego4d-1a2b3c4d5e`).

    Raises:
        UsageError: a missing or ambiguous match, listing the candidates (before any data is loaded).
    """
    available = _stores(store_root)
    if features:
        if len(features) != len(modalities):
            raise UsageError(f"features={list(features)} gives {len(features)} keys for {len(modalities)} modalities {list(modalities)}")
        out = {}
        for m, key in zip(modalities, features):
            if key not in available:
                raise UsageError(f"features: cache key {key!r} not found under {store_root}; available: {sorted(available)}")
            if not key.startswith(m):
                raise UsageError(f"feature key {key!r} is listed for modality {m!r} but does not start with it "
                                 f"(keys pair with head.modalities in order: {list(modalities)})")
            out[m] = key
        return out
    out = {}
    for m in modalities:
        matches = sorted(k for k in available if k.startswith(m))
        if len(matches) != 1:
            what = "no store" if not matches else f"{len(matches)} stores"
            raise UsageError(f"modality {m!r}: {what} under {store_root} match; pass features=[...] explicitly. "
                             f"Candidates: {matches or sorted(available)}")
        out[m] = matches[0]
    return out


def load_bank(store_root: str | Path, modality_keys: dict[str, str], splits: Sequence[str] | None = None) -> FeatureBank:
    from features.store import load_features

    available = _stores(store_root)
    missing = [k for k in modality_keys.values() if k not in available]
    if missing:  # checked before anything loads: a wrong store= (exit 2)
        raise UsageError(f"cache keys {missing} not found under {store_root}; available: {sorted(available)}")
    loaded = load_features([available[k] for k in modality_keys.values()], splits=splits)
    return FeatureBank.from_loaded(loaded, modality_keys)


def fill_model_dims(head: ModelConfig, bank: FeatureBank, *, num_verbs: int, num_nouns: int) -> ModelConfig:
    """Set each modality's in_dim/frames from the store and the class counts from the taxonomy."""
    for m in head.modalities:
        shape = bank.view_shape(m.name)
        if len(shape) not in (1, 2):
            raise ValueError(f"modality {m.name!r}: view shape {shape} is neither (D,) nor (F, D)")
        m.in_dim, m.frames = int(shape[-1]), int(shape[0]) if len(shape) == 2 else 0
    head.num_verbs, head.num_nouns = num_verbs, num_nouns
    return head


def split_windows(data_dir: str | Path, split: str, bank: FeatureBank, *, num_input: int, num_future: int,
                  num_seen: int | None, convention: str):
    """(SplitAnnotations, SplitWindows) of one split."""
    ann = load_split(data_dir, split)
    win = make_split_windows(ann, bank, num_input=num_input, num_future=num_future, num_seen=num_seen,
                             convention=convention)
    log.info("%s: %d windows (%d dropped for missing features)", split, len(win), len(win.dropped_keys))
    return ann, win


def subset_windows(win: SplitWindows, max_windows: int, seed: int = 0) -> SplitWindows:
    if max_windows and len(win) > max_windows:
        return win.subset(np.sort(np.random.default_rng(seed).choice(len(win), max_windows, replace=False)))
    return win
