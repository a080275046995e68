"""The azure and gcp profiles, booted as the clouds boot them: the image's own disk file (disk.vhd; disk.raw out of
the GCP tarball) under OVMF on an NVMe controller, no sealbox instance disk, DMI saying which cloud it is, and a test
namespace as the only uplink (cloud_standins.py): a real DHCP server set up like the cloud's, and stand-ins that own
the metadata address (169.254.169.254) and Azure's wire server (168.63.129.16). The oracles are the real OpenSSH
client (who may log in, with which key), ElementTree (the ready report), the guest's own `ip`, `stty` and `modinfo`.
The metadata carries hostile entries next to the good ones: the guest must take exactly the good ones."""

from __future__ import annotations

import json
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cloud_standins import AZURE_SMBIOS, GCP_SMBIOS, METADATA, WIRESERVER, CloudLink, Reply, Ssh, boot, hostkeys, keypair

pytestmark = [pytest.mark.integration, pytest.mark.boot]
READY = "SEALBOX-READY"
INCARNATION, CONTAINER, INSTANCE = "7", "4f8c1b2e-1111-4000-8000-0000000000aa", "896a2e0c-2222-4000-8000-0000000000bb._azvm-1"
GOAL_STATE = f"""<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <Version>2012-11-30</Version>
  <Incarnation>{INCARNATION}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
  </Machine>
  <Container>
    <ContainerId>{CONTAINER}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{INSTANCE}</InstanceId>
        <State>Started</State>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"""


def _console_speed(image: Path) -> str:
    """The baud rate of the last console=ttyS0 the image's command line carries (the kernel uses that one's options)."""
    cmdline = json.loads((image / "manifest.json").read_text())["kernel"]["cmdline"]
    ttys0 = [a for a in cmdline if a.split(",")[0] == "console=ttyS0"]
    assert len(ttys0) == 1, cmdline  # spec/model.py: a later console= for a port replaces the earlier one
    return ttys0[0].partition(",")[2].rstrip("n8") or "9600"


def _guest_facts(ssh: Ssh, key: Path) -> dict[str, str]:
    script = ("hostname; echo ---; ip -4 -o addr show eth0; echo ---; ip -4 route; echo ---; cat /etc/resolv.conf; echo ---;"
              " stty -F /dev/ttyS0 speed; echo ---; cat /sys/class/net/eth0/mtu; echo ---; cat /sys/block/nvme0n1/device/serial;"
              " echo ---; cat /run/sealbox/authorized_keys/root; echo ---; ls /run/sealbox/authorized_keys")
    p = ssh.run(key, "sh", "-c", script)
    assert p.returncode == 0, f"{p.stderr.strip()}; console: {ssh.console_tail()}"
    parts = [x.strip() for x in p.stdout.split("---")]
    return dict(zip(["hostname", "addr", "routes", "resolv", "speed", "mtu", "nvme", "root_keys", "key_users"], parts, strict=True))


