"""`sealbox.Sandbox`: one sandbox as a Python object.

    with Sandbox.create("build/default", labels={"job": "42"}) as sb:
        print(sb.commands.run(["uname", "-r"]).stdout)
        sb.files.write("/tmp/in.txt", "hello")
    # removed here: on normal exit, on an exception, on Ctrl-C

The object is a handle (a host and a name): nothing is cached, every property asks the host. All work is done
by the host's sandbox runtime (LocalHost: sealbox.sandbox — the same calls the CLI makes); this module only
shapes arguments and results.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from sealbox.errors import NotFound, UsageError
from sealbox.sdk.host import Host, LocalHost, SandboxInfo, Say

if TYPE_CHECKING:
    from sealbox.sandbox.ssh import SshTarget
    from sealbox.sdk.commands import Commands
    from sealbox.sdk.files import Files
    from sealbox.sdk.options import CreateOptions

StrPath = str | PathLike[str]


def new_name(prefix: str = "sb") -> str:
    import secrets  # here: `sealbox ps` imports this module and never names a sandbox

    return f"{prefix}-{secrets.token_hex(4)}"


def resolve_host(host: Host | None, state_dir: StrPath | None) -> Host:
    """The host an SDK call acts on: `host`, else this machine's sandboxes in `state_dir` (not both)."""
    if host is not None and state_dir is not None:
        raise UsageError("give host= or state_dir=, not both")
    return host if host is not None else LocalHost(state_dir)


def options(image: StrPath, *, name: str | None = None, cpus: int = 2, memory_mib: int | None = None,
            network: Literal["isolated", "nat"] = "isolated", allow_egress: Sequence[str] = (), publish: Sequence[str] = (),
            disks: Sequence[str] = (), timeout_s: float = 180.0, labels: Mapping[str, str] | None = None,
            dns: Sequence[str] = (), **advanced: Any) -> CreateOptions:
    """CreateOptions from Sandbox.create's arguments (plain values; errors name the argument)."""
    from pydantic import ValidationError

    from sealbox.sdk.options import CreateOptions

    for key, value in (("allow_egress", allow_egress), ("publish", publish), ("disks", disks), ("dns", dns)):
        if isinstance(value, str):
            raise UsageError(f"{key}= takes a list of str, not one str", hint=f"e.g. {key}=[{value!r}]")
    try:
        return CreateOptions(image=str(image), name=name or new_name(), cpus=cpus, memory_mib=memory_mib, network=network,
                             allow_egress=tuple(allow_egress), publish=tuple(publish), disks=tuple(str(d) for d in disks),
                             timeout_s=timeout_s, labels=dict(labels or {}), dns=tuple(dns), **advanced)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "arguments"
        raise UsageError(f"Sandbox.create {where}={err.get('input')!r}: {err['msg']}") from None


def restore_defaults(snapshot: StrPath, kw: Mapping[str, Any]) -> dict[str, Any]:
    """create()'s arguments for a restore of `snapshot`: the machine shape a QEMU snapshot fixes (vCPUs, root)
    where `kw` leaves it open (memory and accelerator are filled in by the runtime; a value that differs is
    refused there with the snapshot's own values in the message)."""
    from sealbox.sandbox import snapshot as snap

    out = {**kw, "from_snapshot": str(snapshot)}
    path = Path(snapshot)
    if snap.backend_of(path) == "qemu":
        shape = snap.load(path).machine
        out.setdefault("cpus", shape.cpus)
        out.setdefault("rootfs", shape.rootfs)
    return out


