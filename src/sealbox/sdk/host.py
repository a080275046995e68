"""Where sandboxes live: the seam between the SDK's objects and a host's sandbox runtime.

`Host` is what Sandbox, Commands, Files and Pool call; `LocalHost` implements it with this machine's sandbox
runtime (sealbox.sandbox: one state directory, QEMU/Firecracker, SSH through the sandbox's netns). A fleet
implements the same protocol for a sandbox on another machine (its calls routed to that host's agent, which
runs a LocalHost there); everything above — quoting, capture, timeouts, pools — stays the same. Every
argument and result that crosses the seam is plain data (CreateOptions, SandboxInfo, dicts, bytes), and
`spawn` returns a Channel (pipes + poll/wait/kill), so a remote implementation can stream it.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sealbox.sandbox.status import PsRow

if TYPE_CHECKING:
    from sealbox.sandbox.gc import GcReport
    from sealbox.sandbox.layout import StateLayout
    from sealbox.sandbox.ssh import SshTarget
    from sealbox.sandbox.state import StateDir
    from sealbox.sdk.options import CreateOptions
    from sealbox.sdk.process import Channel

Say = Callable[[str], None]
SandboxInfo = PsRow  # one row of `sealbox ps`: name, status, vmm, accel, address, cpus, memory, image, labels, ...


class Host(Protocol):
    """The operations the SDK needs from the machine that runs a sandbox.

    Optional extras, used when a host has them: `reap(labels)` (a Pool's recovery), `snapshot(name, dest,
    resume=)`, `remove_snapshots(name)`, and for a sandbox on this machine `ssh_target`, `exec_replace`, `interactive` (the CLI's exec/ssh)."""

    def create(self, opts: CreateOptions, *, warn: Say | None = None, progress: Say | None = None,
               holder: int | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]: ...

    def plan(self, opts: CreateOptions) -> dict[str, Any]: ...

    def info(self, name: str) -> SandboxInfo: ...

    def list(self, *, all_: bool = False, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]: ...

    def remove(self, name: str, *, force: bool = False) -> None: ...

    def stop(self, name: str, timeout: float) -> str: ...

    def inspect(self, name: str) -> dict[str, Any]: ...

    def logs(self, name: str, *, follow: bool = False, max_seconds: float | None = None) -> Iterator[bytes]: ...

    def spawn(self, name: str, remote: str, *, user: str | None, stdin: bool) -> tuple[Channel, Callable[[], None]]: ...

    def disconnect(self, name: str) -> None: ...


def _matches(info: SandboxInfo, labels: Mapping[str, str] | None) -> bool:
    return all(info.labels.get(k) == v for k, v in (labels or {}).items())


class LocalHost:
    """This machine's sandboxes, in one state directory (default: $SEALBOX_STATE_DIR or /var/lib/sealbox)."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, *, command: str | None = None) -> None:
        from sealbox.sandbox.layout import state_root

        self.root = state_root(state_dir)
        self.command = command  # the CLI's command path, for its "needs root" message
        self._layout: StateLayout | None = None
        self._state: StateDir | None = None

    def __repr__(self) -> str:
        return f"LocalHost({str(self.root)!r})"

    @property
    def layout(self) -> StateLayout:
        """The state directory's paths, once its access check passed (sandbox verbs run as root); enough for the
        read-only verbs, which must start fast (no pydantic: sandbox/query.py)."""
        if self._layout is None:
            from sealbox.errors import UsageError
            from sealbox.sandbox.layout import StateLayout, check_access

            try:
                check_access(self.root, self.command or "sealbox.Sandbox")
            except UsageError as e:
                if self.command:
                    raise
                raise UsageError(e.message, hint="run the program as root, or use state_dir= of a directory you own (plan() only)") from None
            self._layout = StateLayout(self.root)
        return self._layout

    @property
    def state(self) -> StateDir:
        """The state directory with its locks and the record's writer (after the same access check)."""
        if self._state is None:
            from sealbox.sandbox.state import StateDir

            self.layout  # noqa: B018 - the access check
            self._state = StateDir(self.root)
        return self._state

    # ---- lifecycle --------------------------------------------------------------------------
    def _spec(self, opts: CreateOptions) -> Any:
        from sealbox.sandbox import planning

        flags: dict[str, Any] = opts.model_dump(exclude={"image", "network", "timeout_s", "publish", "from_snapshot"})
        flags.update(image_dir=Path(opts.image), net=opts.network, timeout=opts.timeout_s,
                     from_snapshot=Path(opts.from_snapshot) if opts.from_snapshot else None)
        for key in ("allow_egress", "dns", "disks"):
            flags[key] = list(flags[key])
        flags["publish"] = list(opts.publish)
        return planning.make_spec(**flags)

    def create(self, opts: CreateOptions, *, warn: Say | None = None, progress: Say | None = None,
               holder: int | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        from sealbox.sandbox import lifecycle

        state = self.state  # first: without root nothing else can be answered
        return lifecycle.run(self._spec(opts), state, warn=warn, progress=progress, holder=holder, cancel=cancel)

    def plan(self, opts: CreateOptions) -> dict[str, Any]:
        from sealbox.sandbox import lifecycle

        state = self.state
        return lifecycle.dry_run(self._spec(opts), state)

    def info(self, name: str) -> SandboxInfo:
        from sealbox.errors import NotFound, SandboxError
        from sealbox.sandbox import query, status

        try:
            return status.row(query.load(self.layout, name))
        except NotFound:
            raise
        except SandboxError as e:
            return status.corrupt_row(name, e.message)

    def list(self, *, all_: bool = False, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        from sealbox.sandbox import query

        return [r for r in query.ps(self.layout, all_=all_) if _matches(r, labels)]

    def remove(self, name: str, *, force: bool = False) -> None:
        from sealbox.sandbox import control

        self.disconnect(name)
        control.remove(self.state, name, force=force)

    def stop(self, name: str, timeout: float) -> str:
        from sealbox.sandbox import control

        self.disconnect(name)
        return control.stop(self.state, name, timeout)

    def inspect(self, name: str) -> dict[str, Any]:
        from sealbox.sandbox import query

        return query.inspect(self.layout, name)

    def logs(self, name: str, *, follow: bool = False, max_seconds: float | None = None) -> Iterator[bytes]:
        from sealbox.sandbox import query

        return query.follow_logs(self.layout, name, follow=follow, max_seconds=max_seconds)

    def gc(self, *, dry_run: bool = False, orphans: bool = False) -> GcReport:
        """`orphans`: also what state dirs that no longer exist left on this host (sandbox/gc.py)."""
        from sealbox.sandbox import gc

        return gc.collect(self.state, dry_run=dry_run, orphans=orphans)

    def reap(self, labels: Mapping[str, str]) -> builtins.list[str]:
        """Remove the sandboxes with these labels that nobody can use any more (holder or creator dead,
        VMM gone): a pool's recovery after its owner crashed. Returns their names."""
        from sealbox.sandbox import gc
        from sealbox.sandbox.control import remove

        done = []
        for info in self.list(all_=True, labels=labels):
            if info.status in ("orphaned", "abandoned", "exited", "failed"):
                try:
                    remove(self.state, info.name, force=True)
                    done.append(info.name)
                except Exception as e:  # noqa: BLE001 - busy or half-removed: `sealbox gc` retries
                    gc.log.warning("could not remove %s: %s", info.name, e)
        return done

    def snapshot(self, name: str, dest: Path | None = None, *, resume: bool = True) -> Path:
        from sealbox.sandbox import control

        return control.snapshot(self.state, name, dest, resume=resume)

    def remove_snapshots(self, name: str) -> builtins.list[Path]:
        from sealbox.sandbox import control

        return control.remove_snapshots(self.state, name)

    # ---- the guest ------------------------------------------------------------------------------
    def ssh_target(self, name: str, user: str | None = None) -> SshTarget:
        from sealbox.sandbox import control

        return control.ssh_target(self.state, name, user)

    def spawn(self, name: str, remote: str, *, user: str | None, stdin: bool) -> tuple[Channel, Callable[[], None]]:
        """ssh running `remote` in the guest, its pipes ours; and a function to call once it ended (frees
        its session slot on the master connection)."""
        import subprocess

        from sealbox.sandbox import ssh
        from sealbox.sdk.mux import MASTERS

        t = self.ssh_target(name, user)
        slot = MASTERS.acquire(t, t.user)
        argv = ssh.in_netns_argv(t.netns, ssh.remote_argv(t, remote, control=slot[0] if slot else None))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except BaseException:
            if slot:
                slot[1].release()
            raise
        return proc, (slot[1].release if slot else _nothing)

    def disconnect(self, name: str) -> None:
        from sealbox.sdk.mux import MASTERS

        MASTERS.close(self.root.absolute(), name)

    def exec_replace(self, name: str, remote: str, *, user: str | None, tty: bool) -> None:
        """Replace this process by ssh running `remote` (the CLI's `exec`: a terminal, signals, exit status)."""
        from sealbox.sandbox import ssh

        t = self.ssh_target(name, user)
        ssh.exec_in_netns(t.netns, ssh.remote_argv(t, remote, user=user, tty=tty, stdin_is_tty=os.isatty(0)))

    def interactive(self, name: str, *, user: str | None, extra: builtins.list[str]) -> None:
        from sealbox.sandbox import control

        control.interactive(self.state, name, user=user, extra=extra)


def _nothing() -> None:
    return None
