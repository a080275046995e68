"""Install one handler for some signals for the length of a block, and put the caller's handlers back after it."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]


@contextlib.contextmanager
def handled(signals: Iterable[int], handler: Handler, *, keep_ignored: bool = False) -> Iterator[None]:
    """Within the block `handler` receives `signals`. With `keep_ignored`, a signal the caller ignores stays ignored
    (`nohup`'s SIGHUP, a background job's SIGINT: the caller chose that)."""
    old = {s: signal.signal(s, handler) for s in signals if not (keep_ignored and signal.getsignal(s) == signal.SIG_IGN)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
