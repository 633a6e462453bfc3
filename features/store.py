"""The feature store: one self-describing, resumable array store per extractor configuration.

A store root holds many keys side by side, `<root>/<key>.zarr` (Zarr v3, default) or `<root>/<key>.h5`.
`key = cache_key(name, spec)` hashes everything that changes the values, so a changed spec never
reuses stale features. Rows are action segments (`RowTable`); each row holds `V` views of a fixed
per-extractor shape and the time window each view was computed from.

Write protocol (crash safety, see `FeatureStore.write`): clear the done-mask of rows being
overwritten, write and flush the data, then set the done-mask. A row counts as present only when
its mask byte is set, so a killed writer leaves at worst unfinished rows, which a re-run redoes.
Several processes may write one Zarr store without locks when their row ranges are disjoint and
chunk-aligned (`shard_range`); HDF5 has one writer per file: write shards with `shard_path`, then
`merge_stores`.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from features.store_backends import ATTRS_KEY, StoreCorruptError, backend_for, disk_size  # noqa: F401 (re-export)
from features.version import code_version

SCHEMA_VERSION = 1
log = logging.getLogger(__name__)


class StoreError(ValueError):
    """A store that does not match what the caller asked for (schema, key, rows, shape)."""


class StoreWriteError(OSError):
    """Rows that could not be written (disk full, file size limit, I/O error); rows written before stay valid."""


class MissingRowsError(LookupError):
    """Rows requested from a store that were never written (or whose write did not finish)."""


def _canonical_json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise StoreError(f"feature spec must be JSON-serialisable (str/int/float/bool/list/dict): {err}") from None


def cache_key(name: str, spec: dict) -> str:
    """`<name>-<sha256(canonical JSON of spec + schema version)[:10]>`; any spec change gives a new key."""
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise StoreError(f"extractor name {name!r} must be non-empty, without '/', '\\', spaces or a leading '.'")
    digest = hashlib.sha256(_canonical_json({"schema_version": SCHEMA_VERSION, "spec": spec}).encode()).hexdigest()
    return f"{name}-{digest[:10]}"


@dataclass
class RowTable:
    """One row per action segment, in a deterministic order (splits as given, then clip_uid, action_idx)."""

    clip_uid: np.ndarray  # (R,) str
    action_idx: np.ndarray  # (R,) int64
    split: np.ndarray  # (R,) str
    start_sec: np.ndarray  # (R,) float64, clip-relative
    end_sec: np.ndarray  # (R,) float64
    _index: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.clip_uid = np.asarray(self.clip_uid).astype(object).astype(str)
        self.split = np.asarray(self.split).astype(object).astype(str)
        self.action_idx = np.asarray(self.action_idx, dtype=np.int64)
        self.start_sec = np.asarray(self.start_sec, dtype=np.float64)
        self.end_sec = np.asarray(self.end_sec, dtype=np.float64)
        n = len(self.clip_uid)
        for name in ("action_idx", "split", "start_sec", "end_sec"):
            if getattr(self, name).shape != (n,):
                raise StoreError(f"RowTable.{name} has shape {getattr(self, name).shape}, expected ({n},)")

    @classmethod
    def from_annotations(cls, anns: Sequence[Any]) -> "RowTable":
        """Rows of several `SplitAnnotations`: splits in the given order, each sorted by (clip_uid, action_idx)."""
        return cls(
            clip_uid=np.concatenate([np.asarray(a.clip_uid).astype(str) for a in anns]) if anns else np.zeros(0, "U1"),
            action_idx=np.concatenate([a.action_idx for a in anns]) if anns else np.zeros(0, np.int64),
            split=np.concatenate([np.full(len(a.action_idx), a.split) for a in anns]) if anns else np.zeros(0, "U1"),
            start_sec=np.concatenate([a.start_sec for a in anns]) if anns else np.zeros(0),
            end_sec=np.concatenate([a.end_sec for a in anns]) if anns else np.zeros(0),
        )

    def __len__(self) -> int:
        return len(self.action_idx)

    def take(self, index: np.ndarray) -> "RowTable":
        """The rows at `index` (int array or bool mask), in that order."""
        return RowTable(self.clip_uid[index], self.action_idx[index], self.split[index],
                        self.start_sec[index], self.end_sec[index])

    def same_as(self, other: "RowTable") -> bool:
        return len(self) == len(other) and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in ("clip_uid", "action_idx", "split", "start_sec", "end_sec")
        )

    def keys(self, index: np.ndarray | None = None) -> list[str]:
        """`<clip_uid>_<action_idx>` of the rows at `index` (all rows by default)."""
        sel = slice(None) if index is None else index
        return [f"{c}_{a}" for c, a in zip(self.clip_uid[sel], self.action_idx[sel])]

    def lookup(self, clip_uid: np.ndarray, action_idx: np.ndarray) -> np.ndarray:
        """Row index of each (clip_uid, action_idx) pair, -1 where absent; vectorised (two searchsorted)."""
        if self._index is None:
            uids, codes = np.unique(self.clip_uid, return_inverse=True)
            stride = int(self.action_idx.max()) + 1 if len(self) else 1
            composite = codes.astype(np.int64) * stride + self.action_idx  # (R,) unique per segment
            order = np.argsort(composite, kind="stable")
            dup = np.flatnonzero(np.diff(composite[order]) == 0)
            if len(dup):
                r = order[dup[0]]
                raise StoreError(f"RowTable has duplicate (clip_uid, action_idx), e.g. ({self.clip_uid[r]!r}, {self.action_idx[r]})")
            self._index = (uids, stride, composite[order], order)
        uids, stride, sorted_comp, order = self._index
        q_uid = np.asarray(clip_uid).astype(str)
        q_act = np.asarray(action_idx, dtype=np.int64)
        if len(self) == 0:
            return np.full(q_uid.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(uids, q_uid), len(uids) - 1)
        ok = (uids[pos] == q_uid) & (q_act >= 0) & (q_act < stride)
        comp = pos.astype(np.int64) * stride + np.where(ok, q_act, 0)
        j = np.minimum(np.searchsorted(sorted_comp, comp), len(sorted_comp) - 1)
        ok &= sorted_comp[j] == comp
        return np.where(ok, order[j], -1).astype(np.int64)


def _library_versions() -> dict[str, str]:
    import platform

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("zarr", "h5py"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def _check_name(path: Path, key: str) -> None:
    """A store's file name must be its key (`<key>.zarr`), or a shard file inside `<key>.shards/`."""
    if path.stem != key and path.parent.name != f"{key}.shards":
        raise StoreError(f"{path}: file name does not match the store's cache key {key!r} (expected {key}{path.suffix})")


