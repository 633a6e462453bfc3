"""EPIC-KITCHENS-100 action segments -> the Ego4D LTA layout every command reads.

Input (the public `epic-kitchens-100-annotations` CSVs):
    EPIC_100_{train,validation}.csv (and files with the same columns, e.g. the UDA ones):
        narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,
        start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes
    EPIC_100_test_timestamps.csv: the same without the labels
    EPIC_100_{verb,noun}_classes.csv: id,key,instances,category

Output (features/annotations.py): `<out>/annotations/fho_lta_{train,val,test_unannotated}.json` and
`fho_lta_taxonomy.json`; one clip per `video_id` (clip_uid = video_id, clip-relative seconds = video
seconds), `action_idx` = rank by start time (ties by narration order, i.e. the integer suffix of
`narration_id`), and optionally `<out>/clips_hq/<video_id>.mp4` hard links (or copies) of
`<videos>/<participant>/videos/<video_id>.MP4`.

Every input row is validated before anything is written: a malformed row raises `AnnotationError`
naming the file, the line and the field, and the output folder is left as it was.
"""
from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from features.annotations import (
    ANNOTATION_DIR,
    RAW_CLIP_DIR,
    SPLIT_FILES,
    TAXONOMY_FILE,
    AnnotationError,
    _short,
    check_clip_uid,
)

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ("narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp")
LABEL_COLUMNS = ("verb_class", "noun_class")
CLASS_COLUMNS = ("id", "key")
_TIMESTAMP = re.compile(r"^(\d{1,3}):([0-5]\d):([0-5]\d(?:\.\d+)?)$")  # HH:MM:SS.ff
_INT = re.compile(r"^-?\d+$")
LINK_MODES = {"hard": os.link, "copy": shutil.copyfile}


def parse_timestamp(text: str) -> float:
    """`HH:MM:SS.ff` -> seconds; ValueError for anything else."""
    m = _TIMESTAMP.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"expected HH:MM:SS.ff, got {_short(text)}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


@dataclass
class Segment:
    narration_id: str
    participant_id: str
    video_id: str
    start_sec: float
    stop_sec: float
    start_frame: int | None
    stop_frame: int | None
    verb: int  # -1 when unlabelled
    noun: int
    verb_name: str
    noun_name: str
    order: tuple[int, int, int]  # (narration index, file position, line): the tie-break after start time
    where: str  # "file:line"


def _open_csv(path: Path, required: Sequence[str]):
    """(rows iterator with line numbers, header); errors name the file and the missing column."""
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    f = open(path, newline="", encoding="utf-8")
    try:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
    except (csv.Error, UnicodeDecodeError) as err:
        f.close()
        raise AnnotationError(f"{path}: line 1: not a readable CSV header ({err})") from None
    for col in required:
        if col not in header:
            f.close()
            raise AnnotationError(f"{path}: line 1: field '{col}': missing column (header: {_short(','.join(header), 200)})")
    return f, reader


def _rows(path: Path, f, reader):
    """Yield (line, row); a row with too few or too many cells is an error naming its line."""
    try:
        with f:
            for row in reader:
                line = reader.line_num
                if None in row:  # more cells than header columns
                    raise AnnotationError(f"{path}: line {line}: {len(row[None])} more cells than the header's columns")
                yield line, row
    except csv.Error as err:
        raise AnnotationError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: line {reader.line_num + 1}: not UTF-8 ({err})") from None


def _field(path: Path, line: int, row: dict, name: str) -> str:
    value = row.get(name)
    if value is None or value.strip() == "":
        raise AnnotationError(f"{path}: line {line}: field '{name}': missing value")
    return value.strip()


def read_classes(path: Path | str) -> tuple[str, ...]:
    """Class names by id from `EPIC_100_{verb,noun}_classes.csv`; ids must be exactly 0..n-1."""
    path = Path(path)
    f, reader = _open_csv(path, CLASS_COLUMNS)
    names: dict[int, tuple[str, int]] = {}
    for line, row in _rows(path, f, reader):
        raw = _field(path, line, row, "id")
        if not _INT.match(raw) or int(raw) < 0:
            raise AnnotationError(f"{path}: line {line}: field 'id': expected an integer >= 0, got {_short(raw)}")
        cid = int(raw)
        if cid in names:
            raise AnnotationError(f"{path}: line {line}: field 'id': duplicate id {cid}, first at line {names[cid][1]}")
        names[cid] = (_field(path, line, row, "key"), line)
    if not names:
        raise AnnotationError(f"{path}: no classes")
    missing = sorted(set(range(len(names))) - set(names))
    if missing:
        raise AnnotationError(f"{path}: field 'id': ids must be 0..{len(names) - 1} without gaps; missing {missing[:5]}")
    return tuple(names[i][0] for i in range(len(names)))