def test_azure(image: Path, tmp_path: Path) -> None:
    good, good_pub = keypair(tmp_path, "azure-admin")
    evil, evil_pub = keypair(tmp_path, "azure-evil")
    other, other_pub = keypair(tmp_path, "azure-other")
    key_data = {"0": good_pub + "\r\n",  # as Azure stores it
                "1": f'command="/bin/sh",no-pty {evil_pub}',  # options in front: not one plain key line
                "2": f"{other_pub}\n{evil_pub}"}  # two lines in one entry
    leaves = {"compute/name": "azvm-1", "compute/osProfile/computerName": "azvm-1", "compute/osProfile/adminUsername": "azureuser",
              **{f"compute/publicKeys/{i}/keyData": v for i, v in key_data.items()}}

    def imds(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        base, _, query = path.partition("?")
        if headers.get("metadata") != "true" or "api-version=" not in query or "format=text" not in query:
            return 400, {}, b"Bad request"
        leaf = base.removeprefix("/metadata/instance/")
        return (200, {"Content-Type": "text/plain"}, leaves[leaf].encode()) if leaf in leaves else (404, {}, b"Not found")

    def wire(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if headers.get("x-ms-version") != "2012-11-30":
            return 400, {}, b""
        if method == "GET" and path == "/machine/?comp=goalstate":
            return 200, {"Content-Type": "text/xml; charset=utf-8"}, GOAL_STATE.encode()
        if method == "POST" and path == "/machine?comp=health":
            return 200, {}, b""
        return 404, {}, b""

    dhcp = ["--dhcp-range=10.77.0.50,10.77.0.50,255.255.255.0,1h", "--dhcp-option=option:router,10.77.0.1",
            f"--dhcp-option=option:dns-server,{WIRESERVER}", "--dhcp-option=option:domain-name,sbx.internal.cloudapp.net"]
    with CloudLink.create(tmp_path, dhcp) as link:
        meta, wires = link.serve(METADATA, imds), link.serve(WIRESERVER, wire)
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(tmp_path / "data.raw"), "64M"], check=True, timeout=60)
        nvme_data = ["-drive", f"if=none,id=data,file={tmp_path / 'data.raw'},format=raw", "-device", "nvme,drive=data,serial=persistent"]
        with boot(link, tmp_path, image / "disk.vhd", "vpc", AZURE_SMBIOS, nvme_data) as b:
            seconds = b.wait_for(READY, 300)
            print(f"azure: disk.vhd on NVMe under OVMF/TCG, DHCP + metadata + ready report: ready after {seconds:.1f}s")
            ssh = Ssh(link, tmp_path, hostkeys(b.text()), b)
            facts = _guest_facts(ssh, good)
            # the ready report: one POST, well-formed, naming the goal state's incarnation, container and instance
            posts = [r for r in wires.requests if r.method == "POST"]
            assert len(posts) == 1 and posts[0].headers["content-type"].startswith("text/xml")
            health = ET.fromstring(posts[0].body)
            assert health.tag == "Health" and health.findtext("GoalStateIncarnation") == INCARNATION
            assert health.findtext("Container/ContainerId") == CONTAINER
            assert health.findtext("Container/RoleInstanceList/Role/InstanceId") == INSTANCE
            assert health.findtext("Container/RoleInstanceList/Role/Health/State") == "Ready"
            assert all(r.headers.get("metadata") == "true" for r in meta.requests)
            assert "sealbox-cloud: azure: reported ready" in b.text()
            # who may log in: exactly the admin's plain key (azureuser is not in the image: root gets it)
            assert facts["root_keys"] == good_pub and facts["key_users"] == "root"
            for bad in (evil, other):
                assert ssh.run(bad, "true").returncode != 0
            presence = ssh.run(good, "modinfo", "-n", "hv_vmbus", "hv_netvsc", "hv_storvsc", "hv_utils", "pci_hyperv", "mlx5_core")
            mounted = ssh.run(good, "findmnt", "-n", "-o", "SOURCE,OPTIONS", "/persistent")
            assert presence.returncode == 0 and presence.stdout.count(".ko") == 6, presence.stdout + presence.stderr
    assert facts["hostname"] == "azvm-1"
    assert "10.77.0.50/24" in facts["addr"] and "default via 10.77.0.1 dev eth0" in facts["routes"]
    assert f"nameserver {WIRESERVER}" in facts["resolv"] and "search sbx.internal.cloudapp.net" in facts["resolv"]
    assert facts["nvme"] == "os-disk"  # booted from the NVMe controller
    # a second NVMe controller whose serial names the persistent disk: that one is mounted
    assert mounted.returncode == 0 and mounted.stdout.split()[0] == "/dev/nvme1n1", mounted.stdout + mounted.stderr
    assert facts["speed"] == _console_speed(image)


