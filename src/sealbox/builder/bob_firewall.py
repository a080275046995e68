"""The bob guest's firewall: one nftables rule set per mode, from the spec's [bob] section.

A pure function of (mode, settings): the builder writes the three documents into the image
(/usr/lib/sealbox/bob/nft-<mode>.json) and the guest's mode switch loads one with `nft -j -f`. Built as
libnftables JSON, never as rule text, so no setting can change a rule's meaning.

Every document replaces the whole ruleset (`flush ruleset` in the same transaction): the base image's
`inet sealbox` table, which admits SSH only, goes, and a switch leaves nothing of the previous mode.
Both directions default to drop. What opens, in order:
  output: loopback; then any TCP/UDP packet with the input-only port as its source (replies to the channel
          included), and all ICMP but IPv6 neighbour discovery (an error about a packet sent to the channel,
          which conntrack marks "related", would answer it) are dropped, before anything else can accept them;
  both:   invalid dropped; established/related accepted; IPv6 neighbour discovery (hop limit 255, so
          link-local only, which IPv6 needs to reach anything);
  then:   new connections per OPENINGS for the mode (all/maintenance/production), by port, and for the
          builder's endpoints by address and port. Consensus P2P and NTP out, open in every mode, are the node's
          and the system's: never from the searcher's uid or its subordinate ids, or in production the container
          could send anywhere on those ports.
The forward chain drops everything: a rootless container's traffic leaves through the guest's own
sockets (its user-mode network), so it meets the input and output chains above.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Literal

from sealbox.spec.bob import Bob, parse_endpoint
from sealbox.util.nftexpr import Expr
from sealbox.util.nftexpr import match as _match
from sealbox.util.nftexpr import meta as _meta

TABLE = "bob"
Mode = Literal["maintenance", "production", "stopped"]
MODES: tuple[Mode, ...] = ("maintenance", "production", "stopped")
Direction = Literal["in", "out"]
Proto = Literal["tcp", "udp"]
# the searcher's uid (modules/bob.toml fixes it) and its subordinate ids (bob_image writes /etc/subuid): the
# container's traffic leaves through sockets of these (rootless podman's slirp4netns runs as searcher)
SEARCHER_UID = 1000
SEARCHER_SUBUIDS = (100000, 165535)  # first and last, inclusive: 65536 ids
NTP_PORT = 123
DNS_PORT = 53
HTTP_PORTS = (80, 443)
ND_TYPES = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"]



@dataclass(frozen=True)
class Opening:
    """One kind of new connection a mode admits: `port` is the guest's own (in) or the remote one (out)."""

    what: str
    direction: Direction
    protos: tuple[Proto, ...]
    port: int
    modes: tuple[Mode, ...]
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None  # out only: the one remote host
    searcher: bool = True  # out only: False: the node's and the system's, never from the searcher's uids


ALL: tuple[Mode, ...] = MODES
MAINT: tuple[Mode, ...] = ("maintenance",)
PROD: tuple[Mode, ...] = ("production",)


def openings(bob: Bob) -> list[Opening]:
    """Everything any mode opens (the table docs/modules.md shows), in rule order."""
    out = [
        Opening("control SSH", "in", ("tcp",), bob.control_ssh_port, ALL),
        Opening("attestation", "in", ("tcp",), bob.attestation_port, ALL),
        Opening("input-only channel", "in", ("udp",), bob.input_only_udp_port, ALL),
        Opening("consensus P2P", "in", ("tcp", "udp"), bob.cl_p2p_port, ALL),
        Opening("consensus P2P", "out", ("tcp", "udp"), bob.cl_p2p_port, ALL, searcher=False),
        Opening("NTP", "out", ("udp",), NTP_PORT, ALL, searcher=False),
    ]
    for text in bob.builder_bundle:
        addr, port = parse_endpoint(text)
        out.append(Opening("bundle submission", "out", ("tcp",), port, ALL, addr))
    for text in bob.builder_state_diff:
        addr, port = parse_endpoint(text)
        out.append(Opening("state-diff stream", "out", ("tcp",), port, PROD, addr))
    out += [
        Opening("data plane SSH", "in", ("tcp",), bob.data_ssh_port, MAINT),
        Opening("key registration", "in", ("tcp",), bob.key_registration_port, MAINT),
        Opening("DNS", "out", ("udp", "tcp"), DNS_PORT, MAINT),
        *(Opening("HTTP(S)", "out", ("tcp",), p, MAINT) for p in HTTP_PORTS),
        Opening("execution P2P", "in", ("tcp", "udp"), bob.el_p2p_port, MAINT),
        Opening("execution P2P", "out", ("tcp", "udp"), bob.el_p2p_port, MAINT),
    ]
    return out


def _th(field: str) -> Expr:
    return {"payload": {"protocol": "th", "field": field}}