def read_segments(path: Path | str, *, labelled: bool, num_verbs: int, num_nouns: int, file_pos: int = 0) -> list[Segment]:
    """Validate and read one segment CSV (labelled: verb_class / noun_class required and in range)."""
    path = Path(path)
    f, reader = _open_csv(path, SEGMENT_COLUMNS + (LABEL_COLUMNS if labelled else ()))
    out = []
    for line, row in _rows(path, f, reader):
        get = lambda name: _field(path, line, row, name)  # noqa: E731
        narration_id, video_id = get("narration_id"), get("video_id")
        try:
            check_clip_uid(video_id)
        except ValueError as err:
            raise AnnotationError(f"{path}: line {line}: field 'video_id': {err}") from None
        secs = {}
        for name in ("start_timestamp", "stop_timestamp"):
            try:
                secs[name] = parse_timestamp(get(name))
            except ValueError as err:
                raise AnnotationError(f"{path}: line {line}: field '{name}': {err}") from None
        if secs["stop_timestamp"] < secs["start_timestamp"]:
            raise AnnotationError(f"{path}: line {line}: field 'stop_timestamp': {row['stop_timestamp']} is before "
                                  f"start_timestamp {row['start_timestamp']}")
        frames = {}
        for name in ("start_frame", "stop_frame"):
            raw = (row.get(name) or "").strip()
            if raw and (not _INT.match(raw) or int(raw) < 0):
                raise AnnotationError(f"{path}: line {line}: field '{name}': expected an integer >= 0, got {_short(raw)}")
            frames[name] = int(raw) if raw else None
        labels = {}
        for name, count in (("verb_class", num_verbs), ("noun_class", num_nouns)):
            if not labelled:
                labels[name] = -1
                continue
            raw = get(name)
            if not _INT.match(raw):
                raise AnnotationError(f"{path}: line {line}: field '{name}': expected an integer class id, got {_short(raw)}")
            if not 0 <= int(raw) < count:
                raise AnnotationError(f"{path}: line {line}: field '{name}': class id {raw} out of range [0, {count})")
            labels[name] = int(raw)
        suffix = narration_id.rsplit("_", 1)[-1]
        order = (int(suffix) if narration_id.startswith(video_id + "_") and suffix.isdigit() else -1, file_pos, line)
        out.append(Segment(narration_id, get("participant_id"), video_id, secs["start_timestamp"], secs["stop_timestamp"],
                           frames["start_frame"], frames["stop_frame"], labels["verb_class"], labels["noun_class"],
                           (row.get("verb") or "").strip(), (row.get("noun") or "").strip(), order, f"{path}:{line}"))
    return out


def convert(split_files: dict[str, Sequence[Path | str]], verb_classes: Path | str, noun_classes: Path | str) -> dict[str, dict]:
    """Validate every file and build the Ego4D documents: annotation file name -> JSON document.

    `split_files` maps "train" / "val" / "test" to CSV paths (test rows need no labels; a split
    without files gets an empty `clips` list). Raises `AnnotationError` for the first defect.
    """
    verbs, nouns = read_classes(verb_classes), read_classes(noun_classes)
    docs: dict[str, dict] = {TAXONOMY_FILE: {"verbs": list(verbs), "nouns": list(nouns)}}
    seen_narration: dict[str, str] = {}
    video_split: dict[str, tuple[str, str]] = {}
    file_pos = 0
    for split in SPLIT_FILES:
        segments: list[Segment] = []
        for path in split_files.get(split, ()):
            for seg in read_segments(path, labelled=split != "test", num_verbs=len(verbs), num_nouns=len(nouns),
                                     file_pos=file_pos):
                if seg.narration_id in seen_narration:
                    raise AnnotationError(f"{seg.where.rsplit(':', 1)[0]}: line {seg.where.rsplit(':', 1)[1]}: field "
                                          f"'narration_id': duplicate {seg.narration_id!r}, first at {seen_narration[seg.narration_id]}")
                seen_narration[seg.narration_id] = seg.where
                other = video_split.setdefault(seg.video_id, (split, seg.where))
                if other[0] != split:
                    raise AnnotationError(f"{seg.where.rsplit(':', 1)[0]}: line {seg.where.rsplit(':', 1)[1]}: field "
                                          f"'video_id': {seg.video_id!r} is in split {split} and in split {other[0]} ({other[1]})")
                segments.append(seg)
            file_pos += 1
        segments.sort(key=lambda s: (s.video_id, s.start_sec, s.order))
        records = []
        idx, prev_video = 0, None
        for seg in segments:
            idx = idx + 1 if seg.video_id == prev_video else 0
            prev_video = seg.video_id
            rec = {"clip_uid": seg.video_id, "video_uid": seg.video_id, "action_idx": idx,
                   "action_clip_start_sec": seg.start_sec, "action_clip_end_sec": seg.stop_sec,
                   "clip_parent_start_sec": 0.0, "narration_id": seg.narration_id, "participant_id": seg.participant_id}
            if seg.start_frame is not None:
                rec["action_clip_start_frame"] = seg.start_frame
            if seg.stop_frame is not None:
                rec["action_clip_end_frame"] = seg.stop_frame
            if split != "test":
                rec.update(verb=verbs[seg.verb], noun=nouns[seg.noun], verb_label=seg.verb, noun_label=seg.noun)
            records.append(rec)
        docs[SPLIT_FILES[split]] = {"version": "epic-kitchens-100", "split": split, "clips": records}
    return docs


