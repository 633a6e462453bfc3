"""Extraction into the feature store: decode every needed frame once, run every extractor, write per clip.

    run_extraction(ExtractOptions(data_dir=..., store_root=..., extractors=["slowfast_r101_8x8.ego4d", "clip_vit_b16.openai"],
                                  splits=["train", "val", "test"], num_views=1, device="cuda", batch_size=32))

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
class ExtractOptions:
    """Everything `run_extraction` needs, in five groups. `lta extract` builds it from its config
    (pipelines/cmd_extract.py `extract_options`, whose keys carry the help); bench/ builds it directly."""

    # what to extract, from where, into where
    data_dir: Path | str
    store_root: Path | str
    extractors: Sequence[str]
    splits: Sequence[str] = ("train", "val", "test")
    resized: bool = True  # read clips/ (False: clips_hq/)
    weights: dict[str, str] | None = None  # extractor name -> "default" | "random" | path (missing names: "default")
    # decoding, the models and the store layout: what is stored, and how
    num_views: int = 1
    flip_views: bool = False
    crop_size: int | None = None  # crop override for every extractor (CPU-sized runs)
    num_input_clips: Any = (2, 4)  # N_in value(s) of the reference LTA loader (all >= 2, or just 1); SlowFast
    #   with slow_pathway="per_slot" stores one variant per (N_in, slot) of every view
    slow_pathway: str = "per_slot"  # "per_slot" (exact) | "slot_independent" (one variant, recognition slow frames)
    linspace: str = "torch19"  # "torch19" (the reference's torch 1.9 frame picks) | "torch" (the installed torch)
    precision: str = "fp32"  # "fp32" (the reference) | "bf16" (autocast)
    dtype: str = "float16"  # stored dtype
    chunk_rows: int = 64  # store chunk rows (the unit of a shard's row range)
    # devices and batching
    device: str = "cpu"
    batch_size: int = 16  # windows per model forward
    decode_workers: int = 2  # background decode threads
    queue_rows: int = 0  # bound of the decoded-row queue (0: 2 * batch_size)
    progress: bool = True  # tqdm bar over clips (never into a pipe or a log file)
    # sharding: which rows, and the shard's lock (extract.shard_lock)
    shard: int = 0
    num_shards: int = 1
    lock: bool = True  # hold the shard's lock while running; False when the caller holds it
    lock_wait_sec: float = 0.0  # how long to wait for a lock another process holds before refusing
    # failure policy: bad clips and rows are recorded here and the run carries on
    failures_path: Path | str | None = None  # default `<store_root>/failures.jsonl`


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


def run_extraction(opts: ExtractOptions) -> ExtractSummary:
    """Extract `opts.extractors` for every row of `opts.splits` (shard `opts.shard` of `opts.num_shards`).

    Steps: load the rows; under the shard lock build the models and open the stores; plan the clips whose rows
    some store lacks; decode them in background threads while the main thread runs the models and writes whole
    clips; record the failures; close with the summary.

    Returns:
        The summary; failures are appended to `opts.failures_path` (default `<store_root>/failures.jsonl`).

    Raises:
        ShardLockedError: another process is running the same shard on `store_root` (nothing is written).
        ShardLayoutError: a store is unfinished and being written with another num_shards (nothing is written).
        Interrupted: SIGTERM / SIGINT (features.interrupt): the clips written so far are whole, the rest abandoned.
    """
    t_start = time.perf_counter()
    views = decode.make_views(opts.num_views, flip=opts.flip_views)
    rows = _load_rows(opts)
    # one writer per shard: a second run of the same shard (a requeued job while the old one still runs)
    # would rewrite the same chunks and lose rows; it is refused here, before it writes anything
    lock = ShardLock(opts.store_root, opts.shard, opts.num_shards, wait_sec=opts.lock_wait_sec) if opts.lock \
        else contextlib.nullcontext()
    with lock:
        exts = _build_extractors(opts)
        stores = _open_claimed_stores(opts, exts, rows, views)
        failures_path = Path(opts.failures_path) if opts.failures_path else Path(opts.store_root) / "failures.jsonl"
        summary = ExtractSummary(store_keys=[s.key for s in stores], failures_path=str(failures_path))
        failures = _Failures(summary, rows)
        plan = _plan(opts, rows, exts, stores, failures)
        summary.rows_total, summary.rows_skipped = plan.hi - plan.lo, plan.skipped
        log.info("shard %d/%d rows [%d, %d): %d to do in %d clips, %d already filled; stores: %s",
                 opts.shard, opts.num_shards, plan.lo, plan.hi, plan.num_todo, len(plan.clip_rows),
                 summary.rows_skipped, summary.store_keys)
        decoders = _Decoders(plan, rows, exts, views, opts)
        t_loop = time.perf_counter()
        loop = _ModelLoop(exts, stores, views, opts, plan, summary, failures)
        try:
            loop.run(decoders)
        finally:
            decoders.stop.set()
            loop.close()
            failures.write(failures_path)
        return _finish(summary, t_start=t_start, t_loop=t_loop, opts=opts, unwritten=loop.closed)


def _load_rows(opts: ExtractOptions) -> Any:
    """The RowTable of `opts.splits` (validates the annotations before any decoding)."""
    from features.annotations import load_split
    from features.store import RowTable

    return RowTable.from_annotations([load_split(opts.data_dir, s) for s in opts.splits])


def _build_extractors(opts: ExtractOptions) -> list[Any]:
    from extract.extractors import create_extractor

    weights = dict(opts.weights or {})
    return [create_extractor(n, weights=weights.get(n, "default"), device=opts.device, crop_size=opts.crop_size,
                             num_input_clips=tuple(np.atleast_1d(opts.num_input_clips).tolist()),
                             slow_pathway=opts.slow_pathway, linspace=opts.linspace,
                             precision=opts.precision) for n in opts.extractors]


def _open_claimed_stores(opts: ExtractOptions, exts: Sequence[Any], rows: Any, views: Sequence[decode.View]) -> list[Any]:
    """One store per extractor (created or reopened, header written), each claimed for `opts.num_shards`."""
    from extract.resize import read_manifest

    stores = open_stores(exts, rows, store_root=opts.store_root, views=views,
                         resize=read_manifest(opts.data_dir) if opts.resized else None,
                         precision="bf16-autocast" if opts.precision == "bf16" else "fp32", dtype=opts.dtype,
                         chunk_rows=opts.chunk_rows)
    for s in stores:  # one num_shards per unfinished store: shards of another split count overlap
        claim_layout(opts.store_root, s.key, opts.num_shards, finished=bool(s.filled().all()))
    return stores


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


class _Failures:
    """The failures.jsonl records of a run and the summary counts they add; written once, at the end."""

    def __init__(self, summary: ExtractSummary, rows: Any):
        self.records: list[dict] = []
        self.summary, self.rows = summary, rows

    def clip(self, uid: str, num_rows: int, reason: str) -> None:
        """A clip none of whose `num_rows` rows can be extracted (missing, corrupt, outside the data root)."""
        self.summary.clips_failed += 1
        self.summary.rows_failed += num_rows
        self.records.append({"stage": "extract", "clip_uid": uid, "rows": num_rows, "reason": reason})

    def row(self, uid: str, row: int, reason: str) -> None:
        """One row of a readable clip (its window lies outside the video)."""
        self.summary.rows_failed += 1
        self.records.append({"stage": "extract", "clip_uid": uid, "action_idx": int(self.rows.action_idx[row]),
                             "split": str(self.rows.split[row]), "reason": reason})

    def write(self, path: Path) -> None:
        append_failures(path, self.records)


@dataclass
class _ClipJob:
    clip_uid: str
    path: Path
    rows: np.ndarray  # rows of the RowTable needing work (sorted)
    todo: dict[str, np.ndarray]  # extractor name -> rows it still lacks (subset of rows)


@dataclass
class _Plan:
    """The work of one shard: rows [lo, hi) of the RowTable, of which `clip_rows` still lack some store."""

    lo: int
    hi: int
    skipped: int  # rows every store already holds
    todo_mask: dict[str, np.ndarray]  # extractor name -> rows of [lo, hi) its store lacks
    clip_rows: dict[str, list[int]]  # clip uid -> its rows some store lacks (clips that can be read)
    jobs: list[_ClipJob]  # one per clip of clip_rows, in the same order
    num_todo: int  # rows some store lacks, with those of clips that failed in planning

    def todo_rows(self, name: str, job_rows: list[int]) -> set[int]:
        """The rows of `job_rows` that extractor `name` still lacks."""
        return {r for r in job_rows if self.todo_mask[name][r - self.lo]}


def _plan(opts: ExtractOptions, rows: Any, exts: Sequence[Any], stores: Sequence[Any], failures: _Failures) -> _Plan:
    """The shard's rows that some store lacks, grouped by clip (resume: filled rows are skipped).

    A clip whose file cannot be located (a link leading out of the data root) is recorded as failed here.
    """
    from features.annotations import clip_path

    lo, hi = stores[0].shard_range(opts.shard, opts.num_shards)
    todo_mask = {e.spec.name: ~s.filled()[lo:hi] for e, s in zip(exts, stores)}
    any_todo = np.logical_or.reduce(list(todo_mask.values()))
    todo_rows = lo + np.flatnonzero(any_todo)
    clip_rows: dict[str, list[int]] = {}
    for r in todo_rows.tolist():
        clip_rows.setdefault(str(rows.clip_uid[r]), []).append(r)
    jobs = []
    for uid in list(clip_rows):
        arr = np.asarray(clip_rows[uid])
        try:
            path = clip_path(opts.data_dir, uid, resized=opts.resized)
        except ValueError as err:  # a clip file that is a link leading out of the data root
            failures.clip(uid, len(arr), str(err))
            del clip_rows[uid]
            continue
        jobs.append(_ClipJob(uid, path, arr, {n: set(arr[todo_mask[n][arr - lo]].tolist()) for n in todo_mask}))
    return _Plan(lo, hi, int((~any_todo).sum()), todo_mask, clip_rows, jobs, len(todo_rows))


class _Decoders:
    """The background decode threads (`_decode_worker`) of a plan's clips and the queue they fill."""

    def __init__(self, plan: _Plan, rows: Any, exts: Sequence[Any], views: Sequence[decode.View],
                 opts: ExtractOptions):
        jobs: queue.Queue = queue.Queue()
        for job in plan.jobs:
            jobs.put(job)
        specs = {e.spec.name: e.spec for e in exts}
        self.out: queue.Queue = queue.Queue(maxsize=opts.queue_rows or 2 * opts.batch_size)
        self.stop = threading.Event()
        num = max(1, min(opts.decode_workers, len(plan.clip_rows))) if plan.clip_rows else 0
        self.workers = [threading.Thread(target=_decode_worker, args=(jobs, self.out, rows, specs, views, self.stop),
                                         daemon=True) for _ in range(num)]
        for w in self.workers:
            w.start()


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


