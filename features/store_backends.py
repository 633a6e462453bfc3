"""On-disk backends of the feature store: Zarr v3 (default, many writers) and HDF5 (single writer).

Both hold the same arrays; `features/store.py` holds the API and the write ordering:

    features     (R, V, *view_shape) float16|float32   chunked (chunk_rows, V, *view_shape)
    windows_sec  (R, V, 2) float64                     start/end second of each view's window
    done         (R,) uint8                            completion mask, chunked by chunk_rows too
    rows/{clip_uid, action_idx, split, start_sec, end_sec}   the row table, written once at creation

Zarr: every chunk carries a crc32c checksum, so a torn or truncated chunk file is an error, never
data. All reads go through zarr's own API (decode and checksum included; a private chunk reader was
measured at under 1.6x on `lta train-heads` start-up at Ego4D v2 scale and removed, see
bench/store_startup.py and the README benchmarks). zarr's LocalStore writes a chunk to a temporary file and renames it, and `fsync=True` flushes
the data chunks to disk before the mask chunk that marks them done is written.

HDF5: contiguous datasets allocated at creation (file space reserved, no fill written), so writing
rows only overwrites raw bytes at fixed offsets and never touches the file's metadata; a process
killed mid-write leaves the metadata intact and at worst some rows' bytes torn, and those rows'
mask bytes are still 0 (the mask is written, and flushed, after the data).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

ATTRS_KEY = "lta_feature_store"
ROW_FIELDS = ("clip_uid", "action_idx", "split", "start_sec", "end_sec")


class StoreCorruptError(RuntimeError):
    """A store whose files cannot be read back (truncated or torn chunk, bad checksum, bad metadata)."""


def _row_arrays(rows: Any) -> dict[str, np.ndarray]:
    return {f: np.asarray(getattr(rows, f)) for f in ROW_FIELDS}


class ZarrBackend:
    """A Zarr v3 group on a local or shared filesystem; disjoint chunk-aligned writers need no locks."""

    suffix = ".zarr"

    def __init__(self, path: Path, mode: str, *, fsync: bool = True):
        import zarr

        self.path = Path(path)
        self.fsync = fsync
        try:
            self.group = zarr.open_group(str(self.path), mode="r" if mode == "r" else "r+")
            self.features = self.group["features"]
            self.windows = self.group["windows_sec"]
            self.done = self.group["done"]
        except Exception as err:  # zarr raises several types for missing/garbled metadata
            raise StoreCorruptError(f"{self.path}: not a readable feature store ({type(err).__name__}: {err})") from None

    @classmethod
    def create(cls, path: Path, *, attrs: dict, rows: Any, feature_shape: tuple, dtype: str, chunk_rows: int) -> None:
        import zarr
        from zarr.codecs import Crc32cCodec

        num_rows = len(rows)
        group = zarr.open_group(str(path), mode="w-")
        group.attrs[ATTRS_KEY] = attrs
        chunk = max(1, min(chunk_rows, num_rows))
        crc = [Crc32cCodec()]  # uncompressed (float features barely compress) + checksum per chunk
        group.create_array("features", shape=(num_rows, *feature_shape), dtype=dtype,
                           chunks=(chunk, *feature_shape), compressors=crc, fill_value=np.nan)
        group.create_array("windows_sec", shape=(num_rows, feature_shape[0], 2), dtype="float64",
                           chunks=(chunk, feature_shape[0], 2), compressors=crc, fill_value=np.nan)
        group.create_array("done", shape=(num_rows,), dtype="uint8", chunks=(chunk,), compressors=crc, fill_value=0)
        row_group = group.create_group("rows")
        for name, values in _row_arrays(rows).items():
            dt = str if values.dtype.kind in "UOT" else values.dtype
            arr = row_group.create_array(name, shape=values.shape, dtype=dt, chunks=(max(1, len(values)),), compressors=crc)
            if len(values):
                arr[:] = values.astype(str) if dt is str else values

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs.get(ATTRS_KEY, {}))

    def read_rows(self) -> dict[str, np.ndarray]:
        out = {}
        for name in ROW_FIELDS:
            arr = self._get(self.group["rows"][name], slice(None), f"rows/{name}")
            out[name] = arr.astype(object).astype(str) if name in ("clip_uid", "split") else arr
        return out

    def _get(self, arr: Any, sel: slice, what: str) -> np.ndarray:
        """`arr[sel]` through zarr's own decode (crc32c checked); a failure names the first bad chunk file."""
        try:
            return arr[sel]
        except Exception as err:  # crc mismatch, short chunk file, bad codec state
            raise StoreCorruptError(self._read_failure(arr, sel, what, err)) from None

    def _read_failure(self, arr: Any, sel: slice, what: str, err: Exception) -> str:
        """One line naming the first chunk of `sel` that zarr cannot read (its file and rows), else the whole slice."""
        start, stop, _ = sel.indices(arr.shape[0])
        chunk = arr.chunks[0]
        for c in range(start // chunk, max(start, stop - 1) // chunk + 1):
            lo, hi = c * chunk, min((c + 1) * chunk, arr.shape[0])
            try:
                arr[lo:hi]
            except Exception as chunk_err:
                file = self.path / arr.path / arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))
                err, what = chunk_err, f"{what} rows [{lo}, {hi}) from chunk file {file}"
                break
        else:
            what = f"{what} rows [{start}, {stop})"
        return (f"{self.path}: cannot read {what}: {type(err).__name__}: {err} "
                f"(truncated or corrupt chunk; `lta store verify` lists the bad rows)")

    def read_features(self, sel: slice) -> np.ndarray:
        return self._get(self.features, sel, "features")

    def read_windows(self, sel: slice) -> np.ndarray:
        return self._get(self.windows, sel, "windows_sec")

    def read_done(self, sel: slice = slice(None)) -> np.ndarray:
        return self._get(self.done, sel, "done mask").astype(bool)

    def write_data(self, start: int, stop: int, features: np.ndarray, windows_sec: np.ndarray) -> None:
        self.features[start:stop] = features
        self.windows[start:stop] = windows_sec
        self._sync(("features", "windows_sec"), start, stop)

    def write_done(self, start: int, stop: int, value: int) -> None:
        self.done[start:stop] = np.full(stop - start, value, dtype=np.uint8)
        self._sync(("done",), start, stop)

    def _sync(self, names: tuple[str, ...], start: int, stop: int) -> None:
        """fsync the chunk files holding rows [start, stop) and their folders (survives power loss too)."""
        if not self.fsync or stop <= start:
            return
        folders = set()
        for name in names:
            arr = self.group[name]
            chunk = arr.chunks[0]
            for c in range(start // chunk, (stop - 1) // chunk + 1):
                key = arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))
                file = self.path / name / key
                if file.exists():  # an all-fill chunk is not stored
                    _fsync_path(file)
                    folders.add(file.parent)
        for folder in folders:
            _fsync_path(folder, directory=True)

    def chunk_files(self) -> list[Path]:
        return [p for p in self.path.rglob("*") if p.is_file()]

    def leftover_temp_files(self) -> list[Path]:
        return [p for p in self.path.rglob("*.partial") if p.is_file()]

    def close(self) -> None:
        pass


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class H5Backend:
    """One HDF5 file, one writer at a time (HDF5 file locking refuses a second writer)."""

    suffix = ".h5"

    def __init__(self, path: Path, mode: str, *, fsync: bool = True):
        import h5py

        self.path = Path(path)
        self.fsync = fsync
        try:
            self.file = h5py.File(self.path, "r" if mode == "r" else "r+")
            self.features = self.file["features"]
            self.windows = self.file["windows_sec"]
            self.done = self.file["done"]
        except OSError as err:
            raise StoreCorruptError(f"{self.path}: cannot open HDF5 feature store ({err})") from None
        except KeyError as err:
            raise StoreCorruptError(f"{self.path}: not a feature store, missing dataset {err}") from None

    @classmethod
    def create(cls, path: Path, *, attrs: dict, rows: Any, feature_shape: tuple, dtype: str, chunk_rows: int) -> None:
        import json

        import h5py

        num_rows = len(rows)
        with h5py.File(path, "w-") as f:
            f.attrs[ATTRS_KEY] = json.dumps(attrs)
            for name, shape, dt in (("features", (num_rows, *feature_shape), dtype),
                                    ("windows_sec", (num_rows, feature_shape[0], 2), "float64")):
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # space reserved now: row writes never touch metadata
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # ... and no fill pass over the reserved bytes
                f.create_dataset(name, shape=shape, dtype=dt, dcpl=dcpl)
            f.create_dataset("done", data=np.zeros(num_rows, dtype=np.uint8))
            row_group = f.create_group("rows")
            for name, values in _row_arrays(rows).items():
                if values.dtype.kind in "UOT":
                    row_group.create_dataset(name, data=values.astype(str).astype(object), dtype=h5py.string_dtype())
                else:
                    row_group.create_dataset(name, data=values)
            f.flush()

    @property
    def attrs(self) -> dict:
        import json

        raw = self.file.attrs.get(ATTRS_KEY)
        return json.loads(raw) if raw is not None else {}

    def read_rows(self) -> dict[str, np.ndarray]:
        out = {}
        for name in ROW_FIELDS:
            ds = self.file["rows"][name]
            out[name] = ds.asstr()[:].astype(str) if name in ("clip_uid", "split") else ds[:]
            if name in ("clip_uid", "split") and out[name].size == 0:
                out[name] = np.zeros(0, dtype="U1")
        return out

    def _get(self, ds: Any, sel: slice, what: str) -> np.ndarray:
        try:
            return ds[sel]
        except Exception as err:
            raise StoreCorruptError(f"{self.path}: cannot read {what} ({type(err).__name__}: {err})") from None

    def read_features(self, sel: slice) -> np.ndarray:
        return self._get(self.features, sel, "features")

    def read_windows(self, sel: slice) -> np.ndarray:
        return self._get(self.windows, sel, "windows_sec")

    def read_done(self, sel: slice = slice(None)) -> np.ndarray:
        return self._get(self.done, sel, "done mask").astype(bool)

    def write_data(self, start: int, stop: int, features: np.ndarray, windows_sec: np.ndarray) -> None:
        self.features[start:stop] = features
        self.windows[start:stop] = windows_sec
        self._flush()

    def write_done(self, start: int, stop: int, value: int) -> None:
        self.done[start:stop] = np.full(stop - start, value, dtype=np.uint8)
        self._flush()

    def _flush(self) -> None:
        self.file.flush()
        if self.fsync:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def chunk_files(self) -> list[Path]:
        return [self.path]

    def leftover_temp_files(self) -> list[Path]:
        return []

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


BACKENDS = {".zarr": ZarrBackend, ".h5": H5Backend}


def backend_for(path: Path) -> type:
    """The backend class for a store path, chosen by suffix."""
    try:
        return BACKENDS[Path(path).suffix]
    except KeyError:
        raise ValueError(f"{path}: unknown feature store suffix {Path(path).suffix!r}; available: {sorted(BACKENDS)}") from None


def disk_size(path: Path) -> int:
    """Bytes on disk (allocated blocks, so a sparse HDF5 file counts what is written)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)
