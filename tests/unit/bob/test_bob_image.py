"""The bob image's wiring (builder/bob_image.py) and the host side of "no root management path": what the builder
writes into a tree, that the workload's bytes are part of the image's identity, the manifest's access record, and
that exec/ssh (and with them the SDK's exec) refuse a bob sandbox in one line while `stop` falls back to ACPI."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from sealbox.builder import bob_image
from sealbox.builder.bob_firewall import image_files
from sealbox.builder.intree import Tree
from sealbox.errors import SandboxError
from sealbox.sandbox import control
from sealbox.sandbox.image import Manifest
from sealbox.sandbox.state import SandboxRecord, StateDir, process_start_time
from sealbox.spec.load import LoadedSpec, load_spec

SPEC = """\
include = ["base", "bob"]
name = "b"
[bob]
builder_bundle = ["192.0.2.1:1"]
builder_state_diff = ["192.0.2.1:2"]
workload = "w.tar"
control_ssh_port = 2200
key_registration_port = 8081
"""


def _loaded(tmp_path: Path, workload: bytes = b"an OCI archive") -> LoadedSpec:
    (tmp_path / "w.tar").write_bytes(workload)
    (tmp_path / "s.toml").write_text(SPEC)
    return load_spec(tmp_path / "s.toml")


def test_a_changed_workload_archive_changes_the_spec_digest(tmp_path: Path) -> None:
    # failed before: the digest covered the spec's text and files[], not bob.workload's bytes (same digest twice)
    one = _loaded(tmp_path, b"archive one").digest()
    two = _loaded(tmp_path, b"archive two").digest()
    assert one != two
    assert _loaded(tmp_path, b"archive one").digest() == one
    # the build cache's tree layer is keyed by the same digest (without writer-only settings): it changes too
    assert _loaded(tmp_path, b"archive one").digest(omit=("output",)) != _loaded(tmp_path, b"archive two").digest(omit=("output",))


def _sshd(text: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.decode().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key.lower(), []).append(value)
    return out


def test_the_control_plane_sshd_admits_searcher_only_with_the_registered_key(tmp_path: Path) -> None:
    conf = _sshd(bob_image.sshd_config(_loaded(tmp_path).spec.bob))
    assert all(len(v) == 1 for v in conf.values()), conf  # sshd keeps the first value: no keyword twice
    want = {"port": "2200", "allowusers": "searcher", "permitrootlogin": "no", "authorizedkeysfile": "/run/sealbox-bob/authorized_keys",
            "authenticationmethods": "publickey", "passwordauthentication": "no", "kbdinteractiveauthentication": "no",
            "disableforwarding": "yes", "allowtcpforwarding": "no", "allowstreamlocalforwarding": "no",
            "allowagentforwarding": "no", "x11forwarding": "no", "permittunnel": "no", "permitopen": "none",
            "permitlisten": "none", "permittty": "no", "permituserrc": "no", "permituserenvironment": "no",
            "hostkey": "/run/sealbox/ssh/ssh_host_ed25519_key"}
    assert {k: conf[k][0] for k in want} == want
    # the base configuration's path, so it is replaced: its AuthorizedKeysFile holds the sandbox's root key
    assert bob_image.SSHD_CONF == "/etc/ssh/sshd_config.d/00-sealbox.conf"


def test_install_writes_units_rule_sets_and_the_workload_read_only(tmp_path: Path) -> None:
    (tmp_path / "spec").mkdir()
    loaded = _loaded(tmp_path / "spec", b"\x00workload bytes")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/shadow").write_text("searcher:!:1:0:99999:7:::\n")  # install gives searcher "*" (test_bob_image_workload.py)
    with Tree(tree) as t:
        enabled = bob_image.install(t, loaded)
    assert enabled == ["sealbox-bob-firewall.service", "sealbox-bob-keyreg.service", "sealbox-bob-mode.socket",
                       "sealbox-bob-attest.service", "sealbox-bob-disk-boot.service", "sealbox-bob-disk.socket",
                       "sealbox-bob-attest-quote.socket", "sealbox-bob-data-sshd.service"]
    assert (tree / "persistent").is_dir()  # bob-disk's mount point: the root is read-only at run time
    attest = (tree / "usr/lib/systemd/system/sealbox-bob-attest.service").read_text()
    assert "ExecStart=/usr/lib/sealbox/bob/bob-attest serve 8745\n" in attest and "@PORT@" not in attest
    w = tree / "usr/share/sealbox/bob/workload.tar"
    assert w.read_bytes() == b"\x00workload bytes" and stat.S_IMODE(w.stat().st_mode) == 0o444
    for path, data in image_files(loaded.spec.bob).items():
        assert (tree / path.lstrip("/")).read_bytes() == data
    units = tree / "usr/lib/systemd/system"
    fw = (units / "sealbox-bob-firewall.service").read_text()
    assert "ExecStart=/usr/lib/sealbox/bob/bob-mode boot" in fw and "RequiredBy=sealbox-instance.service" in fw
    assert "Before=network-pre.target sealbox-instance.service ssh.service" in fw and "DefaultDependencies=no" in fw
    assert "ExecStart=/usr/lib/sealbox/bob/bob-keyreg 8081\n" in (units / "sealbox-bob-keyreg.service").read_text()
    sock = (units / "sealbox-bob-mode.socket").read_text()
    assert "ListenStream=/run/sealbox-bob/mode.sock" in sock and "SocketGroup=searcher" in sock and "SocketMode=0660" in sock
    assert "ExecStart=/usr/lib/sealbox/bob/bob-mode serve" in (units / "sealbox-bob-mode@.service").read_text()
    assert "Port 2200\n" in (tree / "etc/ssh/sshd_config.d/00-sealbox.conf").read_text()


def test_the_module_gives_searcher_the_command_shell_and_turns_the_base_firewall_off(tmp_path: Path) -> None:
    spec = _loaded(tmp_path).spec
    assert spec.users["searcher"].shell == "/usr/lib/sealbox/bob/bob-shell"
    dests = {f.dest for f in spec.files}
    assert {f"/usr/lib/sealbox/bob/bob-{n}" for n in ("shell", "mode", "keyreg", "disk", "attest")} <= dests
    # every unit the builder enables is either written by it or installed by the module's files[]
    module_units = {d.rsplit("/", 1)[1] for d in dests if d.startswith("/usr/lib/systemd/system/")}
    assert set(bob_image.MODULE_UNITS) <= module_units
    assert {"cryptsetup-bin", "e2fsprogs"} <= set(spec.packages.include)
    assert {"/usr/sbin/mke2fs", "/usr/sbin/mkfs.ext4", "/usr/sbin/e2fsck"} <= set(spec.strip.keep)
    assert spec.hardening.lock_root and spec.hardening.ssh and not spec.hardening.firewall
    assert "netbase" in spec.packages.include  # nft resolves the rule sets' protocol names through /etc/protocols


def test_the_manifest_access_record_is_read_by_the_host() -> None:
    rec = bob_image.manifest_record(bob_image.Bob(enable=True, control_ssh_port=2200))
    base = {"schema": "sealbox.manifest/v1", "name": "b", "kernel": {"version": "6.1", "cmdline": []}, "boot": {}}
    m = Manifest.model_validate({**base, "access": rec})
    assert m.access.root_ssh is False and m.access.ssh_port == 2200 and "root management path is off" in m.access.why
    plain = Manifest.model_validate(base)  # every other image: root SSH on 22, as before
    assert plain.access.root_ssh is True and plain.access.ssh_port == 22


def _running(state: StateDir, name: str, guest: dict[str, object]) -> None:
    me = os.getpid()
    state.reserve(SandboxRecord(name=name, status="running", created_at=time.time(), guest=guest,
                                vmm={"backend": "qemu", "pid": me, "start_time": process_start_time(me)},
                                network={"netns": "sealbox-x", "guest_ip": "10.62.0.2", "host_ip": "10.62.0.1", "subnet": "10.62.0.0/30",
                                         "guest_mac": "02:00:00:00:00:02", "tap": "tap0"}))


def test_exec_and_ssh_refuse_a_bob_sandbox_in_one_line(tmp_path: Path) -> None:
    # failed before: ssh_target handed out the root target, and ssh then failed at the guest's sshd
    state = StateDir(tmp_path / "s")
    why = "bob image: sealbox's root management path is off (only the searcher's command shell, docs/modules.md)"
    _running(state, "bob1", {"root_ssh": False, "root_ssh_off": why, "user": "root"})
    for user in (None, "searcher"):
        with pytest.raises(SandboxError) as info:
            control.ssh_target(state, "bob1", user)
        assert str(info.value.message) == f"sandbox 'bob1': no exec/ssh: {why}" and "\n" not in str(info.value)
    # `stop` asks through the same path first: refused, so it goes straight to the VMM's power button
    assert control._guest_poweroff(state, state.load("bob1"), time.monotonic() + 5) is False


def test_the_workload_goes_where_bob_workload_loads_it() -> None:
    from bobguest import load

    assert load("bob_workload").ARCHIVE == bob_image.WORKLOAD
