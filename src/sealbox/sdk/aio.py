"""`sealbox.AsyncSandbox`: the same API for asyncio.

    async with await AsyncSandbox.create("build/default") as sb:
        r = await sb.commands.run(["uname", "-r"])

Every call runs the synchronous SDK in a thread of its own (not the loop's default executor: a few long
commands would fill it), so there is one code path. Cancelling a task cancels what it awaited: a create is
undone, a command is killed. Streaming callbacks are called on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sealbox.sdk.commands import DEFAULT_TIMEOUT, CommandHandle, CommandResult, Commands
from sealbox.sdk.files import EntryInfo, Files
from sealbox.sdk.host import Host, SandboxInfo
from sealbox.sdk.process import Input, TextCallback
from sealbox.sdk.sandbox import Sandbox, StrPath, restore_defaults

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """`fn(*args, **kw)` in a new daemon thread, awaited."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def work() -> None:
        try:
            value = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, False, e)
        else:
            loop.call_soon_threadsafe(settle, True, value)

    threading.Thread(target=work, daemon=True, name="sealbox-async").start()
    return await fut


def _on_loop(cb: TextCallback | None) -> TextCallback | None:
    if cb is None:
        return None
    loop = asyncio.get_running_loop()
    return lambda text: loop.call_soon_threadsafe(cb, text)


class AsyncCommandHandle:
    """A background command (see CommandHandle)."""

    def __init__(self, handle: CommandHandle) -> None:
        self.sync = handle

    async def pid(self) -> int | None:
        return await in_thread(lambda: self.sync.pid)

    def poll(self) -> int | None:
        return self.sync.poll()

    async def wait(self, timeout: float | None = None) -> CommandResult:
        try:
            return await asyncio.shield(in_thread(self.sync.wait, timeout))
        except asyncio.CancelledError:
            await in_thread(self.sync.kill)
            raise

    async def kill(self) -> bool:
        return await in_thread(self.sync.kill)


class AsyncCommands:
    def __init__(self, commands: Commands) -> None:
        self.sync = commands

    async def run(self, cmd: str | Sequence[str], *, timeout: float | None = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None,
                  cwd: str | None = None, user: str | None = None, stdin: Input | None = None,
                  on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None, background: bool = False,
                  check: bool = False, **kw: Any) -> Any:
        """As Commands.run (a CommandResult, or an AsyncCommandHandle with background=True); cancelling the
        awaiting task kills the command."""
        handle = AsyncCommandHandle(await in_thread(
            self.sync.run_background, cmd, timeout=timeout, env=env, cwd=cwd, user=user, stdin=stdin,
            on_stdout=_on_loop(on_stdout), on_stderr=_on_loop(on_stderr), **kw))
        if background:
            return handle
        result = await handle.wait()
        return result.check() if check else result


class AsyncFiles:
    def __init__(self, files: Files) -> None:
        self.sync = files

    async def write(self, path: str, data: Input, **kw: Any) -> int:
        return await in_thread(self.sync.write, path, data, **kw)

    async def read(self, path: str, **kw: Any) -> bytes:
        return await in_thread(self.sync.read, path, **kw)

    async def read_text(self, path: str, **kw: Any) -> str:
        return await in_thread(self.sync.read_text, path, **kw)

    async def read_into(self, path: str, dest: Any, **kw: Any) -> int:
        return await in_thread(self.sync.read_into, path, dest, **kw)

    async def list(self, path: str = ".", **kw: Any) -> builtins.list[EntryInfo]:
        return await in_thread(self.sync.list, path, **kw)

    async def exists(self, path: str, **kw: Any) -> bool:
        return await in_thread(self.sync.exists, path, **kw)

    async def make_dir(self, path: str, **kw: Any) -> None:
        await in_thread(self.sync.make_dir, path, **kw)

    async def remove(self, path: str, **kw: Any) -> None:
        await in_thread(self.sync.remove, path, **kw)


class AsyncSandbox:
    """Sandbox for asyncio: the same methods, awaited (info/status/labels are methods here, not properties)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sync = sandbox
        self.name = sandbox.name
        self.commands = AsyncCommands(sandbox.commands)
        self.files = AsyncFiles(sandbox.files)

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.name!r})"

    @classmethod
    async def create(cls, image: StrPath, **kw: Any) -> AsyncSandbox:
        """As Sandbox.create; cancelling the awaiting task undoes the boot."""
        cancelled = threading.Event()
        own_cancel = kw.pop("cancel", None)
        work = asyncio.ensure_future(in_thread(
            functools.partial(Sandbox.create, image, cancel=lambda: cancelled.is_set() or bool(own_cancel and own_cancel()), **kw)))
        try:
            return cls(await asyncio.shield(work))
        except asyncio.CancelledError:
            cancelled.set()
            with contextlib.suppress(Exception):
                sb = await work  # it may have become ready just before it saw the cancel
                await in_thread(sb.kill)
            raise

    @classmethod
    async def restore(cls, snapshot: StrPath, image: StrPath, **kw: Any) -> AsyncSandbox:
        """As Sandbox.restore: a new sandbox from a snapshot, the shape not given taken from it."""
        return await cls.create(image, **restore_defaults(snapshot, kw))

    @classmethod
    async def connect(cls, name: str, **kw: Any) -> AsyncSandbox:
        return cls(await in_thread(Sandbox.connect, name, **kw))

    @classmethod
    async def list(cls, **kw: Any) -> builtins.list[SandboxInfo]:
        return await in_thread(Sandbox.list, **kw)

    @property
    def host(self) -> Host:
        return self.sync.host

    async def info(self) -> SandboxInfo:
        return await in_thread(lambda: self.sync.info)

    async def status(self) -> str:
        return (await self.info()).status

    async def inspect(self) -> dict[str, Any]:
        return await in_thread(self.sync.inspect)

    async def logs(self, **kw: Any) -> str:
        return await in_thread(self.sync.logs, **kw)

    async def stop(self, timeout: float = 30.0) -> str:
        return await in_thread(self.sync.stop, timeout)

    async def remove(self, *, force: bool = False) -> None:
        await in_thread(self.sync.remove, force=force)

    async def kill(self) -> bool:
        return await asyncio.shield(in_thread(self.sync.kill))

    async def close(self) -> None:
        await in_thread(self.sync.close)

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()
