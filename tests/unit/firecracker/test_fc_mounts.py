"""Which mount holds the chroot base, and which mounts are refused (synthetic /proc/self/mountinfo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealbox.errors import SandboxError
from sealbox.sandbox.vmm.firecracker.staging import check_chroot_base, mount_of, vmm_access

MI = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
60 27 0:50 / /srv rw,nodev,relatime - ext4 /dev/vdb rw
61 60 0:51 / /srv/jailer rw,relatime - xfs /dev/vdc rw
62 27 0:52 / /run rw,nosuid,nodev - tmpfs tmpfs rw
63 27 0:53 / /opt/ro ro,relatime - ext4 /dev/vdd ro
64 27 0:54 / /opt/noexec rw,noexec - ext4 /dev/vde rw
65 27 0:55 / /mnt/with\\040space rw - ext4 /dev/vdf rw
66 61 0:56 / /srv/jailer rw,nodev - ext4 /dev/vdg rw
"""


def test_longest_prefix_and_overmounts_win() -> None:
    assert mount_of(Path("/var/lib/x"), MI).mount_point == Path("/")
    assert mount_of(Path("/srv/other"), MI).fstype == "ext4"
    m = mount_of(Path("/srv/jailer/firecracker"), MI)
    assert (m.mount_point, m.fstype, "nodev" in m.options) == (Path("/srv/jailer"), "ext4", True)  # line 66 is on top
    assert mount_of(Path("/mnt/with space/j"), MI).mount_point == Path("/mnt/with space")


@pytest.mark.parametrize("base,needle", [
    ("/run/jails", "is on tmpfs"), ("/srv/jails", "nodev"), ("/opt/ro/j", "read-only"), ("/opt/noexec/j", "noexec"),
    ("/srv/jailer", "nodev"),
])
def test_refused_chroot_bases(base: str, needle: str) -> None:
    with pytest.raises(SandboxError, match=needle) as e:
        check_chroot_base(Path(base), MI)
    assert "SEALBOX_JAILER_CHROOT_BASE" in e.value.hint


def test_accepted_chroot_base() -> None:
    assert check_chroot_base(Path("/var/lib/sealbox/jails"), MI).fstype == "ext4"


def test_vmm_access_by_mode_bits() -> None:
    import os

    def st(uid: int, gid: int, mode: int) -> os.stat_result:
        return os.stat_result((0o100000 | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))

    assert vmm_access(st(0, 0, 0o644), 1000, 1000) == (True, False)
    assert vmm_access(st(0, 0, 0o600), 1000, 1000) == (False, False)
    assert vmm_access(st(0, 1000, 0o660), 1000, 1000) == (True, True)
    assert vmm_access(st(1000, 0, 0o400), 1000, 1000) == (True, False)
    assert vmm_access(st(0, 0, 0o666), 1000, 1000) == (True, True)
