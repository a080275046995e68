"""Console marker parsing: host keys before the first READY only, exact syntax, any chunking."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as hs
from rt_testlib import BOOT_ID, ECDSA, ED, blob

from sealbox.guest.console import MAX_KEYS, ConsoleFollower, ConsoleParser, parse_hostkey, scan_text, tail

LOG = (
    "[    0.000000] Linux version 6.1.0\r\n"
    "[  OK  ] Started ssh.service\r\n"
    f"SEALBOX-HOSTKEY ssh-ed25519 {ED}\r\n"
    f"SEALBOX-HOSTKEY ecdsa-sha2-nistp256 {ECDSA}\r\n"
    f"SEALBOX-READY {BOOT_ID}\r\n"
    f"SEALBOX-HOSTKEY ssh-ed25519 {blob('ssh-ed25519', b'spoofed-key-material')}\n"
    "SEALBOX-READY 00000000-spoof\n"
).encode()


def test_trusts_only_lines_before_the_first_ready() -> None:
    scan = scan_text(LOG)
    assert scan.ready and scan.boot_id == BOOT_ID
    assert [k.line() for k in scan.hostkeys] == [f"ssh-ed25519 {ED}", f"ecdsa-sha2-nistp256 {ECDSA}"]


def test_later_feeds_are_ignored_after_ready() -> None:
    p = ConsoleParser()
    p.feed(LOG)
    p.feed(f"SEALBOX-HOSTKEY ssh-ed25519 {blob('ssh-ed25519', b'x' * 40)}\n".encode())
    assert len(p.scan.hostkeys) == 2 and p.scan.boot_id == BOOT_ID


@given(cuts=hs.lists(hs.integers(min_value=0, max_value=len(LOG)), max_size=20))
def test_any_chunking_gives_the_same_result(cuts: list[int]) -> None:
    p = ConsoleParser()
    prev = 0
    for c in sorted(set(cuts)) + [len(LOG)]:
        p.feed(LOG[prev:c])
        prev = c
    assert p.scan == scan_text(LOG)


def test_unterminated_ready_is_not_ready_yet() -> None:
    p = ConsoleParser()
    p.feed(f"SEALBOX-HOSTKEY ssh-ed25519 {ED}\nSEALBOX-READY {BOOT_ID[:8]}".encode())
    assert not p.scan.ready  # the rest of the boot id may still be on its way
    p.feed(BOOT_ID[8:].encode() + b"\n")
    assert p.scan.boot_id == BOOT_ID


def test_malformed_markers_are_ignored_not_guessed() -> None:
    lines = [
        f"SEALBOX-HOSTKEY ssh-ed25519 {ECDSA}",  # announced type differs from the blob's
        f"SEALBOX-HOSTKEY ssh-dss {blob('ssh-dss')}",  # type not accepted
        "SEALBOX-HOSTKEY ssh-ed25519 not!base64",
        f"SEALBOX-HOSTKEY ssh-ed25519 {ED} trailing",
        "SEALBOX-HOSTKEY ssh-ed25519 AAAA",  # too short to hold a type
        f"[ 5.0] audit: SEALBOX-HOSTKEY ssh-ed25519 {ED}",  # interleaved: not at line start
        "SEALBOX-READY",  # no boot id
        "SEALBOX-READY bad id with spaces",
    ]
    scan = scan_text(("\n".join(lines) + "\n").encode())
    assert scan.hostkeys == [] and not scan.ready
    assert scan.ignored == 7  # all but the interleaved line look like markers


def test_duplicates_collapse_and_count_is_bounded() -> None:
    keys = [f"SEALBOX-HOSTKEY ssh-ed25519 {blob('ssh-ed25519', bytes([i]) * 36)}" for i in range(MAX_KEYS + 5)]
    scan = scan_text(("\n".join(keys + keys[:3]) + "\n").encode())
    assert len(scan.hostkeys) == MAX_KEYS


def test_parse_hostkey_accepts_a_real_openssh_key() -> None:
    real = "AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom"
    key = parse_hostkey(f"SEALBOX-HOSTKEY ssh-ed25519 {real}")
    assert key is not None and key.line() == f"ssh-ed25519 {real}"


@settings(max_examples=300)
@given(noise=hs.binary(max_size=600))
def test_fuzz_never_raises_and_never_trusts_after_ready(noise: bytes) -> None:
    data = f"SEALBOX-HOSTKEY ssh-ed25519 {ED}\nSEALBOX-READY {BOOT_ID}\n".encode() + noise
    scan = scan_text(data)
    assert scan.boot_id == BOOT_ID and [k.blob for k in scan.hostkeys] == [ED]
    scan_text(noise)  # arbitrary bytes alone: no exception


def test_follower_reads_a_growing_file(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    f = ConsoleFollower(log)
    assert not f.poll().ready  # file does not exist yet
    log.write_bytes(LOG[:50])
    assert not f.poll().ready
    with open(log, "ab") as fh:
        fh.write(LOG[50:])
    assert f.poll().boot_id == BOOT_ID


def test_tail_strips_escapes_and_blank_lines(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(b"a\n\n\x1b[0;32m  OK  \x1b[0m] Started x\r\n" + b"\x07bell\nlast\n")
    assert tail(log, 3) == ["OK  ] Started x", "bell", "last"]
    assert tail(tmp_path / "missing") == []
