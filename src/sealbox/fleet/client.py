"""`sealbox.Fleet`: the SDK's Host for sandboxes spread over many hosts by Ray.

    fleet = Fleet("10.0.0.1:6380")                   # this process joins the Ray cluster as a driver
    with Sandbox.create(IMAGE, host=fleet, cpus=2) as sb:  # placed by Ray, booted by that host's agent
        sb.commands.run(["make", "test"])
    pool = Pool(IMAGE, size=8, host=fleet.requiring(tdx="true"))

Placement: each sandbox gets a placement group of one bundle reserving its capacity ({sealbox_vcpus: cpus,
sealbox_memory_mib: memory}) on a node whose labels satisfy the requirements (`requiring(...)`, plus
sealbox.tdx for tdx=True and sealbox.kvm for accel="kvm" or vmm="firecracker"); Ray picks the node, that
node's agent creates the sandbox with its local manager. The reservation lives (detached) until the sandbox
is removed. When no host has room: ResourceExhausted at once, or after waiting `wait` seconds for room.

Lookup: a sandbox's record in Ray's key-value store (records.py) names its node; commands, files, logs and
lifecycle calls go to that node's agent. A sandbox whose host left the fleet is listed as `lost`.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sealbox.errors import NotFound, ResourceExhausted, SandboxError, SandboxTimeout, SealboxError, UsageError
from sealbox.fleet import cluster, rayenv, records, wire
from sealbox.fleet.records import Record
from sealbox.sandbox.status import PsRow
from sealbox.sdk.host import Say
from sealbox.sdk.options import CreateOptions

DEFAULT_MEMORY_MIB = 512
CALL_MARGIN_S = 120.0  # beyond a create's own timeout, for the host's setup and teardown


def _memory(opts: CreateOptions) -> int:
    """What the sandbox will get: the given memory, else the runtime's default (or the image's minimum, if
    the image directory is readable here too)."""
    if opts.memory_mib is not None:
        return opts.memory_mib
    try:
        manifest = json.loads((Path(opts.image) / "manifest.json").read_text())
        need = int(manifest.get("min_memory_mib", {}).get(opts.rootfs, 0))
    except (OSError, ValueError, TypeError, AttributeError):
        need = 0
    return max(DEFAULT_MEMORY_MIB, need)


class Fleet:
    """The sandboxes of a Ray cluster whose hosts joined with `sealbox fleet join` (see docs/fleet.md)."""

    def __init__(self, address: str | None = None, *, require: Mapping[str, str] | None = None, wait: float = 0.0) -> None:
        self.address = address
        self.require = {_label(k): str(v) for k, v in (require or {}).items()}
        self.wait = wait
        self.ray = rayenv.connect(address)
        self.job = cluster.current_job()
        self.jobs = cluster.Jobs()

    def __repr__(self) -> str:
        need = ",".join(f"{k}={v}" for k, v in sorted(self.require.items()))
        return f"Fleet({self.address or 'auto'!r}{', requiring ' + need if need else ''})"

    def requiring(self, **labels: str) -> Fleet:
        """The same fleet, placing only on hosts with these labels (e.g. tdx="true", zone="b")."""
        other = object.__new__(Fleet)
        other.__dict__.update(self.__dict__)
        other.require = {**self.require, **{_label(k): str(v) for k, v in labels.items()}}
        return other

    def waiting(self, seconds: float) -> Fleet:
        """The same fleet, waiting up to `seconds` for room instead of raising ResourceExhausted at once."""
        other = object.__new__(Fleet)
        other.__dict__.update(self.__dict__)
        other.wait = seconds
        return other

    # ---- placement -----------------------------------------------------------------------------
    def selector(self, opts: CreateOptions) -> dict[str, str]:
        sel = dict(self.require)
        if opts.tdx:
            sel[rayenv.LABEL_PREFIX + "tdx"] = "true"
        if opts.accel == "kvm" or opts.vmm == "firecracker":
            sel[rayenv.LABEL_PREFIX + "kvm"] = "true"
        return sel

    def _room(self, bundle: dict[str, float], sel: dict[str, str]) -> tuple[bool, bool]:
        """(a host with these labels exists, one of them has room now)."""
        import ray._private.state as state

        avail = state.state.available_resources_per_node()
        matching = [n for n in cluster.hosts() if all(n.get("Labels", {}).get(k) == v for k, v in sel.items())]
        room = any(all(avail.get(n["NodeID"], {}).get(r, 0) >= q for r, q in bundle.items()) for n in matching)
        return bool(matching), room

    def _place(self, rec: Record, bundle: dict[str, float], sel: dict[str, str], cancel: Callable[[], bool] | None) -> str:
        """Reserve the bundle; the node it landed on. Raises ResourceExhausted when the fleet has no room."""
        from ray.util import placement_group

        exists, room = self._room(bundle, sel)
        need = f"{int(bundle[rayenv.RES_VCPUS])} vCPUs, {int(bundle[rayenv.RES_MEMORY])} MiB"
        where = " with " + ", ".join(f"{k}={v}" for k, v in sorted(sel.items())) if sel else ""
        if not exists:
            raise ResourceExhausted(f"no host in the fleet{where}", hint="see 'sealbox fleet status'; a host declares labels when it joins")
        if not room and not self.wait:
            raise ResourceExhausted(f"the fleet is full: no host{where} has {need} free",
                                    hint="remove sandboxes, add hosts, or wait for room (Fleet(..., wait=SECONDS))")
        pg = placement_group([bundle], strategy="STRICT_PACK", name=rec.pg or "", lifetime="detached",
                             bundle_label_selector=[sel] if sel else None)
        deadline = time.monotonic() + max(self.wait, 10.0)
        while True:
            ready, _ = self.ray.wait([pg.ready()], timeout=0.5)
            if ready:
                node = cluster.placement(pg)
                if node:
                    return node
            if (cancel is not None and cancel()) or time.monotonic() > deadline:
                cluster.remove_pg(rec.pg)
                if cancel is not None and cancel():
                    raise SandboxError(f"sandbox {rec.name}: cancelled while waiting for room")
                raise ResourceExhausted(f"the fleet is full: no host{where} had {need} free within {max(self.wait, 10.0):g}s",
                                        hint="remove sandboxes, add hosts, or wait longer")

    def _agent(self, node: str) -> Any:
        try:
            return cluster.agent(node)
        except ValueError:
            raise SandboxError(f"host {node[:12]} has no sealbox agent", hint="start it with 'sealbox fleet join' on that host") from None

    # ---- Host: lifecycle ----------------------------------------------------------------------
    def create(self, opts: CreateOptions, *, warn: Say | None = None, progress: Say | None = None,
               holder: int | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        mem = _memory(opts)
        opts = opts.model_copy(update={"memory_mib": mem})
        bundle = {rayenv.RES_VCPUS: float(opts.cpus), rayenv.RES_MEMORY: float(mem)}
        rec = Record(name=opts.name, caller=self.job, held=holder is not None, pg=cluster.pg_name(opts.name),
                     cpus=opts.cpus, memory_mib=mem, labels=dict(opts.labels))
        if not records.claim(rec):
            raise UsageError(f"a sandbox named {opts.name!r} already exists in the fleet", hint="pick another name")
        try:
            node = self._place(rec, bundle, self.selector(opts), cancel)
            placed_s = time.monotonic() - t0
            if progress:
                progress(f"placed on {node[:12]} in {placed_s * 1000:.0f} ms")
            agent = self._agent(node)
            ref = agent.create.remote(opts.model_dump(mode="json"), caller=self.job, pg=rec.pg)
            res = self._wait_create(ref, agent, opts, cancel)
        except BaseException:
            cluster.remove_pg(rec.pg)
            current = records.get(opts.name)
            if current is not None and current.state != "running" and current.caller == self.job:
                records.delete(opts.name)
            raise
        res["placed_s"] = round(placed_s, 6)
        res["fleet_s"] = round(time.monotonic() - t0, 6)
        return res

    def _wait_create(self, ref: Any, agent: Any, opts: CreateOptions, cancel: Callable[[], bool] | None) -> dict[str, Any]:
        deadline = time.monotonic() + opts.timeout_s + CALL_MARGIN_S
        try:
            while True:
                done, _ = self.ray.wait([ref], timeout=0.5)
                if done:
                    break
                if cancel is not None and cancel():
                    cluster.remove_pg(cluster.pg_name(opts.name))  # the agent's create sees it and undoes the boot
                if time.monotonic() > deadline:
                    cluster.remove_pg(cluster.pg_name(opts.name))
                    raise SandboxTimeout(f"sandbox {opts.name}: its host did not finish the create in time")
            res = wire.check(self.ray.get(ref))
            if not isinstance(res, dict):
                raise SandboxError(f"sandbox {opts.name}: its host answered the create with something else")
            return res
        except KeyboardInterrupt:
            cluster.remove_pg(cluster.pg_name(opts.name))
            with contextlib.suppress(Exception):  # undone or failed: either way nothing stays
                self.ray.get(ref, timeout=60)
            raise
        except SealboxError:
            raise
        except Exception as e:  # noqa: BLE001 - the agent died mid-create (its host went away, or it was killed)
            last = str(e).strip().splitlines()[-1:] or [""]  # a RayTaskError ends with the agent's own exception
            raise SandboxError(f"sandbox {opts.name}: the host agent failed during the create: {type(e).__name__}: {wire.text(last[0], 300)}",
                               hint="its restart removes what was half made ('sealbox fleet status')") from None

    def plan(self, opts: CreateOptions) -> dict[str, Any]:
        raise UsageError("a dry run needs the host that would run it", hint="run 'sealbox run --dry-run' on a fleet host")

    def _record(self, name: str) -> Record:
        rec = records.get(name)
        if rec is None:
            raise NotFound(f"no sandbox named {name!r} in the fleet")
        return rec

    def _owner(self, name: str) -> tuple[Record, Any]:
        """The record and the agent of a sandbox; NotFound if unknown, SandboxError if its host is lost."""
        rec = self._record(name)
        if rec.state == "lost":
            raise SandboxError(f"sandbox {name} is lost: {rec.reason}", hint=f"'sealbox --fleet ADDRESS rm {name}' forgets it")
        if rec.node is None:
            raise SandboxError(f"sandbox {name} is still being placed")
        return rec, self._agent(rec.node)

    def _call(self, name: str, method: str, *args: Any, timeout: float | None = 120.0) -> Any:
        rec, agent = self._owner(name)
        try:
            return wire.check(self.ray.get(getattr(agent, method).remote(*args), timeout=timeout))
        except SealboxError:
            raise
        except Exception as e:  # noqa: BLE001 - actor died / timed out: said in one line
            raise SandboxError(f"sandbox {name}: its host {rec.host or rec.node} did not answer: {type(e).__name__}") from None

    def info(self, name: str) -> PsRow:
        rec = self._record(name)
        if rec.state == "lost" or (rec.node and rec.node not in cluster.alive_nodes()):
            return _lost_row(rec)
        if rec.state in ("placing", "creating"):
            return PsRow(name=name, status="creating", cpus=rec.cpus, memory_mib=rec.memory_mib, labels=rec.labels,
                         created_at=rec.created_at)
        from sealbox.fleet.agent import FLEET_LABEL

        res = self._call(name, "info", name)
        row = wire.row(res.get("row") if isinstance(res, dict) else None, rec.host or str(rec.node))
        if row.name != name:
            raise SandboxError(f"host {rec.host or rec.node} answered for {row.name} when asked for {name}")
        row.labels.pop(FLEET_LABEL, None)  # the agent's own mark, not the caller's label (as list() shows it)
        return row

    def list(self, *, all_: bool = False, labels: Mapping[str, str] | None = None) -> builtins.list[PsRow]:
        """Every fleet sandbox on every live host, and the lost ones (their host left), sorted by name."""
        from sealbox.fleet.agent import FLEET_LABEL

        recs = records.all_records()
        alive = cluster.alive_nodes()
        refs = {}
        for n in cluster.hosts():
            try:
                refs[n["NodeID"]] = cluster.agent(n["NodeID"]).list.remote(all_, dict(labels or {}))
            except ValueError:
                continue
        rows: dict[str, PsRow] = {}
        for node, ref in refs.items():
            try:
                for row in wire.rows(self.ray.get(ref, timeout=60), node[:12]):
                    row.labels.pop(FLEET_LABEL, None)
                    rows[row.name] = row
            except Exception:  # noqa: BLE001 - that host is going away: its records say lost below
                recs_of = [r for r in recs.values() if r.node == node]
                for rec in recs_of:
                    rows.setdefault(rec.name, _lost_row(rec, f"its host {rec.host or node[:12]} did not answer"))
        for rec in recs.values():
            if rec.name in rows or not all(rec.labels.get(k) == v for k, v in (labels or {}).items()):
                continue
            if rec.state == "lost" or (rec.node and rec.node not in alive):
                rows[rec.name] = _lost_row(rec)
        return [rows[k] for k in sorted(rows)]

    def host_of(self, name: str) -> str:
        """The name of the host a sandbox lives on (its sealbox.host label, else its address)."""
        rec = self._record(name)
        return rec.host or str(rec.node)

    def hosts_of(self) -> dict[str, str]:
        """Every fleet sandbox's host name (its sealbox.host label, else its node id), from one read of the records."""
        return {n: rec.host or str(rec.node or "-") for n, rec in records.all_records().items()}

    def remove(self, name: str, *, force: bool = False) -> None:
        rec = self._record(name)
        if rec.state == "lost" or (rec.node and rec.node not in cluster.alive_nodes()):
            cluster.remove_pg(rec.pg)
            records.forget(rec)  # its host is gone: if it comes back, its agent removes the sandbox (records.py)
            return
        self._call(name, "remove", name, force)

    def stop(self, name: str, timeout: float) -> str:
        return wire.text(wire.field(self._call(name, "stop", name, timeout, timeout=timeout + 60), "how", str), 200)

    def inspect(self, name: str) -> dict[str, Any]:
        out = dict(wire.field(self._call(name, "inspect", name), "record", dict))
        rec = self._record(name)
        out["fleet"] = rec.model_dump()
        return out

    def logs(self, name: str, *, follow: bool = False, max_seconds: float | None = None) -> Iterator[bytes]:
        offset, deadline = 0, None if max_seconds is None else time.monotonic() + max_seconds
        while True:
            res = wire.logs(self._call(name, "logs", name, offset))
            if res.data:
                offset += len(res.data)
                yield res.data
            if offset < res.size:
                continue
            if not follow or res.status not in ("running", "creating") or (deadline and time.monotonic() > deadline):
                return
            time.sleep(0.5)

    def reap(self, labels: Mapping[str, str]) -> builtins.list[str]:
        """Remove this fleet's sandboxes with these labels whose holder is gone (a crashed pool's members)."""
        done = []
        for rec in records.all_records().values():
            if all(rec.labels.get(k) == v for k, v in labels.items()) and rec.held and rec.caller != self.job and self.jobs.dead(rec.caller):
                try:
                    self.remove(rec.name, force=True)
                    done.append(rec.name)
                except SealboxError:
                    continue
        return done

    def snapshot(self, name: str, dest: Path | None = None, *, resume: bool = True) -> Path:
        return Path(wire.field(self._call(name, "snapshot", name, None if dest is None else str(dest), resume), "path", str))

    # ---- Host: the guest -----------------------------------------------------------------------
    def spawn(self, name: str, remote: str, *, user: str | None, stdin: bool) -> tuple[Any, Callable[[], None]]:
        from sealbox.fleet.channel import RemoteChannel

        _rec, agent = self._owner(name)
        xid = wire.field(self._call(name, "spawn", name, remote, user, stdin), "id", int)
        return RemoteChannel(agent, xid, stdin=stdin), _nothing

    def disconnect(self, name: str) -> None:
        return None  # the connections to the guest are the agent's, kept warm for the next caller

    # ---- the fleet -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        from sealbox.fleet.status import fleet_status

        return fleet_status(self)


def _label(key: str) -> str:
    return key if "." in key or "/" in key else rayenv.LABEL_PREFIX + key


def _lost_row(rec: Record, reason: str | None = None) -> PsRow:
    return PsRow(name=rec.name, status="lost", cpus=rec.cpus or None, memory_mib=rec.memory_mib or None, labels=rec.labels,
                 created_at=rec.created_at, reason=reason or rec.reason or f"its host {rec.host or rec.node} left the fleet")


def _nothing() -> None:
    return None
