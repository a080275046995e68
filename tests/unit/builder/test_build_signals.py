"""The build's signal handlers (builder/interrupt.py): what the caller chose to ignore stays ignored."""

from __future__ import annotations

import signal

from sealbox.builder.interrupt import signals_raise


def test_an_inherited_ignore_is_kept_nohup_and_background_jobs() -> None:
    """`nohup sealbox build` ignores SIGHUP (and a shell's background job SIGINT): the build must not turn a hangup it
    was told to survive into an interrupt. A signal not ignored gets the build's handler, and the old one comes back."""
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        with signals_raise():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGTERM)) and signal.getsignal(signal.SIGTERM) != old_term
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == old_term
    finally:
        signal.signal(signal.SIGHUP, old_hup)
