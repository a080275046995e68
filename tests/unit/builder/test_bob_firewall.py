"""bob's mode rule sets as documents: whole-ruleset replace, default drop, rule order, and `nft -c` acceptance.

(What the rule sets let through is tested with real sockets in tests/integration/bob/test_bob_netns_probe.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from sealbox.builder.bob_firewall import MODES, image_files, openings, ruleset
from sealbox.spec.bob import Bob

BOB = Bob(enable=True, builder_bundle=["192.0.2.10:8645", "[2001:db8::10]:8645"], builder_state_diff=["192.0.2.11:8646"],
          workload="w.tar")


def rules(doc: dict[str, Any], chain: str) -> list[dict[str, Any]]:
    return [c["add"]["rule"] for c in doc["nftables"] if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain]


def verdict(rule: dict[str, Any]) -> str:
    return next(k for e in rule["expr"] for k in e if k in ("accept", "drop"))


def test_a_mode_replaces_the_whole_ruleset_in_one_document() -> None:
    doc = ruleset("maintenance", BOB)
    assert doc["nftables"][1] == {"flush": {"ruleset": None}}  # the base image's table goes in the same transaction
    chains = [c["add"]["chain"] for c in doc["nftables"] if "chain" in c.get("add", {})]
    assert {c["name"]: c["policy"] for c in chains} == {"input": "drop", "output": "drop", "forward": "drop"}
    assert not rules(doc, "forward")
    json.loads(json.dumps(doc))


@pytest.mark.parametrize("mode", MODES)
def test_the_input_only_port_is_dropped_before_any_output_accept_but_loopback(mode: str) -> None:
    out = rules(ruleset(mode, BOB), "output")
    first_accept = next(i for i, r in enumerate(out) if verdict(r) == "accept" and i > 0)
    comments = [r.get("comment") for r in out[:first_accept]]
    assert "input-only: source port" in comments and "no ICMP out" in comments
    assert out[0]["expr"][0]["match"]["right"] == "lo"


def test_each_mode_opens_exactly_its_openings() -> None:
    for mode in MODES:
        doc = ruleset(mode, BOB)
        got = sorted(r["comment"] for ch in ("input", "output") for r in rules(doc, ch)
                     if verdict(r) == "accept" and str(r.get("comment", "")).endswith((" in", " out")))
        want = sorted(f"{o.what} {o.direction}" for o in openings(BOB) if mode in o.modes)
        assert got == want
    assert {o.what for o in openings(BOB) if o.modes == ("production",)} == {"state-diff stream"}
    bundles = [o for o in openings(BOB) if o.what == "bundle submission"]
    assert [str(o.address) for o in bundles] == ["192.0.2.10", "2001:db8::10"] and all(len(o.modes) == 3 for o in bundles)


def test_settings_reach_the_rules() -> None:
    bob = BOB.model_copy(update={"data_ssh_port": 2222, "input_only_udp_port": 40000})
    text = json.dumps(ruleset("maintenance", bob))
    assert '"right": 2222' in text and '"right": 40000' in text and '"right": 10022' not in text


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode 'debug'"):
        ruleset("debug", BOB)  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
                    reason="nft check mode needs root, nft and unshare")
@pytest.mark.parametrize("mode", MODES)
def test_nft_accepts_every_mode(mode: str) -> None:
    # -c: checked by the real nft in a throwaway namespace, nothing loaded
    proc = subprocess.run(["unshare", "--net", "nft", "-c", "-j", "-f", "-"], input=json.dumps(ruleset(mode, BOB)).encode(),
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()


def test_image_files_are_what_the_guest_reads() -> None:
    files = image_files(BOB)
    assert sorted(files) == [f"/usr/lib/sealbox/bob/{n}" for n in
                             ("config.json", "nft-maintenance.json", "nft-production.json", "nft-stopped.json")]
    assert json.loads(files["/usr/lib/sealbox/bob/nft-production.json"]) == ruleset("production", BOB)
    # what the guest scripts read: bob-mode the dwell, bob-logs the delay, bob-netguard the input-only port,
    # bob-data-sshd its port, bob-node the node's argv
    assert json.loads(files["/usr/lib/sealbox/bob/config.json"]) == {"dwell_seconds": 300, "log_delay_seconds": 120,
                                                                     "input_only_udp_port": 27017, "data_ssh_port": 10022,
                                                                     "node_command": []}
    assert image_files(BOB) == files  # bytes that do not change between builds
