"""The data plane sshd's config (modules/bob/sshd-data.conf) as Debian's own sshd reads it.

The host runs no sshd: openssh-server (and libwrap0, which its sshd links) are fetched with `apt-get download` into
the test cache and unpacked, never installed. `sshd -T` prints the effective settings for a connection as the guest
would get it (bob-workload sshd's argv, the searcher on the data port); it runs in a mount namespace of its own where
/etc/passwd has the privilege separation and searcher accounts, and /run and /etc/ssh are empty tmpfs with a test
host key: nothing of the host's is read or changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bobguest import load
from sealbox.spec.load import modules_dir

bw = load("bob_workload")
CACHE = Path(os.environ.get("SEALBOX_TEST_CACHE", "/var/cache/sealbox-test"))
CONF = modules_dir() / "bob" / "sshd-data.conf"
SETUP = """set -e
mount --bind "$1" /etc/passwd
mount -t tmpfs -o mode=0755,size=1m sealbox-test-bob /run
mkdir -m 0755 /run/sshd
mount -t tmpfs -o mode=0755,size=1m sealbox-test-bob /etc/ssh
cp "$2" /etc/ssh/ssh_host_ed25519_key
chmod 600 /etc/ssh/ssh_host_ed25519_key
shift 2
exec "$@"
"""

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ssh-keygen") or not shutil.which("unshare"),
                                 reason="needs root, ssh-keygen and unshare")]


def _unpacked(name: str) -> Path:
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not sorted(debs.glob(f"{name}_*.deb")):
        r = subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.fail(f"apt-get download {name} failed: {r.stderr.strip()[-300:]}")
    deb = sorted(debs.glob(f"{name}_*.deb"))[-1]
    dest = CACHE / "extract" / deb.stem
    if not (dest / ".done").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, timeout=120)
        (dest / ".done").touch()
    return dest


def _effective(tmp_path: Path, lport: int) -> dict[str, str]:
    server, wrap = _unpacked("openssh-server"), _unpacked("libwrap0")
    passwd = tmp_path / "passwd"
    passwd.write_text(Path("/etc/passwd").read_text() + "sshd:x:65500:65534::/run/sshd:/usr/sbin/nologin\n"
                      "searcher:x:65501:65501::/persistent/searcher:/usr/lib/sealbox/bob/bob-shell\n")
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    argv = bw.sshd_args(10022)
    assert argv[:5] == ["/usr/sbin/sshd", "-D", "-e", "-f", "/usr/lib/sealbox/bob/sshd-data.conf"]
    sshd = [str(server / "usr/sbin/sshd"), "-T", "-f", str(CONF), *argv[5:],
            "-C", f"user=searcher,host=client,addr=192.0.2.9,laddr=10.0.0.2,lport={lport}"]
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", SETUP, "sh", str(passwd),
                        str(key), "env", f"LD_LIBRARY_PATH={wrap / 'usr/lib/x86_64-linux-gnu'}", *sshd],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(" ")
        out[k] = f"{out[k]}\n{v}" if k in out else v
    return out


def test_the_data_plane_sshd_forces_the_container_and_forwards_nothing(tmp_path: Path) -> None:
    eff = _effective(tmp_path, 10022)
    assert eff["port"] == "10022"  # from config.json's data_ssh_port, through bob-workload sshd's -p
    assert eff["forcecommand"] == "/usr/lib/sealbox/bob/bob-workload enter"
    assert eff["allowusers"] == "searcher" and eff["permitrootlogin"] == "no"
    assert eff["authenticationmethods"] == "publickey" and eff["passwordauthentication"] == "no"
    assert eff["kbdinteractiveauthentication"] == "no"
    assert eff["authorizedkeysfile"] == "/run/sealbox-bob/authorized_keys"  # the one key registration installed
    for k in ("disableforwarding",):
        assert eff[k] == "yes", k
    for k in ("allowtcpforwarding", "allowagentforwarding", "allowstreamlocalforwarding", "x11forwarding", "permittunnel",
              "permituserenvironment", "permituserrc", "gatewayports"):
        assert eff[k] == "no", k
    assert "acceptenv" not in eff and "subsystem" not in eff  # no client variable (bob-shell reads SSH_CONNECTION), no sftp
