"""The host side of the restore agent's exchange (guest/agent.py, sandbox/restore.py) against hostile answers.

Signatures are made and checked by the real ssh-keygen (-Y sign / -Y verify), as the guest and the host do."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sealbox.guest import agent
from sealbox.guest.agent import AgentError, AnswerParser
from sealbox.guest.protocol import AGENT_HELLO, RESTORE_SIG_NAMESPACE
from sealbox.sandbox.restore import verify

NONCE = "ab" * 32


def keypair(d: Path, name: str = "k") -> tuple[Path, str]:
    key = d / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)], check=True, timeout=30)
    return key, " ".join((d / f"{name}.pub").read_text().split()[:2])


def signed_answer(key: Path, pub: str, nonce: str = NONCE, signer: Path | None = None) -> bytes:
    """What agent.sh writes: the lines, the SSHSIG over them, the end marker."""
    msg = f"SEALBOX-RESTORED {nonce}\nSEALBOX-HOSTKEY {pub}\n"
    sig = subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", str(signer or key), "-n", RESTORE_SIG_NAMESPACE],
                         input=msg.encode(), capture_output=True, check=True, timeout=30).stdout
    return msg.encode() + sig + f"SEALBOX-RESTORE-END {nonce}\n".encode()


def parse(data: bytes, nonce: str = NONCE, chunk: int = 7) -> agent.Answer:
    p = AnswerParser(nonce)
    for i in range(0, len(data), chunk):  # arrives in pieces
        if (a := p.feed(data[i : i + chunk])) is not None:
            return a
    raise AssertionError("no complete answer")


def test_request_carries_the_nonce_the_time_and_then_the_entropy() -> None:
    entropy = bytes(range(256)) * 2
    req = agent.request(NONCE, entropy, 1_800_000_000.5)
    head = f"SEALBOX-RESTORE-V1 {NONCE}\ntime=1800000000.500000\nEND\n".encode()
    assert req == head + entropy  # the reseed program reads exactly these 512 bytes from the port
    with pytest.raises(ValueError):
        agent.request("x" * 64, entropy, 0)
    with pytest.raises(ValueError):
        agent.request(NONCE, bytes(64), 0)
    assert len({agent.new_nonce() for _ in range(50)}) == 50


def test_a_signed_answer_to_this_nonce_is_accepted(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path)
    stale = b"SEALBOX-AGENT-V1\nSEALBOX-RESTORED " + b"cd" * 32 + b"\nSEALBOX-HOSTKEY junk\n"  # queued before the snapshot
    a = parse(stale + signed_answer(key, pub))
    assert a.hostkey.line() == pub
    verify(a)  # ssh-keygen -Y verify accepts it


def test_a_key_the_guest_does_not_hold_is_refused(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path, "mine")
    _other, other_pub = keypair(tmp_path, "theirs")  # e.g. a sibling's public host key
    a = parse(signed_answer(key, other_pub, signer=key))
    with pytest.raises(Exception, match="not signed by the host key it reports"):
        verify(a)


def test_a_signature_over_another_nonce_is_refused(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path)
    old = signed_answer(key, pub, nonce="cd" * 32)
    forged = old.replace(b"cd" * 32, NONCE.encode())  # the text says this nonce, the signature covers the old one
    with pytest.raises(Exception, match="not signed"):
        verify(parse(forged))


@pytest.mark.parametrize("bad", [
    b"SEALBOX-RESTORED %(n)s\nSEALBOX-HOSTKEY ssh-ed25519 AAAA\n",  # a malformed key
    b"SEALBOX-RESTORED %(n)s trailing\n",  # more on the first line
    b"SEALBOX-RESTORED %(n)s\n-----BEGIN SSH SIGNATURE-----\n",  # a signature without a key
    b"SEALBOX-RESTORED %(n)s\nSEALBOX-HOSTKEY %(k)s\nSEALBOX-HOSTKEY %(k)s\n",  # two keys
    b"SEALBOX-RESTORED %(n)s\nSEALBOX-HOSTKEY %(k)s\n-----BEGIN SSH SIGNATURE-----\n$(reboot)\n",
    b"SEALBOX-RESTORED %(n)s\nSEALBOX-HOSTKEY %(k)s\n-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\nEND\n",
])
def test_malformed_answers_are_refused(tmp_path: Path, bad: bytes) -> None:
    _key, pub = keypair(tmp_path)
    data = bad % {b"n": NONCE.encode(), b"k": pub.encode()}
    with pytest.raises(AgentError):
        parse(data, chunk=len(data))


def test_failure_is_reported_with_a_sanitised_step() -> None:
    with pytest.raises(AgentError, match="failed at step 'reseed'"):
        parse(f"SEALBOX-RESTORE-FAILED {NONCE} reseed\n".encode())
    with pytest.raises(AgentError, match="failed at step 'unknown'"):
        parse(f"SEALBOX-RESTORE-FAILED {NONCE} \x1b[31mevil\n".encode())
    p = AnswerParser(NONCE)  # another request's failure is not ours
    assert p.feed(f"SEALBOX-RESTORE-FAILED {'cd' * 32} reseed\n".encode()) is None


def test_an_endless_answer_is_cut_off() -> None:
    p = AnswerParser(NONCE)
    with pytest.raises(AgentError, match="more than"):
        for _ in range(100):
            p.feed(b"x" * 1024)


def test_the_agents_socket_is_reached_under_a_deep_state_dir(tmp_path: Path) -> None:
    """The run dir of a deep state dir puts the agent's socket beyond sun_path's 108 bytes (QMP's is reached through
    util/unixpath.py already): the restore and the snapshot's hello check reach it all the same."""
    import contextlib
    import socket
    import threading

    from sealbox.sandbox import restore as restore_mod
    from sealbox.sandbox import snapshot as snap_mod
    from sealbox.util.unixpath import short_path

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "agent.sock")
    assert len(path) > 108
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        with short_path(path) as name:
            server.bind(name)
        server.listen(2)

        def hello() -> None:
            for _ in range(2):
                conn, _addr = server.accept()
                with conn, contextlib.suppress(OSError):  # the first (connect's) may be closed already
                    conn.sendall(AGENT_HELLO.encode() + b"\n")

        t = threading.Thread(target=hello, daemon=True)
        t.start()
        restore_mod.connect(path, time.monotonic() + 2).close()
        snap_mod._agent_answers(path, timeout=5)
        t.join(5)
