"""Ego4D LTA annotations: taxonomy, per-split segment tables, validation and safe clip paths.

Layout (as the Ego4D CLI writes it, see ../shared/reference/ego4d_lta.md §1):
    <data>/annotations/fho_lta_{train,val,test_unannotated}.json, fho_lta_taxonomy.json
    <data>/clips_hq/<clip_uid>.mp4   raw clips
    <data>/clips/<clip_uid>.mp4      clips resized to short side 320

Each item of a split file's `clips` array is one action segment. Segments are grouped by
`clip_uid` and sorted by `action_idx`; the test split carries no labels (stored as -1).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_FILES = {
    "train": "fho_lta_train.json",
    "val": "fho_lta_val.json",
    "test": "fho_lta_test_unannotated.json",
}
TAXONOMY_FILE = "fho_lta_taxonomy.json"
ANNOTATION_DIR = "annotations"
RAW_CLIP_DIR = "clips_hq"
RESIZED_CLIP_DIR = "clips"
UNLABELLED = -1
MAX_ACTION_IDX = 2**31 - 1  # action_idx must fit the store's int64 row keys with room to spare

_SAFE_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")

# field -> accepted JSON types; required in every split
_REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "clip_uid": (str,),
    "action_idx": (int,),
    "action_clip_start_sec": (int, float),
    "action_clip_end_sec": (int, float),
}
_LABEL_FIELDS: dict[str, tuple[type, ...]] = {"verb_label": (int,), "noun_label": (int,)}
# documented schema fields: type-checked when present, not required (the baseline does not read them)
_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "video_uid": (str,),
    "clip_id": (int,),
    "clip_parent_start_sec": (int, float),
    "clip_parent_end_sec": (int, float),
    "clip_parent_start_frame": (int,),
    "clip_parent_end_frame": (int,),
    "interval_start_sec": (int, float),
    "interval_end_sec": (int, float),
    "interval_start_frame": (int,),
    "interval_end_frame": (int,),
    "action_clip_start_frame": (int,),
    "action_clip_end_frame": (int,),
    "verb": (str,),
    "noun": (str,),
}


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file, the record and the field."""


def _short(value: Any, limit: int = 80) -> str:
    """repr of `value`, cut to `limit` characters (a 1 MB field must not become a 1 MB message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true/false are not numbers here
        return False
    return isinstance(value, types)


def check_clip_uid(clip_uid: str) -> str:
    """Return `clip_uid` if it is a safe file name (no separators, no `..`), else raise ValueError."""
    if not isinstance(clip_uid, str) or not _SAFE_UID.match(clip_uid) or ".." in clip_uid:
        raise ValueError(f"unsafe clip_uid {_short(clip_uid)}: must match {_SAFE_UID.pattern} and not contain '..'")
    return clip_uid


def safe_join(root: Path | str, *parts: str) -> Path:
    """`root/parts...`, refusing any result that resolves outside `root`."""
    root = Path(root)
    path = root.joinpath(*parts)
    base = root.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise ValueError(f"path {path} escapes its root {root}")
    return path


def clip_path(data_dir: Path | str, clip_uid: str, *, resized: bool = True) -> Path:
    """Path of a clip's mp4: `<data>/clips/<uid>.mp4` (resized) or `<data>/clips_hq/<uid>.mp4` (raw)."""
    folder = RESIZED_CLIP_DIR if resized else RAW_CLIP_DIR
    return safe_join(Path(data_dir) / folder, check_clip_uid(clip_uid) + ".mp4")


@dataclass(frozen=True)
class Taxonomy:
    """Verb and noun class names; the list index is the class id."""

    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    path: str = ""

    @property
    def num_verbs(self) -> int:
        return len(self.verbs)

    @property
    def num_nouns(self) -> int:
        return len(self.nouns)

    def action_ids(self, verb: np.ndarray, noun: np.ndarray) -> np.ndarray:
        """Action token of (verb, noun) pairs: `verb * num_nouns + noun` (collision-free)."""
        return np.asarray(verb, dtype=np.int64) * self.num_nouns + np.asarray(noun, dtype=np.int64)