def test_gcp(image: Path, tmp_path: Path) -> None:
    keys = {n: keypair(tmp_path, f"gcp-{n}") for n in ("alice", "root", "expired", "later", "project", "baduser")}
    pub = {n: k[1] for n, k in keys.items()}
    carol = f'{pub["later"].rsplit(" ", 1)[0]} google-ssh {{"userName":"carol@example.com","expireOn":"2099-01-01T00:00:00+0000"}}'
    instance_keys = "\n".join([
        f"alice:{pub['alice']}",  # a user the image does not have: root gets the key
        f"root:{pub['root']}",
        f'bob:{pub["expired"].rsplit(" ", 1)[0]} google-ssh {{"userName":"bob@example.com","expireOn":"2020-01-01T00:00:00+0000"}}',
        f"carol:{carol}",
        "mallory:not a key at all",
        f"../etc:{pub['baduser']}",
    ]) + "\n"
    values = {"instance/hostname": "gvm-1.c.sealbox-test.internal", "instance/attributes/ssh-keys": instance_keys,
              "instance/attributes/block-project-ssh-keys": "TRUE", "project/attributes/ssh-keys": f"dave:{pub['project']}\n"}

    def metadata(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if headers.get("metadata-flavor") != "Google":
            return 403, {}, b"Missing Metadata-Flavor:Google header."
        key = path.removeprefix("/computeMetadata/v1/")
        if key not in values:
            return 404, {"Metadata-Flavor": "Google"}, b"not found"
        return 200, {"Metadata-Flavor": "Google", "Content-Type": "application/text"}, values[key].encode()

    with tarfile.open(image / "disk.gcp.tar.gz") as tar:  # as GCP's image import does
        tar.extract("disk.raw", tmp_path, filter="data")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "data.qcow2"), "256M"], check=True, timeout=60)
    data_disk = ["-drive", f"if=none,id=data,file={tmp_path / 'data.qcow2'},format=qcow2", "-device", "virtio-scsi-pci,id=scsi1",
                 "-device", "scsi-hd,drive=data,bus=scsi1.0,serial=persistent"]  # a GCP disk attached with device name "persistent"
    dhcp = ["--dhcp-range=10.77.0.50,10.77.0.50,1h", "--dhcp-option=option:netmask,255.255.255.255",
            "--dhcp-option=121,10.77.0.1/32,0.0.0.0,0.0.0.0/0,10.77.0.1", "--dhcp-option=option:mtu,1460",
            f"--dhcp-option=option:dns-server,{METADATA}", "--dhcp-option=option:domain-search,c.sealbox-test.internal,google.internal"]
    with CloudLink.create(tmp_path, dhcp) as link:
        meta = link.serve(METADATA, metadata)
        with boot(link, tmp_path, tmp_path / "disk.raw", "raw", GCP_SMBIOS, data_disk) as b:
            seconds = b.wait_for(READY, 300)
            print(f"gcp: disk.raw from the tarball on NVMe under OVMF/TCG, DHCP + metadata: ready after {seconds:.1f}s")
            ssh = Ssh(link, tmp_path, hostkeys(b.text()), b)
            facts = _guest_facts(ssh, keys["alice"][0])
            allowed = {n for n, (k, _) in keys.items() if ssh.run(k, "true").returncode == 0}
            mounted = ssh.run(keys["root"][0], "sh", "-c", "findmnt -n -o SOURCE,OPTIONS /persistent; tail -c +5 /sys/block/sd*/device/vpd_pg80")
            gve = ssh.run(keys["root"][0], "modinfo", "-n", "gve", "virtio_net", "virtio_scsi")
    assert all(r.headers.get("metadata-flavor") == "Google" for r in meta.requests)
    assert {r.path for r in meta.requests} >= {"/computeMetadata/v1/instance/hostname", "/computeMetadata/v1/instance/attributes/ssh-keys"}
    assert "/computeMetadata/v1/project/attributes/ssh-keys" not in {r.path for r in meta.requests}  # blocked
    assert facts["hostname"] == "gvm-1"
    assert allowed == {"alice", "root", "later"}  # not the expired one, the blocked project key, or a bad user name
    assert sorted(facts["root_keys"].splitlines()) == sorted([pub["alice"], pub["root"], carol])
    # GCP's DHCP: a /32, an on-link route to the gateway and the default route through it (option 121), MTU 1460
    assert "10.77.0.50/32" in facts["addr"] and "10.77.0.1 dev eth0 scope link" in facts["routes"]
    assert "default via 10.77.0.1 dev eth0 onlink" in facts["routes"] and facts["mtu"] == "1460"
    assert f"nameserver {METADATA}" in facts["resolv"] and "search c.sealbox-test.internal google.internal" in facts["resolv"]
    assert facts["nvme"] == "os-disk" and facts["speed"] == _console_speed(image)
    # the data disk GCP names "persistent" (SCSI unit serial) is the one mounted, nosuid,nodev
    assert mounted.returncode == 0 and mounted.stdout.split()[0].startswith("/dev/sd"), mounted.stdout + mounted.stderr
    assert {"nosuid", "nodev"} <= set(mounted.stdout.split()[1].split(",")) and "persistent" in mounted.stdout
    assert gve.returncode == 0 and gve.stdout.count(".ko") == 3, gve.stdout + gve.stderr
