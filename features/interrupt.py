"""Graceful stop on SIGTERM / SIGINT (SLURM preemption, `kill`, Ctrl-C): finish or abandon the current unit, then exit.

    with stop_on_signals("extract") as stop:
        for clip in clips:
            if stop.requested:
                break            # or stop.check(): raises Interrupted
            process(clip)        # one unit: written whole, or not at all
    # the caller raises Interrupted(...) naming what completed; the CLI exits EXIT_INTERRUPTED (75)

The first signal only sets a flag (`stop.requested`) that the long loops poll between units, so a
unit is never cut in the middle; a unit that would take long (an ffmpeg encode, a decode queue) is
abandoned, never recorded as done or as failed. A second SIGINT raises KeyboardInterrupt at once
(the user insists). After `grace_sec` (default 30 s, `LTA_STOP_GRACE_SEC`) without the process
having stopped, a watchdog ends it with EXIT_INTERRUPTED: every store and checkpoint write in this
project is crash-safe (a SIGKILL leaves only unfinished rows), so that is still correct, only less tidy.

Signal handlers can only be installed from the main thread; elsewhere (a test calling a command
from a thread) `stop_on_signals` yields a flag that nothing sets. `request_stop()` sets it by hand.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Iterator

from features.errors import LtaError
from features.exitcodes import EXIT_INTERRUPTED

log = logging.getLogger(__name__)

GRACE_ENV = "LTA_STOP_GRACE_SEC"
DEFAULT_GRACE_SEC = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(LtaError):
    """A run stopped on a signal after finishing or abandoning its current unit; a re-run resumes (exit 75)."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, *, signal_name: str = ""):
        super().__init__(message)
        self.signal_name = signal_name

    def __reduce__(self):  # pickles (a submitit job's outcome) with its signal name
        return (_rebuild_interrupted, (str(self), self.signal_name))


def _rebuild_interrupted(message: str, signal_name: str) -> "Interrupted":
    return Interrupted(message, signal_name=signal_name)


class StopFlag:
    """Set by the first stop signal; polled by long loops between units."""

    def __init__(self, what: str):
        self.what = what
        self._event = threading.Event()
        self.signal_name = ""
        self.signum = 0
        self.at = 0.0

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s, waking early when a stop is requested; returns `requested`."""
        return self._event.wait(timeout)

    def set(self, signum: int = 0) -> None:
        if not self._event.is_set():
            self.signum = signum
            self.signal_name = signal.Signals(signum).name if signum else "stop request"
            self.at = time.monotonic()
            self._event.set()

    def check(self, done: str = "") -> None:
        """Raise `Interrupted` when a stop was requested (`done`: what completed, for the message)."""
        if self.requested:
            raise self.interrupted(done)

    def interrupted(self, done: str = "") -> Interrupted:
        text = f"{self.what} interrupted by {self.signal_name}" + (f" after {done}" if done else "")
        return Interrupted(text + "; everything written is valid, re-run the same command to resume",
                           signal_name=self.signal_name)


_current: StopFlag | None = None


def current() -> StopFlag | None:
    """The flag of the innermost active `stop_on_signals`, or None."""
    return _current


def stop_requested() -> bool:
    """True when a stop signal arrived inside an active `stop_on_signals`."""
    return _current is not None and _current.requested


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Set the active flag as if `signum` had arrived (for code that learns of a stop another way)."""
    if _current is not None:
        _current.set(signum)


def grace_sec() -> float:
    try:
        return float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_SEC))
    except ValueError:
        return DEFAULT_GRACE_SEC


def _watchdog(flag: StopFlag, grace: float, wake: threading.Event, done: threading.Event) -> None:
    wake.wait()  # the first signal, or the end of the block
    if done.is_set() or done.wait(grace):
        return
    log.error("%s did not stop within %.0f s of %s; exiting now (every write is crash-safe, a re-run resumes)",
              flag.what, grace, flag.signal_name)
    logging.shutdown()
    os._exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def stop_on_signals(what: str, signals: tuple[int, ...] = STOP_SIGNALS, *, grace: float | None = None,
                    message: str = "finishing the current unit, then stopping") -> Iterator[StopFlag]:
    """Install handlers of `signals` that set the yielded `StopFlag`; restore the previous ones on exit."""
    global _current
    flag = StopFlag(what)
    if threading.current_thread() is not threading.main_thread():
        previous_flag, _current = _current, flag
        try:
            yield flag
        finally:
            _current = previous_flag
        return

    def handler(signum, frame):  # noqa: ARG001 - the signal module's signature
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = not flag.requested
        flag.set(signum)
        wake.set()
        if first:
            log.warning("%s: received %s: %s (at most %.0f s)", what, signal.Signals(signum).name, message,
                        grace if grace is not None else grace_sec())

    wake = threading.Event()
    previous = {s: signal.signal(s, handler) for s in signals}
    previous_flag, _current = _current, flag
    finished = threading.Event()
    threading.Thread(target=_watchdog, args=(flag, grace if grace is not None else grace_sec(), wake, finished),
                     daemon=True, name="lta-stop-watchdog").start()
    try:
        yield flag
    finally:
        finished.set()
        wake.set()  # ends the watchdog thread
        _current = previous_flag
        for s, h in previous.items():
            signal.signal(s, h)
