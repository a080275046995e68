"""Stand-in for the kernel's configfs-tsm report interface (/sys/kernel/config/tsm/report), which only a TD has.

The real interface: `mkdir` an entry and the kernel fills it with attribute files (provider, generation, inblob,
outblob, ...); write up to 64 bytes to inblob, read outblob, and the answer is a quote whose REPORTDATA is those
bytes. A plain directory cannot react to a write, so bob-attest's two entry hooks (`make_entry`, `remove_entry`) are
replaced here: the entry gets `provider` and `generation` files, an empty `inblob`, and `outblob` as a FIFO whose
writer (a thread) waits until the script opens it, then reads what the script wrote to inblob and answers with
`make_quote(inblob)`. What it records (`inblobs`, the entries made) is what the tests check.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fake_tsm_class(base_cls: Any, make_quote: Callable[[bytes], bytes], *, provider: str = "tdx_guest",
                   bump_generation: bool = False) -> Any:  # fmt: skip
    """A subclass of the script's Tsm whose entries behave like configfs-tsm's (see the module docstring)."""

    class FakeTsm(base_cls):  # type: ignore[misc, valid-type]
        inblobs: list[bytes] = []
        entries: list[Path] = []
        threads: list[threading.Thread] = []

        def make_entry(self, entry: Path) -> None:
            os.mkdir(entry)  # as the real one: fails if it exists
            type(self).entries.append(entry)
            (entry / "provider").write_text(provider + "\n")
            (entry / "generation").write_text("1\n")
            (entry / "inblob").write_bytes(b"")
            os.mkfifo(entry / "outblob")
            t = threading.Thread(target=self._answer, args=(entry,), daemon=True)
            type(self).threads.append(t)
            t.start()

        def _answer(self, entry: Path) -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # bounded: the script may never open outblob (an earlier refusal)
                try:
                    fd = os.open(entry / "outblob", os.O_WRONLY | os.O_NONBLOCK)
                except OSError as e:
                    if e.errno != errno.ENXIO:  # ENXIO: no reader yet; anything else: the entry is gone
                        return
                    time.sleep(0.01)
                    continue
                os.set_blocking(fd, True)
                inblob = (entry / "inblob").read_bytes()
                type(self).inblobs.append(inblob)
                with os.fdopen(fd, "wb") as f:
                    f.write(make_quote(inblob))
                    if bump_generation:  # another writer touched the entry while the script read (before its EOF)
                        (entry / "generation").write_text("2\n")
                return

        def remove_entry(self, entry: Path) -> None:
            shutil.rmtree(entry)

    return FakeTsm


class AcceptSocket:
    """Stand-in for systemd's `Accept=yes` socket in front of `bob-attest quote`: a unix socket whose every connection
    is handed to `serve(rfile, wfile)` (the quote side's entry point) in a thread, as systemd starts one instance per
    connection with the socket as stdin/stdout. Its path is short (AF_UNIX paths are limited to 107 bytes)."""

    def __init__(self, serve: Callable[[Any, Any], None]) -> None:
        self.dir = tempfile.mkdtemp(prefix="sock")
        self.path = os.path.join(self.dir, "attest.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.serve = serve
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(30)
            with contextlib.suppress(OSError), conn, conn.makefile("rb") as r, conn.makefile("wb") as w:
                self.serve(r, w)  # the client may hang up first (as a systemd instance would see EPIPE)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
