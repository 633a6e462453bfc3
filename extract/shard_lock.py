"""Per-shard locks and the shard layout of a store root: one process at a time extracts shard i/n.

    with ShardLock(store_root, shard=0, num_shards=2, wait_sec=120):
        claim_layout(store_root, key, num_shards=2, finished=False)
        ...  # write shard 0's rows

Two writers of the same shard (a SLURM requeue while the old job still runs, the same command
started twice) rewrite the same chunks and can lose each other's rows, so the second one waits up to
`wait_sec` for the first to let go (a preempted job has a grace period to stop; the requeued one logs
that it waits), then is refused with `ShardLockedError`, naming the lock file and its holder, before it
writes anything. Different shards lock different files and write disjoint chunks, so they still run
concurrently. Shards of a different split count (0/1 next to 0/2) overlap: `claim_layout` records the
`num_shards` an unfinished store is being written with and refuses another value (`ShardLayoutError`).

The lock is filelock's `UnixFileLock` (`flock(LOCK_EX)`) on `<store_root>/.locks/shard-<i>-of-<n>.lock`,
which then holds "pid, host, since". The kernel drops it when the holder exits, even on SIGKILL, so it
never goes stale; the file stays and is reused. On NFS, Linux clients emulate flock with byte-range
locks that work across hosts when the server's lock manager does; a mount with `nolock` or
`local_lock=flock` makes it advisory (per host only), which this module cannot detect. Where flock is
refused outright (ENOLCK / EOPNOTSUPP: some NFS and FUSE mounts) the lock falls back to filelock's
`SoftFileLock`, an O_EXCL marker `shard-<i>-of-<n>.lock.excl` holding pid and host: a marker whose
process is gone from this host is taken over, one from another host needs deleting by hand (the
error says so).

Why filelock and not a hand-written flock / O_EXCL pair: it is maintained, does the polling wait with a
deadline and a cancel hook (a stop signal ends the wait), and recovers dead same-host markers. What it
lacks is handled here, each shown by a test in tests/test_preemption.py: it falls back to the marker
only on ENOSYS, not on the ENOLCK that NFS without a lock manager returns, and its flock file carries
no holder, so `on_acquired` writes one.
"""
from __future__ import annotations

import errno
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


class ShardLayoutError(ValueError):
    """An unfinished store is being written with another `num_shards` than this run's."""


def lock_path(store_root: Path | str, shard: int, num_shards: int) -> Path:
    """`<store_root>/.locks/shard-<i>-of-<n>.lock`."""
    return Path(store_root) / LOCK_DIR / f"shard-{shard}-of-{num_shards}.lock"


