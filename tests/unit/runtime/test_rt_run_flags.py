"""`--publish`, `--net-rate`/`--disk-rate`/`--disk-iops` and `--disk ...,serial=NAME`: parsed into the SandboxSpec, handed
to every backend the same way (QEMU's throttling and serials, nftables' policer, Firecracker's rate_limiter), and
bad values refused in one line before anything exists."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from sealbox.errors import UsageError
from sealbox.sandbox import planning
from sealbox.sandbox.host import nft
from sealbox.sandbox.model import PortMap, RateLimit
from sealbox.sandbox.rates import parse_iops, parse_rate

MIB = 1 << 20


@pytest.mark.parametrize(("text", "size", "refill"), [
    ("10MiB/s", 10 * MIB, 1000),
    ("10MiB", 10 * MIB, 1000),
    ("50MB/s", 50_000_000, 1000),
    ("512KiB/s", 512 << 10, 1000),
    ("1.5GiB/s", 3 << 29, 1000),
    ("1000", 1000, 1000),
    ("10MiB/s:20MiB", 20 * MIB, 2000),
    ("1MB/s:1.5MB", 1_500_000, 1500),
])
def test_rates_become_one_token_bucket(text: str, size: int, refill: int) -> None:
    rl = parse_rate(text, "--net-rate")
    assert (rl.size, rl.refill_ms) == (size, refill)


@pytest.mark.parametrize(("text", "msg"), [
    ("fast", "is not an amount"),
    ("10Mbit/s", "is not an amount"),
    ("0MiB/s", "out of range"),
    ("-1MiB/s", "is not an amount"),
    ("10MiB/s:1MiB", "less than one second's worth"),
    ("10MiB/s:lots", "is not an amount"),
    ("2TiB/s", "is not an amount"),
])
def test_bad_rates_are_one_line_errors(text: str, msg: str) -> None:
    with pytest.raises(UsageError, match=re.escape(msg)) as e:
        parse_rate(text, "--disk-rate")
    assert "\n" not in str(e.value) and "--disk-rate" in str(e.value)


def test_iops() -> None:
    assert parse_iops("500") == RateLimit(size=500, refill_ms=1000)
    assert parse_iops("500:2000") == RateLimit(size=2000, refill_ms=4000)
    for bad in ("x", "0", "500:100", "1.5"):
        with pytest.raises(UsageError, match="--disk-iops"):
            parse_iops(bad)


@pytest.mark.parametrize(("text", "want"), [
    ("80", PortMap(guest_port=80)),
    ("8080:80", PortMap(host_port=8080, guest_port=80)),
    ("127.0.0.1:8080:80/udp", PortMap(host_port=8080, guest_port=80, proto="udp")),
    ("0.0.0.0::22", PortMap(host_ip=ipaddress.IPv4Address("0.0.0.0"), guest_port=22)),
    ("192.0.2.7:443:8443/tcp", PortMap(host_ip=ipaddress.IPv4Address("192.0.2.7"), host_port=443, guest_port=8443)),
])
def test_publish_syntax_is_dockers(text: str, want: PortMap) -> None:
    assert PortMap.parse(text) == want
    assert PortMap(guest_port=80).host_ip == ipaddress.IPv4Address("127.0.0.1")  # loopback unless an address is named


def test_flags_reach_the_spec(image_dir: Path) -> None:
    s = planning.make_spec(name="a", image_dir=image_dir, publish=["8080:80", "53/udp"], net_rate="1MiB/s",
                           disk_rate="2MiB/s:4MiB", disk_iops="100", disks=[])
    assert [str(p) for p in s.publish] == ["127.0.0.1:8080->80/tcp", "127.0.0.1:*->53/udp"]
    assert s.limits.net_rx_bytes == s.limits.net_tx_bytes == RateLimit(size=MIB)
    assert s.limits.disk_bytes == RateLimit(size=4 * MIB, refill_ms=2000) and s.limits.disk_ops == RateLimit(size=100)
    assert s.limits.pids_max == 256  # the other limits keep their defaults


@pytest.mark.parametrize(("flags", "msg"), [
    ({"publish": ["80/sctp"]}, "--publish '80/sctp': protocol 'sctp' is not tcp or udp"),
    ({"publish": ["70000:80"]}, "--publish '70000:80': host_port: Input should be less than or equal to 65535"),
    ({"publish": ["224.0.0.1:80:80"]}, "is not a unicast address"),
    ({"publish": ["::1:80:80"]}, "expected [HOST_IP:]"),
    ({"publish": ["8080:80", "8080:81"]}, "host port 8080/tcp is published twice"),
    ({"publish": ["0.0.0.0:8080:80", "127.0.0.1:8080:81"]}, "published twice"),
    ({"net_rate": "10Mbps"}, "--net-rate '10Mbps'"),
    ({"disks": ["d.img:rw,serial=sealbox-instance"]}, "must be 1-20 letters"),
    ({"disks": ["d.img:rw,serial=a b"]}, "must be 1-20 letters"),
    ({"disks": ["d.img:rw,serial=" + "x" * 21]}, "must be 1-20 letters"),
    ({"disks": ["d.img:ro:rw"]}, "mode is given twice"),
])
def test_bad_flags_are_one_line_usage_errors(image_dir: Path, flags: dict[str, object], msg: str) -> None:
    with pytest.raises(UsageError) as e:
        planning.make_spec(name="a", image_dir=image_dir, **flags)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_serial_names_one_disk(image_dir: Path, tmp_path: Path) -> None:
    for n in ("a.img", "b.img"):
        (tmp_path / n).write_bytes(b"\0" * 4096)
    spec = planning.make_spec(name="a", image_dir=image_dir, disks=[f"{tmp_path}/a.img:rw,serial=db", f"{tmp_path}/b.img:serial=db"])
    with pytest.raises(UsageError, match="serial=db is given to two disks"):
        planning.check_disks(spec, image_dir)


def test_nft_policer_follows_the_bucket() -> None:
    """The same RateLimit gives nftables the average rate and the burst as its extra bucket."""
    assert nft.rate_bucket(parse_rate("1MiB/s", "--net-rate")) == (MIB, MIB)
    assert nft.rate_bucket(parse_rate("1MiB/s:8MiB", "--net-rate")) == (MIB, 8 * MIB)
    assert nft.rate_bucket(parse_rate("10KiB/s", "--net-rate")) == (10240, nft.GSO_MAX_BYTES)
