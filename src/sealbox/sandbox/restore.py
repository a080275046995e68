"""The last phase of a restore from a QEMU snapshot: the guest renews its secrets before the sandbox is handed out.

After the backend's steps started QEMU with `-incoming` (it loads the snapshot's state and stays paused):
1. QEMU has loaded everything (the guest has not run a single instruction of the restore yet);
2. the host connects to the agent's port, then `cont`;
3. the request goes out: a fresh nonce, the host's time, 512 bytes of entropy (guest/agent.py). The agent credits the
   entropy and reseeds the CRNG, ends the snapshot's SSH sessions, applies this sandbox's instance disk (its client
   key, hostname, addresses), generates a new host key and signs its answer with it;
4. the answer must carry this nonce, its signature must verify with the key it reports (`ssh-keygen -Y verify`, an
   oracle sealbox did not write), and that key must not be the snapshot source's: then it is pinned in known_hosts;
5. sshd answers on the sandbox's new address from inside its netns.
Everything is bounded by the run's deadline; any failure undoes the sandbox like a failed boot.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError
from sealbox.guest import agent
from sealbox.guest.protocol import RESTORE_SIG_NAMESPACE
from sealbox.sandbox import ssh
from sealbox.sandbox.model import GuestNet
from sealbox.sandbox.snapshot import SnapshotManifest
from sealbox.sandbox.vmm import qemu_snapshot
from sealbox.util.run import which
from sealbox.util.unixpath import short_path

SIGNER = "sealbox-guest"  # the principal of the one-line allowed_signers file the signature is checked against


def connect(path: str, deadline: float) -> socket.socket:
    """The agent's port, through QEMU's listening socket in the root-only run dir (bound before QEMU started)."""
    last = ""
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with short_path(path) as name:  # a deep state dir's run dir is beyond sun_path
                sock.connect(name)
            return sock
        except OSError as e:
            sock.close()
            last = e.strerror or str(e)
            time.sleep(0.02)
    raise SandboxError(f"cannot connect to the restore agent's port {path}: {last or 'timed out'}")


def exchange(sock: socket.socket, nonce: str, entropy: bytes, now: float, deadline: float) -> agent.Answer:
    sock.sendall(agent.request(nonce, entropy, now))
    parser = agent.AnswerParser(nonce)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SandboxError("the restored guest's agent did not answer in time",
                               hint="raise --timeout on slow (TCG) hosts; see 'sealbox logs'")
        sock.settimeout(min(left, 1.0))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError as e:
            raise SandboxError(f"the restore agent's port failed: {e.strerror or e}") from None
        if not data:
            raise SandboxError("QEMU closed the restore agent's port before the guest answered")
        answer = parser.feed(data)
        if answer is not None:
            return answer


def verify(answer: agent.Answer) -> None:
    """The signature over the answer is made with the host key it reports (and covers this request's nonce)."""
    with tempfile.TemporaryDirectory(prefix="sealbox-restore-") as d:
        allowed, sig = Path(d) / "allowed_signers", Path(d) / "answer.sig"
        allowed.write_text(f"{SIGNER} {answer.hostkey.line()}\n")
        sig.write_text(answer.signature)
        argv = [which("ssh-keygen"), "-Y", "verify", "-f", str(allowed), "-I", SIGNER, "-n", RESTORE_SIG_NAMESPACE, "-s", str(sig)]
        p = subprocess.run(argv, input=answer.message, capture_output=True, timeout=30)
    if p.returncode != 0:
        why = " ".join(p.stderr.decode(errors="replace").split())[:160]
        raise SandboxError(f"the restored guest's answer is not signed by the host key it reports ({why})")


def finish(manifest: SnapshotManifest, *, qmp_socket: str, agent_socket: str, net: GuestNet,
           known_hosts: Path, alias: str, deadline: float) -> dict[str, Any]:
    """Steps 1-5 above; returns the facts `run` records about the guest."""
    qemu_snapshot.finish_incoming(qmp_socket, deadline)
    sock = connect(agent_socket, deadline)
    with sock:
        qemu_snapshot.cont(qmp_socket)
        t_cont = time.monotonic()
        answer = exchange(sock, agent.new_nonce(), os.urandom(agent.ENTROPY_BYTES), time.time(), deadline)
    verify(answer)
    if answer.hostkey.line() in manifest.source_hostkeys:
        raise SandboxError("the restored guest kept the snapshot's SSH host key instead of generating a new one")
    ssh.write_known_hosts(known_hosts, alias, [answer.hostkey])
    renewed_s = time.monotonic() - t_cont
    while True:
        banner = ssh.probe_ssh(net.netns, str(net.guest_ip), 22, timeout=max(0.2, min(2.0, deadline - time.monotonic())))
        if banner:  # renewed: cont -> the answer checked and pinned; ssh: then -> sshd's banner on the new address
            return {"boot_id": None, "hostkeys": [answer.hostkey.line()], "banner": banner,
                    "renewed_s": round(renewed_s, 3), "ssh_s": round(time.monotonic() - t_cont - renewed_s, 3)}
        if time.monotonic() >= deadline:
            raise SandboxError("SSH did not answer on the restored guest's new address in time")
        time.sleep(0.05)