def load_taxonomy(path: Path | str) -> Taxonomy:
    """Load `fho_lta_taxonomy.json` (`{"verbs": [...], "nouns": [...]}`); v1 and v2 both work."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object with 'verbs' and 'nouns', got {type(data).__name__}")
    lists = {}
    for key in ("verbs", "nouns"):
        value = data.get(key)
        if not isinstance(value, list) or not value:
            raise AnnotationError(f"{path}: field '{key}' must be a non-empty list of names")
        for i, name in enumerate(value):
            if not isinstance(name, str):
                raise AnnotationError(f"{path}: field '{key}' entry {i} must be a string, got {type(name).__name__}")
        lists[key] = tuple(value)
    return Taxonomy(verbs=lists["verbs"], nouns=lists["nouns"], path=str(path))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json object hook: a key given twice in one object is ambiguous (json.load keeps the last), so refuse it."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key, pairs)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str, pairs: list[tuple[str, Any]]):
        ident = {k: v for k, v in pairs if k in ("clip_uid", "action_idx") and not isinstance(v, (dict, list))}
        super().__init__(f"key {_short(key)} appears twice in one object{f' ({ident})' if ident else ''}")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            return json.load(f, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    except _DuplicateKey as err:
        raise AnnotationError(f"{path}: duplicate JSON key: {err}") from None
    except RecursionError:
        raise AnnotationError(f"{path}: JSON nested too deeply (not an Ego4D annotation file)") from None


@dataclass
class SplitAnnotations:
    """All action segments of one split, sorted by (clip_uid, action_idx), as parallel arrays.

    Row r of every array describes one segment. `clip_slices[clip_uid]` is the row range of that
    clip (its segments in `action_idx` order).
    """

    split: str
    path: str
    taxonomy: Taxonomy
    clip_uid: np.ndarray  # (R,) object (str)
    action_idx: np.ndarray  # (R,) int64
    start_sec: np.ndarray  # (R,) float64, clip-relative (action_clip_start_sec)
    end_sec: np.ndarray  # (R,) float64
    verb: np.ndarray  # (R,) int64, -1 when unlabelled
    noun: np.ndarray  # (R,) int64, -1 when unlabelled
    records: list[dict] = field(repr=False, default_factory=list)  # the raw records, in row order
    clip_slices: dict[str, slice] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.verb)) and bool((self.verb >= 0).all())

    @property
    def num_segments(self) -> int:
        return len(self.action_idx)

    @property
    def clip_uids(self) -> list[str]:
        return list(self.clip_slices)

    def keys(self) -> list[str]:
        """`<clip_uid>_<action_idx>` of every row."""
        return [f"{c}_{a}" for c, a in zip(self.clip_uid, self.action_idx)]


def _validate_record(path: Path, index: int, record: Any, labelled: bool, taxonomy: Taxonomy) -> None:
    def fail(field_name: str, what: str) -> None:
        ident = ""
        if isinstance(record, dict):
            ident = f" (clip_uid={_short(record.get('clip_uid'))}, action_idx={_short(record.get('action_idx'))})"
        raise AnnotationError(f"{path}: record {index}{ident}: field '{field_name}': {what}")

    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: record {index}: expected an object, got {type(record).__name__}")
    required = dict(_REQUIRED_FIELDS, **(_LABEL_FIELDS if labelled else {}))
    for name, types in required.items():
        if name not in record:
            fail(name, "missing")
        if not _type_ok(record[name], types):
            fail(name, f"expected {'/'.join(t.__name__ for t in types)}, got {type(record[name]).__name__} {_short(record[name])}")
    for name, types in dict(_OPTIONAL_FIELDS, **({} if labelled else _LABEL_FIELDS)).items():
        if name in record and record[name] is not None and not _type_ok(record[name], types):
            fail(name, f"expected {'/'.join(t.__name__ for t in types)}, got {type(record[name]).__name__} {_short(record[name])}")
    try:
        check_clip_uid(record["clip_uid"])
    except ValueError as err:
        fail("clip_uid", str(err))
    if not 0 <= record["action_idx"] <= MAX_ACTION_IDX:
        fail("action_idx", f"must be in [0, {MAX_ACTION_IDX}], got {_short(record['action_idx'])}")
    start, end = record["action_clip_start_sec"], record["action_clip_end_sec"]
    for name, value in (("action_clip_start_sec", start), ("action_clip_end_sec", end)):
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int beyond float range
            finite = False
        if not finite or value < 0:
            fail(name, f"must be a finite time >= 0, got {_short(value)}")
    if end < start:
        fail("action_clip_end_sec", f"end {end} is before start {start}")
    if labelled:
        if not 0 <= record["verb_label"] < taxonomy.num_verbs:
            fail("verb_label", f"{_short(record['verb_label'])} out of taxonomy range [0, {taxonomy.num_verbs}) ({taxonomy.path})")
        if not 0 <= record["noun_label"] < taxonomy.num_nouns:
            fail("noun_label", f"{_short(record['noun_label'])} out of taxonomy range [0, {taxonomy.num_nouns}) ({taxonomy.path})")


def parse_split(path: Path | str, split: str, taxonomy: Taxonomy, *, labelled: bool | None = None) -> SplitAnnotations:
    """Validate and load one LTA split file.

    Args:
        path: the split's JSON file.
        split: "train", "val" or "test".
        taxonomy: class names; label ranges are checked against it.
        labelled: whether labels are required (default: every split but "test").

    Raises:
        AnnotationError: naming the file, the record index and the field for any defect.
    """
    path = Path(path)
    labelled = split != "test" if labelled is None else labelled
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("clips"), list):
        raise AnnotationError(f"{path}: expected a JSON object with a 'clips' array (Ego4D LTA schema)")
    records = data["clips"]
    seen: dict[tuple[str, int], int] = {}
    for i, rec in enumerate(records):
        _validate_record(path, i, rec, labelled, taxonomy)
        ident = (rec["clip_uid"], rec["action_idx"])
        if ident in seen:
            raise AnnotationError(
                f"{path}: record {i} (clip_uid={ident[0]!r}, action_idx={ident[1]}): field 'action_idx': "
                f"duplicate (clip_uid, action_idx), first seen at record {seen[ident]}"
            )
        seen[ident] = i
    order = sorted(range(len(records)), key=lambda i: (records[i]["clip_uid"], records[i]["action_idx"]))
    rows = [records[i] for i in order]
    n = len(rows)
    clip_uid = np.array([r["clip_uid"] for r in rows], dtype=object)
    ann = SplitAnnotations(
        split=split,
        path=str(path),
        taxonomy=taxonomy,
        clip_uid=clip_uid,
        action_idx=np.array([r["action_idx"] for r in rows], dtype=np.int64).reshape(n),
        start_sec=np.array([r["action_clip_start_sec"] for r in rows], dtype=np.float64).reshape(n),
        end_sec=np.array([r["action_clip_end_sec"] for r in rows], dtype=np.float64).reshape(n),
        verb=np.array([r["verb_label"] if labelled else UNLABELLED for r in rows], dtype=np.int64).reshape(n),
        noun=np.array([r["noun_label"] if labelled else UNLABELLED for r in rows], dtype=np.int64).reshape(n),
        records=rows,
    )
    start = 0
    for r in range(1, n + 1):
        if r == n or clip_uid[r] != clip_uid[start]:
            ann.clip_slices[clip_uid[start]] = slice(start, r)
            start = r
    return ann


def annotation_path(data_dir: Path | str, split: str) -> Path:
    """`<data>/annotations/<split file>`; raises ValueError for an unknown split name."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; available: {sorted(SPLIT_FILES)}")
    return Path(data_dir) / ANNOTATION_DIR / SPLIT_FILES[split]


def load_split(data_dir: Path | str, split: str, taxonomy: Taxonomy | None = None) -> SplitAnnotations:
    """Load `<data>/annotations/fho_lta_<split>.json` with the taxonomy from the same folder."""
    path = annotation_path(data_dir, split)  # unknown split names fail before any file is read
    taxonomy = taxonomy or load_taxonomy(Path(data_dir) / ANNOTATION_DIR / TAXONOMY_FILE)
    return parse_split(path, split, taxonomy)
