"""What the fleet looks like through Ray: hosts (Ray nodes with sealbox capacity), their agents, the
callers' jobs, placement groups. Every function expects this process to be connected (rayenv.connect)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from sealbox.fleet.rayenv import LABEL_PREFIX, NAMESPACE, RES_MEMORY, RES_VCPUS

AGENT_PREFIX = "sealbox-agent-"
PG_PREFIX = "sealbox:"
NODE_LABEL = "ray.io/node-id"  # every Ray node carries it: pins a reservation to one node


def agent_name(node_id: str) -> str:
    return AGENT_PREFIX + node_id


def pg_name(sandbox: str) -> str:
    return PG_PREFIX + sandbox


def hosts(*, alive_only: bool = True) -> list[dict[str, Any]]:
    """Ray nodes that offer sandbox capacity (the sealbox_vcpus resource), and with alive_only=False those that
    did and left (Ray keeps a dead node's labels, not its resources)."""
    import ray

    def ours(n: dict[str, Any]) -> bool:
        return RES_VCPUS in (n.get("Resources") or {}) or LABEL_PREFIX + "host" in (n.get("Labels") or {})

    return [n for n in ray.nodes() if ours(n) and (n.get("Alive") or not alive_only)]


def alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def host_name(node: dict[str, Any]) -> str:
    return str(node.get("Labels", {}).get(LABEL_PREFIX + "host") or node.get("NodeManagerAddress") or node["NodeID"][:12])


def agent(node_id: str) -> Any:
    """The host agent actor of a node (ValueError if it has none)."""
    import ray

    return ray.get_actor(agent_name(node_id), namespace=NAMESPACE)


class Jobs:
    """Which Ray jobs (callers) have ended; the job table is read at most once per `ttl` seconds."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._at = 0.0
        self._dead: set[str] = set()
        self._known: set[str] = set()

    def refresh(self) -> None:
        import ray._private.state as state

        table = state.state.job_table()
        self._known = {j["JobID"] for j in table}
        self._dead = {j["JobID"] for j in table if j["IsDead"]}
        self._at = time.monotonic()

    def dead(self, job: str) -> bool:
        """True once the job ended. A job not in the table (yet) is never taken for dead."""
        if not job:
            return False
        if time.monotonic() - self._at > self.ttl or (job not in self._known and time.monotonic() - self._at > 0.1):
            self.refresh()
        return job in self._dead


def current_job() -> str:
    import ray

    return str(ray.get_runtime_context().get_job_id())


def placement(pg: Any) -> str | None:
    """The node the (single-bundle) placement group's bundle is on, once placed."""
    from ray.util import placement_group_table

    node = placement_group_table(pg).get("bundles_to_node_id", {}).get(0)
    return str(node) if node else None


def remove_pg(name: str | None) -> None:
    """Release a sandbox's reservation (no-op if it is gone)."""
    if not name:
        return
    import ray
    from ray.util import remove_placement_group

    with contextlib.suppress(Exception):  # gone already, or the GCS says so
        remove_placement_group(ray.util.get_placement_group(name))


def pg_alive(name: str | None) -> bool:
    if not name:
        return False
    import ray
    from ray.util import placement_group_table

    try:
        pg = ray.util.get_placement_group(name)
    except ValueError:
        return False
    return placement_group_table(pg).get("state") not in ("REMOVED", None)


def capacity(node: dict[str, Any]) -> tuple[float, float]:
    res = node.get("Resources", {})
    return float(res.get(RES_VCPUS, 0)), float(res.get(RES_MEMORY, 0))
