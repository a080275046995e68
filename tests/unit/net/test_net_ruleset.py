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

from sealbox.sandbox.host import nft
from sealbox.sandbox.model import EgressRule, RateLimit

GUEST = ipaddress.IPv4Address("10.213.0.2")
HOST = ipaddress.IPv4Address("10.213.0.1")
POOL = ipaddress.IPv4Network("10.213.0.0/16")
UPLINK = ipaddress.IPv4Network("10.213.0.4/30")


def sandbox(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(table="sealbox", tap="tap0", guest_ip=GUEST, host_ip=HOST, pool=POOL, uplink_if=None)
    args.update(kw)
    return nft.sandbox_ruleset(**args)


def host() -> dict[str, Any]:
    return nft.host_ruleset(table="sealbox-a", veth="sb0123456789abc", uplink=UPLINK, pool=POOL)


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
    assert set(ch) == {"input", "forward"}
    assert ch["input"]["policy"] == "drop" and ch["forward"]["policy"] == "drop"
    fwd = rules(doc, "forward")
    assert [verdict(r) for r in fwd] == ["drop", "drop", "accept"]  # metadata, pool, established
    assert matches(fwd[0], "daddr") == [("==", "169.254.169.254")]
    assert matches(fwd[1], "daddr") == [("==", {"prefix": {"addr": "10.213.0.0", "len": 16}})]
    assert all(matches(r, "iifname") == [("==", "tap0")] for r in fwd[:2])
    inp = [r for r in rules(doc, "input") if matches(r, "iifname") == [("==", "tap0")]]
    assert len(inp) == 1
    assert matches(inp[0], "saddr") == [("==", "10.213.0.2")] and matches(inp[0], "daddr") == [("==", "10.213.0.1")]
    assert not any(matches(r, "oifname") for r in cmds(doc, "rule"))


def test_nat_without_allow_list_allows_any_egress_after_drops_and_masquerades() -> None:
    doc = sandbox(uplink_if="veth0")
    fwd = rules(doc, "forward")
    assert [r.get("comment") for r in fwd] == ["metadata", "other sandboxes", None, "egress"]
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
