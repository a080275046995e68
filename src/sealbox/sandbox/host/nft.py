"""nftables rulesets of a sandbox, built as JSON documents (libnftables JSON schema) and loaded with
`nft -j -f -` — never by pasting strings into rule text, so no value can change a rule's meaning.

Two tables per sandbox:
- in the sandbox netns, `inet sealbox` (both modes): input and forward policy drop;
- in the root namespace, `inet sealbox-<name>` (nat only): all chains policy accept, every rule
  matches this sandbox's veth only, so no other host traffic is affected and no other table is
  touched. (A drop in another table, e.g. a host firewall with forward policy drop, still wins:
  netfilter runs every base chain of a hook. `sealbox doctor` should warn about that.)
Both drop the blocked destinations (host/egress.py: metadata services, the host's own addresses and
private networks) before any accept, except allow-list entries that name something inside them.
One shared table in the root namespace, `ip sealbox_forward`, exists only while sealbox itself keeps
net.ipv4.ip_forward on (host/forward.py): it forwards nothing but the sandboxes' veths.

Every document starts by (re)creating its table in one transaction ("add; delete; add" replaces
the table atomically), and removal is "add; delete", which succeeds whether or not the table exists
(nft 1.0.6 has no `destroy`). Counters carry comments so tests and `inspect` can read them.

Rate limits (sealbox.sandbox.model.Limits.net_rx_bytes / net_tx_bytes; rx/tx as seen by the guest,
like Firecracker's rx/tx rate limiters) map to one policer per direction on the sandbox's TAP:
    tx (guest -> anything): prerouting,  `iifname tap0 limit rate over R bytes/second burst B bytes drop`
    rx (anything -> guest): postrouting, `oifname tap0 limit rate over R bytes/second burst B bytes drop`
with R = ceil(size * 1000 / refill_ms) (the bucket's average rate) and B = max(size, 64 KiB). nft's
bucket holds R + B bytes (one second of rate plus the burst); B is at least 64 KiB because with a
vnet_hdr TAP a single GSO packet can be 64 KiB, and a packet larger than the bucket would never
pass. `one_time_burst` has no nft equivalent and is ignored. Excess packets are dropped (a policer,
not a shaper): TCP backs off to roughly R.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Sequence
from typing import Any

from sealbox.sandbox.host.egress import BlockedNet, openings
from sealbox.sandbox.host.netnames import NETNS_TABLE, TABLE_PREFIX
from sealbox.sandbox.host.netns import run_in_netns
from sealbox.sandbox.model import EgressRule, RateLimit
from sealbox.util.nftexpr import Expr
from sealbox.util.nftexpr import match as _match
from sealbox.util.nftexpr import meta as _meta
from sealbox.util.run import run

FAMILY = "inet"
# root namespace, family ip; an underscore is not allowed in sandbox names, so never `sealbox-<name>`
FORWARD_GUARD_TABLE = "sealbox_forward"
GSO_MAX_BYTES = 65536
HELPER_UID = 65534  # the uid sealbox's helper processes drop to (nobody): host/dns.py, host/publish.py
PRIO_FILTER, PRIO_MANGLE, PRIO_SRCNAT = 0, -150, 100

Command = dict[str, Any]


# --- expression helpers ------------------------------------------------------------------------
def _ip(field: str) -> Expr:
    return {"payload": {"protocol": "ip", "field": field}}


def _addr(net: ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Address) -> Any:
    if isinstance(net, ipaddress.IPv4Address):
        return str(net)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _to(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Expr:
    """Destination match for either family (an IPv6 match implies an IPv6 packet in an inet table)."""
    proto = "ip" if net.version == 4 else "ip6"
    return _match({"payload": {"protocol": proto, "field": "daddr"}}, _addr(net))


def _iif(name: str, op: str = "==") -> Expr:
    return _match(_meta("iifname"), name, op)


def _oif(name: str, op: str = "==") -> Expr:
    return _match(_meta("oifname"), name, op)


def _ct_state(*states: str) -> Expr:
    return _match({"ct": {"key": "state"}}, list(states), "in")


def _limit_over(limit: RateLimit) -> Expr:
    rate, burst = rate_bucket(limit)
    return {"limit": {"rate": rate, "rate_unit": "bytes", "per": "second", "burst": burst, "burst_unit": "bytes", "inv": True}}


COUNTER: Expr = {"counter": None}
ACCEPT: Expr = {"accept": None}
DROP: Expr = {"drop": None}


def rate_bucket(limit: RateLimit) -> tuple[int, int]:
    """(bytes/second, burst bytes) for a RateLimit; see the module docstring for the mapping."""
    rate = max(1, math.ceil(limit.size * 1000 / limit.refill_ms))
    return rate, max(limit.size, GSO_MAX_BYTES)


# --- document builders -------------------------------------------------------------------------
class _Table:
    def __init__(self, name: str, family: str = FAMILY) -> None:
        self.name = name
        self.family = family
        self.cmds: list[Command] = []
        ref = {"family": family, "name": name}
        # add + delete + add: one transaction that replaces any previous version of the table
        self.cmds += [{"add": {"table": ref}}, {"delete": {"table": ref}}, {"add": {"table": dict(ref)}}]

    def chain(self, name: str, ctype: str, hook: str, prio: int, policy: str) -> None:
        self.cmds.append(
            {"add": {"chain": {"family": self.family, "table": self.name, "name": name, "type": ctype, "hook": hook, "prio": prio, "policy": policy}}}
        )

    def rule(self, chain: str, *expr: Expr, comment: str | None = None) -> None:
        body: dict[str, Any] = {"family": self.family, "table": self.name, "chain": chain, "expr": list(expr)}
        if comment:
            body["comment"] = comment
        self.cmds.append({"add": {"rule": body}})

    def doc(self) -> dict[str, Any]:
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.cmds]}


def _egress_exprs(rule: EgressRule) -> list[Expr]:
    out = [_match(_ip("daddr"), _addr(rule.cidr))]
    if rule.port is not None:
        out.append(_match(_meta("l4proto"), {"set": ["tcp", "udp"]}))
        out.append(_match({"payload": {"protocol": "th", "field": "dport"}}, rule.port))
    return out


def sandbox_ruleset(
    *,
    table: str,
    tap: str,
    guest_ip: ipaddress.IPv4Address,
    host_ip: ipaddress.IPv4Address,
    pool: ipaddress.IPv4Network,
    uplink_if: str | None,
    egress: Sequence[EgressRule] = (),
    blocked: Sequence[BlockedNet] = (),
    rx: RateLimit | None = None,
    tx: RateLimit | None = None,
) -> dict[str, Any]:
    """The sandbox netns table. uplink_if None = isolated (nothing is ever forwarded).

    `blocked` (host/egress.py) is dropped before any accept, except the allow-list entries that name
    something inside it (egress.openings), which are accepted just before those drops."""
    t = _Table(table)
    if tx is not None:
        t.chain("guest_tx", "filter", "prerouting", PRIO_MANGLE, "accept")
        t.rule("guest_tx", _iif(tap), _limit_over(tx), COUNTER, DROP, comment="tx rate limit")
    if rx is not None:
        t.chain("guest_rx", "filter", "postrouting", PRIO_MANGLE, "accept")
        t.rule("guest_rx", _oif(tap), _limit_over(rx), COUNTER, DROP, comment="rx rate limit")

    # input: the guest may talk to the host side of its own link, and to nothing else here
    t.chain("input", "filter", "input", PRIO_FILTER, "drop")
    t.rule("input", _ct_state("established", "related"), ACCEPT)
    t.rule("input", _iif("lo"), ACCEPT)
    t.rule("input", _iif(tap), _match(_ip("saddr"), str(guest_ip)), _match(_ip("daddr"), str(host_ip)), ACCEPT,
           comment="guest to host side of its link")

    # output: sealbox's helper processes that live in this namespace and open sockets there after dropping to
    # HELPER_UID (the port forwarder, host/portfwd.py) reach the guest's link and nothing else: a compromised one
    # cannot use a nat sandbox's uplink, whose egress policy applies to forwarded (guest) traffic only
    t.chain("output", "filter", "output", PRIO_FILTER, "accept")
    t.rule("output", _match(_meta("skuid"), HELPER_UID), _oif(tap, "!="), COUNTER, DROP, comment="helpers reach only the guest")

    # forward: other sandboxes, then the blocked ranges (metadata, the host) first, before conntrack, so
    # not even a related packet passes; own link traffic is never forwarded (it is input), so dropping
    # the whole pool is right
    t.chain("forward", "filter", "forward", PRIO_FILTER, "drop")
    t.rule("forward", _iif(tap), _match(_ip("daddr"), _addr(pool)), COUNTER, DROP, comment="other sandboxes")
    base = [_iif(tap), *([_oif(uplink_if)] if uplink_if else []), _match(_ip("saddr"), str(guest_ip))]
    _blocked_rules(t, "forward", base, _iif(tap), egress if uplink_if else (), blocked)
    t.rule("forward", _ct_state("established", "related"), ACCEPT)
    if uplink_if is not None:
        if not egress:
            t.rule("forward", *base, COUNTER, ACCEPT, comment="egress")
        for i, rule in enumerate(egress):
            t.rule("forward", *base, *_egress_exprs(rule), COUNTER, ACCEPT, comment=f"egress {i}")
        # source NAT to the uplink address: the root namespace never needs a route to the guest link
        t.chain("postrouting", "nat", "postrouting", PRIO_SRCNAT, "accept")
        t.rule("postrouting", _oif(uplink_if), _match(_ip("saddr"), str(guest_ip)), {"masquerade": None})
    return t.doc()


def _blocked_rules(t: _Table, chain: str, base: list[Expr], iif: Expr, egress: Sequence[EgressRule],
                   blocked: Sequence[BlockedNet]) -> None:
    """Explicitly opened entries (accept), then one drop per blocked range (comment 'blocked: <why>')."""
    for i, rule in enumerate(openings(egress, blocked)):
        t.rule(chain, *base, *_egress_exprs(rule), COUNTER, ACCEPT, comment=f"opened {i}")
    for b in blocked:
        t.rule(chain, iif, _to(b.cidr), COUNTER, DROP, comment=f"blocked: {b.why}")


def host_ruleset(
    *, table: str, veth: str, uplink: ipaddress.IPv4Network, pool: ipaddress.IPv4Network,
    egress: Sequence[EgressRule] = (), blocked: Sequence[BlockedNet] = (),
) -> dict[str, Any]:
    """The root-namespace table of one nat sandbox; matches only traffic of its veth."""
    ns_ip = uplink.network_address + 2
    v4_blocked = [b for b in blocked if b.cidr.version == 4]  # anything else is dropped as "not ipv4"
    t = _Table(table)
    t.chain("forward", "filter", "forward", PRIO_FILTER, "accept")
    t.rule("forward", _iif(veth), _match(_meta("nfproto"), "ipv4", "!="), COUNTER, DROP, comment="not ipv4")
    t.rule("forward", _iif(veth), _match(_ip("saddr"), str(ns_ip), "!="), COUNTER, DROP, comment="spoofed source")
    t.rule("forward", _iif(veth), _match(_ip("daddr"), _addr(pool)), COUNTER, DROP, comment="other sandboxes")
    _blocked_rules(t, "forward", [_iif(veth)], _iif(veth), egress, v4_blocked)
    t.rule("forward", _oif(veth), _ct_state("established", "related"), ACCEPT)
    t.rule("forward", _oif(veth), COUNTER, DROP, comment="inbound")
    # input: nothing on the host (0.0.0.0 listeners included) accepts a connection from the sandbox,
    # except what the user opened explicitly (an --allow-egress entry inside a host address)
    t.chain("input", "filter", "input", PRIO_FILTER, "accept")
    t.rule("input", _iif(veth), _ct_state("established", "related"), ACCEPT)
    for i, rule in enumerate(openings(egress, v4_blocked)):
        t.rule("input", _iif(veth), *_egress_exprs(rule), COUNTER, ACCEPT, comment=f"opened {i}")
    t.rule("input", _iif(veth), COUNTER, DROP, comment="host services")
    t.chain("postrouting", "nat", "postrouting", PRIO_SRCNAT, "accept")
    t.rule("postrouting", _match(_ip("saddr"), _addr(uplink)), _oif(veth, "!="), {"masquerade": None})
    return t.doc()


def forward_guard_ruleset(ifaces: Sequence[str]) -> dict[str, Any]:
    """`ip sealbox_forward`: while sealbox itself keeps net.ipv4.ip_forward on (it was off before the
    first nat sandbox), the host forwards only the sandboxes' own traffic: new packets coming from a
    sandbox veth and replies going back to one. Everything else the host would now forward is dropped,
    as it was before forwarding was on. IPv4 only (family ip): the host's IPv6 forwarding, which sealbox
    never changes, is not touched. See host/forward.py for when it exists."""
    t = _Table(FORWARD_GUARD_TABLE, family="ip")
    t.chain("forward", "filter", "forward", PRIO_FILTER, "drop")
    if ifaces:
        names = {"set": sorted(set(ifaces))}
        t.rule("forward", _match(_meta("iifname"), names), ACCEPT, comment="from a sandbox")
        t.rule("forward", _match(_meta("oifname"), names), _ct_state("established", "related"), ACCEPT,
               comment="replies to a sandbox")
    t.rule("forward", COUNTER, DROP, comment="not a sandbox")
    return t.doc()


def delete_table_doc(table: str, family: str = FAMILY) -> dict[str, Any]:
    """Remove a table whether or not it exists (add + delete in one transaction)."""
    ref = {"family": family, "name": table}
    return {"nftables": [{"add": {"table": ref}}, {"delete": {"table": dict(ref)}}]}


# --- running nft -------------------------------------------------------------------------------
def apply(doc: dict[str, Any], netns: str | None = None, *, check: bool = False, timeout: float = 30.0) -> None:
    """Load a JSON document with `nft -j -f -` (inside `netns` if given); check=True: validate only."""
    argv = ["nft", *(["-c"] if check else []), "-j", "-f", "-"]
    data = json.dumps(doc).encode()
    where = f" in {netns}" if netns else ""
    run_in_netns(netns, lambda: run(argv, input=data, timeout=timeout, what=f"nft{where}"), timeout=timeout + 5)


def list_ruleset(netns: str | None = None, *, table: str | None = None, family: str = FAMILY) -> list[dict[str, Any]]:
    """The `nftables` array of `nft -j list ruleset` (or of one table)."""
    argv = ["nft", "-j", "list", *(["table", family, table] if table else ["ruleset"])]
    proc = run_in_netns(netns, lambda: run(argv, timeout=30, what="nft list"), timeout=35)
    out = proc.stdout.decode().strip()
    return list(json.loads(out).get("nftables", [])) if out else []


def list_tables(netns: str | None = None) -> list[tuple[str, str]]:
    """(family, name) of every table."""
    return [(i["table"]["family"], i["table"]["name"]) for i in list_ruleset(netns) if "table" in i]


def counters(table: str, netns: str | None = None, *, family: str = FAMILY) -> dict[str, int]:
    """Packets counted per rule comment in one table (for tests and `inspect`)."""
    found: dict[str, int] = {}
    for item in list_ruleset(netns, table=table, family=family):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            if isinstance(expr, dict) and isinstance(expr.get("counter"), dict):
                found[rule["comment"]] = found.get(rule["comment"], 0) + int(expr["counter"].get("packets", 0))
    return found


def foreign_forward_drops(netns: str | None = None) -> list[str]:
    """Base chains of *other* tables hooked at forward with policy drop (for `sealbox doctor`).

    netfilter runs every base chain of a hook, so such a chain also drops nat sandbox traffic that
    our table accepts; the fix is an accept rule there for the `sb*` veths, or policy accept.
    (iptables-legacy chains, e.g. Docker's FORWARD DROP, are invisible to nft and not reported.)
    """
    found = []
    for item in list_ruleset(netns):
        ch = item.get("chain")
        if not ch or ch.get("hook") != "forward" or ch.get("policy") != "drop":
            continue
        table = str(ch.get("table", ""))
        if table.startswith(TABLE_PREFIX) or table in (NETNS_TABLE, FORWARD_GUARD_TABLE):
            continue  # sealbox's own
        found.append(f"{ch['family']} {table} {ch['name']}")
    return found
