#!/usr/bin/python3 -I
"""The slot for the operator's node service (guest side): `bob-node`, the main process of sealbox-bob-node.service.

No Ethereum client is packaged in Debian, so bob runs none of its own: the operator ships one with [[files]] and
names its argv in `[bob] node_command` (config.json). This runs it as the unit's user (bob-node, never searcher or
root) in /persistent/node, with nothing of the unit's environment but PATH, HOME and NODE_IPC_DIR: the directory
for its IPC socket, which the searcher's container sees read-only at /node (a socket there must be mode 0666 for
the container's user to connect). No node_command: says so and exits 0 (the slot is empty).
Stdlib only: the guest has no sealbox package.
"""

from __future__ import annotations

import json
import os
import sys

LIB = "/usr/lib/sealbox/bob"
HOME = "/persistent/node"
IPC_DIR = "/run/sealbox-bob-node"  # the unit's RuntimeDirectory; bob-workload mounts it into the container at /node


def command(config: str = f"{LIB}/config.json") -> list[str]:
    """The argv from config.json; SystemExit naming the file if it is not a list of strings."""
    try:
        with open(config, encoding="utf-8") as f:
            value = json.load(f).get("node_command", [])
    except (OSError, ValueError, AttributeError) as e:
        raise SystemExit(f"bob-node: {config} cannot be read: {e}") from None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise SystemExit(f"bob-node: node_command in {config} is not a list of strings")
    return value


def main(argv: list[str], execve=os.execve) -> int:  # type: ignore[no-untyped-def]
    args = command(*argv[1:2])  # a config path for tests; the image's config.json by default
    if not args:
        print("bob-node: no [bob] node_command in this image: the node slot is empty", file=sys.stderr)
        return 0
    os.chdir(HOME)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": HOME, "NODE_IPC_DIR": IPC_DIR}
    try:
        execve(args[0], args, env)
    except OSError as e:
        raise SystemExit(f"bob-node: {args[0]} cannot be run: {e.strerror or e}") from None
    return 0  # only a stand-in execve returns


if __name__ == "__main__":
    sys.exit(main(sys.argv))
