"""`--dns` is parsed with the other flags (the resolver policy itself: tests/unit/net/test_net_dns_policy.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sealbox.errors import UsageError


def test_dns_flag_parsed_by_make_spec(image_dir: Path) -> None:
    from sealbox.sandbox.planning import make_spec

    spec = make_spec(name="a", image_dir=image_dir, net="nat", dns=["192.0.2.53", "198.51.100.53"])
    assert spec.dns == (ipaddress.IPv4Address("192.0.2.53"), ipaddress.IPv4Address("198.51.100.53"))
    with pytest.raises(UsageError, match="--dns 'resolver.example' is not an IPv4 address"):
        make_spec(name="a", image_dir=image_dir, dns=["resolver.example"])
