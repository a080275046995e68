"""The searcher's workload wired into the bob image (modules/bob.toml, builder/bob_image.py): the guest programs,
units and data plane sshd configuration land in the tree with their modes, only the data plane sshd is enabled (the
workload and its log writer are started by `bob-mode resume`), searcher gets subordinate ids and a password field
sshd accepts with UsePAM no, and the merged spec names podman's packages and kernel modules.

The tree is a scratch directory with the accounts copy_files and install read (the real build: the slow e2e test
tests/integration/bob/test_bob_workload_e2e.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bobguest import load
from sealbox.builder import bob_image
from sealbox.builder.configure import copy_files
from sealbox.builder.intree import Tree
from sealbox.errors import BuildError
from sealbox.spec.load import LoadedSpec, load_spec, modules_dir

bw = load("bob_workload")

SPEC = """\
include = ["base", "bob"]
name = "b"
[bob]
builder_bundle = ["192.0.2.1:1"]
builder_state_diff = ["192.0.2.1:2"]
workload = "w.tar"
"""
LIB = "/usr/lib/sealbox/bob"
UNITS = "/usr/lib/systemd/system"
# source in modules/bob -> (path in the image, mode)
WANT = {
    "bob_workload.py": (f"{LIB}/bob-workload", 0o755),
    "bob_netguard.py": (f"{LIB}/bob-netguard", 0o755),
    "bob_logs.py": (f"{LIB}/bob-logs", 0o755),
    "sshd-data.conf": (f"{LIB}/sshd-data.conf", 0o644),
    "sealbox-bob-workload.service": (f"{UNITS}/sealbox-bob-workload.service", 0o644),
    "sealbox-bob-logs.service": (f"{UNITS}/sealbox-bob-logs.service", 0o644),
    "sealbox-bob-data-sshd.service": (f"{UNITS}/sealbox-bob-data-sshd.service", 0o644),
    "sealbox-bob-tun.conf": ("/usr/lib/tmpfiles.d/sealbox-bob-tun.conf", 0o644),
    "bob_node.py": (f"{LIB}/bob-node", 0o755),
    "sealbox-bob-node.service": (f"{UNITS}/sealbox-bob-node.service", 0o644),
}
# Debian 12's /etc/ssh/sshd_config, its settings (comments left out)
DEBIAN_SSHD = ("Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\n"
               "PrintMotd no\nAcceptEnv LANG LC_*\nSubsystem\tsftp\t/usr/lib/openssh/sftp-server\n")
SHADOW = "root:!*:1:0:99999:7:::\nsshd:!:1::::::\nsearcher:!:1:0:99999:7:::\n"


def _loaded(tmp_path: Path) -> LoadedSpec:
    (tmp_path / "w.tar").write_bytes(b"an OCI archive")
    (tmp_path / "s.toml").write_text(SPEC)
    return load_spec(tmp_path / "s.toml")


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, list[str], LoadedSpec]:
    (tmp_path / "spec").mkdir()
    loaded = _loaded(tmp_path / "spec")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nsearcher:x:1000:1000::/home/searcher:/usr/lib/sealbox/bob/bob-shell\n")
    (tree / "etc/group").write_text("root:x:0:\nsearcher:x:1000:\n")
    (tree / "etc/shadow").write_text(SHADOW)
    (tree / "etc/ssh").mkdir()
    (tree / "etc/ssh/sshd_config").write_text(DEBIAN_SSHD)
    copy_files(tree, loaded)
    with Tree(tree) as t:
        enabled = bob_image.install(t, loaded)
    return tree, enabled, loaded


def test_each_workload_file_is_in_the_tree_with_its_mode(built: tuple[Path, list[str], LoadedSpec]) -> None:
    # failed before: none of these was in modules/bob.toml's files[] (FileNotFoundError on the first)
    tree, _, _ = built
    for source, (dest, mode) in WANT.items():
        f = tree / dest.lstrip("/")
        assert f.read_bytes() == (modules_dir() / "bob" / source).read_bytes(), dest
        assert stat.S_IMODE(f.lstat().st_mode) == mode and f.stat().st_uid == 0, dest


def test_only_the_data_plane_sshd_is_enabled_of_the_workload_units(built: tuple[Path, list[str], LoadedSpec]) -> None:
    # failed before: sealbox-bob-data-sshd.service was not enabled
    tree, enabled, _ = built
    assert "sealbox-bob-data-sshd.service" in enabled
    assert "sealbox-bob-workload.service" not in enabled and "sealbox-bob-logs.service" not in enabled
    # the two `bob-mode resume` starts are exactly the ones installed, and every enabled unit is in the tree
    mode = load("bob_mode")
    assert set(mode.WORKLOAD_UNITS) == {"sealbox-bob-workload.service", "sealbox-bob-logs.service", "sealbox-bob-node.service"}
    assert "sealbox-bob-node.service" not in enabled  # the node's data is on /persistent: it starts with the workload
    for unit in [*enabled, *mode.WORKLOAD_UNITS]:
        assert (tree / UNITS.lstrip("/") / unit).is_file(), unit


def test_searcher_gets_subordinate_ids_and_an_unlocked_keyonly_password_field(built: tuple[Path, list[str], LoadedSpec]) -> None:
    # failed before: no /etc/subuid or /etc/subgid written, and searcher's field stayed "!" (sshd with UsePAM no
    # refuses a "!"-locked account even with a valid key)
    tree, _, _ = built
    assert (tree / "etc/subuid").read_text() == "searcher:100000:65536\n"
    assert (tree / "etc/subgid").read_text() == "searcher:100000:65536\n"
    shadow = [line.split(":") for line in (tree / "etc/shadow").read_text().splitlines()]
    fields = {f[0]: f for f in shadow}
    assert fields["searcher"] == ["searcher", "*", "1", "0", "99999", "7", "", "", ""]
    assert fields["root"][1] == "!*" and fields["sshd"][1] == "!"  # nobody else's field is touched


def test_the_node_service_has_an_account_of_its_own(built: tuple[Path, list[str], LoadedSpec]) -> None:
    tree, _, loaded = built
    users = loaded.spec.users
    assert (users["searcher"].uid, users["bob-node"].uid, users["bob-node"].shell) == (1000, 1001, "/usr/sbin/nologin")
    # the rule sets keep consensus P2P and NTP from the searcher's uids: the uid they name is the account's
    from sealbox.builder.bob_firewall import SEARCHER_UID

    assert users["searcher"].uid == SEARCHER_UID
    unit = (tree / UNITS.lstrip("/") / "sealbox-bob-node.service").read_text()
    for line in ("User=bob-node", "ConditionPathIsMountPoint=/persistent", "RuntimeDirectoryPreserve=yes",
                 "ExecStart=/usr/lib/sealbox/bob/bob-node", "NoNewPrivileges=yes"):
        assert line in unit.splitlines(), line


def test_install_refuses_a_tree_without_the_searcher_account(tmp_path: Path) -> None:
    (tmp_path / "spec").mkdir()
    loaded = _loaded(tmp_path / "spec")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/shadow").write_text("root:!*:1::::::\n")
    with Tree(tree) as t, pytest.raises(BuildError, match="no searcher account in /etc/shadow"):
        bob_image.install(t, loaded)


def test_the_merged_spec_names_podmans_packages_and_kernel_modules(tmp_path: Path) -> None:
    # failed before: none of the four packages, and neither module
    spec = _loaded(tmp_path).spec
    assert {"podman", "crun", "uidmap", "slirp4netns"} <= set(spec.packages.include)
    assert {"tun", "overlay"} <= set(spec.kernel.modules) and {"tun", "overlay"} <= set(spec.kernel.load)


def _keywords(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def test_both_sshds_use_the_base_images_host_key_and_accept_no_environment(built: tuple[Path, list[str], LoadedSpec]) -> None:
    # failed before: the data plane read /etc/ssh/ssh_host_ed25519_key, which a sealbox image does not have (the
    # base image makes its key at every boot under /run/sealbox/ssh)
    tree, _, loaded = built
    data = _keywords((tree / f"{LIB}/sshd-data.conf".lstrip("/")).read_text())
    control = _keywords(bob_image.sshd_config(loaded.spec.bob).decode())
    assert data["hostkey"] == control["hostkey"] == ["/run/sealbox/ssh/ssh_host_ed25519_key"]
    assert "acceptenv" not in data and "acceptenv" not in control
    # failed before: Debian's sshd_config kept "AcceptEnv LANG LC_*" for the control plane (it adds up across files)
    debian = (tree / "etc/ssh/sshd_config").read_text()
    assert "acceptenv" not in _keywords(debian) and debian == DEBIAN_SSHD.replace("AcceptEnv LANG LC_*\n", "")
    unit = (tree / f"{UNITS}/sealbox-bob-data-sshd.service".lstrip("/")).read_text()
    assert "After=network.target sealbox-sshd-keys.service\n" in unit and "Requires=sealbox-sshd-keys.service\n" in unit


def test_the_workload_reads_the_archive_where_the_builder_puts_it() -> None:
    # failed before the merge with main: bob-workload read workload.tar, the builder wrote workload.oci.tar
    assert bw.ARCHIVE == bob_image.WORKLOAD


def test_the_mode_service_keeps_full_root_capabilities(built: tuple[Path, list[str], LoadedSpec]) -> None:
    # bob-mode resume runs nft in the container's namespace (setns) and starts units: no sandboxing that drops that
    tree, _, _ = built
    text = (tree / f"{UNITS}/sealbox-bob-mode@.service".lstrip("/")).read_text()
    assert "ExecStart=/usr/lib/sealbox/bob/bob-mode serve\n" in text
    for key in ("CapabilityBoundingSet", "NoNewPrivileges", "User=", "DynamicUser", "RestrictNamespaces", "SystemCallFilter",
                "PrivateNetwork", "ProtectSystem"):
        assert key not in text, key


def test_tun_is_made_usable_by_searcher_at_boot(built: tuple[Path, list[str], LoadedSpec]) -> None:
    # udev (which makes /dev/net/tun 0666) is masked in sealbox images; devtmpfs alone gives 0600
    tree, _, _ = built
    lines = [line.split() for line in (tree / "usr/lib/tmpfiles.d/sealbox-bob-tun.conf").read_text().splitlines()
             if line and not line.startswith("#")]
    assert ["c!", "/dev/net/tun", "0666", "root", "root", "-", "10:200"] in lines
    assert ["z", "/dev/net/tun", "0666", "root", "root", "-"] in lines
    # failed before (seen in the booted guest: slirp4netns "open /dev/net/tun: Permission denied"): the base image
    # masks systemd-tmpfiles-setup-dev, so the workload unit applies the file itself, as root, with --boot for "c!"
    unit = (tree / f"{UNITS}/sealbox-bob-workload.service".lstrip("/")).read_text()
    assert ("ExecStartPre=+/usr/bin/systemd-tmpfiles --create --boot /usr/lib/tmpfiles.d/sealbox-bob-tun.conf\n"
            in unit)


def test_the_workload_units_start_outlasts_bob_netguards_wait(built: tuple[Path, list[str], LoadedSpec]) -> None:
    # failed before: no TimeoutStartSec, so systemd's default 90 s killed the start (ExecStartPost bob-netguard apply
    # waits up to APPLY_WAIT = 120 s for the container) and restarted it, forever under TCG
    tree, _, _ = built
    unit = (tree / f"{UNITS}/sealbox-bob-workload.service".lstrip("/")).read_text()
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("TimeoutStartSec=")]
    assert len(values) == 1 and int(values[0]) > load("bob_netguard").APPLY_WAIT + 60, values
