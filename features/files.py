"""Files written whole or not at all, and the sha256 of a file read once per process.

The one home of these two rules (standard library only, so every layer can use them):
- `atomic_path` / `atomic_write` / `atomic_write_json`: write into a unique temporary file beside the target,
  flush it to disk, rename it over the target and flush the folder. A reader sees the old file or the new one,
  never a torn one, even after a crash or a full disk; the temporary file is removed when the write fails.
- `file_sha256`: the hex sha256 of a file, computed once per (path, size, mtime) in a process (a report asks for
  the same checkpoint's hash several times).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CHUNK = 1 << 22


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's) data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it is synced and renamed onto `path`.

    >>> with atomic_path(out) as tmp:
    ...     torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # left only when the write failed: no half-written file stays


def atomic_write(path: str | Path, data: str | bytes, *, encoding: str = "utf-8", skip_unchanged: bool = False) -> Path:
    """Write `data` (text or bytes) to `path` atomically; returns `path`.

    `skip_unchanged`: leave the file alone when it already holds exactly `data` (a file rewritten every epoch with
    the same content would otherwise cost two fsyncs each time)."""
    if skip_unchanged:
        raw = data if isinstance(data, bytes) else data.encode(encoding)
        try:
            if Path(path).read_bytes() == raw:
                return Path(path)
        except OSError:  # absent (or unreadable): write it
            pass
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding=encoding)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, **dump_kwargs: Any) -> Path:
    """`obj` as JSON (with a final newline) written atomically; `dump_kwargs` go to `json.dumps`."""
    return atomic_write(path, json.dumps(obj, **dump_kwargs) + "\n")


def file_sha256(path: str | Path) -> str:
    """The file's hex sha256, read once per (resolved path, size, mtime) in a process."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


_SHA256: dict[tuple[str, int, int], str] = {}