def video_links(docs: dict[str, dict], videos_root: Path | str) -> tuple[dict[str, Path], list[str]]:
    """clip_uid -> EK100 video path (`<root>/<participant>/videos/<video_id>.MP4`), and the videos not found."""
    root = Path(videos_root)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in SPLIT_FILES.values():
        for rec in docs[name]["clips"]:
            uid = rec["clip_uid"]
            if uid in found or uid in missing:
                continue
            folder = root / rec["participant_id"] / "videos"
            candidates = [folder / f"{uid}.MP4", folder / f"{uid}.mp4"]
            hit = next((p for p in candidates if p.is_file()), None)
            if hit is None:
                missing.append(uid)
            else:
                found[uid] = hit.resolve()
    return found, missing


def write_dataset(out: Path | str, docs: dict[str, dict], *, links: dict[str, Path] | None = None,
                  link_mode: str = "hard", overwrite: bool = False) -> Path:
    """Write the `clips_hq/` links, then `<out>/annotations/` as one unit (temp folder, then rename).

    Links are hard links (`link_mode="hard"`: the videos must be on the same filesystem as `out`) or
    copies (`"copy"`); symbolic links would lead outside the data root, which the pipeline refuses for
    safety (features.annotations.safe_join). They are made in a temp folder and moved in only when all
    succeeded. An existing annotations folder or a different existing clip is replaced only with
    `overwrite`; otherwise it is an error and nothing is touched.
    """
    out = Path(out)
    final = out / ANNOTATION_DIR
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=true to replace it")
    if link_mode not in LINK_MODES:
        raise ValueError(f"unknown link mode {link_mode!r}; available: {list(LINK_MODES)}")
    out.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    if links:
        clips = out / RAW_CLIP_DIR
        todo = {}
        for uid, target in links.items():
            link = clips / f"{check_clip_uid(uid)}.mp4"
            if link.exists():
                if os.path.samefile(link, target):
                    continue
                if not overwrite:
                    raise FileExistsError(f"{link} exists and is not {target}; pass overwrite=true to replace it")
            todo[link] = target
        staging = out / f".{RAW_CLIP_DIR}.tmp-{pid}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            for link, target in todo.items():
                try:
                    LINK_MODES[link_mode](target, staging / link.name)
                except OSError as err:
                    hint = " (hard links need one filesystem: use link=copy or put out= on the videos' filesystem)" \
                        if err.errno == errno.EXDEV else ""
                    raise OSError(err.errno, f"cannot {link_mode}-link {target} to {link}: {err.strerror}{hint}") from None
            clips.mkdir(exist_ok=True)
            for link in todo:
                os.replace(staging / link.name, link)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    tmp = out / f".{ANNOTATION_DIR}.tmp-{pid}"
    old = out / f".{ANNOTATION_DIR}.old-{pid}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, doc in docs.items():
            with open(tmp / name, "w") as f:
                json.dump(doc, f, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def summary(docs: dict[str, dict]) -> dict:
    """Clips and segments per split, and the taxonomy size."""
    out = {"num_verbs": len(docs[TAXONOMY_FILE]["verbs"]), "num_nouns": len(docs[TAXONOMY_FILE]["nouns"])}
    for split, name in SPLIT_FILES.items():
        recs = docs[name]["clips"]
        out[split] = {"clips": len({r["clip_uid"] for r in recs}), "segments": len(recs)}
    return out
