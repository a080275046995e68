"""`sealbox doctor`: every host prerequisite as a Check with a one-line fix.

It spans the layers (host, both VMM backends), so it lives above `sandbox`, not inside it.

Each check is independent and never raises: a crashing check becomes a `fail` naming the crash, so
one broken probe cannot hide the others.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sealbox.sandbox.host import cgroups, jail, kvm, users
from sealbox.sandbox.host.checks import Check
from sealbox.sandbox.vmm import qemu
from sealbox.sandbox.vmm.firecracker import doctor as fc_doctor
from sealbox.util import mounts
from sealbox.util.run import TOOL_PACKAGES

TOOLS = ("qemu-system-x86_64", "bwrap", "setpriv", "nft", "ip", "mmdebstrap", "mkfs.ext4")
EXTRA_PACKAGES = {"useradd": "passwd", "sbsign": "sbsigntool", "veritysetup": "cryptsetup-bin"}
# Tools only some commands need: missing, they break that command (a warning), not sandboxes in general.
COMMAND_TOOLS = (
    ("ssh", "sealbox exec/ssh/rdp"), ("ssh-keygen", "sealbox run (host key pinning)"),
    ("openssl", "sealbox run --password"), ("sbsign", "sealbox sign"),
    ("qemu-img", "qcow2/vhd/gcp outputs and sealbox disk"), ("mkfs.fat", "disk image outputs (ESP)"),
    ("mcopy", "disk image outputs (ESP)"), ("veritysetup", "dm-verity root (verity = true)"),
    ("zstd", "builds (initrd compression)"), ("debugfs", "builds (ext4 root)"),
)


def check_kvm(state_dir: Path, refresh: bool = False) -> Check:
    st = kvm.kvm_status(state_dir, refresh=refresh)
    suffix = " (cached for this boot)" if st.cached else ""
    if st.functional:
        return Check(name="kvm", status="ok", detail=f"{st.summary}: {st.detail}{suffix}")
    fix = "use a host with working (nested) virtualization for KVM speed; TCG works but is slower"
    if not st.present:
        fix = "load kvm_intel/kvm_amd (modprobe) if the CPU supports it; TCG works but is slower"
    return Check(name="kvm", status="warn", detail=f"{st.summary}{suffix}", fix=fix)


def check_cgroups() -> Check:
    layout = cgroups.detect()
    if layout.mode == "none":
        return Check(name="cgroups", status="fail", detail="no cgroup filesystem is mounted", fix="mount cgroup2 at /sys/fs/cgroup")
    missing = layout.missing()
    where = str(layout.unified) if layout.version == 2 else ", ".join(f"{c}={p}" for c, p in sorted(layout.mounts().items()))
    detail = f"{layout.mode} (limits via v{layout.version}): {where}"
    if missing:
        if layout.version == 2:
            fix = "enable them: echo '+" + " +".join(missing) + f"' > {layout.unified}/cgroup.subtree_control"
        else:
            fix = f"mount the v1 {', '.join(missing)} controller hierarchies"
        return Check(name="cgroups", status="fail", detail=f"{detail}; missing controllers: {', '.join(missing)}", fix=fix)
    return Check(name="cgroups", status="ok", detail=detail)


def check_tun() -> Check:
    p = Path("/dev/net/tun")
    try:
        ok = stat.S_ISCHR(p.stat().st_mode)
    except OSError:
        ok = False
    if not ok:
        return Check(name="tun", status="fail", detail=f"{p} is missing", fix="modprobe tun")
    return Check(name="tun", status="ok", detail=f"{p} present")


def check_tool(tool: str) -> Check:
    path = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path:
        return Check(name=f"tool:{tool}", status="ok", detail=path)
    pkg = TOOL_PACKAGES.get(tool) or EXTRA_PACKAGES.get(tool)
    return Check(name=f"tool:{tool}", status="fail", detail=f"{tool} not found", fix=f"apt-get install {pkg}" if pkg else f"install {tool}")


def command_tool_checks() -> list[Check]:
    out = []
    for tool, needed_by in COMMAND_TOOLS:
        c = check_tool(tool)
        if c.status == "fail":
            c = c.model_copy(update={"status": "warn", "detail": f"{tool} not found: {needed_by} will fail"})
        out.append(c)
    return out


def check_userns() -> Check:
    try:
        n = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        n = -1
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if n == 0 or (clone.exists() and clone.read_text().strip() == "0"):
        return Check(name="userns", status="fail", detail="unprivileged user namespaces are disabled (bubblewrap needs them for the VMM jail)",
                     fix="sysctl -w user.max_user_namespaces=10000 kernel.unprivileged_userns_clone=1")
    return Check(name="userns", status="ok", detail=f"unprivileged user namespaces allowed (max {n})")


def check_vmm_user() -> Check:
    """The per-sandbox uid range: configured sanely, clear of delegated subordinate ids, not used up."""
    from sealbox.errors import SealboxError
    from sealbox.sandbox.host.registry import Registry

    try:
        lo, hi = users.uid_range()
        clash = [f"{a}-{b}" for a, b in users.subid_ranges() if a <= hi and lo <= b]
        held = len(Registry().uid_holds()) if os.geteuid() == 0 else 0
        users.free_uid(taken=Registry().uid_holds() if os.geteuid() == 0 else ())
    except SealboxError as e:
        return Check(name="vmm-user", status="fail", detail=e.message, fix=e.hint or f"set {users.RANGE_ENV}")
    detail = f"sandbox VMMs run as uids {lo}-{hi} (one each, {held} leased)"
    if clash:
        return Check(name="vmm-user", status="warn", detail=f"{detail}; /etc/subuid or /etc/subgid delegate {', '.join(clash)} (skipped)",
                     fix=f"set {users.RANGE_ENV} to a range no subordinate id range overlaps")
    return Check(name="vmm-user", status="ok", detail=detail)


def check_jail() -> Check:
    """Run `true` through the real setpriv -> bwrap chain as the VMM user (or nobody)."""
    if os.geteuid() != 0:
        return Check(name="jail", status="skip", detail="not root: the jail smoke test needs root")
    uid = gid = users.free_uid()
    argv = jail.jail_argv(jail.JailSpec(uid=uid, gid=gid, root_links=jail.host_root_links()), ["/usr/bin/true"])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check(name="jail", status="fail", detail=f"setpriv/bwrap could not run: {e}", fix="apt-get install bubblewrap util-linux")
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.split())[-200:]
        return Check(name="jail", status="fail", detail=f"setpriv -> bwrap failed: {tail}",
                     fix="check unprivileged user namespaces (AppArmor/sysctl) and bubblewrap >= 0.8")
    return Check(name="jail", status="ok", detail=f"setpriv -> bwrap jail works as uid {uid}")


def _mount_options(path: Path) -> tuple[str, set[str]]:
    """Mount point and options of the filesystem holding `path` (its nearest existing ancestor)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    m = mounts.mount_of(Path(os.path.realpath(p)), mounts.read())
    return (str(m.mount_point), set(m.options)) if m else ("/", set())


