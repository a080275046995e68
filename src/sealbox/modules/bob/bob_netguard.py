#!/usr/bin/python3 -I
"""The container-side drop rules of bob's input-only channel (guest side, runs as root).

Installed as /usr/lib/sealbox/bob/bob-netguard. The guest's own rule sets (builder/bob_firewall.py) already drop
every packet with the input-only port as its source; this is the second wall, inside the searcher's container's
network namespace, so nothing with that source port (TCP or UDP) leaves the container itself either:
  bob-netguard apply    load the rules into the container's netns (the workload unit's ExecStartPost, as root;
                        waits up to APPLY_WAIT seconds for the container to come up)
  bob-netguard verify   read the ruleset actually present there (`nft -j list ruleset`) and say whether the drop
                        rules are in it; exit 0 only if they are. bob-mode runs it before entering production.
The container's namespace is found from the pid podman writes (--pidfile), a file the searcher's uid can write: the
pid is accepted only if its network namespace belongs to a user namespace the searcher's uid created (rootless
podman's) and is not the guest's own; the namespace is then held open as a file descriptor and nft runs in it through that descriptor, so a pid
reused in between cannot redirect the check. The namespace belongs to the searcher's rootless user namespace, in
which the container runs without CAP_NET_ADMIN (podman's default capabilities), so the container cannot change them.
Stdlib only: the guest has no sealbox package.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIB = "usr/lib/sealbox/bob"
PIDFILE = "run/sealbox-bob-work/container.pid"
SEARCHER = "searcher"
TABLE = "sealbox_container"
HOOKS = ("output", "forward")  # locally sent, and anything routed through the namespace
PROTOS = frozenset({"tcp", "udp"})
MAX_RULESET = 4 << 20  # bytes of `nft -j list ruleset` read at most
TOOL_TIMEOUT = 30
APPLY_WAIT = 120  # seconds `apply` waits for the container to be up
PASSIVE = frozenset({"match", "counter", "log", "limit", "drop"})  # statements after which the chain's walk goes on


def ruleset(port: int) -> dict[str, Any]:
    """The document `apply` loads: its own table (nothing else in the namespace is touched), a drop in each hook,
    first in the hook's order (priority -300, before anything podman or the container could add)."""
    cmds: list[dict[str, Any]] = [{"add": {"table": {"family": "inet", "name": TABLE}}},
                                  {"flush": {"table": {"family": "inet", "name": TABLE}}}]
    for hook in HOOKS:
        cmds.append({"add": {"chain": {"family": "inet", "table": TABLE, "name": hook, "type": "filter", "hook": hook,
                                       "prio": -300, "policy": "accept"}}})
        cmds.append({"add": {"rule": {"family": "inet", "table": TABLE, "chain": hook, "comment": "input-only: source port",
                                      "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                                                          "right": {"set": sorted(PROTOS)}}},
                                               {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "sport"}},
                                                          "right": port}},
                                               {"counter": None}, {"drop": None}]}}})
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def _protos_of_drop(expr: Any, port: int) -> frozenset[str]:
    """The protocols a rule drops unconditionally when their source port is `port`; empty if it is not such a rule.
    Only these shapes count: [l4proto == P | in {P..}] [th sport == port] [counter] drop, or [tcp|udp sport == port]
    [counter] drop. Anything else in the rule (another match, a limit, a set lookup) could narrow it: not counted."""
    if not isinstance(expr, list) or not expr or expr[-1] != {"drop": None}:
        return frozenset()
    protos: frozenset[str] | None = None
    sport = False
    for e in expr[:-1]:
        if isinstance(e, dict) and set(e) == {"counter"}:
            continue
        m = e.get("match") if isinstance(e, dict) and len(e) == 1 else None
        if not isinstance(m, dict) or m.get("op") not in ("==", "in"):
            return frozenset()
        left, right = m.get("left"), m.get("right")
        if left == {"meta": {"key": "l4proto"}} and protos is None:
            values = right.get("set") if isinstance(right, dict) and set(right) == {"set"} else [right]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                return frozenset()
            protos = frozenset(values) & PROTOS
        elif (isinstance(left, dict) and set(left) == {"payload"} and isinstance(left["payload"], dict)
              and left["payload"].get("field") == "sport" and not sport and type(right) is int and right == port):
            proto = left["payload"].get("protocol")
            if proto == "th":
                sport = True
            elif proto in PROTOS and protos in (None, frozenset({proto})):
                sport, protos = True, frozenset({proto})
            else:
                return frozenset()
        else:
            return frozenset()
    return protos if sport and protos else frozenset()