class _ModelLoop:
    """The main thread's side: batches decoded rows per extractor through its model and writes a clip's rows
    to every store once all of them are computed (so a killed run leaves whole clips done or not done)."""

    def __init__(self, exts: Sequence[Any], stores: Sequence[Any], views: Sequence[decode.View],
                 opts: ExtractOptions, plan: _Plan, summary: ExtractSummary, failures: _Failures):
        from tqdm import tqdm

        self.exts, self.stores, self.nv, self.batch_size = list(exts), list(stores), len(views), opts.batch_size
        self.plan, self.summary, self.failures = plan, summary, failures
        self.slots = {e.spec.name: e.spec.num_slots for e in exts}
        self.pending: dict[str, list[tuple[int, np.ndarray]]] = {e.spec.name: [] for e in exts}  # (row, (V, T, H, W, 3))
        self.computed: dict[str, dict[int, np.ndarray]] = {e.spec.name: {} for e in exts}
        self.windows: dict[str, dict[int, np.ndarray]] = {e.spec.name: {} for e in exts}
        self.closed: dict[str, dict] = {}  # clips whose decoding finished: uid -> rows expected per extractor
        self.bar = tqdm(total=len(plan.clip_rows), desc="extract", unit="clip",
                        disable=None if opts.progress else True)  # None: no bar into a pipe or a log file

    def run(self, decoders: _Decoders) -> None:
        """Take decoders' messages until every worker is done (or a stop is requested), then flush."""
        alive = len(decoders.workers)
        while alive and not stop_requested():
            t0 = time.perf_counter()
            try:
                msg = decoders.out.get(timeout=0.2)  # wakes up to notice a stop signal (features.interrupt)
            except queue.Empty:
                continue
            finally:
                self.summary.wait_sec += time.perf_counter() - t0
            if msg is _DONE:
                alive -= 1
            elif msg[0] == "row":
                self._add_row(msg[2])
            else:
                self._close_clip(*msg[1:])
        if not stop_requested():
            for ext in self.exts:
                self._run_batches(ext, flush=True)
            self._write_ready()

    def close(self) -> None:
        self.bar.close()
        for s in self.stores:
            s.close()

    def _add_row(self, item: decode.RowFrames) -> None:
        for name, frames in item.frames.items():
            self.pending[name].append((item.row, frames))
            self.windows[name][item.row] = np.repeat(item.windows_sec[name], self.slots[name], axis=0)  # (V * S, 2)
        for ext in self.exts:
            self._run_batches(ext, flush=False)
        self._write_ready()

    def _close_clip(self, uid: str, stats: decode.DecodeStats, info: decode.ClipInfo | None, bad: dict[int, str],
                    error: str) -> None:
        """A clip's decoding finished: count it, record its failures, and mark its good rows for writing."""
        self.summary.clips += 1
        self.summary.decode.add(stats)
        job_rows = self.plan.clip_rows[uid]
        if info is not None:
            self.summary.video_sec += info.duration_sec
        if error:
            self.failures.clip(uid, len(job_rows), error)
            self._drop(job_rows)
            self.bar.update(1)
            return
        for row, reason in bad.items():
            self.failures.row(uid, row, reason)
        good = set(job_rows) - set(bad)
        self.closed[uid] = {n: sorted(good & self.plan.todo_rows(n, job_rows)) for n in self.plan.todo_mask}
        self._write_ready()

    def _drop(self, job_rows: list[int]) -> None:
        """Drop anything already decoded or computed for the rows of a failed clip."""
        for name in self.pending:
            self.pending[name] = [(r, f) for r, f in self.pending[name] if r not in set(job_rows)]
            for r in job_rows:
                self.computed[name].pop(r, None)
                self.windows[name].pop(r, None)

    def _run_batches(self, ext: Any, flush: bool) -> None:
        """Run `ext` on its pending windows, `batch_size` at a time (with `flush` the last partial batch too)."""
        name, nv = ext.spec.name, self.nv
        items = self.pending[name]
        while items and (flush or len(items) * nv >= self.batch_size):
            take = max(1, self.batch_size // nv)
            shape = items[0][1].shape  # clips of other sizes wait for a batch of their own
            picked = [i for i, (_, f) in enumerate(items) if f.shape == shape][:take]
            batch = [items[i] for i in picked]
            items[:] = [it for i, it in enumerate(items) if i not in set(picked)]
            frames = np.concatenate([f for _, f in batch])  # (B * V, T, H, W, 3)
            t0 = time.perf_counter()
            # (B * V, S, ...) -> (B, V * S, ...): view axis index = view * S + slot
            feats = ext.call_slots(frames).numpy().reshape(len(batch), nv * ext.spec.num_slots, *ext.spec.view_shape)
            self.summary.model_sec += time.perf_counter() - t0
            self.summary.windows += len(batch) * nv
            for (row, _), f in zip(batch, feats):
                self.computed[name][row] = f

    def _write_ready(self) -> None:
        """Write every closed clip whose rows are all computed, one run of consecutive rows at a time."""
        for uid in list(self.closed):
            want = self.closed[uid]
            if any(r not in self.computed[n] for n, rs in want.items() for r in rs):
                continue
            for ext, store in zip(self.exts, self.stores):
                name = ext.spec.name
                rs = sorted(want[name])
                for run in np.split(np.asarray(rs, dtype=np.int64), np.flatnonzero(np.diff(rs) != 1) + 1) if rs else []:
                    store.write(int(run[0]), np.stack([self.computed[name].pop(r) for r in run.tolist()]),
                                np.stack([self.windows[name].pop(r) for r in run.tolist()]))
            self.summary.rows_done += len(set().union(*want.values()))
            del self.closed[uid]
            self.bar.update(1)


def _finish(summary: ExtractSummary, *, t_start: float, t_loop: float, opts: ExtractOptions,
            unwritten: dict) -> ExtractSummary:
    """Stamp the times; raise Interrupted (carrying the summary) after a stop signal."""
    summary.wall_sec = time.perf_counter() - t_start
    summary.loop_sec = time.perf_counter() - t_loop
    if stop_requested():  # SIGTERM / SIGINT: the clips written so far are whole; the others are abandoned
        err = interrupt.current().interrupted(f"{summary.rows_done} rows of shard {opts.shard}/{opts.num_shards} "
                                              f"written ({summary.rows_skipped} were already filled)")
        err.summary = summary
        raise err
    assert not unwritten, f"clips left unwritten: {list(unwritten)[:5]}"
    return summary


def verify_stores(store_root: Path | str, keys: Sequence[str], failures_path: Path | str | None = None) -> dict[str, int]:
    """Rows still unfilled per store key after a run (0 everywhere = complete)."""
    from features.store import FeatureStore, store_path

    missing = {}
    for key in keys:
        with FeatureStore.open(store_path(store_root, key)) as store:
            missing[key] = int((~store.filled()).sum())
    return missing
