"""Extraction into the feature store: decode every needed frame once, run every extractor, write per clip.

    run_extraction(data_dir=..., store_root=..., extractors=["slowfast_r101_8x8.ego4d", "clip_vit_b16.openai"],
                   splits=["train", "val", "test"], num_views=1, device="cuda", batch_size=32)

Flow: background decode threads take clips from a work list, probe them (PyAV), place every view's
window of every unfinished row for every extractor, decode the union of those frames once
(`decode.decode_rows`) and put each row's frames on a bounded queue. The main thread batches windows
per extractor (`batch_size` windows), runs the models under inference_mode (fp32, or bf16 autocast with
`precision="bf16"`) and
writes a clip's rows to each extractor's store once all of them are computed, so a killed run leaves
whole clips done or not done, and a re-run skips the filled rows (resume). With `shard=i/n` only the
chunk-aligned row range of shard i is processed, so shards can write one Zarr store concurrently.

Failures (missing, corrupt or too-short clips) go to `failures.jsonl` with the reason and do not stop
the run; the caller exits non-zero past `max_failed_frac`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from extract import decode
from extract.failures import append_failures
from extract.shard_lock import ShardLock, claim_layout
from features import interrupt
from features.interrupt import stop_requested

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class ExtractSummary:
    """Counts and rates of one run (printed as the closing line)."""

    rows_total: int = 0  # rows of this shard
    rows_done: int = 0
    rows_skipped: int = 0
    rows_failed: int = 0
    clips: int = 0
    clips_failed: int = 0
    video_sec: float = 0.0
    wall_sec: float = 0.0
    model_sec: float = 0.0
    wait_sec: float = 0.0  # main thread blocked on the decode queue
    loop_sec: float = 0.0  # decode + model + write, without model building / store creation
    windows: int = 0
    decode: decode.DecodeStats = field(default_factory=decode.DecodeStats)
    store_keys: list[str] = field(default_factory=list)
    failures_path: str = ""

    @property
    def windows_per_sec(self) -> float:
        return self.windows / max(self.wall_sec, 1e-9)

    def line(self) -> str:
        return (f"extract: rows {self.rows_done} done, {self.rows_skipped} skipped, {self.rows_failed} failed "
                f"(of {self.rows_total}) | clips {self.clips} ({self.clips_failed} failed) | "
                f"{self.video_sec / 3600:.3f} h video | {self.wall_sec:.1f} s wall | {self.windows_per_sec:.1f} windows/s | "
                f"decoded/used frames {self.decode.decoded_per_used:.2f} ({self.decode.frames_decoded}/{self.decode.frames_used}) | "
                f"model {self.model_sec:.1f} s, decode {self.decode.decode_sec:.1f} s, waited {self.wait_sec:.1f} s")


def store_spec(extractor_spec: dict, *, views: Sequence[decode.View], resize: dict | None, precision: str) -> dict:
    """Everything that changes the stored values: the extractor spec (with its sampling), the views,
    the resize and the precision ("fp32" | "bf16-autocast").

    `slots` lists the (N_in, slot) variants stored per view of slot-dependent features (SlowFast
    with slow_pathway=per_slot): view axis index = view * len(slots) + slot (features.store.slot_index).
    """
    return {"extractor": extractor_spec, "views": [[v.position, v.flip] for v in views],
            "resize": resize, "precision": precision,
            "slots": [list(map(int, s)) for s in extractor_spec.get("slots", ())]}


def open_stores(extractors: Sequence[Any], rows: Any, *, store_root: Path | str, views: Sequence[decode.View],
                resize: dict | None, precision: str, dtype: str = "float16", chunk_rows: int = 64) -> list[Any]:
    """Create (or reopen) one store per extractor under `store_root`."""
    from features.store import FeatureStore, cache_key, store_path

    stores = []
    for ext in extractors:
        spec = store_spec(ext.spec.to_dict(), views=views, resize=resize, precision=precision)
        path = store_path(store_root, cache_key(ext.spec.name, spec))
        stores.append(FeatureStore.create(path, name=ext.spec.name, spec=spec, rows=rows, view_shape=ext.spec.view_shape,
                                          num_views=len(views) * ext.spec.num_slots, dtype=dtype, chunk_rows=chunk_rows))
    return stores


@dataclass
class _ClipJob:
    clip_uid: str
    path: Path
    rows: np.ndarray  # rows of the RowTable needing work (sorted)
    todo: dict[str, np.ndarray]  # extractor name -> rows it still lacks (subset of rows)


def _requests(job: _ClipJob, rows: Any, specs: dict[str, Any], views: Sequence[decode.View],
              info: decode.ClipInfo) -> tuple[list[decode.WindowRequest], dict[int, str]]:
    """Window requests of a clip's rows; rows whose window lies outside the video -> {row: reason}."""
    flips = np.array([v.flip for v in views])
    requests, bad = [], {}
    for row in job.rows.tolist():
        frame_idx, windows = {}, {}
        try:
            for name, spec in specs.items():
                if row not in job.todo[name]:
                    continue
                ix, win = [], []
                for v in views:
                    kw = dict(num_frames=spec.window_frames, sampling_rate=spec.sampling_rate, target_fps=spec.target_fps,
                              position=v.position)
                    full = decode.window_frame_indices(rows.start_sec[row], rows.end_sec[row], info=info,
                                                       num_input_clips=min(spec.num_input_clips),
                                                       linspace=spec.linspace, **kw)
                    ix.append(decode.uniform_subsample(full, spec.num_frames, linspace=spec.linspace))
                    win.append(decode.window_bounds_sec(rows.start_sec[row], rows.end_sec[row], **kw))
                frame_idx[name], windows[name] = np.stack(ix), np.asarray(win)
        except decode.WindowOutOfRange as err:
            bad[row] = str(err)
            continue
        requests.append(decode.WindowRequest(row, frame_idx, windows, flips))
    return requests, bad