def verify(document: Any, port: int) -> list[str]:
    """What is missing from an `nft -j list ruleset` document: [] when, for each hook in HOOKS, a filter base chain of
    an inet table without flags (nft lists `dormant` as one) drops TCP and UDP with source port `port` before any rule
    of that chain could end it otherwise."""
    items = document.get("nftables") if isinstance(document, dict) else None
    if not isinstance(items, list):
        return ["the ruleset could not be read (not an nftables JSON document)"]
    chains: dict[tuple[str, str], str] = {}  # (table, chain) of inet filter base chains -> hook
    rules: dict[tuple[str, str], list[Any]] = {}
    active: set[str] = set()  # inet tables listed without flags: a dormant table applies none of its rules
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            continue
        kind, body = next(iter(item.items()))
        if not isinstance(body, dict) or body.get("family") != "inet":
            continue
        if kind == "table" and isinstance(body.get("name"), str) and not body.get("flags"):
            active.add(body["name"])
            continue
        key = (body.get("table"), body.get("chain") if kind == "rule" else body.get("name"))
        if not all(isinstance(k, str) for k in key):
            continue
        if kind == "chain" and body.get("type") == "filter" and body.get("hook") in HOOKS:
            chains[key] = body["hook"]  # type: ignore[index]
        elif kind == "rule":
            rules.setdefault(key, []).append(body.get("expr"))  # type: ignore[arg-type]
    covered: dict[str, frozenset[str]] = {hook: frozenset() for hook in HOOKS}
    for key, hook in chains.items():
        if key[0] not in active:
            continue
        for expr in rules.get(key, []):
            covered[hook] |= _protos_of_drop(expr, port)
            if not isinstance(expr, list) or not all(isinstance(e, dict) and set(e) <= PASSIVE for e in expr):
                break  # a rule that may end this chain's walk (accept, jump, a verdict map...): a drop after it may not apply
    return [f"no {'/'.join(sorted(PROTOS - got))} source-port {port} drop in the {hook} hook"
            for hook, got in covered.items() if got != PROTOS]


Runner = Callable[[list[str], bytes | None, tuple[int, ...]], tuple[int, bytes]]


def _run(argv: list[str], stdin: bytes | None, fds: tuple[int, ...]) -> tuple[int, bytes]:
    try:
        p = subprocess.run(argv, input=stdin if stdin is not None else b"", stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, pass_fds=fds, timeout=TOOL_TIMEOUT, check=False)
        return p.returncode, p.stdout[:MAX_RULESET + 1]
    except (OSError, subprocess.TimeoutExpired):
        return 127, b""


class Failed(Exception):
    pass


NS_GET_USERNS = 0xB701  # linux/nsfs.h: _IO(0xb7, 0x1), the user namespace owning a namespace (a new fd)
NS_GET_OWNER_UID = 0xB704  # _IO(0xb7, 0x4), the uid that created a user namespace


def netns_owner(fd: int) -> int:
    """The uid whose user namespace owns the network namespace `fd`: the searcher's for a rootless container (its
    processes themselves run as any uid of the searcher's subordinate range), 0 for the guest's own."""
    userns = fcntl.ioctl(fd, NS_GET_USERNS)
    try:
        buf = bytearray(4)
        fcntl.ioctl(userns, NS_GET_OWNER_UID, buf)
        return int(struct.unpack("=I", buf)[0])
    finally:
        os.close(userns)