def _holder_record() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _read_holder(path: Path) -> dict:
    """The holder recorded in a lock file: our JSON record (flock), or filelock's marker "pid\\nhost\\n..." (O_EXCL)."""
    try:
        text = path.read_text()
    except OSError:  # removed meanwhile
        return {}
    try:
        record = json.loads(text)
        return record if isinstance(record, dict) else {}
    except ValueError:
        lines = text.splitlines()
        if len(lines) >= 2 and lines[0].strip().isdigit():
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(path.stat().st_mtime)) if path.exists() else "?"
            return {"pid": int(lines[0]), "host": lines[1].strip(), "since": since}
        return {}  # being written right now


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
    """Exclusive lock of shard `shard` of `num_shards` under `store_root` (a context manager).

    `wait_sec` > 0: when another process holds the lock (a requeued job whose previous run is still
    stopping), log that and wait up to `wait_sec` for it, polling every `poll_sec`; a stop signal
    (features.interrupt) ends the wait with `Interrupted`. `wait_sec` = 0 refuses at once.
    """

    def __init__(self, store_root: Path | str, shard: int, num_shards: int, *, wait_sec: float = 0.0, poll_sec: float = 1.0):
        self.path = lock_path(store_root, shard, num_shards)
        self.excl_path: Path | None = None  # set when held through the O_EXCL fallback
        self.wait_sec = float(wait_sec)
        self.poll_sec = float(poll_sec)
        self.waited_sec = 0.0
        self._what = f"shard {shard}/{num_shards} of {store_root}"
        self._lock = None
        self._fd: int | None = None  # the flocked file, borrowed from filelock (holder record)

    def _record(self, fd: int) -> None:
        """filelock's on_acquired: write "pid, host, since" into the locked file for the next one's message."""
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_record().encode(), 0)
        self._fd = fd

    def acquire(self) -> "ShardLock":
        """Take the lock (waiting up to `wait_sec`) or raise `ShardLockedError` naming the lock file and its holder."""
        import filelock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.UnixFileLock(str(self.path), thread_local=False, fallback_to_soft=False, on_acquired=self._record)
        try:
            self._take(lock, self.path)
        except filelock.Timeout:
            raise
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            # filelock falls back to its marker file by itself only for ENOSYS; NFS without a lock
            # manager says ENOLCK, FUSE mounts EOPNOTSUPP / EINVAL, so the fallback is chosen here
            log.warning("%s: flock refused (%s); falling back to an O_EXCL lock file", self.path, err.strerror or err)
            excl = self.path.with_name(self.path.name + ".excl")
            self._take(filelock.SoftFileLock(str(excl), thread_local=False), excl)
            self.excl_path = excl
        return self

    def _take(self, lock, path: Path) -> None:
        import filelock

        from features.interrupt import current, stop_requested

        try:
            lock.acquire(blocking=False)
            self._lock = lock
            return
        except filelock.Timeout:
            pass
        holder = _describe(_read_holder(path))
        if self.wait_sec <= 0:
            raise self._locked(path, holder)
        log.warning("%s: lock %s is held by %s; waiting up to %.0f s for it to be released "
                    "(a requeued job whose previous run is still stopping)", self._what, path, holder, self.wait_sec)
        t0 = time.monotonic()
        try:
            lock.acquire(timeout=self.wait_sec, poll_interval=self.poll_sec, cancel_check=stop_requested)
        except filelock.Timeout:
            self.waited_sec = time.monotonic() - t0
            if stop_requested():
                raise current().interrupted(f"waiting {self.waited_sec:.0f} s for lock {path}") from None
            raise self._locked(path, _describe(_read_holder(path)), f" (waited {self.waited_sec:.0f} s)") from None
        self.waited_sec = time.monotonic() - t0
        self._lock = lock
        log.info("%s: got lock %s after waiting %.1f s", self._what, path, self.waited_sec)

    def _locked(self, path: Path, holder: str, waited: str = "") -> ShardLockedError:
        if path == self.path:
            return ShardLockedError(f"{self._what} is already being extracted: lock {path} is held by {holder}{waited}; "
                                    "wait for it to finish or stop it, then re-run (filled rows are skipped)")
        hint = ("if that process no longer runs (a killed job; check on its host), delete the file and re-run"
                if not _gone_here(_read_holder(path)) else "that process is gone: delete the file and re-run")
        return ShardLockedError(f"{self._what} is already being extracted: lock {path} is held by {holder}{waited}; "
                                f"{hint} (filled rows are skipped)")

    def release(self) -> None:
        if self._lock is None:
            return
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # no stale holder record; the file stays (filelock reuses the inode)
            except OSError:
                pass
            self._fd = None
        self._lock.release()
        self._lock = None
        self.excl_path = None

    def __enter__(self) -> "ShardLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def layout_path(store_root: Path | str, key: str) -> Path:
    """`<store_root>/.locks/<key>.layout.json`: the num_shards the store `key` is being written with."""
    return Path(store_root) / LOCK_DIR / f"{key}.layout.json"


def claim_layout(store_root: Path | str, key: str, num_shards: int, *, finished: bool) -> None:
    """Record that store `key` is written with `num_shards` shards; refuse another value while it is unfinished.

    The first run on a store publishes the record atomically (a hard link that fails when the file
    exists), so two runs that start together with different values cannot both pass. A finished store
    (every row filled) can be re-sharded freely: the record is replaced.

    Raises:
        ShardLayoutError: the store is unfinished and recorded with another num_shards (one line, both values).
    """
    path = layout_path(store_root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"num_shards": int(num_shards), "host": socket.gethostname(), "pid": os.getpid(),
                         "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    tmp.write_text(record)
    try:
        if finished:
            os.replace(tmp, path)
            return
        for _ in range(50):
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                pass
            try:
                have = json.loads(path.read_text())["num_shards"]
            except FileNotFoundError:  # replaced or removed meanwhile: try again
                continue
            except (OSError, ValueError, KeyError, TypeError):
                raise ShardLayoutError(f"{path}: unreadable shard layout record; delete it if no extraction "
                                       "of this store runs") from None
            if int(have) == int(num_shards):
                return
            raise ShardLayoutError(
                f"store {Path(store_root) / key} is unfinished and being written with num_shards={have}; this run has "
                f"num_shards={num_shards}: finish it with num_shards={have} (shard=i/{have}), then any value works")
        raise ShardLayoutError(f"{path}: cannot record the shard layout (the file keeps changing)")
    finally:
        tmp.unlink(missing_ok=True)
