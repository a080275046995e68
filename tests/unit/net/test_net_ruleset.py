"""nft JSON documents: structure for isolated/nat/egress/rate-limit combinations, and `nft -c` acceptance."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealbox.sandbox.host import egress as eg_mod
from sealbox.sandbox.host import nft
from sealbox.sandbox.model import EgressRule, RateLimit

GUEST = ipaddress.IPv4Address("10.213.0.2")
HOST = ipaddress.IPv4Address("10.213.0.1")
POOL = ipaddress.IPv4Network("10.213.0.0/16")
UPLINK = ipaddress.IPv4Network("10.213.0.4/30")


HOSTNETS = tuple(eg_mod.host_blocked([ipaddress.IPv4Interface("192.168.7.10/24"), ipaddress.IPv4Interface("203.0.113.5/24")], POOL))
BLOCKED = eg_mod.METADATA + HOSTNETS


def sandbox(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(table="sealbox", tap="tap0", guest_ip=GUEST, host_ip=HOST, pool=POOL, uplink_if=None,
                                blocked=eg_mod.METADATA)
    args.update(kw)
    return nft.sandbox_ruleset(**args)


def host(**kw: Any) -> dict[str, Any]:
    return nft.host_ruleset(table="sealbox-a", veth="sb0123456789abc", uplink=UPLINK, pool=POOL, **kw)


def cmds(doc: dict[str, Any], what: str) -> list[dict[str, Any]]:
    return [c["add"][what] for c in doc["nftables"] if "add" in c and what in c["add"]]


def chains(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in cmds(doc, "chain")}


def rules(doc: dict[str, Any], chain: str) -> list[dict[str, Any]]:
    return [r for r in cmds(doc, "rule") if r["chain"] == chain]


def matches(rule: dict[str, Any], key: str) -> list[Any]:
    """Right-hand sides of `meta <key>` or `ip <key>` matches in a rule."""
    out = []
    for e in rule["expr"]:
        m = e.get("match")
        if not m:
            continue
        left = m["left"]
        if left.get("meta", {}).get("key") == key or left.get("payload", {}).get("field") == key:
            out.append((m["op"], m["right"]))
    return out


def verdict(rule: dict[str, Any]) -> str:
    return next(k for e in rule["expr"] for k in e if k in ("accept", "drop", "masquerade"))


def test_document_starts_with_atomic_table_replace() -> None:
    doc = sandbox()
    first = doc["nftables"][1:4]
    assert [next(iter(c)) for c in first] == ["add", "delete", "add"]
    assert all(c[next(iter(c))]["table"] == {"family": "inet", "name": "sealbox"} for c in first)
    json.loads(json.dumps(doc))  # plain JSON, nothing else


def test_isolated_denies_by_default_and_never_forwards() -> None:
    doc = sandbox()
    ch = chains(doc)
    assert set(ch) == {"input", "forward", "output"}
    assert ch["input"]["policy"] == "drop" and ch["forward"]["policy"] == "drop"
    (helpers,) = rules(doc, "output")  # sealbox's helpers in this namespace (uid 65534) reach only the guest's link
    assert (matches(helpers, "skuid"), matches(helpers, "oifname"), verdict(helpers)) == ([("==", 65534)], [("!=", "tap0")], "drop")
    fwd = rules(doc, "forward")
    assert [verdict(r) for r in fwd] == ["drop"] * 5 + ["accept"]  # pool, 4 metadata ranges, established
    assert matches(fwd[0], "daddr") == [("==", {"prefix": {"addr": "10.213.0.0", "len": 16}})]
    assert [matches(r, "daddr") for r in fwd[1:5]] == [
        [("==", {"prefix": {"addr": "169.254.0.0", "len": 16}})], [("==", "168.63.129.16")], [("==", "100.100.100.200")],
        [("==", "fd00:ec2::254")]]
    assert fwd[4]["expr"][1]["match"]["left"] == {"payload": {"protocol": "ip6", "field": "daddr"}}
    assert all(matches(r, "iifname") == [("==", "tap0")] for r in fwd[:5])
    inp = [r for r in rules(doc, "input") if matches(r, "iifname") == [("==", "tap0")]]
    assert len(inp) == 1
    assert matches(inp[0], "saddr") == [("==", "10.213.0.2")] and matches(inp[0], "daddr") == [("==", "10.213.0.1")]
    assert not any(matches(r, "oifname") for r in cmds(doc, "rule") if r["chain"] != "output")


def test_nat_without_allow_list_allows_any_egress_after_drops_and_masquerades() -> None:
    doc = sandbox(uplink_if="veth0")
    fwd = rules(doc, "forward")
    assert [r.get("comment") for r in fwd] == ["other sandboxes", "blocked: link-local/metadata", "blocked: Azure wireserver",
                                               "blocked: Alibaba metadata", "blocked: AWS metadata (IPv6)", None, "egress"]
    eg = fwd[-1]
    assert matches(eg, "oifname") == [("==", "veth0")] and matches(eg, "saddr") == [("==", "10.213.0.2")]
    assert not matches(eg, "daddr")
    post = rules(doc, "postrouting")
    assert chains(doc)["postrouting"]["type"] == "nat" and verdict(post[0]) == "masquerade"


def test_nat_allow_list_one_rule_per_entry_with_ports() -> None:
    egress = (EgressRule.parse("198.18.0.0/24:443"), EgressRule.parse("198.18.1.7"))
    fwd = rules(sandbox(uplink_if="veth0", egress=egress), "forward")
    eg = [r for r in fwd if str(r.get("comment", "")).startswith("egress")]
    assert len(eg) == 2
    assert matches(eg[0], "daddr") == [("==", {"prefix": {"addr": "198.18.0.0", "len": 24}})]
    assert matches(eg[0], "l4proto") == [("==", {"set": ["tcp", "udp"]})]
    assert matches(eg[0], "dport") == [("==", 443)]
    assert matches(eg[1], "daddr") == [("==", "198.18.1.7")] and not matches(eg[1], "dport")


def test_rate_limits_per_direction_on_tap() -> None:
    doc = sandbox(rx=RateLimit(size=1_000_000), tx=RateLimit(size=50_000, refill_ms=100))
    ch = chains(doc)
    assert ch["guest_tx"]["hook"] == "prerouting" and ch["guest_rx"]["hook"] == "postrouting"
    (tx,) = rules(doc, "guest_tx")
    (rx,) = rules(doc, "guest_rx")
    assert matches(tx, "iifname") == [("==", "tap0")] and matches(rx, "oifname") == [("==", "tap0")]
    tx_lim = next(e["limit"] for e in tx["expr"] if "limit" in e)
    rx_lim = next(e["limit"] for e in rx["expr"] if "limit" in e)
    assert tx_lim == {"rate": 500_000, "rate_unit": "bytes", "per": "second", "burst": 65536, "burst_unit": "bytes", "inv": True}
    assert rx_lim["rate"] == 1_000_000 and rx_lim["burst"] == 1_000_000
    assert "guest_tx" not in chains(sandbox(rx=RateLimit(size=1000)))


@given(size=st.integers(1, 10**10), refill=st.integers(1, 10**6))
def test_rate_bucket_mapping(size: int, refill: int) -> None:
    rate, burst = nft.rate_bucket(RateLimit(size=size, refill_ms=refill))
    assert rate >= 1 and rate * refill >= size * 1000 and (rate - 1) * refill < size * 1000
    assert burst == max(size, 65536)


def test_host_table_only_touches_its_veth() -> None:
    doc = host()
    ch = chains(doc)
    assert {c["policy"] for c in ch.values()} == {"accept"}  # never a policy that hits other traffic
    for r in cmds(doc, "rule"):
        ifs = matches(r, "iifname") + matches(r, "oifname")
        assert ifs and all(name == "sb0123456789abc" for _, name in ifs), r
        if r["chain"] != "postrouting":
            assert ("==", "sb0123456789abc") in ifs  # filter rules apply to the veth's own packets only
    (masq,) = rules(doc, "postrouting")
    assert matches(masq, "saddr") == [("==", {"prefix": {"addr": "10.213.0.4", "len": 30}})]
    assert verdict(masq) == "masquerade"
    inp = rules(doc, "input")
    assert [verdict(r) for r in inp] == ["accept", "drop"]  # established only; new connections to the host dropped


def test_delete_doc_is_add_then_delete() -> None:
    doc = nft.delete_table_doc("sealbox-x")
    assert [next(iter(c)) for c in doc["nftables"]] == ["add", "delete"]


def _nft_check(doc: dict[str, Any]) -> subprocess.CompletedProcess[bytes]:
    # `nft -c` validates against the kernel; do it in a throwaway network namespace
    return subprocess.run(
        ["unshare", "--net", "nft", "-c", "-j", "-f", "-"], input=json.dumps(doc).encode(), capture_output=True, timeout=30
    )


needs_nft = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
    reason="nft check mode needs root, nft and unshare",
)


@needs_nft
@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(sandbox(), id="isolated"),
        pytest.param(sandbox(uplink_if="veth0"), id="nat"),
        pytest.param(sandbox(uplink_if="veth0", egress=(EgressRule.parse("198.18.0.0/15:53"), EgressRule.parse("192.0.2.9"))), id="nat-egress"),
        pytest.param(sandbox(rx=RateLimit(size=10_000), tx=RateLimit(size=3_000_000, refill_ms=250)), id="limits"),
        pytest.param(host(), id="host"),
        pytest.param(sandbox(uplink_if="veth0", blocked=BLOCKED, egress=(EgressRule.parse("192.168.7.0/25:80"),)), id="nat-blocked-opened"),
        pytest.param(host(blocked=BLOCKED, egress=(EgressRule.parse("192.168.7.10/32:80"),)), id="host-blocked-opened"),
        pytest.param(nft.forward_guard_ruleset(["sb0123456789abc", "sbfedcba987654"]), id="forward-guard"),
        pytest.param(nft.delete_table_doc(nft.FORWARD_GUARD_TABLE, family="ip"), id="forward-guard-delete"),
        pytest.param(nft.delete_table_doc("sealbox-x"), id="delete-absent"),
    ],
)
def test_nft_accepts(doc: dict[str, Any]) -> None:
    proc = _nft_check(doc)
    assert proc.returncode == 0, proc.stderr.decode()


@needs_nft
def test_nft_check_rejects_broken_document() -> None:
    doc = sandbox()
    doc["nftables"].append({"add": {"rule": {"family": "inet", "table": "sealbox", "chain": "nope", "expr": [{"accept": None}]}}})
    assert _nft_check(doc).returncode != 0


def test_host_blocked_addresses_and_private_networks() -> None:
    got = [(str(b.cidr), b.why) for b in eg_mod.host_blocked([
        ipaddress.IPv4Interface("192.168.7.10/24"),  # LAN: private network + own address
        ipaddress.IPv4Interface("203.0.113.5/24"),  # public uplink: own address only, its network stays reachable
        ipaddress.IPv4Interface("100.64.3.1/10"),  # CGNAT / tailscale space counts as private
        ipaddress.IPv4Interface("127.0.0.1/8"), ipaddress.IPv4Interface("169.254.3.3/16"),  # martian / covered
        ipaddress.IPv4Interface("10.213.0.5/30"),  # a sealbox uplink inside the pool: the pool is dropped anyway
        ipaddress.IPv4Interface("10.1.0.1/16"),  # private, next to the pool
    ], POOL)]
    assert got == [("10.1.0.0/16", "host network"), ("100.64.0.0/10", "host network"), ("192.168.7.0/24", "host network"),
                   ("10.1.0.1/32", "host address"), ("100.64.3.1/32", "host address"), ("192.168.7.10/32", "host address"),
                   ("203.0.113.5/32", "host address")]


def test_openings_only_inside_a_blocked_range() -> None:
    rules_ = tuple(EgressRule.parse(t) for t in ("0.0.0.0/0", "192.168.0.0/16", "192.168.7.0/25:80", "169.254.169.254/32", "198.51.100.0/24"))
    assert [str(r.cidr) for r in eg_mod.openings(rules_, BLOCKED)] == ["192.168.7.0/25", "169.254.169.254/32"]


def test_opened_entries_come_before_the_drops_and_only_with_nat() -> None:
    egress = (EgressRule.parse("0.0.0.0/0"), EgressRule.parse("168.63.129.16/32:80"))
    fwd = rules(sandbox(uplink_if="veth0", egress=egress, blocked=BLOCKED), "forward")
    comments = [r.get("comment") for r in fwd]
    assert comments.index("opened 0") < comments.index("blocked: Azure wireserver") < comments.index("egress 0")
    opened = fwd[comments.index("opened 0")]
    assert matches(opened, "daddr") == [("==", "168.63.129.16")] and matches(opened, "dport") == [("==", 80)]
    assert matches(opened, "oifname") == [("==", "veth0")] and verdict(opened) == "accept"
    # the host's input chain accepts an opened host address, and nothing else new
    inp = rules(host(blocked=BLOCKED, egress=(EgressRule.parse("192.168.7.10/32:22"),)), "input")
    assert [r.get("comment") for r in inp] == [None, "opened 0", "host services"]
    assert matches(inp[1], "daddr") == [("==", "192.168.7.10")] and matches(inp[1], "dport") == [("==", 22)]


def test_forward_guard_accepts_only_sandbox_veths() -> None:
    doc = nft.forward_guard_ruleset(["sbb", "sba", "sbb"])
    assert cmds(doc, "table")[0] == {"family": "ip", "name": "sealbox_forward"}
    assert chains(doc)["forward"]["policy"] == "drop" and chains(doc)["forward"]["hook"] == "forward"
    fwd = rules(doc, "forward")
    assert [(matches(r, "iifname"), matches(r, "oifname"), verdict(r)) for r in fwd] == [
        ([("==", {"set": ["sba", "sbb"]})], [], "accept"),
        ([], [("==", {"set": ["sba", "sbb"]})], "accept"),
        ([], [], "drop"),
    ]
    assert "ct" in json.dumps(fwd[1])  # replies only
