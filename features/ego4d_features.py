"""Import the official Ego4D pre-extracted video features (one `<video_uid>.pt` per video) into a store.

The Ego4D CLI (`--datasets slowfast8x8_r101_k400`, `omnivore_video_swinl`, ...) ships one tensor
(num_windows, D) per parent video: window i covers frames [i * stride, i * stride + window) at
`fps`, i.e. seconds [i * stride / fps, (i * stride + window) / fps) of the parent video
(slowfast8x8_r101_k400: window 32, stride 16, fps 30, D 2304; ../shared/reference/ego4d_lta.md §6).

Each LTA action segment (clip-relative times) is mapped to the parent video with the record's
`clip_parent_start_sec`; the windows overlapping the segment are its candidates, and view v takes
the candidate nearest to where extraction would put view v's window (`view_positions`: view 0
centred, then start, end, quarters, ...). Rows are written through the feature store, so stage
two cannot tell an imported store from an extracted one. Segments without features (missing or
unreadable video file, no overlapping window, no parent-time fields) are left unfilled and written
to `<store root>/failures.jsonl`; nothing is zero-filled.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from features.annotations import check_clip_uid, load_split, safe_join
from features.files import file_sha256
from features.store import FeatureStore, RowTable, cache_key, store_path
from features.windows import view_positions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportParams:
    """How the official features were computed and how many views each row takes."""

    name: str = "slowfast8x8_r101_k400"
    window_frames: int = 32
    stride_frames: int = 16
    fps: float = 30.0
    num_views: int = 3

    def __post_init__(self) -> None:
        if self.window_frames < 1 or self.stride_frames < 1 or self.fps <= 0 or self.num_views < 1:
            raise ValueError(f"invalid import parameters {self}")


def segment_windows(start_sec: np.ndarray, end_sec: np.ndarray, num_windows: int,
                    params: ImportParams) -> np.ndarray:
    """Feature-window index of each view of each segment, -1 where no window overlaps the segment.

    Args:
        start_sec, end_sec: (S,) segment bounds in parent-video seconds.
        num_windows: windows in the video's feature file.

    Returns:
        (S, V) int64 window indices.
    """
    window, stride = params.window_frames, params.stride_frames
    s_f = np.round(np.asarray(start_sec, np.float64) * params.fps, 6)  # (S,) frames; rounding absorbs float fuzz
    e_f = np.maximum(np.round(np.asarray(end_sec, np.float64) * params.fps, 6), s_f + 1e-3)  # a point segment still overlaps
    # window i spans frames [i*stride, i*stride + window); it overlaps [s, e) when i*stride < e and i*stride + window > s
    first = np.maximum(np.floor((s_f - window) / stride).astype(np.int64) + 1, 0)
    last = np.minimum(np.ceil(e_f / stride).astype(np.int64) - 1, num_windows - 1)
    ok = first <= last
    out = np.full((len(s_f), params.num_views), -1, dtype=np.int64)
    for v, pos in enumerate(view_positions(params.num_views)):
        # where extraction would start view v's window (extract/decode.window_bounds_sec), snapped to the grid:
        # view 0 (position 0.5) is the reference test sampler, centred on the segment without clamp (a short
        # segment's window runs past both ends); other positions follow the train sampler's clamped start
        spare = e_f - s_f - window if pos == 0.5 else np.maximum(e_f - s_f - window, 0.0)
        t0_f = s_f + pos * spare
        nearest = np.floor(t0_f / stride + 0.5).astype(np.int64)
        out[:, v] = np.where(ok, np.clip(nearest, first, np.maximum(last, first)), -1)
    return out


def load_video_features(path: Path) -> np.ndarray:
    """(num_windows, D) float32 from an official `.pt` file, loaded safely (tensors only)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path}: expected a tensor (num_windows, D), got {type(obj).__name__}")
    if obj.ndim != 2 or obj.shape[0] == 0:
        raise ValueError(f"{path}: expected a tensor of shape (num_windows, D), got {tuple(obj.shape)}")
    return obj.to(torch.float32).numpy()


