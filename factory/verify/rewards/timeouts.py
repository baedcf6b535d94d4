"""Per-sample wall-clock deadlines that work in worker processes.

math-verify's own timeouts use `signal.alarm` with whole seconds and cancel any outer alarm when they finish, so
nesting them inside a per-sample deadline would silently drop ours. We switch them off and put one
`setitimer`-based deadline around the whole sample instead. Signals only reach the main thread: the shard runner
runs stage functions in worker processes (main thread), where this works. Called from any other thread, the
deadline cannot be enforced; it then runs without one, logs a warning once and `enforced()` says so, so the stage
can record it in its counts. An enclosing ITIMER_REAL (pytest-timeout's, say) is kept and restored, not cancelled.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
_warned = False


class SampleTimeout(BaseException):
    """Raised inside the work when its deadline passes.

    A BaseException so that libraries' `except Exception` (math-verify, sympy) cannot swallow it."""


def can_enforce() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _raise(signum, frame):  # noqa: ARG001
    raise SampleTimeout()


@contextmanager
def deadline(seconds: float | None) -> Iterator[bool]:
    """Raise SampleTimeout in the block after `seconds`; yields whether the deadline is enforced."""
    global _warned
    if not seconds or seconds <= 0:
        yield False
        return
    if not can_enforce():
        if not _warned:
            log.warning("per-sample timeouts are off: not in the main thread (signals cannot interrupt it); "
                        "run verification in worker processes to have them")
            _warned = True
        yield False
        return
    previous = signal.signal(signal.SIGALRM, _raise)
    started = time.monotonic()
    outer, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if 0 < outer < seconds:  # an enclosing deadline (e.g. pytest-timeout's) comes first: keep it first
        signal.setitimer(signal.ITIMER_REAL, outer)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # give the enclosing timer back what is left of it (it fires at once if it is over)
            left = max(outer - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)
