"""`lta` processes for the tests: `popen` / `run` mirror `subprocess.Popen` / `subprocess.run` for
`python -m pipelines.cli ARGS`, started by the fork server in tests/cli_zygote.py.

A forked child skips the ~2-4 s of library imports a fresh interpreter pays (the test suite starts a few hundred
of them), and is otherwise the process a user gets: its own pid, stdio, environment, working directory, signals,
exit status (Popen's convention: -N when killed by signal N) and children. What needs a fresh interpreter (import
hygiene, console-script start-up) keeps using `subprocess` (tests/test_no_extract_import.py,
tests/test_config_cli.py, tests/test_bare_clone.py, ...). `LTA_TEST_FORK=0` runs every command as a plain
`python -m pipelines.cli` subprocess instead (the same tests must pass either way).
"""
from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Sequence

REPO = Path(__file__).resolve().parents[1]
PIPE, DEVNULL = subprocess.PIPE, subprocess.DEVNULL
_server: dict[str, Any] = {}
_lock = threading.Lock()


def forking() -> bool:
    return os.environ.get("LTA_TEST_FORK", "1") != "0" and sys.platform.startswith("linux")


def _socket_path() -> str:
    """The fork server of this test process (started on first use, stopped at exit)."""
    with _lock:
        if _server.get("pid") == os.getpid() and _server["proc"].poll() is None:
            return _server["path"]
        folder = tempfile.mkdtemp(prefix="lta-zygote-")
        path = os.path.join(folder, "sock")
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        log = os.path.join(folder, "server.log")  # the import warnings of the preload, and any error of the server
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_zygote.py")), path], cwd=REPO,
                                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"the lta fork server did not start ({Path(log).read_text()[-2000:]}); "
                               "LTA_TEST_FORK=0 runs the tests without it")
        _server.update(pid=os.getpid(), proc=proc, path=path)
        atexit.register(proc.kill)
        atexit.register(shutil.rmtree, folder, True)
        return path


def _open_fd(spec: Any, target: int, keep: list[int]) -> tuple[int, Any]:
    """(fd to hand to the child as `target` (0, 1, 2), the parent's end when spec is PIPE) for a Popen-style
    stdio argument; fds the parent must close once they are handed over go to `keep`."""
    write = target > 0
    if spec is None:  # inherited, as Popen does
        fd = os.dup(target)
    elif spec == DEVNULL:
        fd = os.open(os.devnull, os.O_WRONLY if write else os.O_RDONLY)
    elif spec == PIPE:
        r, w = os.pipe()
        keep.append(w if write else r)
        return (w, r) if write else (r, w)
    else:
        return (spec if isinstance(spec, int) else spec.fileno()), None
    keep.append(fd)
    return fd, None


class CliProcess:
    """The parts of `subprocess.Popen` the tests use, for a child of the fork server."""

    def __init__(self, args: Sequence[str], *, cwd: str | Path | None = None, env: dict | None = None,
                 stdin: Any = None, stdout: Any = None, stderr: Any = None, text: bool = False,
                 file_limit: int | None = None):
        self.args = [sys.executable, "-m", "pipelines.cli", *args]
        self.returncode: int | None = None
        self._text = text
        close_after: list[int] = []
        fds, ends = [], []
        for target, spec in enumerate((stdin, stdout, stderr)):
            if spec == subprocess.STDOUT:
                fds.append(fds[1])
                ends.append(None)
                continue
            fd, end = _open_fd(spec, target, close_after)
            fds.append(fd)
            ends.append(end)
        request = {"argv": list(args), "cwd": str(cwd or os.getcwd()), "env": dict(os.environ if env is None else env),
                   "file_limit": file_limit}
        payload = json.dumps(request).encode()
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(_socket_path())
        socket.send_fds(self._conn, [struct.pack("!Q", len(payload))], fds)
        self._conn.sendall(payload)
        for fd in close_after:
            os.close(fd)
        self.pid = struct.unpack("!q", self._recv(8))[0]
        self.stdin = os.fdopen(ends[0], "w" if text else "wb") if ends[0] is not None else None
        self.stdout = self._reader(ends[1])
        self.stderr = self._reader(ends[2])

    def _reader(self, fd: int | None) -> IO | None:
        if fd is None:
            return None
        return os.fdopen(fd, "r", encoding="utf-8", errors="replace") if self._text else os.fdopen(fd, "rb")

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._conn.recv(n - len(data))
            if not chunk:
                raise RuntimeError("the lta fork server went away")
            data += chunk
        return data

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self._conn], [], [], 0)
            if ready:
                self.returncode = struct.unpack("!q", self._recv(8))[0]
                self._conn.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            ready, _, _ = select.select([self._conn], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.poll()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Read stdout and stderr to their ends (each in a thread, as Popen does), then wait."""
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
            self.stdin = None
        results: dict[str, Any] = {}
        threads = []
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None:
                t = threading.Thread(target=lambda s=stream, n=name: results.__setitem__(n, s.read()), daemon=True)
                t.start()
                threads.append(t)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None:
                stream.close()
        return results.get("stdout"), results.get("stderr")

    def __enter__(self) -> CliProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        self.wait()


def popen(args: Sequence[str], *, cwd: str | Path | None = None, env: dict | None = None, stdin: Any = None,
          stdout: Any = None, stderr: Any = None, text: bool = False, file_limit: int | None = None):
    """`lta ARGS` started like `subprocess.Popen([python, -m, pipelines.cli, *ARGS], ...)`; `file_limit`: an
    RLIMIT_FSIZE in bytes (writes past it fail with EFBIG, as a full disk fails with ENOSPC)."""
    if forking():
        return CliProcess(args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                          file_limit=file_limit)
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, stdin=stdin,
                            stdout=stdout, stderr=stderr, text=text, preexec_fn=limit if file_limit else None)


def run(args: Sequence[str], *, cwd: str | Path | None = None, env: dict | None = None, capture_output: bool = False,
        text: bool = False, timeout: float | None = None, input: Any = None) -> subprocess.CompletedProcess:
    """`subprocess.run` of `lta ARGS` (see `popen`); a timeout kills the command and raises TimeoutExpired."""
    out = PIPE if capture_output else None
    proc = popen(args, cwd=cwd, env=env, stdin=PIPE if input is not None else DEVNULL, stdout=out, stderr=out,
                 text=text)
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


__all__ = ["DEVNULL", "PIPE", "CliProcess", "forking", "popen", "run"]