class Guard:
    def __init__(self, root: Path = Path("/"), run: Runner = _run, user: str = SEARCHER,
                 owner_of: Callable[[int], int] = netns_owner, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.root, self.run, self.user, self.owner_of = root, run, user, owner_of
        self.clock, self.sleep = clock, sleep

    def port(self) -> int:
        try:
            value = json.loads((self.root / LIB / "config.json").read_text())["input_only_udp_port"]
        except (OSError, ValueError, KeyError, TypeError):
            raise Failed("the image's config.json is missing or has no input_only_udp_port") from None
        if type(value) is not int or not 1 <= value <= 65535:
            raise Failed("input_only_udp_port in the image's config.json is not a port")
        return value

    def open_netns(self) -> int:
        """An fd of the container's network namespace, from the pidfile, checked as the module docstring says."""
        try:
            text = (self.root / PIDFILE).read_text()[:32].strip()
            pid = int(text) if text.isdigit() else 0
        except (OSError, UnicodeDecodeError):
            pid = 0
        if pid <= 1:
            raise Failed("the container is not running (no pid in /" + PIDFILE + ")")
        proc = self.root / "proc" / str(pid)
        try:
            uid = pwd.getpwnam(self.user).pw_uid
            fd = os.open(proc / "ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except (KeyError, OSError):
            raise Failed(f"the container's process {pid} is gone (or no user {self.user})") from None
        try:
            try:
                owner = self.owner_of(fd)
                mine = os.stat(self.root / "proc/self/ns/net")  # this service runs in the guest's namespace
            except OSError:
                raise Failed(f"the container's process {pid} cannot be checked") from None
            ns = os.fstat(fd)
            if owner != uid or (ns.st_dev, ns.st_ino) == (mine.st_dev, mine.st_ino):
                raise Failed(f"process {pid} is not the searcher's container (its network namespace belongs to uid "
                             f"{owner}'s user namespace, or is the guest's own)")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _nft(self, fd: int, args: list[str], stdin: bytes | None = None) -> tuple[int, bytes]:
        return self.run(["nsenter", f"--net=/proc/self/fd/{fd}", "--", "nft", *args], stdin, (fd,))

    def wait_netns(self, seconds: float) -> int:
        """open_netns, retried while the container is not up yet (the unit runs `apply` right after starting podman)."""
        end = self.clock() + seconds
        while True:
            try:
                return self.open_netns()
            except Failed:
                if self.clock() >= end:
                    raise
                self.sleep(0.5)

    def apply(self, wait: float = 0) -> str:
        port, fd = self.port(), self.wait_netns(wait)
        try:
            rc, _ = self._nft(fd, ["-j", "-f", "-"], json.dumps(ruleset(port)).encode())
            if rc != 0:
                raise Failed(f"loading the container's drop rules failed (nft exit {rc})")
            missing = self._check(fd, port)
        finally:
            os.close(fd)
        if missing:
            raise Failed("loaded, but the container's ruleset lacks: " + "; ".join(missing))
        return f"container drop rules for source port {port} loaded and verified"

    def _check(self, fd: int, port: int) -> list[str]:
        rc, out = self._nft(fd, ["-j", "list", "ruleset"])
        if rc != 0 or len(out) > MAX_RULESET:
            return [f"the container's ruleset could not be read (nft exit {rc})" if rc else "the ruleset is too large"]
        try:
            return verify(json.loads(out), port)
        except (ValueError, RecursionError):
            return ["the container's ruleset could not be read (not JSON)"]

    def verify(self) -> str:
        port, fd = self.port(), self.open_netns()
        try:
            missing = self._check(fd, port)
        finally:
            os.close(fd)
        if missing:
            raise Failed("the container's ruleset lacks: " + "; ".join(missing))
        return f"container drop rules for source port {port} present"


def main(argv: list[str]) -> int:
    guard = Guard()
    actions = {"apply": lambda: guard.apply(wait=APPLY_WAIT), "verify": guard.verify}
    if len(argv) != 1 or argv[0] not in actions:
        print("usage: bob-netguard apply|verify", file=sys.stderr)
        return 2
    try:
        print(actions[argv[0]]())
        return 0
    except Failed as e:
        print(f"bob-netguard: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