@dataclass
class ImportSummary:
    """What an import did; `text()` is the console summary."""

    store: str = ""
    key: str = ""
    rows: int = 0
    written: int = 0
    already_done: int = 0
    failed: int = 0
    videos_loaded: int = 0
    videos_missing: int = 0
    reasons: dict = field(default_factory=dict)  # reason -> count
    failures_path: str = ""  # where the failed segments are listed (`<store_root>/failures.jsonl`)
    wall_sec: float = 0.0

    @property
    def failed_frac(self) -> float:
        return self.failed / max(self.rows, 1)

    def text(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) or "none"
        return (f"import-ego4d -> {self.store}\n  rows {self.rows} | written {self.written} | already done "
                f"{self.already_done} | failed {self.failed} ({reasons})\n  videos loaded {self.videos_loaded}, "
                f"missing {self.videos_missing} | {self.wall_sec:.1f} s")


def _parent_times(anns: Sequence) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Per row: clip_parent_start_sec (NaN when absent), whether it is present, video_uid (None when absent)."""
    records = [r for a in anns for r in a.records]
    parent = np.array([np.nan if r.get("clip_parent_start_sec") is None else r["clip_parent_start_sec"] for r in records],
                      dtype=np.float64).reshape(len(records))
    return parent, np.isfinite(parent), [r.get("video_uid") for r in records]


def import_ego4d_features(data_dir: str | Path, features_dir: str | Path, store_root: str | Path, *,
                          params: ImportParams = ImportParams(), splits: Sequence[str] = ("train", "val", "test"),
                          dtype: str = "float16", chunk_rows: int = 64) -> ImportSummary:
    """Write the official per-video features of every segment of `splits` into `<store_root>/<key>.zarr`.

    The cache key covers `params`, the splits and a sha256 of every feature file used, so new or
    changed files give a new store. Re-running resumes: rows already done are skipped and videos
    whose rows are all done are not loaded. Memory holds one video's features at a time plus the
    rows of unfinished chunks.
    """
    t0 = time.perf_counter()
    features_dir, store_root = Path(features_dir), Path(store_root)
    if not features_dir.is_dir():
        raise FileNotFoundError(f"features_dir {features_dir} is not a directory")
    anns = [load_split(data_dir, s) for s in splits]
    rows = RowTable.from_annotations(anns)
    parent_start, has_parent, video_uid = _parent_times(anns)
    failures: list[dict] = []

    def fail(r: int, reason: str, detail: str = "") -> None:
        failures.append({"stage": "import-ego4d", "split": str(rows.split[r]), "clip_uid": str(rows.clip_uid[r]),
                         "action_idx": int(rows.action_idx[r]), "video_uid": video_uid[r], "reason": reason, "detail": detail})

    # video_uid -> rows; rows without parent-time fields fail up front
    by_video: dict[str, list[int]] = {}
    for r in range(len(rows)):
        if video_uid[r] is None or not has_parent[r]:
            fail(r, "no video_uid/clip_parent_start_sec in the annotation record")
            continue
        by_video.setdefault(check_clip_uid(video_uid[r]), []).append(r)
    files = {uid: safe_join(features_dir, f"{uid}.pt") for uid in by_video}
    present = sorted(uid for uid, p in files.items() if p.is_file())
    missing = sorted(set(files) - set(present))
    for uid in missing:
        for r in by_video[uid]:
            fail(r, "video feature file missing", str(files[uid]))
    if not present:
        raise FileNotFoundError(f"none of the {len(files)} video feature files needed by {splits} is in {features_dir} "
                                f"(e.g. {files[next(iter(files))] if files else 'no rows'})")
    log.info("hashing %d feature files in %s", len(present), features_dir)
    digest = hashlib.sha256("\n".join(f"{uid} {file_sha256(files[uid])}" for uid in present).encode()).hexdigest()
    dim = load_video_features(files[present[0]]).shape[1]
    spec = {"source": "ego4d_official_features", **asdict(params), "splits": list(splits), "feature_dim": int(dim),
            "files_sha256": digest, "num_files": len(present)}
    key = cache_key(params.name, spec)
    store = FeatureStore.create(store_path(store_root, key), name=params.name, spec=spec, rows=rows, view_shape=(dim,),
                                num_views=params.num_views, dtype=dtype, chunk_rows=chunk_rows)
    summary = ImportSummary(store=str(store.path), key=key, rows=len(rows), videos_missing=len(missing),
                            failures_path=str(store_root / "failures.jsonl"))
    done = store.filled()
    summary.already_done = int(done.sum())

    # rows are computed video by video and written chunk by chunk once a chunk has nothing pending
    pending = np.zeros(-(-len(rows) // chunk_rows), dtype=np.int64)  # (num_chunks,) rows still to compute
    for r in np.flatnonzero(~done):
        if video_uid[r] is not None and has_parent[r] and video_uid[r] in present:
            pending[r // chunk_rows] += 1
    buf_feats: dict[int, np.ndarray] = {}
    buf_wins: dict[int, np.ndarray] = {}

    def flush_chunk(c: int) -> None:
        ready = sorted(r for r in buf_feats if r // chunk_rows == c)
        if ready:
            runs = np.split(np.array(ready), np.flatnonzero(np.diff(ready) != 1) + 1)
            for run in runs:
                store.write(int(run[0]), np.stack([buf_feats.pop(int(r)) for r in run]),
                            np.stack([buf_wins.pop(int(r)) for r in run]))
            summary.written += len(ready)

    for uid in sorted(present, key=lambda u: min(by_video[u])):  # row order, so chunks complete early
        todo = np.array([r for r in by_video[uid] if not done[r]], dtype=np.int64)
        if len(todo) == 0:
            continue
        try:
            feats = load_video_features(files[uid])  # (num_windows, D)
            if feats.shape[1] != dim:
                raise ValueError(f"{files[uid]}: feature dim {feats.shape[1]}, other files have {dim}")
            if not np.isfinite(feats).all():
                raise ValueError(f"{files[uid]}: non-finite values")
        except Exception as err:  # one unreadable file fails its segments, not the import
            feats = None
            for r in todo:
                fail(int(r), "video feature file unreadable", str(err))
        summary.videos_loaded += feats is not None
        if feats is not None:
            seg_start = parent_start[todo] + rows.start_sec[todo]  # (S,) parent-video seconds
            seg_end = parent_start[todo] + rows.end_sec[todo]
            idx = segment_windows(seg_start, seg_end, len(feats), params)  # (S, V)
            for r, views in zip(todo, idx):
                if (views < 0).any():
                    fail(int(r), "no feature window overlaps the segment",
                         f"segment [{parent_start[r] + rows.start_sec[r]:.3f}, {parent_start[r] + rows.end_sec[r]:.3f}] s, "
                         f"{len(feats)} windows = {((len(feats) - 1) * params.stride_frames + params.window_frames) / params.fps:.3f} s")
                    continue
                buf_feats[int(r)] = feats[views]  # (V, D)
                w0 = views * params.stride_frames / params.fps - parent_start[r]  # clip-relative, like extraction
                buf_wins[int(r)] = np.stack([w0, w0 + params.window_frames / params.fps], axis=1)  # (V, 2)
        for r in todo:
            c = int(r) // chunk_rows
            pending[c] -= 1
            if pending[c] == 0:
                flush_chunk(c)
    for c in sorted({r // chunk_rows for r in buf_feats}):
        flush_chunk(c)
    store.close()

    summary.failed = len(failures)
    for f in failures:
        summary.reasons[f["reason"]] = summary.reasons.get(f["reason"], 0) + 1
    if failures:
        store_root.mkdir(parents=True, exist_ok=True)
        with open(summary.failures_path, "a") as fh:
            for f in failures:
                fh.write(json.dumps(dict(f, key=key)) + "\n")
        log.warning("%d of %d segments have no features (%s); listed in %s", len(failures), len(rows),
                    summary.reasons, summary.failures_path)
    summary.wall_sec = time.perf_counter() - t0
    return summary
