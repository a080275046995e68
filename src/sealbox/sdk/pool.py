"""`sealbox.Pool`: sandboxes booted ahead of time, handed out by acquire(), destroyed (never reused) on release().

    with Pool("build/default", size=4) as pool:
        sb = pool.acquire()          # a ready sandbox, at once while the pool is warm
        sb.commands.run(["make", "test"])
        pool.release(sb)             # killed; the pool boots a replacement in the background

A member is handed out only after it ran a command (`true`): it answers, and its SSH master connection is up,
so the first command after acquire() costs a session, not a handshake.

Members carry the label `sealbox.pool=<pool name>` and this process as their holder: if the process dies
(even by SIGKILL) they become `orphaned`, which `sealbox gc` removes — and so does the next Pool of the same
name when it starts. A member whose boot was under way is `abandoned` and removed the same way.

`snapshot=True`: the pool boots one template cold, snapshots it (paused) and removes it, then creates every member,
refills included, by restoring that snapshot (Sandbox.restore: each member renews its keys, addresses and random
state). close() deletes the snapshot; after a crash it stays: `sealbox rm --snapshots NAME-template`.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any

from sealbox.errors import SandboxError, SandboxTimeout, UsageError
from sealbox.sdk.host import Host
from sealbox.sdk.sandbox import Sandbox, StrPath, new_name, resolve_host
from sealbox.util.names import check_sandbox_name

log = logging.getLogger("sealbox.pool")
POOL_LABEL = "sealbox.pool"
MAX_BACKOFF = 30.0
HEALTH_TIMEOUT = 120.0
FAILURES_TO_GIVE_UP = 3  # consecutive failed boots with nothing ready: acquire() raises instead of waiting


class PooledSandbox(Sandbox):
    """A pool member handed out by acquire(); kill() (or leaving its `with`) also tells the pool."""

    _pool: Pool | None = None

    def kill(self) -> bool:
        try:
            return super().kill()
        finally:
            if self._pool is not None:
                self._pool._forget(self.name)


class Pool:
    """Keeps `size` sandboxes booted from `image` (the other arguments as Sandbox.create's)."""

    def __init__(self, image: StrPath, size: int = 2, *, name: str | None = None, parallel: int = 2,
                 host: Host | None = None, state_dir: StrPath | None = None, labels: dict[str, str] | None = None,
                 snapshot: bool = False, **create_kwargs: Any) -> None:
        if size < 1 or parallel < 1:
            raise UsageError(f"Pool size and parallel must be at least 1 (got size={size}, parallel={parallel})")
        self.name = check_sandbox_name(name or new_name("pool"), "pool name")
        check_sandbox_name(f"{self.name}-000000", "pool name (members are named NAME-xxxxxx)")
        if "name" in create_kwargs or "holder" in create_kwargs or "cancel" in create_kwargs:
            raise UsageError("a Pool names its members and holds them itself: drop name=/holder=/cancel=")
        if snapshot and "from_snapshot" in create_kwargs:
            raise UsageError("a Pool with snapshot=True makes its own snapshot: drop from_snapshot=")
        self.image, self.size, self.parallel = image, size, parallel
        self.host = resolve_host(host, state_dir)
        self.labels = {**(labels or {}), POOL_LABEL: self.name}
        self._kw = create_kwargs
        self._snapshot = snapshot
        self._template = f"{self.name}-template"  # the sandbox whose snapshot the members restore
        self._snap_path: str | None = None
        self._snap_lock = threading.Lock()
        self._cond = threading.Condition()
        self._ready: collections.deque[PooledSandbox] = collections.deque()
        self._out: dict[str, PooledSandbox] = {}
        self._creating = 0
        self._failures = 0
        self.last_error: BaseException | None = None
        self._closed = False
        self._cancel = threading.Event()
        reap = getattr(self.host, "reap", None)
        self.recovered: list[str] = reap(self.labels) if reap is not None else []  # left by a crashed owner
        self._filler = threading.Thread(target=self._fill, daemon=True, name=f"sealbox-pool-{self.name}")
        self._filler.start()

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, size={self.size}, ready={len(self._ready)}, out={len(self._out)})"

    @property
    def ready(self) -> int:
        """Members booted and waiting to be acquired."""
        return len(self._ready)

    # ---- filling ------------------------------------------------------------------------------
    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._creating >= self.parallel or len(self._ready) + self._creating >= self.size):
                    self._cond.wait()
                if self._closed:
                    return
                self._creating += 1
                backoff = min(MAX_BACKOFF, 2.0 ** self._failures - 1) if self._failures else 0.0
            threading.Thread(target=self._boot, args=(backoff,), daemon=True, name=f"sealbox-pool-{self.name}-boot").start()

    def _boot(self, backoff: float) -> None:
        sb: PooledSandbox | None = None
        try:
            if backoff and self._cancel.wait(backoff):
                return
            kw = {**self._kw, "from_snapshot": self._snapshot_path()} if self._snapshot else self._kw
            sb = PooledSandbox.create(self.image, name=f"{self.name}-{os.urandom(3).hex()}", labels=self.labels,
                                      host=self.host, holder=os.getpid(), cancel=self._cancel.is_set, **kw)
            sb._pool = self
            sb.commands.run(["true"], timeout=HEALTH_TIMEOUT, check=True)  # it answers; the connection is warm
        except Exception as e:  # noqa: BLE001 - kept for acquire(); the next boot retries after a backoff
            if sb is not None:
                sb.kill()  # booted but does not answer: never handed out
                sb = None
            if not self._cancel.is_set():
                log.warning("pool %s: a boot failed: %s", self.name, e)
                with self._cond:
                    self._failures += 1
                    self.last_error = e
        finally:
            with self._cond:
                self._creating -= 1
                if sb is not None and not self._closed:
                    self._ready.append(sb)
                    self._failures = 0
                    sb = None
                self._cond.notify_all()
            if sb is not None:  # the pool closed while it booted
                sb.kill()

    def _snapshot_path(self) -> str:
        """The template's snapshot, made by the first boot that needs it (the others wait for it). The template is
        created with the members' own arguments, so their machine shape matches the snapshot's."""
        with self._snap_lock:
            if self._snap_path is None:
                if self._cancel.is_set():  # closed while this boot waited for another's template
                    raise SandboxError(f"pool {self.name} is closed")
                take = getattr(self.host, "snapshot", None)
                if take is None:
                    raise UsageError("Pool(snapshot=True) needs a host that takes snapshots")
                tpl = Sandbox.create(self.image, name=self._template, labels=self.labels, host=self.host,
                                     holder=os.getpid(), cancel=self._cancel.is_set, **self._kw)
                try:  # paused: the template is removed right after, nobody resumes it
                    self._snap_path = str(take(self._template, None, resume=False))
                finally:
                    tpl.kill()
            return self._snap_path

    def _drop_snapshot(self) -> None:
        drop = getattr(self.host, "remove_snapshots", None)
        if self._snap_path is not None and drop is not None:
            try:
                drop(self._template)
            except Exception as e:  # noqa: BLE001 - the pool is closing anyway; say what stays
                log.warning("pool %s: could not remove its snapshot %s: %s", self.name, self._snap_path, e)
            self._snap_path = None

    # ---- handing out --------------------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> PooledSandbox:
        """A ready member (waits for one if none is; SandboxTimeout after `timeout` seconds). If boots keep
        failing with nothing ready, raises SandboxError carrying the last boot's error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._ready:
                    if self._closed:
                        raise SandboxError(f"pool {self.name} is closed")
                    if self._failures >= FAILURES_TO_GIVE_UP:
                        raise SandboxError(f"pool {self.name} cannot boot sandboxes: {self.last_error}") from self.last_error
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise SandboxTimeout(f"no sandbox of pool {self.name} became ready within {timeout:g}s")
                    self._cond.wait(left if left is not None else 1.0)
                sb = self._ready.popleft()
                self._out[sb.name] = sb
                self._cond.notify_all()  # the filler boots a replacement
            if sb.info.status == "running":
                return sb
            log.warning("pool %s: member %s is %s; dropped", self.name, sb.name, sb.info.status)
            sb.kill()

    def release(self, sb: Sandbox) -> None:
        """Destroy a member handed out by acquire() (it is never reused)."""
        if sb.name not in self._out:
            raise UsageError(f"sandbox {sb.name!r} was not acquired from pool {self.name}")
        sb.kill()
        self._forget(sb.name)

    def _forget(self, name: str) -> None:
        with self._cond:
            self._out.pop(name, None)

    # ---- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop booting (boots under way are undone), and destroy every member: ready and acquired ones."""
        with self._cond:
            self._closed = True
            self._cancel.set()
            self._cond.notify_all()
        self._filler.join(10)
        with self._cond:
            while self._creating:
                self._cond.wait(1.0)
            members = [*self._ready, *self._out.values()]
            self._ready.clear()
        for sb in members:
            try:
                sb.kill()
            except Exception as e:  # noqa: BLE001 - keep going; its holder (us) dies some day, gc removes it then
                log.warning("pool %s: could not remove %s: %s", self.name, sb.name, e)
        with self._snap_lock:
            self._drop_snapshot()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        from sealbox.sandbox.lifecycle import deferred_signals

        with deferred_signals():
            self.close()
