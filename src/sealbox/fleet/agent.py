"""The sealbox host agent: one long-lived Ray actor per fleet host, pinned to its node, owning that host's
sandboxes through the local manager (the SDK's LocalHost, or another Host given by `host_factory`).

When it starts — first start or a restart after it died (Ray restarts it: max_restarts=-1) — it runs
`doctor` (kept for `sealbox fleet status`), `gc` (removes what dead sandboxes left), undoes the creates a
killed agent left unfinished, and re-adopts the host's intact sandboxes: a running fleet sandbox keeps its
record, or gets one again with a reservation pinned to this node (its host rejoined: a new Ray node, the same
host name). A running sandbox whose name now belongs to another host's sandbox (it was forgotten with `rm`
while its host was away, and the name reused) is removed, not adopted: adopting it would take the other's
record and reservation; so is one removed with `rm` while its host was away (records.py: `removed`). A record
of this node whose sandbox is gone is forgotten with its reservation.

Unfinished creates: before it asks its host to create a sandbox, the agent notes the name in the state dir
(`fleet/creating/NAME`), and drops the note once the record says `running` (or the create failed and was
undone). A note found by a later agent is a create that died with its agent: its caller was told it failed
(or is dead), so the sandbox is removed, not adopted, with its reservation and record; a removal that fails
(the host's own create process is still busy with it) is retried by the sweeper.

A sweeper thread then keeps the fleet's records honest: a create whose caller died before it finished is
undone, a sandbox held by a caller that ended is removed, and a record whose host left the fleet is marked
`lost` and its reservation released (any agent does this; it is idempotent).

The methods are the Host protocol's (sealbox.sdk.host), with plain data in and out; a command's pipes are
pulled with `pump` (execs.py).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sealbox.errors import NotFound, SandboxError, SealboxError
from sealbox.fleet import cluster, records
from sealbox.fleet.execs import Exec, ExecTable
from sealbox.fleet.records import Record
from sealbox.util.names import NAME_RE

log = logging.getLogger("sealbox.fleet.agent")
FLEET_LABEL = "sealbox.fleet"  # on every sandbox an agent created: what it may re-adopt
SWEEP_S = 1.0
GRACE_S = 5.0  # a placing record younger than this is left to its caller


def load_factory(spec: str | None) -> Any:
    """`module:callable` returning a Host; default: this machine's LocalHost (its $SEALBOX_STATE_DIR)."""
    if not spec:  # this machine's runtime, its forking operations out of the (multi-threaded) Ray worker
        from sealbox.fleet.localproc import ProcessLocalHost

        return ProcessLocalHost
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _error(e: BaseException) -> dict[str, Any]:
    """An exception as data (the caller raises the same class again: errors.py's names)."""
    kind = type(e).__name__ if isinstance(e, SealboxError) else "SandboxError"
    msg = e.message if isinstance(e, SealboxError) else f"{type(e).__name__}: {e}"
    return {"error": kind, "message": msg, "hint": getattr(e, "hint", None)}


