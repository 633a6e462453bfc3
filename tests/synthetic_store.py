"""Synthetic feature stores with a learnable signal, for the tests (no video, no extractor; imported as `synthetic_store`).

Each segment's feature is `verb_emb[verb] + noun_emb[noun] + noise` (per view and per frame),
with fixed random class embeddings, written through `features.store.FeatureStore` for the rows of
a synthetic sample (`features.synthetic.plan_sample`, whose clips follow a Markov task grammar).
Heads trained on them must beat the no-training baselines; the withheld test labels are used for
the features only (the test annotations stay unlabelled).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from features.annotations import load_split
from features.store import FeatureStore, RowTable, store_path
from features.synthetic import plan_sample, write_annotations

# modality -> (store name, view shape): per-segment SlowFast/MViT vectors, per-frame CLIP
DEFAULT_MODALITIES = {"slowfast": ("slowfast_r101_8x8.synthetic", (2304,)), "clip": ("clip_vit_b32.synthetic", (8, 512))}


def write_synthetic_dataset(data_dir: str | Path, *, seed: int = 0, clips: int = 24, **plan_kwargs):
    """Plan a synthetic sample and write its annotations (no videos); returns the plan."""
    plan = plan_sample(clips=clips, seed=seed, **plan_kwargs)
    write_annotations(plan, data_dir)
    return plan


def write_synthetic_stores(data_dir: str | Path, root: str | Path, plan, *, modalities: dict | None = None,
                           num_views: int = 2, noise: float = 1.0, verb_scale: float = 1.0, noun_scale: float = 1.0,
                           chunk_rows: int = 1024, seed: int = 0, missing_rows: dict[str, list[int]] | None = None) -> dict[str, str]:
    """One store per modality under `root` for all rows of train/val/test; returns modality -> cache key.

    Args:
        plan: the `SamplePlan` the annotations were written from (its labels include test).
        modalities: modality -> (store name, view shape), default `DEFAULT_MODALITIES`.
        noise: std of the per-view (and per-frame) Gaussian noise, relative to unit-variance class embeddings.
        missing_rows: modality -> row indices left unwritten (as if extraction failed there).
    """
    modalities = modalities or DEFAULT_MODALITIES
    anns = [load_split(data_dir, s) for s in ("train", "val", "test")]
    rows = RowTable.from_annotations(anns)
    labels = {(c.clip_uid, s): (int(c.verb[s]), int(c.noun[s])) for c in plan.clips for s in range(c.num_segments)}
    verb = np.array([labels[(u, a)][0] for u, a in zip(rows.clip_uid, rows.action_idx)])
    noun = np.array([labels[(u, a)][1] for u, a in zip(rows.clip_uid, rows.action_idx)])
    keys = {}
    for i, (modality, (name, view_shape)) in enumerate(modalities.items()):
        rng = np.random.default_rng([seed, i])
        dim = view_shape[-1]
        verb_emb = rng.standard_normal((len(plan.verbs), dim)).astype(np.float32) * verb_scale
        noun_emb = rng.standard_normal((len(plan.nouns), dim)).astype(np.float32) * noun_scale
        spec = {"synthetic": True, "seed": seed, "modality": modality, "view_shape": list(view_shape),
                "num_views": num_views, "noise": noise, "verb_scale": verb_scale, "noun_scale": noun_scale}
        from features.store import cache_key

        key = cache_key(name, spec)
        store = FeatureStore.create(store_path(root, key), name=name, spec=spec, rows=rows, view_shape=tuple(view_shape),
                                    num_views=num_views, chunk_rows=chunk_rows)
        for lo in range(0, len(rows), chunk_rows):
            hi = min(lo + chunk_rows, len(rows))
            base = verb_emb[verb[lo:hi]] + noun_emb[noun[lo:hi]]  # (n, D)
            shape = (hi - lo, num_views, *view_shape)
            base = base.reshape(hi - lo, 1, *([1] * (len(view_shape) - 1)), dim)
            feats = base + noise * rng.standard_normal(shape, dtype=np.float32)
            windows = np.stack([rows.start_sec[lo:hi], rows.end_sec[lo:hi]], axis=1)[:, None, :].repeat(num_views, 1)
            skip = np.isin(np.arange(lo, hi), (missing_rows or {}).get(modality, []))
            for run in np.split(np.flatnonzero(~skip), np.flatnonzero(np.diff(np.flatnonzero(~skip)) != 1) + 1):
                if len(run):
                    store.write(lo + int(run[0]), feats[run], windows[run])
        store.close()
        keys[modality] = key
    return keys
