"""Per-shard locks: one process at a time may extract shard i/n into a feature store root.

    with ShardLock(store_root, shard=0, num_shards=2):
        ...  # write shard 0's rows

Two writers of the same shard (a SLURM requeue while the old job still runs, the same command
started twice) rewrite the same chunks and can lose each other's rows, so the second one is refused
with `ShardLockedError`, naming the lock file and its holder, before it writes anything. Different
shards lock different files and write disjoint chunks, so they still run concurrently. Shards of a
different split count (0/1 next to 0/2) overlap and are not protected: use one `n` per store.

The lock is `flock(LOCK_EX | LOCK_NB)` on `<store_root>/.locks/shard-<i>-of-<n>.lock`, which then
holds "pid, host, since". The kernel drops it when the holder exits, even on SIGKILL, so it never
goes stale; the file stays and is reused. On NFS, Linux clients emulate flock with byte-range locks
that work across hosts when the server's lock manager does; a mount with `nolock` or
`local_lock=flock` makes it advisory (per host only), which this module cannot detect. Where flock is
refused outright (ENOLCK / EOPNOTSUPP: some NFS and FUSE mounts) the lock falls back to creating
`shard-<i>-of-<n>.lock.excl` with O_EXCL; that file outlives a killed holder, and the error names
it and says how to clear it once its process is gone.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # the file system refuses flock


class ShardLockedError(RuntimeError):
    """Another process is extracting the same shard into the same store root."""


def lock_path(store_root: Path | str, shard: int, num_shards: int) -> Path:
    """`<store_root>/.locks/shard-<i>-of-<n>.lock`."""
    return Path(store_root) / LOCK_DIR / f"shard-{shard}-of-{num_shards}.lock"


def _holder_record() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _read_holder(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):  # being written right now, or removed meanwhile
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that has not recorded itself yet"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"


def _gone_here(holder: dict) -> bool:
    """True when the holder ran on this host and its pid no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


class ShardLock:
    """Exclusive, non-blocking lock of shard `shard` of `num_shards` under `store_root` (a context manager)."""

    def __init__(self, store_root: Path | str, shard: int, num_shards: int):
        self.path = lock_path(store_root, shard, num_shards)
        self.excl_path: Path | None = None  # set when held through the O_EXCL fallback
        self._what = f"shard {shard}/{num_shards} of {store_root}"
        self._fd: int | None = None

    def acquire(self) -> "ShardLock":
        """Take the lock or raise `ShardLockedError` naming the lock file and its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ShardLockedError(
                f"{self._what} is already being extracted: lock {self.path} is held by {_describe(_read_holder(self.path))}; "
                "wait for it to finish or stop it, then re-run (filled rows are skipped)") from None
        except OSError as err:
            os.close(fd)
            if err.errno not in _NO_FLOCK:
                raise
            log.warning("%s: flock refused (%s); falling back to an O_EXCL lock file", self.path, err.strerror or err)
            self._acquire_excl(self.path.with_name(self.path.name + ".excl"))
            return self
        os.ftruncate(fd, 0)
        os.write(fd, _holder_record().encode())
        self._fd = fd
        return self

    def _acquire_excl(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            hint = ("that process is gone: delete the file and re-run" if _gone_here(holder) else
                    "if that process no longer runs (a killed job; check on its host), delete the file and re-run")
            raise ShardLockedError(f"{self._what} is already being extracted: lock {path} is held by "
                                   f"{_describe(holder)}; {hint} (filled rows are skipped)") from None
        with os.fdopen(fd, "w") as f:
            f.write(_holder_record())
        self.excl_path = path

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the file stays (unlinking a flocked file races with the next holder)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self.excl_path is not None:
            self.excl_path.unlink(missing_ok=True)
            self.excl_path = None

    def __enter__(self) -> "ShardLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