class FeatureStore:
    """A feature store on disk. Build with `create` (writers) or `open` (readers); see the module docstring."""

    def __init__(self, path: Path, backend: Any, attrs: dict, rows: RowTable, mode: str):
        self.path = path
        self._backend = backend
        self.attrs = attrs
        self.rows = rows
        self.mode = mode
        self.key: str = attrs["key"]
        self.name: str = attrs["name"]
        self.spec: dict = json.loads(attrs["spec_json"])
        self.num_rows: int = len(rows)
        self.num_views: int = int(attrs["num_views"])
        self.view_shape: tuple = tuple(attrs["view_shape"])
        self.feature_shape: tuple = (self.num_views, *self.view_shape)
        self.dtype: str = attrs["dtype"]
        self.chunk_rows: int = int(attrs["chunk_rows"])
        # slot-dependent features (SlowFast, reference LTA slow pathway): (N_in, slot) of each variant per view
        self.slots: list[tuple[int, int]] = [(int(n), int(j)) for n, j in self.spec.get("slots", [])]
        if self.slots and self.num_views % len(self.slots):
            raise StoreError(f"{path}: {self.num_views} views is not a multiple of its {len(self.slots)} slots")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, name: str, spec: dict, rows: RowTable, view_shape: tuple[int, ...],
               num_views: int, dtype: str = "float16", chunk_rows: int = 64, fsync: bool = True,
               provenance: dict | None = None) -> "FeatureStore":
        """Create the store at `path` (suffix picks the backend), or open it if it already holds the same key and rows.

        `provenance`: the attrs of the store these features come from (a copy, `merge_stores`); its
        `created`, `code_version` and `libraries` are kept instead of now / this code's.

        Creation is atomic: the store is built under a temporary name and renamed into place, so
        concurrent `create` calls from several shards agree on one store.

        Raises:
            StoreError: `path` exists with another key, other rows or another shape; or the file
                name is not `<key>.<suffix>`.
        """
        path = Path(path)
        backend_cls = backend_for(path)
        if dtype not in ("float16", "float32"):
            raise StoreError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        if num_views < 1 or chunk_rows < 1 or any(int(d) < 1 for d in view_shape):
            raise StoreError(f"need num_views >= 1, chunk_rows >= 1 and positive view_shape, got {num_views}, {chunk_rows}, {view_shape}")
        key = cache_key(name, spec)
        _check_name(path, key)
        if not path.exists():
            attrs = {
                "schema_version": SCHEMA_VERSION, "key": key, "name": name, "spec_json": _canonical_json(spec),
                "num_views": int(num_views), "view_shape": [int(d) for d in view_shape], "dtype": dtype,
                "chunk_rows": int(chunk_rows), "num_rows": len(rows), "splits": sorted(set(rows.split.tolist())),
                "code_version": code_version(), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "libraries": _library_versions(),
            }
            attrs.update({k: provenance[k] for k in ("created", "code_version", "libraries") if k in (provenance or {})})
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                backend_cls.create(tmp, attrs=attrs, rows=rows, feature_shape=(int(num_views), *map(int, view_shape)),
                                   dtype=dtype, chunk_rows=int(chunk_rows))
                _publish(tmp, path)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        store = cls.open(path, "r+", fsync=fsync)
        want = (tuple(map(int, view_shape)), int(num_views), dtype, int(chunk_rows))
        have = (store.view_shape, store.num_views, store.dtype, store.chunk_rows)
        if have != want:
            raise StoreError(f"{path}: exists with (view_shape, num_views, dtype, chunk_rows)={have}, asked for {want}")
        if not store.rows.same_as(rows):
            raise StoreError(f"{path}: exists with a different row table ({store.num_rows} rows vs {len(rows)} asked); "
                             "rows are fixed at creation")
        return store

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", *, fsync: bool = True) -> "FeatureStore":
        """Open an existing store ("r" read-only, "r+" to write).

        Raises:
            FileNotFoundError: no store at `path`.
            StoreError: another schema version, or key / file name / spec disagree.
            StoreCorruptError: unreadable metadata or row table.
        """
        path = Path(path)
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no feature store here")
        backend = backend_for(path)(path, mode, fsync=fsync)
        attrs = backend.attrs
        if not attrs:
            raise StoreCorruptError(f"{path}: no '{ATTRS_KEY}' attributes; not a feature store")
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{path}: written with store schema version {attrs.get('schema_version')}, "
                             f"this code reads version {SCHEMA_VERSION}; re-extract or convert it")
        key = attrs["key"]
        recomputed = cache_key(attrs["name"], json.loads(attrs["spec_json"]))
        if recomputed != key:
            raise StoreError(f"{path}: stored key {key!r} does not match its spec (hash gives {recomputed!r})")
        _check_name(path, key)
        rows = RowTable(**backend.read_rows())
        if len(rows) != attrs["num_rows"]:
            raise StoreCorruptError(f"{path}: row table has {len(rows)} rows, attributes say {attrs['num_rows']}")
        return cls(path, backend, attrs, rows, mode)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, rows={self.num_rows}, shape={self.feature_shape}, dtype={self.dtype})"

    # -- writing -------------------------------------------------------------------------------
    def shard_range(self, shard: int, num_shards: int) -> tuple[int, int]:
        """Row range [start, stop) of shard `shard` of `num_shards`: whole chunks, disjoint, covering all rows."""
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} not in [0, {num_shards})")
        num_chunks = -(-self.num_rows // self.chunk_rows)
        lo, hi = shard * num_chunks // num_shards, (shard + 1) * num_chunks // num_shards
        return min(lo * self.chunk_rows, self.num_rows), min(hi * self.chunk_rows, self.num_rows)

    def write(self, start: int, features: np.ndarray, windows_sec: np.ndarray) -> None:
        """Write rows [start, start+n): features (n, V, *view_shape), windows_sec (n, V, 2) start/end seconds.

        Order: (1) clear the done-mask of any of these rows already marked done, (2) write the data
        and flush it to disk, (3) set the done-mask. Concurrent writers must own whole chunks
        (`shard_range`); one writer may write partial chunks in any order.

        Raises:
            ValueError: wrong shape, rows out of range, or non-finite values (after the dtype cast).
            StoreWriteError: the filesystem refused the write (full disk, quota, file size limit); the
                rows stay unfinished (mask 0) and every other row keeps its value.
        """
        if self.mode != "r+":
            raise StoreError(f"{self.path}: opened read-only; use FeatureStore.create or open(path, 'r+') to write")
        features = np.asarray(features)
        n = len(features)
        if features.shape[1:] != self.feature_shape:
            raise ValueError(f"{self.path}: features shape {features.shape}, expected (n, {', '.join(map(str, self.feature_shape))})")
        windows_sec = np.asarray(windows_sec, dtype=np.float64)
        if windows_sec.shape != (n, self.num_views, 2):
            raise ValueError(f"{self.path}: windows_sec shape {windows_sec.shape}, expected ({n}, {self.num_views}, 2)")
        stop = start + n
        if start < 0 or stop > self.num_rows:
            raise ValueError(f"{self.path}: rows [{start}, {stop}) outside [0, {self.num_rows})")
        if n == 0:
            return
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below
            cast = features.astype(self.dtype, copy=False)
        bad = ~np.isfinite(cast.reshape(n, -1)).all(axis=1)
        if bad.any():
            r = start + int(np.flatnonzero(bad)[0])
            raise ValueError(f"{self.path}: {int(bad.sum())} rows have non-finite features after casting to {self.dtype}, "
                             f"first row {r} ({self.rows.clip_uid[r]}, action_idx {self.rows.action_idx[r]})")
        try:
            if self._backend.read_done(slice(start, stop)).any():
                self._backend.write_done(start, stop, 0)
            self._backend.write_data(start, stop, cast, windows_sec)
            self._backend.write_done(start, stop, 1)
        except OSError as err:
            raise StoreWriteError(err.errno, f"{self.path}: cannot write rows [{start}, {stop}): {err.strerror or err}; "
                                  "rows written before are intact: free space and re-run to resume") from None

    # -- reading -------------------------------------------------------------------------------
    def filled(self) -> np.ndarray:
        """(R,) bool: rows whose write completed."""
        return self._backend.read_done()

    def _read(self, rows: np.ndarray | slice, reader: Any, allow_missing: bool) -> np.ndarray:
        index = np.arange(self.num_rows)[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        if index.ndim != 1:
            raise ValueError(f"rows must be a slice or a 1-d index array, got shape {index.shape}")
        if len(index) and (index.min() < 0 or index.max() >= self.num_rows):
            raise IndexError(f"{self.path}: row index out of range [0, {self.num_rows})")
        done = self.filled()[index]  # the mask first: a row set done after it is not reported (a concurrent writer)
        out = _read_runs(reader, index)
        if not done.all():
            if not allow_missing:
                raise MissingRowsError(f"{self.path}: {int((~done).sum())} of {len(index)} requested rows are not filled, "
                                       f"e.g. {self.rows.keys(index[~done][:5])}")
            out[~done] = np.nan
        return out

    def read(self, rows: np.ndarray | slice, *, allow_missing: bool = False) -> np.ndarray:
        """Features of `rows` (slice or int index array), shape (n, V, *view_shape).

        Raises:
            MissingRowsError: a requested row is not filled (with `allow_missing`, it reads as NaN).
            StoreCorruptError: a chunk cannot be read back.
        """
        return self._read(rows, self._backend.read_features, allow_missing)

    def read_windows(self, rows: np.ndarray | slice, *, allow_missing: bool = False) -> np.ndarray:
        """Window start/end seconds of `rows`, shape (n, V, 2)."""
        return self._read(rows, self._backend.read_windows, allow_missing)

    def verify(self) -> dict:
        """Read every filled row chunk by chunk; report rows that are unreadable or non-finite.

        Returns:
            {"filled": int, "total": int, "bad_rows": [row...], "errors": [message...], "temp_files": int}
        """
        done = self.filled()
        bad: list[int] = []
        errors: list[str] = []
        for lo in range(0, self.num_rows, self.chunk_rows):
            hi = min(lo + self.chunk_rows, self.num_rows)
            if not done[lo:hi].any():
                continue
            try:
                feats = self._backend.read_features(slice(lo, hi))
                wins = self._backend.read_windows(slice(lo, hi))
            except StoreCorruptError as err:
                errors.append(str(err))
                bad.extend(int(r) for r in np.flatnonzero(done[lo:hi]) + lo)
                continue
            finite = np.isfinite(feats.reshape(hi - lo, -1)).all(1) & np.isfinite(wins.reshape(hi - lo, -1)).all(1)
            bad.extend(int(r) for r in np.flatnonzero(done[lo:hi] & ~finite) + lo)
        return {"filled": int(done.sum()), "total": self.num_rows, "bad_rows": bad, "errors": errors,
                "temp_files": len(self._backend.leftover_temp_files())}

    def disk_bytes(self) -> int:
        return disk_size(self.path)


def _publish(tmp: Path, path: Path) -> None:
    """Move a freshly built store into place; if another process got there first, keep theirs."""
    import os

    try:
        if tmp.is_dir():
            os.rename(tmp, path)  # fails (ENOTEMPTY/EEXIST) when `path` is a non-empty directory
        else:
            os.link(tmp, path)  # fails (EEXIST) when `path` exists
            tmp.unlink()
    except OSError:
        if not path.exists():
            raise


def _read_runs(reader: Any, index: np.ndarray) -> np.ndarray:
    """reader(slice) over each run of consecutive indices, concatenated in `index` order."""
    if len(index) == 0:
        return reader(slice(0, 0))
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(index)]])
    if len(starts) > max(8, len(index) // 16):  # scattered rows: one bulk read of the span, then numpy take
        lo, hi = int(index.min()), int(index.max()) + 1
        return reader(slice(lo, hi))[index - lo]
    parts = [reader(slice(int(index[a]), int(index[b - 1]) + 1)) for a, b in zip(starts, stops)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def slot_views(slots: Sequence[tuple[int, int]], num_views: int, num_input: int) -> np.ndarray:
    """(V_temporal, num_input) view-axis indices of input position j (slot j of N_in = num_input).

    A store of slot-dependent features holds, for temporal view v, one variant per (N_in, slot) of
    `slots` at index v * len(slots) + slots.index((N_in, j)); without slots, view v is index v for
    every position.

    Raises:
        StoreError: the store holds no variant for N_in = num_input (it was extracted for other N_in).
    """
    if not slots:
        return np.repeat(np.arange(num_views)[:, None], num_input, axis=1)
    have = sorted({n for n, _ in slots})
    missing = [(num_input, j) for j in range(num_input) if (num_input, j) not in slots]
    if missing:
        raise StoreError(f"the store holds slow-pathway variants for N_in in {have} only, the head has num_input="
                         f"{num_input}; extract with num_input_clips=[..., {num_input}] (or slow_pathway=slot_independent)")
    s = len(slots)
    pos = np.array([slots.index((num_input, j)) for j in range(num_input)])
    return np.arange(num_views // s)[:, None] * s + pos[None, :]


def store_path(root: str | Path, key: str, backend: str = "zarr") -> Path:
    """`<root>/<key>.zarr` (or `.h5`)."""
    return Path(root) / f"{key}.{backend}"


def shard_path(path: str | Path, shard: int, num_shards: int) -> Path:
    """Per-shard HDF5 file of a store, `<root>/<key>.shards/<shard>-of-<num_shards>.h5`; merge with `merge_stores`."""
    path = Path(path)
    return path.parent / f"{path.stem}.shards" / f"{shard:03d}-of-{num_shards:03d}.h5"


def store_paths(root: str | Path) -> list[Path]:
    """Store paths directly under `root`, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: store root is not a directory")
    return sorted(p for p in root.iterdir() if p.suffix in (".zarr", ".h5") and not p.name.startswith("."))


def open_root(root: str | Path) -> list[FeatureStore]:
    """Open (read-only) every store under `root`."""
    return [FeatureStore.open(p) for p in store_paths(root)]


def merge_stores(sources: Sequence[str | Path], dst: str | Path, *, chunk_rows: int | None = None) -> FeatureStore:
    """Copy the filled rows of `sources` (same key and rows) into `dst` (created or resumed; any backend).

    Used by `lta store export` (one source) and to merge per-shard HDF5 files. Rows already done in
    `dst` are skipped, so an interrupted merge resumes.
    """
    srcs = [FeatureStore.open(p) for p in sources]
    if not srcs:
        raise ValueError("merge_stores needs at least one source")
    first = srcs[0]
    for s in srcs[1:]:
        if s.key != first.key or not s.rows.same_as(first.rows):
            raise StoreError(f"cannot merge {s.path} into {dst}: key/rows differ from {first.path}")
    out = FeatureStore.create(dst, name=first.name, spec=first.spec, rows=first.rows, view_shape=first.view_shape,
                              num_views=first.num_views, dtype=first.dtype, chunk_rows=chunk_rows or first.chunk_rows,
                              provenance=dict(first.attrs))  # an export keeps when and by which code the features were made
    done = out.filled()
    step = max(out.chunk_rows, first.chunk_rows)
    for s in srcs:
        s_done = s.filled() & ~done
        for lo in range(0, s.num_rows, step):
            hi = min(lo + step, s.num_rows)
            todo = np.flatnonzero(s_done[lo:hi]) + lo
            if len(todo) == 0:
                continue
            feats, wins = s.read(slice(lo, hi), allow_missing=True), s.read_windows(slice(lo, hi), allow_missing=True)
            breaks = np.flatnonzero(np.diff(todo) != 1) + 1
            for run in np.split(todo, breaks):
                out.write(int(run[0]), feats[run - lo], wins[run - lo])
            done[todo] = True
    for s in srcs:
        s.close()
    return out


@dataclass
class LoadedFeatures:
    """Features of one or several keys over common rows, in memory.

    `arrays[key]` is (R, V, *view_shape); rows with `valid[key] == False` hold NaN, never zeros.
    `missing[key]` = (count, example `<clip_uid>_<action_idx>` keys) of rows not filled.
    """

    keys: list[str]
    arrays: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    rows: RowTable
    windows_sec: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    slots: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # key -> FeatureStore.slots ([] = none)
    flips: dict[str, list[bool]] = field(default_factory=dict)  # key -> flip flag per temporal view (spec "views")

    def lookup(self, clip_uid: np.ndarray, action_idx: np.ndarray) -> np.ndarray:
        """Row index of each (clip_uid, action_idx), -1 where absent (vectorised)."""
        return self.rows.lookup(clip_uid, action_idx)


def load_features(paths: Sequence[str | Path], *, splits: Sequence[str] | None = None) -> LoadedFeatures:
    """Load all rows of `splits` (all splits when None) of one or several stores into contiguous arrays.

    The rows are those of the first store (restricted to `splits`); the other stores are aligned to
    them by (clip_uid, action_idx). Rows that a store lacks or has not filled are reported (logged
    and in `missing`), marked invalid and set to NaN.
    """
    if not paths:
        raise ValueError("load_features needs at least one store path")
    stores = [FeatureStore.open(p) for p in paths]
    base = stores[0]
    if splits is None:
        sel = np.arange(base.num_rows)
    else:
        unknown = sorted(set(splits) - set(base.rows.split.tolist()))
        if unknown:
            raise StoreError(f"{base.path}: no rows of split(s) {unknown}; the store holds {sorted(set(base.rows.split.tolist()))}")
        sel = np.flatnonzero(np.isin(base.rows.split, list(splits)))
    rows = base.rows.take(sel)
    out = LoadedFeatures(keys=[], arrays={}, valid={}, rows=rows)
    for store in stores:
        if store.key in out.arrays:
            raise StoreError(f"{store.path}: key {store.key} given twice")
        src = sel if store is base else store.rows.lookup(rows.clip_uid, rows.action_idx)  # (R,) row in `store` or -1
        present = src >= 0
        idx = src[present]
        valid = np.zeros(len(rows), dtype=bool)
        valid[present] = store.filled()[idx]
        if present.all() and np.all(np.diff(idx) > 0):  # the common case: rows in on-disk order, read in place
            feats = _read_runs(store._backend.read_features, idx)
            wins = _read_runs(store._backend.read_windows, idx)
        else:  # other row order or absent rows: read in on-disk order, scatter back
            order = np.argsort(idx, kind="stable")
            feats = np.full((len(rows), *store.feature_shape), np.nan, dtype=store.dtype)
            wins = np.full((len(rows), store.num_views, 2), np.nan)
            feats[np.flatnonzero(present)[order]] = _read_runs(store._backend.read_features, idx[order])
            wins[np.flatnonzero(present)[order]] = _read_runs(store._backend.read_windows, idx[order])
        feats[~valid], wins[~valid] = np.nan, np.nan
        out.keys.append(store.key)
        out.arrays[store.key], out.windows_sec[store.key], out.valid[store.key] = feats, wins, valid
        out.slots[store.key] = list(store.slots)
        views = store.spec.get("views")  # extracted stores: [[position, flip], ...] per temporal view
        out.flips[store.key] = [bool(v[1]) for v in views] if isinstance(views, list) else []  # []: none flipped
        n_missing = int((~valid).sum())
        if n_missing:
            examples = rows.keys(np.flatnonzero(~valid)[:5])
            out.missing[store.key] = (n_missing, examples)
            log.warning("%s: %d of %d rows missing (not extracted or not in the store), e.g. %s",
                        store.path, n_missing, len(rows), examples)
        store.close()
    return out
