"""`sealbox fleet status`: every host (Ray node with sandbox capacity) with its capacity, what is reserved on
it, its sandboxes, its labels and its agent's state (doctor failures, what its last start re-adopted)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sealbox.errors import SealboxError
from sealbox.fleet import cluster, records, wire
from sealbox.fleet.rayenv import LABEL_PREFIX, RES_MEMORY, RES_VCPUS

if TYPE_CHECKING:
    from sealbox.fleet.client import Fleet


def fleet_status(fleet: Fleet) -> dict[str, Any]:
    import ray._private.state as state

    avail = state.state.available_resources_per_node()
    recs = records.all_records()
    hellos = {}
    for n in cluster.hosts(alive_only=True):
        try:
            hellos[n["NodeID"]] = cluster.agent(n["NodeID"]).hello.remote()
        except ValueError:
            continue
    hosts = []
    for n in cluster.hosts(alive_only=False):
        node = n["NodeID"]
        cpus, mem = cluster.capacity(n)
        free = avail.get(node, {})
        agent: dict[str, Any] = {"state": "none"}
        if node in hellos:
            try:
                hello = wire.hello(fleet.ray.get(hellos[node], timeout=30))
                agent = {"state": "up", "pid": hello.pid, "doctor_failures": hello.doctor_failures(), "adopted": hello.adopted,
                         "undone": hello.undone}
            except SealboxError as e:
                agent = {"state": f"answering garbage ({e.message})"}
            except Exception as e:  # noqa: BLE001 - restarting or gone: said as such
                agent = {"state": f"not answering ({type(e).__name__})"}
        mine = sorted(r.name for r in recs.values() if r.node == node and r.state != "lost")
        hosts.append({
            "host": cluster.host_name(n), "node": node, "address": n.get("NodeManagerAddress"), "alive": bool(n.get("Alive")),
            "labels": {k: v for k, v in n.get("Labels", {}).items() if k.startswith(LABEL_PREFIX)},
            "vcpus": cpus, "memory_mib": mem,
            "used_vcpus": cpus - free.get(RES_VCPUS, 0) if n.get("Alive") else 0,
            "used_memory_mib": mem - free.get(RES_MEMORY, 0) if n.get("Alive") else 0,
            "sandboxes": mine, "agent": agent,
        })
    # as Fleet.list says it: lost once its host is gone, whether or not an agent's sweep marked the record yet
    alive = cluster.alive_nodes()
    lost = sorted(r.name for r in recs.values() if r.state == "lost" or (r.node and r.node not in alive))
    return {"hosts": sorted(hosts, key=lambda h: (not h["alive"], h["host"])), "lost": lost, "records": len(recs)}


def table(status: dict[str, Any]) -> str:
    head = ("HOST", "STATE", "ADDRESS", "VCPUS", "USED", "MEMORY", "USED", "SANDBOXES", "LABELS", "AGENT")
    body = []
    for h in status["hosts"]:
        agent = h["agent"]["state"]
        if h["agent"].get("doctor_failures"):
            agent += " (doctor: " + ",".join(h["agent"]["doctor_failures"]) + ")"
        labels = ",".join(f"{k.removeprefix(LABEL_PREFIX)}={v}" for k, v in sorted(h["labels"].items()) if k != LABEL_PREFIX + "host")
        body.append((h["host"], "up" if h["alive"] else "left", str(h["address"]), f"{h['vcpus']:g}", f"{h['used_vcpus']:g}",
                     f"{h['memory_mib']:g}M", f"{h['used_memory_mib']:g}M", str(len(h["sandboxes"])), labels or "-", agent))
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (head, *body)]
    if status["lost"]:
        lines.append(f"lost (their host left the fleet): {', '.join(status['lost'])}")
    return "\n".join(lines)