class HostAgent:
    """Runs in the Ray worker the actor lives in; every public method is one remote call."""

    def __init__(self, host_factory: str | None = None, sweep: bool = True) -> None:
        import ray

        self.node_id: str = str(ray.get_runtime_context().get_node_id())
        self.host = load_factory(host_factory)()
        self.started_at = time.time()
        self.execs = ExecTable()
        self.creating: set[str] = set()
        self.lock = threading.Lock()
        self.jobs = cluster.Jobs()
        self.doctor = self._doctor()
        self.gc_report = self._gc()
        self.undone = self._unfinished()
        self.adopted, self.forgotten = self._adopt()
        self._stop = threading.Event()
        if sweep:
            threading.Thread(target=self._sweep_loop, daemon=True, name="sealbox-fleet-sweep").start()

    # ---- start-up ------------------------------------------------------------------------------
    def _doctor(self) -> list[dict[str, Any]]:
        root = getattr(self.host, "root", None)
        if root is None:
            return [{"name": "doctor", "status": "skip", "detail": f"{type(self.host).__name__} is not this machine's runtime"}]
        from sealbox.fleet.localproc import doctor_checks

        return doctor_checks(str(root))

    def _gc(self) -> dict[str, Any]:
        gc = getattr(self.host, "gc", None)
        if gc is None:
            return {}
        try:
            return dict(gc().model_dump())
        except SealboxError as e:
            return {"problems": [e.message]}

    # ---- creates a killed agent left unfinished -------------------------------------------------
    def _notes(self) -> Path:
        from sealbox.sandbox.layout import state_root

        return state_root(getattr(self.host, "root", None)) / "fleet" / "creating"

    def _note(self, name: str, on: bool) -> None:
        note = self._notes() / name
        if on:
            note.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(note, os.O_WRONLY | os.O_CREAT, 0o600)
            os.fsync(fd)
            os.close(fd)
        else:
            note.unlink(missing_ok=True)

    def _unfinished(self) -> list[str]:
        """Undo the creates whose note is left (see the module's doc), except those running here now."""
        try:
            names = sorted(p.name for p in self._notes().iterdir() if NAME_RE.fullmatch(p.name))
        except FileNotFoundError:
            return []
        done = []
        for name in names:
            with self.lock:
                if name in self.creating:
                    continue
            rec = records.get(name)
            if rec is not None and rec.state == "running" and rec.node == self.node_id:
                self._note(name, False)  # it completed just before its agent died
                continue
            try:
                self.host.remove(name, force=True)
            except NotFound:
                pass
            except SealboxError as e:
                log.warning("could not undo the unfinished create of %s (retried): %s", name, e)
                continue
            if rec is not None and rec.state in ("placing", "creating") and rec.node in (None, self.node_id):
                cluster.remove_pg(rec.pg)
                records.delete(name)
            self._note(name, False)
            done.append(name)
        return done

    def _adopt(self) -> tuple[list[str], list[str]]:
        recs = records.all_records(removed=True)
        local = {i.name: i for i in self.host.list(all_=True) if FLEET_LABEL in i.labels}
        adopted, forgotten = [], []
        for name, info in local.items():
            if info.status != "running":
                continue
            rec = recs.get(name)
            if rec is not None and rec.node == self.node_id and rec.state == "running" and cluster.pg_alive(rec.pg):
                adopted.append(name)
                continue
            if rec is not None and rec.state == "removed" and rec.host == self._host_name():
                if self._drop(name):  # removed (`rm`) while its host was away
                    records.delete(name)
                continue
            if rec is not None and rec.node != self.node_id and rec.host != self._host_name():
                self._drop(name)  # forgotten while its host was away: the name is another sandbox's now
                continue
            try:
                self._reregister(name, info, rec)
                adopted.append(name)
            except SealboxError as e:
                log.warning("could not re-adopt %s: %s", name, e)
        for name, rec in recs.items():
            if rec.state == "removed" and rec.host == self._host_name() and name not in local:
                records.delete(name)  # removed while its host was away, and gone with it (or by gc)
            elif rec.node == self.node_id and name not in local and rec.state in ("creating", "running"):
                cluster.remove_pg(rec.pg)
                records.delete(name)
                forgotten.append(name)
        return adopted, forgotten

    def _drop(self, name: str) -> bool:
        """Remove a sandbox of this host that the fleet no longer knows as this host's (its record untouched)."""
        try:
            self.host.remove(name, force=True)
        except SealboxError as e:
            log.warning("could not remove %s, which the fleet forgot: %s", name, e)
            return False
        self.undone.append(name)
        return True

    def _reregister(self, name: str, info: Any, rec: Record | None) -> None:
        """A running sandbox of this host without a valid record (its host rejoined): reserve again, here."""
        from ray.util import placement_group

        from sealbox.fleet.rayenv import RES_MEMORY, RES_VCPUS

        cpus, mem = int(info.cpus or 1), int(info.memory_mib or 512)
        if rec is not None:
            cluster.remove_pg(rec.pg)
        pg = placement_group([{RES_VCPUS: cpus, RES_MEMORY: mem}], strategy="STRICT_PACK", name=cluster.pg_name(name),
                             lifetime="detached", bundle_label_selector=[{cluster.NODE_LABEL: self.node_id}])
        import ray

        try:
            ray.get(pg.ready(), timeout=30)
        except Exception as e:  # noqa: BLE001 - no room: the sandbox runs unreserved; say so
            cluster.remove_pg(cluster.pg_name(name))
            raise SandboxError(f"no capacity left to re-reserve {name}: {e}") from None
        records.put(Record(name=name, state="running", node=self.node_id, host=self._host_name(), pg=cluster.pg_name(name),
                           cpus=cpus, memory_mib=mem, labels={k: v for k, v in info.labels.items() if k != FLEET_LABEL},
                           created_at=info.created_at or time.time()))

    def _host_name(self) -> str:
        import ray

        for n in ray.nodes():
            if n["NodeID"] == self.node_id:
                return cluster.host_name(n)
        return self.node_id[:12]

    # ---- the sweeper ---------------------------------------------------------------------------
    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_S):
            try:
                self.sweep()
            except Exception as e:  # noqa: BLE001 - the next round tries again
                log.warning("fleet sweep failed: %s", e)

    def sweep(self) -> dict[str, list[str]]:
        """One round over the fleet's records (see the module's doc). Returns what it did."""
        done: dict[str, list[str]] = {"undone": self._unfinished(), "released": [], "lost": []}
        self.execs.reap_idle()
        alive = cluster.alive_nodes()
        now = time.time()
        for name, rec in records.all_records().items():
            with self.lock:
                if name in self.creating:
                    continue  # its create runs here and watches its caller itself
            if rec.state == "lost":
                continue
            if rec.node and rec.node not in alive:
                cluster.remove_pg(rec.pg)
                records.put(rec.model_copy(update={"state": "lost", "lost_at": now, "pg": None,
                                                   "reason": f"its host {rec.host or rec.node[:12]} left the fleet"}))
                done["lost"].append(name)
            elif rec.state in ("placing", "creating") and now - rec.created_at > GRACE_S and self.jobs.dead(rec.caller):
                if rec.node in (None, self.node_id):
                    self._undo(name, rec)
                    done["undone"].append(name)
            elif rec.state == "running" and rec.held and rec.node == self.node_id and self.jobs.dead(rec.caller):
                self._undo(name, rec)
                done["released"].append(name)
        return done

    def _undo(self, name: str, rec: Record) -> None:
        try:
            self.host.remove(name, force=True)
        except NotFound:
            pass
        except SealboxError as e:
            log.warning("could not remove %s: %s", name, e)
            return
        cluster.remove_pg(rec.pg)
        records.delete(name)

    # ---- the Host protocol, as data ------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        import os

        return {"node": self.node_id, "pid": os.getpid(), "host": repr(self.host), "started_at": self.started_at,
                "doctor": self.doctor, "gc": self.gc_report, "undone": self.undone, "adopted": self.adopted,
                "forgotten": self.forgotten}

    def create(self, opts: dict[str, Any], *, caller: str, pg: str) -> dict[str, Any]:
        from sealbox.sdk.options import CreateOptions

        o = CreateOptions.model_validate({**opts, "labels": {**opts.get("labels", {}), FLEET_LABEL: "1"}})
        with self.lock:
            if o.name in self.creating:
                return _error(SandboxError(f"sandbox {o.name} is being created on this host already"))
            self.creating.add(o.name)
        t0 = time.monotonic()
        try:
            rec = records.get(o.name)
            if rec is None or rec.pg != pg:
                return _error(SandboxError(f"sandbox {o.name}: its fleet record is gone (the caller gave up)"))
            self._note(o.name, True)  # dropped in `finally`; left only if this process dies mid-create
            records.put(rec.model_copy(update={"state": "creating", "node": self.node_id, "host": self._host_name()}))

            def cancel() -> bool:
                return self.jobs.dead(caller) or not cluster.pg_alive(pg)

            try:
                summary = self.host.create(o, cancel=cancel)
            except SealboxError as e:
                return _error(e)
            local_s = time.monotonic() - t0
            if cancel():  # the caller died just as the guest became ready: undo, as a failed create would
                self._undo(o.name, rec)
                return _error(SandboxError(f"sandbox {o.name}: its caller went away during the create; removed"))
            records.put(rec.model_copy(update={"state": "running", "node": self.node_id, "host": self._host_name()}))
            return {**summary, "host": self._host_name(), "node": self.node_id, "local_s": round(local_s, 6)}
        finally:
            self._note(o.name, False)  # created, or failed and undone by the host (or by _undo above)
            with self.lock:
                self.creating.discard(o.name)

    def info(self, name: str) -> dict[str, Any]:
        try:
            return {"row": self.host.info(name).model_dump()}
        except SealboxError as e:
            return _error(e)

    def list(self, all_: bool = False, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        return [r.model_dump() for r in self.host.list(all_=all_, labels=labels) if FLEET_LABEL in r.labels]

    def remove(self, name: str, force: bool = False) -> dict[str, Any]:
        try:
            self.host.remove(name, force=force)
        except NotFound as e:
            rec = records.get(name)
            if rec is None or rec.node != self.node_id:
                return _error(e)
        except SealboxError as e:
            return _error(e)
        rec = records.get(name)
        if rec is not None:
            cluster.remove_pg(rec.pg)
            records.delete(name)
        return {}

    def stop(self, name: str, timeout: float) -> dict[str, Any]:
        try:
            return {"how": self.host.stop(name, timeout)}
        except SealboxError as e:
            return _error(e)

    def inspect(self, name: str) -> dict[str, Any]:
        try:
            return {"record": self.host.inspect(name)}
        except SealboxError as e:
            return _error(e)

    def logs(self, name: str, offset: int = 0, max_bytes: int = 4 << 20) -> dict[str, Any]:
        """The console log from byte `offset` (at most `max_bytes`), and whether the VMM still runs."""
        try:
            data = bytearray()
            for chunk in self.host.logs(name):
                data += chunk
            return {"data": bytes(data[offset: offset + max_bytes]), "size": len(data), "status": self.host.info(name).status}
        except SealboxError as e:
            return _error(e)

    def gc(self) -> dict[str, Any]:
        return self._gc()

    def snapshot(self, name: str, dest: str | None, resume: bool) -> dict[str, Any]:
        from pathlib import Path

        take = getattr(self.host, "snapshot", None)
        if take is None:
            return _error(SandboxError("this host cannot take snapshots"))
        try:
            return {"path": str(take(name, Path(dest) if dest else None, resume=resume))}
        except SealboxError as e:
            return _error(e)

    # ---- commands ------------------------------------------------------------------------------
    def spawn(self, name: str, remote: str, user: str | None, stdin: bool) -> dict[str, Any]:
        try:
            channel, end = self.host.spawn(name, remote, user=user, stdin=stdin)
        except SealboxError as e:
            return _error(e)
        return {"id": self.execs.add(Exec(channel, end))}

    def pump(self, xid: int, wait: float = 1.0) -> dict[str, Any]:
        try:
            out = self.execs.get(xid).pump(min(wait, 5.0))
        except SealboxError as e:
            return _error(e)
        if out["exit"] is not None:
            self.execs.drop(xid)
        return out

    def write(self, xid: int, data: bytes, close: bool = False) -> bool:
        try:
            ex = self.execs.get(xid)
        except SealboxError:
            return False
        ok = ex.write(data) if data else True
        if close:
            ex.close_stdin()
        return ok

    def kill_exec(self, xid: int) -> None:
        with contextlib.suppress(SealboxError):
            self.execs.get(xid).kill()

    def disconnect(self, name: str) -> None:
        self.host.disconnect(name)


def start(node_id: str, *, host_factory: str | None = None, max_concurrency: int = 64) -> Any:
    """Create (or find) the agent actor of `node_id`: detached, named, pinned to the node (hard affinity),
    restarted by Ray whenever its process dies, using no CPU slot. Returns its handle once it answered."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from sealbox.fleet.rayenv import NAMESPACE

    cls = ray.remote(HostAgent)
    handle = cls.options(name=cluster.agent_name(node_id), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                         num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=max_concurrency,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(host_factory)
    ray.get(handle.hello.remote(), timeout=300)
    return handle