def _decode_worker(jobs: "queue.Queue", out: "queue.Queue", rows: Any, specs: dict, views: Sequence[decode.View],
                   stop: threading.Event) -> None:
    """Thread body: for each clip job, put ("row", uid, RowFrames) items then ("clip", uid, stats, info, bad, error)."""
    while not stop.is_set():
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            break
        stats, info, bad, error = decode.DecodeStats(), None, {}, ""
        try:
            info = decode.probe_clip(job.path)
            requests, bad = _requests(job, rows, specs, views, info)
            for item in decode.decode_rows(job.path, requests, info=info, stats_out=stats):
                while not stop.is_set():
                    try:
                        out.put(("row", job.clip_uid, item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except decode.DecodeError as err:
            error = str(err)
        except Exception as err:  # anything else about this clip is recorded, not fatal to the run
            error = f"{type(err).__name__}: {err}"
        out.put(("clip", job.clip_uid, stats, info, bad, error))
    out.put(_DONE)


def run_extraction(*, data_dir: Path | str, store_root: Path | str, extractors: Sequence[str],
                   splits: Sequence[str] = ("train", "val", "test"), num_views: int = 1, flip_views: bool = False,
                   device: str = "cpu", batch_size: int = 16, shard: int = 0, num_shards: int = 1,
                   weights: dict[str, str] | None = None, crop_size: int | None = None, decode_workers: int = 2,
                   queue_rows: int = 0, dtype: str = "float16", chunk_rows: int = 64, resized: bool = True,
                   failures_path: Path | str | None = None, progress: bool = True, lock: bool = True,
                   lock_wait_sec: float = 0.0, num_input_clips: Any = (2, 4), slow_pathway: str = "per_slot",
                   linspace: str = "torch19", precision: str = "fp32") -> ExtractSummary:
    """Extract `extractors` for every row of `splits` (shard `shard` of `num_shards`) into `store_root`.

    Args:
        weights: extractor name -> "default" | "random" | path (missing names: "default").
        crop_size: crop override for every extractor (CPU-sized runs; enters the cache key).
        queue_rows: bound of the decoded-row queue (0: 2 * batch_size).
        lock: hold the shard's lock (`extract.shard_lock`) while running; False when the caller holds it.
        lock_wait_sec: how long to wait for a shard lock another process holds before refusing.
        num_input_clips: N_in value(s) of the reference LTA loader to reproduce (all >= 2, or just 1);
            SlowFast with slow_pathway="per_slot" stores one variant per (N_in, slot) of every view.
        slow_pathway: "per_slot" (exact) | "slot_independent" (one variant, recognition slow frames).
        linspace: "torch19" (the reference's torch 1.9 frame picks) | "torch" (the installed torch).
        precision: "fp32" (the reference) | "bf16" (autocast).

    Returns:
        The summary; failures are appended to `failures_path` (default `<store_root>/failures.jsonl`).

    Raises:
        ShardLockedError: another process is running the same shard on `store_root` (nothing is written).
        ShardLayoutError: a store is unfinished and being written with another num_shards (nothing is written).
        Interrupted: SIGTERM / SIGINT (features.interrupt): the clips written so far are whole, the rest abandoned.
    """
    from tqdm import tqdm

    from extract.extractors import create_extractor
    from extract.resize import read_manifest
    from features.annotations import clip_path, load_split
    from features.store import RowTable

    t_start = time.perf_counter()
    weights = dict(weights or {})
    views = decode.make_views(num_views, flip=flip_views)
    anns = [load_split(data_dir, s) for s in splits]  # validates the annotations before any decoding
    rows = RowTable.from_annotations(anns)
    # one writer per shard: a second run of the same shard (a requeued job while the old one still runs)
    # would rewrite the same chunks and lose rows; it is refused here, before it writes anything
    with ShardLock(store_root, shard, num_shards, wait_sec=lock_wait_sec) if lock else contextlib.nullcontext():
        exts = [create_extractor(n, weights=weights.get(n, "default"), device=device, crop_size=crop_size,
                                 num_input_clips=tuple(np.atleast_1d(num_input_clips).tolist()),
                                 slow_pathway=slow_pathway, linspace=linspace,
                                 precision=precision) for n in extractors]
        stores = open_stores(exts, rows, store_root=store_root, views=views, resize=read_manifest(data_dir) if resized else None,
                             precision="bf16-autocast" if precision == "bf16" else "fp32", dtype=dtype,
                             chunk_rows=chunk_rows)
        for s in stores:  # one num_shards per unfinished store: shards of another split count overlap
            claim_layout(store_root, s.key, num_shards, finished=bool(s.filled().all()))
        failures_path = Path(failures_path) if failures_path else Path(store_root) / "failures.jsonl"
        summary = ExtractSummary(store_keys=[s.key for s in stores], failures_path=str(failures_path))
        lo, hi = stores[0].shard_range(shard, num_shards)
        summary.rows_total = hi - lo
        todo_mask = {e.spec.name: ~s.filled()[lo:hi] for e, s in zip(exts, stores)}
        any_todo = np.logical_or.reduce(list(todo_mask.values()))
        summary.rows_skipped = int((~any_todo).sum())

        # clip jobs: the rows of this shard that some extractor still lacks, grouped by clip
        jobs: queue.Queue = queue.Queue()
        todo_rows = lo + np.flatnonzero(any_todo)
        clip_rows: dict[str, list[int]] = {}
        for r in todo_rows.tolist():
            clip_rows.setdefault(str(rows.clip_uid[r]), []).append(r)
        failures: list[dict] = []
        for uid in list(clip_rows):
            arr = np.asarray(clip_rows[uid])
            try:
                path = clip_path(data_dir, uid, resized=resized)
            except ValueError as err:  # a clip file that is a link leading out of the data root
                failures.append({"stage": "extract", "clip_uid": uid, "rows": len(arr), "reason": str(err)})
                summary.clips_failed += 1
                summary.rows_failed += len(arr)
                del clip_rows[uid]
                continue
            jobs.put(_ClipJob(uid, path, arr, {n: set(arr[todo_mask[n][arr - lo]].tolist()) for n in todo_mask}))
        log.info("shard %d/%d rows [%d, %d): %d to do in %d clips, %d already filled; stores: %s",
                 shard, num_shards, lo, hi, len(todo_rows), len(clip_rows), summary.rows_skipped, summary.store_keys)

        specs = {e.spec.name: e.spec for e in exts}
        slots = {e.spec.name: e.spec.num_slots for e in exts}
        out: queue.Queue = queue.Queue(maxsize=queue_rows or 2 * batch_size)
        stop = threading.Event()
        workers = [threading.Thread(target=_decode_worker, args=(jobs, out, rows, specs, views, stop), daemon=True)
                   for _ in range(max(1, min(decode_workers, len(clip_rows))))] if clip_rows else []
        for w in workers:
            w.start()

        pending: dict[str, list[tuple[int, np.ndarray]]] = {e.spec.name: [] for e in exts}  # (row, (V, T, H, W, 3))
        computed: dict[str, dict[int, np.ndarray]] = {e.spec.name: {} for e in exts}
        windows: dict[str, dict[int, np.ndarray]] = {e.spec.name: {} for e in exts}
        closed: dict[str, dict] = {}  # clips whose decoding finished: uid -> rows expected per extractor

        def run_batches(name: str, ext: Any, flush: bool) -> None:
            items = pending[name]
            nv = len(views)
            while items and (flush or len(items) * nv >= batch_size):
                take = max(1, batch_size // nv)
                shape = items[0][1].shape  # clips of other sizes wait for a batch of their own
                picked = [i for i, (_, f) in enumerate(items) if f.shape == shape][:take]
                batch = [items[i] for i in picked]
                items[:] = [it for i, it in enumerate(items) if i not in set(picked)]
                frames = np.concatenate([f for _, f in batch])  # (B * V, T, H, W, 3)
                t0 = time.perf_counter()
                # (B * V, S, ...) -> (B, V * S, ...): view axis index = view * S + slot
                feats = ext.call_slots(frames).numpy().reshape(len(batch), nv * ext.spec.num_slots, *ext.spec.view_shape)
                summary.model_sec += time.perf_counter() - t0
                summary.windows += len(batch) * nv
                for (row, _), f in zip(batch, feats):
                    computed[name][row] = f

        def write_ready() -> None:
            for uid in list(closed):
                want = closed[uid]
                if any(r not in computed[n] for n, rs in want.items() for r in rs):
                    continue
                for ext, store in zip(exts, stores):
                    name = ext.spec.name
                    rs = sorted(want[name])
                    for run in np.split(np.asarray(rs, dtype=np.int64), np.flatnonzero(np.diff(rs) != 1) + 1) if rs else []:
                        store.write(int(run[0]), np.stack([computed[name].pop(r) for r in run.tolist()]),
                                    np.stack([windows[name].pop(r) for r in run.tolist()]))
                summary.rows_done += len(set().union(*want.values()))
                del closed[uid]
                bar.update(1)

        t_loop = time.perf_counter()
        bar = tqdm(total=len(clip_rows), desc="extract", unit="clip",
                   disable=None if progress else True)  # None: no bar into a pipe or a log file
        try:
            alive = len(workers)
            while alive and not stop_requested():
                t0 = time.perf_counter()
                try:
                    msg = out.get(timeout=0.2)  # wakes up to notice a stop signal (features.interrupt)
                except queue.Empty:
                    continue
                finally:
                    summary.wait_sec += time.perf_counter() - t0
                if msg is _DONE:
                    alive -= 1
                    continue
                if msg[0] == "row":
                    _, uid, item = msg
                    for name, frames in item.frames.items():
                        pending[name].append((item.row, frames))
                        windows[name][item.row] = np.repeat(item.windows_sec[name], slots[name], axis=0)  # (V * S, 2)
                    for ext in exts:
                        run_batches(ext.spec.name, ext, flush=False)
                    write_ready()
                    continue
                _, uid, stats, info, bad, error = msg
                summary.clips += 1
                summary.decode.add(stats)
                job_rows = clip_rows[uid]
                if info is not None:
                    summary.video_sec += info.duration_sec
                if error:
                    summary.clips_failed += 1
                    summary.rows_failed += len(job_rows)
                    failures.append({"stage": "extract", "clip_uid": uid, "rows": len(job_rows), "reason": error})
                    for name in pending:  # drop anything already decoded for this clip
                        pending[name] = [(r, f) for r, f in pending[name] if r not in set(job_rows)]
                        for r in job_rows:
                            computed[name].pop(r, None)
                            windows[name].pop(r, None)
                    bar.update(1)
                    continue
                for row, reason in bad.items():
                    summary.rows_failed += 1
                    failures.append({"stage": "extract", "clip_uid": uid, "action_idx": int(rows.action_idx[row]),
                                     "split": str(rows.split[row]), "reason": reason})
                good = set(job_rows) - set(bad)
                closed[uid] = {n: sorted(good & todo_rows_for(n, job_rows, todo_mask, lo)) for n in todo_mask}
                write_ready()
            if not stop_requested():
                for ext in exts:
                    run_batches(ext.spec.name, ext, flush=True)
                write_ready()
        finally:
            stop.set()
            bar.close()
            for s in stores:
                s.close()
            append_failures(failures_path, failures)
        summary.wall_sec = time.perf_counter() - t_start
        summary.loop_sec = time.perf_counter() - t_loop
        if stop_requested():  # SIGTERM / SIGINT: the clips written so far are whole; the others are abandoned
            err = interrupt.current().interrupted(f"{summary.rows_done} rows of shard {shard}/{num_shards} written "
                                                  f"({summary.rows_skipped} were already filled)")
            err.summary = summary
            raise err
        assert not closed, f"clips left unwritten: {list(closed)[:5]}"
        return summary


def todo_rows_for(name: str, job_rows: list[int], todo_mask: dict[str, np.ndarray], lo: int) -> set[int]:
    """The rows of `job_rows` that extractor `name` still lacks."""
    return {r for r in job_rows if todo_mask[name][r - lo]}


def verify_stores(store_root: Path | str, keys: Sequence[str], failures_path: Path | str | None = None) -> dict[str, int]:
    """Rows still unfilled per store key after a run (0 everywhere = complete)."""
    from features.store import FeatureStore, store_path

    missing = {}
    for key in keys:
        with FeatureStore.open(store_path(store_root, key)) as store:
            missing[key] = int((~store.filled()).sum())
    return missing
