"""A simulated host's membership process for the fleet integration test (run in the host's network namespace
by `ip netns exec`): sealbox.fleet.join.join with the stand-in host factory or the real LocalHost, printing `joined` once its Ray
node runs and its agent answered; SIGTERM makes it leave (its Ray node stopped by pid). Not product code."""

from __future__ import annotations

import sys
from pathlib import Path

from sealbox.fleet import join

if __name__ == "__main__":
    address, node_ip, temp_dir, name, zone, runtime = sys.argv[1:7]  # runtime: standin, or local (this machine's LocalHost)
    cpus, memory_mib = (int(sys.argv[7]), int(sys.argv[8])) if len(sys.argv) > 8 else (2, 1024)  # its capacity
    sys.exit(join.join(address, node_ip=node_ip, temp_dir=Path(temp_dir), cpus=cpus, memory_mib=memory_mib, labels={"zone": zone},
                       name=name, host_factory="fleet_standin:StandinHost" if runtime == "standin" else None, probe=False,
                       on_ready=lambda: print("joined", flush=True)))