class Sandbox:
    """A running (or once running) sandbox: `commands`, `files`, lifecycle. Make one with create() or connect()."""

    def __init__(self, name: str, host: Host, *, created: dict[str, Any] | None = None) -> None:
        self.name = name
        self.host = host
        self.created = created or {}  # create()'s summary: vmm, accel, address, ready_s, run_s
        self._commands: Commands | None = None
        self._files: Files | None = None

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r}, host={self.host!r})"

    @property
    def commands(self) -> Commands:
        """Commands in the guest (sealbox.sdk.commands)."""
        if self._commands is None:
            from sealbox.sdk.commands import Commands

            self._commands = Commands(self.host, self.name)
        return self._commands

    @property
    def files(self) -> Files:
        """Files in the guest (sealbox.sdk.files)."""
        if self._files is None:
            from sealbox.sdk.files import Files

            self._files = Files(self.host, self.name)
        return self._files

    # ---- making one -----------------------------------------------------------------------------
    @classmethod
    def create(cls, image: StrPath, *, name: str | None = None, cpus: int = 2, memory_mib: int | None = None,
               network: Literal["isolated", "nat"] = "isolated", allow_egress: Sequence[str] = (), publish: Sequence[str] = (),
               disks: Sequence[str] = (), timeout_s: float = 180.0, labels: Mapping[str, str] | None = None,
               dns: Sequence[str] = (), state_dir: StrPath | None = None, host: Host | None = None,
               on_warning: Say | None = None, on_progress: Say | None = None, holder: int | None = None,
               cancel: Callable[[], bool] | None = None, **advanced: Any) -> Self:
        """Boot a sandbox from a `sealbox build` output directory and return it once its guest is ready.

        name: default sb-<random>. network: "isolated" (reaches only its host link) or "nat" (egress, limited
        to `allow_egress` CIDR[:PORT] entries if given). disks: "FILE[:ro|rw][:raw|qcow2]". timeout_s: how
        long the guest may take to become ready (SandboxTimeout after; nothing is left behind). labels:
        kept with the sandbox (ps, inspect, Sandbox.list(labels=)). holder: a pid whose death lets `gc`
        remove the sandbox. cancel: polled while booting; true -> the boot is undone. advanced: rootfs,
        vmm, accel, firmware, boot, tdx, console_max_mib, from_snapshot (as `sealbox run`'s flags).
        Raises SandboxError (and its subclasses) or UsageError; on any failure or Ctrl-C nothing remains."""
        opts = options(image, name=name, cpus=cpus, memory_mib=memory_mib, network=network, allow_egress=allow_egress,
                       publish=publish, disks=disks, timeout_s=timeout_s, labels=labels, dns=dns, **advanced)
        h = resolve_host(host, state_dir)
        summary = h.create(opts, warn=on_warning, progress=on_progress, holder=holder, cancel=cancel)
        return cls(opts.name, h, created=summary)

    @classmethod
    def plan(cls, image: StrPath, *, state_dir: StrPath | None = None, host: Host | None = None, **kw: Any) -> dict[str, Any]:
        """What create() with these arguments would do (every host step, the VMM command line); nothing is created."""
        return resolve_host(host, state_dir).plan(options(image, **kw))

    @classmethod
    def connect(cls, name: str, *, state_dir: StrPath | None = None, host: Host | None = None) -> Self:
        """A handle on an existing sandbox (NotFound if there is none by that name)."""
        h = resolve_host(host, state_dir)
        h.info(name)  # NotFound, or a row (a corrupt record can still be removed)
        return cls(name, h)

    @classmethod
    def list(cls, *, labels: Mapping[str, str] | None = None, all: bool = False, state_dir: StrPath | None = None,  # noqa: A002 - public SDK keyword (like ps --all)
             host: Host | None = None) -> builtins.list[SandboxInfo]:
        """Sandboxes with all of `labels` (running and creating ones; all=True: also stopped, exited, failed)."""
        return resolve_host(host, state_dir).list(all_=all, labels=labels)

    # ---- the sandbox --------------------------------------------------------------------------
    @property
    def info(self) -> SandboxInfo:
        """Status (checked against the live processes), address, image, labels, ..."""
        return self.host.info(self.name)

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.info.labels)

    def inspect(self) -> dict[str, Any]:
        """The full record: spec, host steps, pids, network, the VMM's own view (secrets redacted)."""
        return self.host.inspect(self.name)

    def logs(self, *, max_bytes: int = 16 << 20) -> str:
        """The serial console log so far (the last `max_bytes`), as text; control characters as they are."""
        data = bytearray()
        for chunk in self.host.logs(self.name):
            data += chunk
            del data[: max(0, len(data) - max_bytes)]
        return data.decode(errors="replace")

    def logs_stream(self, *, follow: bool = False, max_seconds: float | None = None) -> Iterator[bytes]:
        """Console bytes as they come; with follow, until the VMM exits (or `max_seconds`)."""
        return self.host.logs(self.name, follow=follow, max_seconds=max_seconds)

    def stop(self, timeout: float = 30.0) -> str:
        """Shut the guest down (poweroff over SSH, then the VMM's own stop); the sandbox stays until removed."""
        return self.host.stop(self.name, timeout)

    def remove(self, *, force: bool = False) -> None:
        """Undo every host step and delete the sandbox (a running one only with force=True)."""
        self.host.remove(self.name, force=force)

    def kill(self) -> bool:
        """Remove the sandbox whatever its state (its VMM is killed). False if it was already gone.
        Ctrl-C during the removal is held until it finished (the main thread's signals)."""
        from sealbox.sandbox.lifecycle import deferred_signals

        with deferred_signals():
            try:
                self.host.remove(self.name, force=True)
            except NotFound:
                return False
        return True

    def close(self) -> None:
        """Drop this process's SSH connections to the guest (the sandbox keeps running)."""
        self.host.disconnect(self.name)

    # ---- snapshot / restore (the runtime's own; this is the SDK's end of it) --------------------
    def snapshot(self, dest: StrPath | None = None, *, resume: bool = True) -> Path:
        """Write a snapshot of the running sandbox to `dest` (a new directory) and return it; restore() boots
        a new sandbox from it."""
        take = getattr(self.host, "snapshot", None)
        if take is None:
            raise UsageError("this host cannot take snapshots")
        return Path(take(self.name, None if dest is None else Path(dest), resume=resume))

    def remove_snapshots(self) -> builtins.list[Path]:
        """Delete the snapshots this sandbox left in its host's snapshot directory (remove() keeps them); the
        sandbox itself may be gone already. Returns their paths."""
        drop = getattr(self.host, "remove_snapshots", None)
        if drop is None:
            raise UsageError("this host keeps no snapshots")
        return [Path(p) for p in drop(self.name)]

    @classmethod
    def restore(cls, snapshot: StrPath, image: StrPath, **kw: Any) -> Self:
        """A new sandbox from a snapshot directory of a sandbox of `image` (the other arguments as create()'s;
        vCPUs, memory, root and accelerator not given are the snapshot's, others must match it).

        The restored guest gets fresh entropy, instance data and SSH host keys before it is handed out."""
        return cls.create(image, **restore_defaults(snapshot, kw))

    # ---- reaching the guest as a terminal would (the CLI) --------------------------------------
    def ssh(self, *, user: str | None = None, extra: Sequence[str] = ()) -> None:
        """Replace this process by an interactive ssh session in the guest (`extra`: ssh options/command);
        it returns only if something stands in for the exec (tests)."""
        self._local("ssh").interactive(self.name, user=user, extra=builtins.list(extra))

    def ssh_target(self, user: str | None = None) -> SshTarget:
        """How to reach the guest with OpenSSH (a local sandbox: netns, address, key, pinned host keys)."""
        return self._local("ssh_target").ssh_target(self.name, user)

    def _local(self, what: str) -> LocalHost:
        if not isinstance(self.host, LocalHost):
            raise UsageError(f"{what} needs a sandbox on this machine", hint="use sb.commands.run")
        return self.host

    def ssh_config(self, alias: str | None = None) -> str:
        """An ssh_config stanza so ssh, scp, rsync and -L forwards reach the guest unchanged."""
        from sealbox.sandbox.ssh import config_stanza

        return config_stanza(self.ssh_target(), alias)

    # ---- context manager ----------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with contextlib.suppress(NotFound):
            self.kill()
