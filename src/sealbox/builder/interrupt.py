"""SIGINT, SIGTERM and SIGHUP during a build: unwind (every `finally` cleans up its part), then exit 128+signal.

The first signal raises Interrupted in the main thread wherever the build is; util.run stops the running
tool's process group on the way out. Further signals are ignored until the cleanup is done, so a second
Ctrl-C cannot cut it short. SIGKILL cannot be handled: its leftovers are swept by the next build.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from sealbox.util.signals import handled

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):  # noqa: N818 - not an Exception: no `except Exception` may swallow it
    """The build was stopped by a signal; exit_code follows the shell's 128+N convention (130, 143, 129)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within this block the first of SIGNALS not ignored raises Interrupted; the caller's handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set in the main thread; a caller there owns signal handling
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        for s in SIGNALS:  # the cleanup that follows must not be cut short by a second signal
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    with handled(SIGNALS, handler, keep_ignored=True):
        yield


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGNALS back for a few syscalls that must happen together (the output commit); delivered after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
