"""A fork server for the tests' `lta` processes: imports the heavy libraries once, then forks a child per command.

Every `python -m pipelines.cli ...` a test starts pays ~2 s of `import torch` and, for any command that builds an
optimiser or a pytorchvideo model, ~1.5 s more for `torch._dynamo`: most of a short command's run. This server
(started once per pytest worker by tests/cli_proc.py) imports those libraries and nothing of the project's own
state, then serves requests on a UNIX socket: each request (argv, environment, working directory, optional
file-size limit, and the three stdio file descriptors passed with SCM_RIGHTS) becomes a forked child that runs
`pipelines.cli.main(argv)` as `python -m pipelines.cli` would. The child is a real process: its own pid, signals,
exit status, file descriptors, rlimits and children. The server reports its pid, then its exit status in
`subprocess.Popen` convention (negative signal number when killed by one).

Run by tests/cli_proc.py as `python tests/cli_zygote.py SOCKET_PATH`; it exits when its parent does.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# third-party libraries only: nothing here runs project code before the fork (caches such as the code version are
# filled in each child, as in a fresh process)
PRELOAD = ("numpy", "torch", "torch._dynamo", "torch.optim", "torchvision", "pytorchvideo.models", "open_clip",
           "zarr", "h5py", "av", "omegaconf", "yaml", "submitit", "filelock", "torch.utils.tensorboard")


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError("client closed the connection")
        data += chunk
    return data


def _stdio(fd: int, *, write: bool, unbuffered: bool):
    """A text stream on `fd` the way Python's start-up makes sys.stdin / stdout / stderr."""
    import io

    raw = io.FileIO(fd, "w" if write else "r", closefd=False)
    tty = os.isatty(fd)
    if write and unbuffered:
        return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace" if fd == 2 else "strict",
                                line_buffering=tty or fd == 2, write_through=True)
    buf = io.BufferedWriter(raw) if write else io.BufferedReader(raw)
    return io.TextIOWrapper(buf, encoding="utf-8", errors="backslashreplace" if fd == 2 else "strict",
                            line_buffering=tty or fd == 2)


def _run_child(request: dict, fds: list[int], default_threads: int) -> int:
    """In the forked child: become the requested `lta` process and run it; its exit status."""
    import atexit
    import traceback

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("file_limit"):
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (request["file_limit"], request["file_limit"]))
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = _stdio(0, write=False, unbuffered=unbuffered)
    sys.stdout = _stdio(1, write=True, unbuffered=unbuffered)
    sys.stderr = _stdio(2, write=True, unbuffered=unbuffered)
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else default_threads)
    sys.path[0] = request["cwd"]  # `python -m` puts the working directory first
    sys.argv = [str(REPO / "pipelines" / "cli.py"), *request["argv"]]
    code: int = 0
    try:
        from pipelines.cli import main

        result = main(request["argv"])
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code < 0:  # ended by a signal, as Python re-raises an uncaught KeyboardInterrupt
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def serve(path: str) -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional library this install lacks: the child imports what it needs itself
            pass
    import torch

    default_threads = torch.get_num_threads()
    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection that asked for it
    while os.getppid() == parent:
        ready, _, _ = select.select([server], [], [], 0.02)
        if ready:
            conn, _ = server.accept()
            size_msg, fds, _, _ = socket.recv_fds(conn, 8, 3)
            request = json.loads(_recv_exact(conn, struct.unpack("!Q", size_msg)[0]))
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                for other in waiting.values():
                    other.close()
                code = 1
                try:
                    code = _run_child(request, fds, default_threads)
                finally:
                    os._exit(code & 0xFF)  # never back into the server loop
            for fd in fds:
                os.close(fd)
            conn.sendall(struct.pack("!q", pid))
            waiting[pid] = conn
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(struct.pack("!q", code))
                except OSError:
                    pass
                conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
