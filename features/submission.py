"""The challenge `outputs.json`: read, validate against a split's key set, write.

Format (reference §4.2): `{"<clip_uid>_<action_idx>": {"verb": [[Z ints] x K], "noun": [[Z ints] x K]}}`,
keyed by the last observed segment. Class ids must lie in the taxonomy's range.

Key-set rule: the *expected* keys are the windows of the scoring configuration (by default
`num_seen=8`, convention "plus_one"); every expected key must be present unless missing keys are
allowed. A file may also hold other keys of the split that still have Z future segments (e.g. a
model with fewer observed segments predicts more windows); those are accepted and not scored.
Any other key is an error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from features.annotations import Taxonomy
from features.files import atomic_write


class PredictionError(ValueError):
    """A malformed or incomplete predictions file; the message names the file and the key."""


def read_predictions(path: Path | str) -> dict:
    """Load an outputs.json; PredictionError for a missing file, invalid JSON or a non-object top level."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PredictionError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise PredictionError(f"{path}: expected a JSON object keyed by '<clip_uid>_<action_idx>', got {type(obj).__name__}")
    return obj


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in list(items)[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _candidates(source: str, key: str, head: str, value: Any, K: int, Z: int, num_classes: int) -> np.ndarray:
    where = f"{source}key {key!r}, field '{head}'"
    if not isinstance(value, list) or len(value) != K:
        got = f"{len(value)} sequences" if isinstance(value, list) else type(value).__name__
        raise PredictionError(f"{where}: expected K={K} sequences, got {got}")
    for k, seq in enumerate(value):
        if not isinstance(seq, list) or len(seq) != Z:
            got = f"length {len(seq)}" if isinstance(seq, list) else type(seq).__name__
            raise PredictionError(f"{where}[{k}]: expected a list of Z={Z} class ids, got {got}")
        for z, item in enumerate(seq):
            if isinstance(item, bool) or not isinstance(item, int):
                raise PredictionError(f"{where}[{k}][{z}]: expected an int class id, got {type(item).__name__} {item!r}")
            if not 0 <= item < num_classes:
                raise PredictionError(f"{where}[{k}][{z}]: class id {item} out of taxonomy range [0, {num_classes})")
    return np.asarray(value, dtype=np.int64)


def validate_predictions(
    obj: Any,
    taxonomy: Taxonomy,
    expected_keys: Sequence[str],
    K: int = 5,
    Z: int = 20,
    *,
    allowed_keys: Collection[str] | None = None,
    allow_missing: bool = False,
    source: str = "",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Check a parsed outputs.json and return the predictions of the expected keys it holds.

    Args:
        obj: the parsed JSON.
        taxonomy: class counts for the id range check.
        expected_keys: keys to score, in output order.
        K, Z: candidates per key and sequence length.
        allowed_keys: further keys that may appear (not scored); default none.
        allow_missing: accept files that lack some expected keys.
        source: file name for messages.

    Returns:
        (keys, verb (W, K, Z) int64, noun (W, K, Z) int64) for the expected keys present, in
        `expected_keys` order.

    Raises:
        PredictionError: naming the file, the key and what is wrong.
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(obj, dict):
        raise PredictionError(f"{prefix}expected a JSON object keyed by '<clip_uid>_<action_idx>', got {type(obj).__name__}")
    expected = set(expected_keys)
    allowed = expected | set(allowed_keys or ())
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise PredictionError(
            f"{prefix}{len(unknown)} unknown key(s) not among the split's forecastable segments: {_few(unknown)}"
        )
    missing = [k for k in expected_keys if k not in obj]
    if missing and not allow_missing:
        raise PredictionError(f"{prefix}{len(missing)} of {len(expected)} expected key(s) missing: {_few(missing)} "
                              "(pass allow_missing=true to score the rest)")
    keys, verbs, nouns = [], [], []
    for key in obj:  # validate every entry, scored or not
        entry = obj[key]
        if not isinstance(entry, dict) or set(entry) != {"verb", "noun"}:
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise PredictionError(f"{prefix}key {key!r}: expected an object with exactly 'verb' and 'noun', got {got}")
        _candidates(prefix, key, "verb", entry["verb"], K, Z, taxonomy.num_verbs)
        _candidates(prefix, key, "noun", entry["noun"], K, Z, taxonomy.num_nouns)
    for key in expected_keys:
        if key in obj:
            keys.append(key)
            verbs.append(obj[key]["verb"])
            nouns.append(obj[key]["noun"])
    shape = (len(keys), K, Z)
    verb = np.asarray(verbs, dtype=np.int64).reshape(shape)
    noun = np.asarray(nouns, dtype=np.int64).reshape(shape)
    return keys, verb, noun


def write_predictions(path: Path | str, keys: Sequence[str], verb: np.ndarray, noun: np.ndarray) -> Path:
    """Write an outputs.json atomically from (W, K, Z) verb and noun class ids."""
    verb = np.asarray(verb)
    noun = np.asarray(noun)
    if verb.ndim != 3 or verb.shape != noun.shape or verb.shape[0] != len(keys):
        raise ValueError(f"expected verb and noun (W, K, Z) with W={len(keys)}, got {verb.shape} and {noun.shape}")
    if not (np.issubdtype(verb.dtype, np.integer) and np.issubdtype(noun.dtype, np.integer)):
        raise ValueError(f"class ids must be integers, got {verb.dtype} and {noun.dtype}")
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys")
    obj = {key: {"verb": v.tolist(), "noun": n.tolist()} for key, v, n in zip(keys, verb.astype(np.int64), noun.astype(np.int64))}
    return atomic_write(path, json.dumps(obj, separators=(",", ":")))
