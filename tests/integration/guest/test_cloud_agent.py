"""The real guest/files/cloud.sh, run by the deploy image's own shell, busybox and coreutils (the image's initramfs
unpacked as a chroot), against hostile metadata stand-ins — without booting. In a private mount namespace /sys and
/proc are stand-in trees (DMI says which cloud, a writable hostname file) and /run a tmpfs; the network namespace is
a test link (tests/integration/deploy/cloud_standins.py) whose loopback owns 169.254.169.254 and 168.63.129.16.
The boots in tests/integration/deploy/test_cloud_profiles.py cover the good path; these are the answers a metadata
service must not get away with."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cloud_standins import METADATA, WIRESERVER, CloudLink, Reply, StandInServer  # noqa: E402

from initrd_unpack import unpack  # noqa: E402
from sealbox.guest import files as guest_files  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, chroot)")]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom good"
AZURE_TAG, GCP_PRODUCT = "7783-7084-3265-9085-8269-3286-77", "Google Compute Engine"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deploy image's initramfs, unpacked (it is the whole system)."""
    from deployimage import deploy_image

    image = deploy_image()
    out = tmp_path_factory.mktemp("initrd")
    unpack(image / "initrd.cpio.zst", out)  # every segment, in order
    return out


@dataclass
class Result:
    stderr: str
    hostname: str
    keys: dict[str, str]
    requests: list[tuple[str, str]]


def run_agent(root: Path, tmp: Path, cloud: str, routes: dict[str, Callable[[str, str, dict[str, str], bytes], Reply]]) -> Result:
    work = tmp / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "sys/class/dmi/id").mkdir(parents=True)
    (work / "sys/class/dmi/id/chassis_asset_tag").write_text(AZURE_TAG + "\n" if cloud == "azure" else "\n")
    (work / "sys/class/dmi/id/product_name").write_text(GCP_PRODUCT + "\n" if cloud == "gcp" else "Virtual Machine\n")
    (work / "proc/sys/kernel").mkdir(parents=True)
    (work / "proc/sys/kernel/hostname").write_text("localhost\n")
    (work / "cloud").write_bytes(guest_files.read("cloud.sh"))
    q = shlex.quote
    inner = f"""set -e
mount --make-rprivate /
mount --bind {q(str(work / 'sys'))} {q(str(root / 'sys'))}
mount --bind {q(str(work / 'proc'))} {q(str(root / 'proc'))}
mount -t tmpfs run {q(str(root / 'run'))}
mkdir -p {q(str(root / 'run/sealbox'))} {q(str(root / 'run/test'))}
cp {q(str(work / 'cloud'))} {q(str(root / 'run/test/cloud'))}
printf 'providers=azure gcp\\n' > {q(str(work / 'cloud.conf'))}
mount --bind {q(str(work / 'cloud.conf'))} {q(str(root / 'usr/lib/sealbox/cloud.conf'))}
chroot {q(str(root))} /bin/sh /run/test/cloud 2> {q(str(work / 'stderr'))} || true
mkdir -p {q(str(work / 'keys'))}
cp -a {q(str(root / 'run/sealbox'))}/authorized_keys/. {q(str(work / 'keys'))}/ 2>/dev/null || true
"""
    with CloudLink.create(tmp, []) as link:
        servers: list[StandInServer] = [link.serve(addr, route) for addr, route in routes.items()]
        p = subprocess.run(["ip", "netns", "exec", link.netns, "unshare", "--mount", "sh", "-c", inner],
                           capture_output=True, text=True, timeout=300)
        requests = [(r.method, r.path) for s in servers for r in s.requests]
    assert p.returncode == 0, p.stderr
    keys = {f.name: f.read_text() for f in (work / "keys").iterdir()}
    return Result((work / "stderr").read_text(), (work / "proc/sys/kernel/hostname").read_text().strip(), keys, requests)


def gcp_server(values: dict[str, str], flavor: Callable[[str], bool] = lambda path: True) -> Callable[..., Reply]:
    def route(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        key = path.removeprefix("/computeMetadata/v1/")
        answer = {"Metadata-Flavor": "Google"} if flavor(key) else {}
        return (200, answer, values[key].encode()) if key in values else (404, answer, b"")
    return route


def test_gcp_answers_that_do_not_say_google_or_are_too_big_are_ignored(root: Path, tmp_path: Path) -> None:
    values = {"instance/hostname": "gvm-2.c.p.internal", "instance/attributes/ssh-keys": f"alice:{KEY}\n",
              "project/attributes/ssh-keys": f"bob:{KEY} project\n" + "x" * 70000}
    r = run_agent(root, tmp_path, "gcp", {METADATA: gcp_server(values, flavor=lambda key: key != "instance/attributes/ssh-keys")})
    assert r.hostname == "gvm-2"
    assert r.keys == {}, r.stderr  # the instance keys came without Metadata-Flavor, the project keys are > 64 KiB


def test_azure_bad_name_bad_keys_and_a_goal_state_without_ids(root: Path, tmp_path: Path) -> None:
    leaves = {"compute/name": "bad_name!", "compute/osProfile/adminUsername": "Root; rm -rf /",
              "compute/publicKeys/0/keyData": f"{KEY}\n{KEY} second-line", "compute/publicKeys/1/keyData": f'from="*" {KEY}',
              "compute/publicKeys/2/keyData": KEY}

    def imds(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        leaf = path.partition("?")[0].removeprefix("/metadata/instance/")
        return (200, {}, leaves[leaf].encode()) if leaf in leaves and headers.get("metadata") == "true" else (404, {}, b"")

    def wire(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        goal = b"<GoalState><Incarnation>3</Incarnation><Container><ContainerId>a b</ContainerId>" \
               b"<RoleInstanceList><RoleInstance><InstanceId>x</InstanceId></RoleInstance></RoleInstanceList></Container></GoalState>"
        return (200, {}, goal) if method == "GET" else (200, {}, b"")

    r = run_agent(root, tmp_path, "azure", {METADATA: imds, WIRESERVER: wire})
    assert r.hostname == "localhost" and "not a DNS label" in r.stderr
    # the admin name is not a user name: its keys are refused; no key with options or a second line gets in
    assert r.keys == {}, r.keys
    assert ("POST", "/machine?comp=health") not in r.requests  # a container id with a space: nothing reported
    assert "lacks a valid Incarnation, ContainerId or InstanceId" in r.stderr


def test_not_on_a_known_cloud_nothing_is_asked(root: Path, tmp_path: Path) -> None:
    r = run_agent(root, tmp_path, "none", {METADATA: gcp_server({"instance/hostname": "x"})})
    assert r.requests == [] and r.hostname == "localhost" and "not on a cloud this image provisions itself on" in r.stderr
