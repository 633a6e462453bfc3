"""What an evaluation's numbers depend on, so a stored result is reused only for exactly those inputs.

`evaluation_fingerprint` lists the checkpoint file's sha256, the annotation files' sha256 (the split and the
training split, which fits the baselines), the cache keys and every evaluation setting (generators,
baselines, seed, temperature, mbr draws, K), plus an `id` hashed from all of them. `lta evaluate` stores it in
`metrics_<split>.json`; `lta report` shows that file's ED table only when the ids agree, so the table is never
stale after retraining nor a leftover of an evaluate with other settings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from features.annotations import ANNOTATION_DIR, TAXONOMY_FILE, annotation_path
from features.files import file_sha256  # noqa: F401 - callers import it from here too


def evaluation_fingerprint(*, checkpoint_file: str | Path, data: str | Path, split: str, cache_keys: Mapping[str, str],
                           generators: Sequence[str], baselines: Sequence[str], seed: int, temperature: float | None,
                           mbr_samples: int, num_sequences: int) -> dict[str, Any]:
    """The inputs of one evaluation of a checkpoint on `split` (see the module docstring), with their `id`."""
    files = {"train": annotation_path(data, "train"), split: annotation_path(data, split),
             "taxonomy": Path(data) / ANNOTATION_DIR / TAXONOMY_FILE}
    fp: dict[str, Any] = {
        "checkpoint_sha256": file_sha256(checkpoint_file),
        "split": split,
        "annotations_sha256": {name: file_sha256(p) if p.is_file() else None for name, p in sorted(files.items())},
        "cache_keys": dict(sorted(cache_keys.items())),
        "generators": list(generators),
        "baselines": list(baselines),
        "seed": int(seed),
        "temperature": None if temperature is None else float(temperature),  # None: each generator's own
        "mbr_samples": int(mbr_samples),
        "num_sequences": int(num_sequences),
    }
    return with_id(fp)


def with_id(fp: Mapping[str, Any]) -> dict[str, Any]:
    """`fp` with its `id`: a hash of every other field."""
    fields = {k: v for k, v in fp.items() if k != "id"}
    return {**fields, "id": hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]}


# fields naming what was scored, not what the scores depend on: a stored evaluation that scored more covers a request
SCORED_FIELDS = ("generators", "baselines")


def fingerprint_differences(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """Names of the fingerprint fields that differ (`["fingerprint"]` when `stored` has none). `generators` and
    `baselines` differ only when `stored` lacks one that `wanted` lists (an evaluation merged from several
    `lta evaluate` calls, see `train_heads.evaluate.merge_evaluations`, covers each of them)."""
    if not stored:
        return ["fingerprint"]
    return [k for k in wanted if k != "id" and (not set(wanted[k]) <= set(stored.get(k) or ()) if k in SCORED_FIELDS
                                                else stored.get(k) != wanted[k])]