def _ct_state(*states: str) -> Expr:
    return _match({"ct": {"key": "state"}}, list(states), "in")


def _icmpv6_type() -> Expr:
    return {"payload": {"protocol": "icmpv6", "field": "type"}}


def _l4(protos: tuple[str, ...]) -> Expr:
    return _match(_meta("l4proto"), protos[0] if len(protos) == 1 else {"set": list(protos)})


COUNTER: Expr = {"counter": None}
ACCEPT: Expr = {"accept": None}
DROP: Expr = {"drop": None}


def ruleset(mode: Mode, bob: Bob) -> dict[str, Any]:
    """The whole nftables document of one mode (replaces the guest's ruleset in one transaction)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    cmds: list[dict[str, Any]] = [{"flush": {"ruleset": None}}, {"add": {"table": {"family": "inet", "name": TABLE}}}]

    def chain(name: str) -> None:
        cmds.append({"add": {"chain": {"family": "inet", "table": TABLE, "name": name, "type": "filter", "hook": name,
                                       "prio": 0, "policy": "drop"}}})

    def rule(chain_name: str, *expr: Expr, comment: str | None = None) -> None:
        body: dict[str, Any] = {"family": "inet", "table": TABLE, "chain": chain_name, "expr": list(expr)}
        if comment:
            body["comment"] = comment
        cmds.append({"add": {"rule": body}})

    for name in ("input", "output", "forward"):
        chain(name)
    rule("input", _match(_meta("iifname"), "lo"), ACCEPT)
    rule("output", _match(_meta("oifname"), "lo"), ACCEPT)
    # the input-only channel: before conntrack's accept, which would pass replies as "established"
    quiet = bob.input_only_udp_port
    rule("output", _l4(("tcp", "udp")), _match(_th("sport"), quiet), COUNTER, DROP, comment="input-only: source port")
    # ICMP errors about a packet to that port (e.g. port unreachable while nothing listens) would be "related",
    # a one-bit answer: the guest, an end host, sends no ICMP but IPv6 neighbour discovery
    rule("output", _match(_meta("l4proto"), "icmp"), COUNTER, DROP, comment="no ICMP out")
    rule("output", _match(_meta("l4proto"), "ipv6-icmp"), _match(_icmpv6_type(), {"set": ND_TYPES}, "!="), COUNTER, DROP,
         comment="no ICMPv6 out but neighbour discovery")
    for ch in ("input", "output"):
        rule(ch, _ct_state("invalid"), DROP)
        rule(ch, _ct_state("established", "related"), ACCEPT)
        rule(ch, _match(_meta("l4proto"), "ipv6-icmp"), _match(_icmpv6_type(), {"set": ND_TYPES}),
             _match({"payload": {"protocol": "ip6", "field": "hoplimit"}}, 255), ACCEPT,
             comment="IPv6 neighbour discovery")
    # the control plane is open in every mode, but a switch flushes its connection's conntrack entry with the rest,
    # and the searcher's shell then speaks first (toggle's answer): let the guest's side of it out again. Never a
    # SYN: the guest opens nothing from that port.
    syn = {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, "syn"]}
    rule("output", _l4(("tcp",)), _match(_th("sport"), bob.control_ssh_port), _match(syn, 0), COUNTER, ACCEPT,
         comment="control plane SSH: its side of a connection a switch flushed")
    for o in openings(bob):
        if mode not in o.modes:
            continue
        where: list[Expr] = []
        if o.address is not None:
            where.append(_match({"payload": {"protocol": "ip" if o.address.version == 4 else "ip6", "field": "daddr"}},
                                str(o.address)))
        if o.direction == "out" and not o.searcher:
            where.append(_match(_meta("skuid"), {"set": [SEARCHER_UID, {"range": list(SEARCHER_SUBUIDS)}]}, "!="))
        port = _match(_th("dport"), o.port)
        rule("input" if o.direction == "in" else "output", *where, _l4(o.protos), port,
             _ct_state("new"), COUNTER, ACCEPT, comment=f"{o.what} {o.direction}")
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


LIB = "/usr/lib/sealbox/bob"


def image_files(bob: Bob) -> dict[str, bytes]:
    """What the guest scripts (modules/bob) read: each mode's rule set (bob-mode) and their settings."""
    out = {f"{LIB}/nft-{mode}.json": json.dumps(ruleset(mode, bob), sort_keys=True).encode() + b"\n" for mode in MODES}
    config = {"dwell_seconds": bob.dwell_seconds, "log_delay_seconds": bob.log_delay_seconds,
              "input_only_udp_port": bob.input_only_udp_port, "data_ssh_port": bob.data_ssh_port,
              "node_command": bob.node_command}
    out[f"{LIB}/config.json"] = json.dumps(config, sort_keys=True).encode() + b"\n"
    return out
