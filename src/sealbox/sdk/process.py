"""One command in flight: its channel (an ssh client), a thread per pipe, bounded capture, streaming callbacks.

A Host hands out a Channel (for a local sandbox a `subprocess.Popen` of ssh; for a remote host anything with the
same few members). Execution pumps it: stdin from bytes, text, a binary file or an iterable of chunks; stdout
and stderr to callbacks as they arrive and into buffers capped at `max_output` bytes each (a guest can write
without end; the host keeps what fits and says that it cut). stderr goes through the ControlFilter first.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sealbox.sdk.shell import ControlFilter

log = logging.getLogger("sealbox.sdk")
CHUNK = 256 * 1024
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024

Input = bytes | str | IO[bytes] | Iterable[bytes]
TextCallback = Callable[[str], Any]


class Channel(Protocol):
    """A started command: binary pipes, and the Popen subset the SDK uses."""

    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class ByteSink(Protocol):
    """Where streamed stdout goes: a binary file, or anything else with its write()."""

    def write(self, data: bytes, /) -> int: ...


def chunks(data: Input) -> Iterable[bytes]:
    """`data` as chunks of at most CHUNK bytes, read lazily (a large file is never held whole)."""
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        return (bytes(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK))
    read = getattr(data, "read", None)
    if read is not None:
        return iter(lambda: read(CHUNK), b"")
    return data


class Capture:
    """What one pipe delivered: the first `limit` bytes kept, the rest counted; text to a callback as it comes."""

    def __init__(self, limit: int, callback: TextCallback | None, sink: ByteSink | None = None) -> None:
        self.limit, self.callback, self.sink = limit, callback, sink
        self.buf = bytearray()
        self.total = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.error: BaseException | None = None

    @property
    def truncated(self) -> bool:
        return self.sink is None and self.total > len(self.buf)

    def add(self, data: bytes, final: bool = False) -> None:
        self.total += len(data)
        if self.sink is not None:
            self.sink.write(data)
        elif len(self.buf) < self.limit:
            self.buf += data[: self.limit - len(self.buf)]
        if self.callback is not None and self.error is None and (data or final):
            try:
                out = self.decoder.decode(data, final)
                if out:
                    self.callback(out)
            except BaseException as e:  # noqa: BLE001 - re-raised by wait(); the pipe keeps draining
                self.error = e


class Execution:
    """Pumps one channel until it ends. `wait()` joins the pumps and returns the channel's exit status."""

    def __init__(self, channel: Channel, control: ControlFilter | None, *, stdin: Input | None = None,
                 on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None,
                 max_output: int = DEFAULT_MAX_OUTPUT, stdout_sink: ByteSink | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        self.channel, self.control = channel, control
        self.out = Capture(max_output, on_stdout, stdout_sink)
        self.err = Capture(max_output, on_stderr)
        self.started = threading.Event()  # the command itself runs (its pid is known), or the channel ended
        self.stdin_error: BaseException | None = None
        self.on_end = on_end
        self._ended = False
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._pump_out, daemon=True, name="sealbox-stdout"),
                        threading.Thread(target=self._pump_err, daemon=True, name="sealbox-stderr")]
        if channel.stdin is not None:
            self.threads.append(threading.Thread(target=self._feed, args=(stdin,), daemon=True, name="sealbox-stdin"))
        for t in self.threads:
            t.start()

    @property
    def pid(self) -> int | None:
        return self.control.pid if self.control else None

    def _feed(self, data: Input | None) -> None:
        pipe = self.channel.stdin
        assert pipe is not None
        try:
            for chunk in chunks(data) if data is not None else ():
                pipe.write(chunk)
        except (BrokenPipeError, ValueError):
            pass  # the command ended (or stopped reading): what it did not read is dropped, as in a shell pipe
        except BaseException as e:  # noqa: BLE001 - the caller's reader failed: re-raised by wait()
            self.stdin_error = e
        finally:
            with contextlib.suppress(OSError, ValueError):
                pipe.close()

    def _pump_out(self) -> None:
        pipe = self.channel.stdout
        assert pipe is not None
        try:
            while chunk := pipe.read1(CHUNK) if hasattr(pipe, "read1") else pipe.read(CHUNK):
                self.out.add(chunk)
        except BaseException as e:  # noqa: BLE001 - e.g. the sink's disk is full: re-raised by wait()
            self.out.error = self.out.error or e
            with contextlib.suppress(Exception):
                self.channel.kill()
        finally:
            self.out.add(b"", final=True)

    def _pump_err(self) -> None:
        pipe = self.channel.stderr
        assert pipe is not None
        while chunk := pipe.read1(CHUNK) if hasattr(pipe, "read1") else pipe.read(CHUNK):
            if self.control is not None:
                chunk = self.control.feed(chunk)
                if self.control.started:
                    self.started.set()
            self.err.add(chunk)
        if self.control is not None:
            self.err.add(self.control.flush())
        self.err.add(b"", final=True)
        self.started.set()

    def finished(self) -> bool:
        return self.channel.poll() is not None and not any(t.is_alive() for t in self.threads[:2])

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or None if the channel is still running after `timeout` seconds."""
        import subprocess

        try:
            code = self.channel.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self.threads[:2]:
            t.join(10)  # the pipes close with the channel; a grandchild holding them is not waited for
        self._end()
        return code

    def _end(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        if self.on_end is not None:
            self.on_end()

    def raise_callback_errors(self) -> None:
        for e in (self.out.error, self.err.error, self.stdin_error):
            if e is not None:
                raise e