def check_state_dir(root: Path) -> Check:
    mnt, opts = _mount_options(root)
    bad = sorted(opts & {"nodev", "noexec", "ro"})
    if bad:
        return Check(name="state-dir", status="fail", detail=f"{root} is on {mnt} mounted {','.join(bad)}",
                     fix="use --state-dir / SEALBOX_STATE_DIR on a dev,exec,rw filesystem")
    return Check(name="state-dir", status="ok", detail=f"{root} on {mnt} ({'exists' if root.exists() else 'created on first use'})")


def check_ovmf() -> Check:
    missing = [str(p) for p in (qemu.OVMF_CODE, qemu.OVMF_VARS) if not p.is_file()]
    if missing:
        return Check(name="ovmf", status="warn", detail=f"missing {', '.join(missing)} (needed for --firmware ovmf)", fix="apt-get install ovmf")
    return Check(name="ovmf", status="ok", detail=f"{qemu.OVMF_CODE.name} + {qemu.OVMF_VARS.name}")


def check_tdx() -> Check:
    ok, why = qemu.tdx_support()
    if ok:
        return Check(name="tdx", status="ok", detail=why)
    return Check(name="tdx", status="skip", detail=f"TDX not available: {why}; 'run --tdx' will refuse (--dry-run works)")


def _safe(name: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - a crashing check must not hide the others
        return [Check(name=name, status="fail", detail=f"check crashed: {type(e).__name__}: {e}", fix="report this as a sealbox bug")]
    return out if isinstance(out, list) else [out]


def run_checks(state_dir: Path, *, refresh_kvm: bool = False) -> list[Check]:
    checks: list[Check] = []
    checks += _safe("kvm", lambda: check_kvm(state_dir, refresh_kvm))
    checks += _safe("cgroups", check_cgroups)
    checks += _safe("tun", check_tun)
    for tool in TOOLS:
        checks += _safe(f"tool:{tool}", partial(check_tool, tool))
    checks += _safe("tools", command_tool_checks)
    checks += _safe("userns", check_userns)
    checks += _safe("vmm-user", check_vmm_user)
    checks += _safe("jail", check_jail)
    checks += _safe("state-dir", lambda: check_state_dir(state_dir))
    checks += _safe("ovmf", check_ovmf)
    checks += _safe("tdx", check_tdx)
    checks += _safe("firecracker", lambda: list(fc_doctor.checks()))
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0
