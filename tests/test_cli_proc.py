"""The tests' fork server (tests/cli_proc.py, tests/cli_zygote.py) gives what a fresh `python -m pipelines.cli`
process gives: the same stdout / stderr / exit status, the environment and working directory asked for, signals,
rlimits, a pid of its own. Each case runs both ways and compares."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import cli_proc

pytestmark = pytest.mark.skipif(not cli_proc.forking(), reason="LTA_TEST_FORK=0: every command is a plain subprocess")


def both(args, **kwargs):
    """(forked, fresh) CompletedProcess of `lta args`."""
    forked = cli_proc.run(args, capture_output=True, text=True, timeout=120, **kwargs)
    fresh = subprocess.run([sys.executable, "-m", "pipelines.cli", *args],
                           capture_output=True, text=True, timeout=120, **kwargs)
    return forked, fresh


def test_output_and_status_equal_a_fresh_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LTA_DEBUG"}
    for args in (["--version"], ["--help"], ["evalute", "run=x"], ["evaluate", f"run={tmp_path / 'none'}"],
                 ["score", "predictions=missing.json", "data=nowhere"]):
        forked, fresh = both(args, cwd=cli_proc.REPO, env=env)
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr), args


def test_environment_and_working_directory_are_the_requested_ones(tmp_path):
    (tmp_path / "sub").mkdir()
    env = dict(os.environ, LTA_DEBUG="1")  # tracebacks instead of one line: read from the child's environment
    forked, fresh = both(["evaluate", "run=sub/none"], cwd=tmp_path, env=env)
    assert forked.returncode == fresh.returncode != 0
    assert "Traceback" in forked.stderr and "Traceback" in fresh.stderr
    assert f"cwd {tmp_path}" in forked.stderr.splitlines()[-1] and forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    plain = cli_proc.run(["evaluate", "run=sub/none"], capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "LTA_DEBUG"})
    assert len([ln for ln in plain.stderr.splitlines() if ln.strip()]) == 1


def test_signals_and_pid_are_the_childs_own():
    proc = cli_proc.popen(["sample", "out=/dev/null/x"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and proc.pid != os.getpid()
    # a child stopped with SIGSTOP cannot finish; SIGKILL ends it and the status says so, as Popen's would
    slow = cli_proc.popen(["--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.kill(slow.pid, signal.SIGSTOP)
    time.sleep(0.2)
    assert slow.poll() is None
    os.kill(slow.pid, signal.SIGKILL)
    assert slow.wait(timeout=30) == -signal.SIGKILL


def test_a_file_size_limit_makes_writes_fail_with_efbig(tmp_path):
    out = tmp_path / "sample"
    proc = cli_proc.popen(["sample", f"out={out}", "clips=2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, file_limit=2000)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "File too large" in err, err[-2000:]
