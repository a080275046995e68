"""Host checks for the Firecracker backend (`sealbox doctor`) and the `--vmm auto` decision."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from sealbox.errors import SealboxError
from sealbox.sandbox.host.checks import Check
from sealbox.sandbox.vmm.firecracker.settings import ENV, FirecrackerSettings
from sealbox.sandbox.vmm.firecracker.staging import check_chroot_base
from sealbox.util.digest import sha256_file

EXPECTED_SERIES = "1.16"  # the API contract sealbox is written against (swagger v1.16.1)
_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)\b")


def version_of(binary: Path, timeout: float = 5.0) -> str:
    """First non-empty line of `BINARY --version` (e.g. 'Firecracker v1.16.1'), or an error text."""
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"error: --version did not answer within {timeout:g}s"
    except OSError as e:
        return f"error: cannot run it: {e.strerror}"
    text = (proc.stdout or proc.stderr).decode(errors="replace")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if proc.returncode != 0:
        return f"error: --version exited {proc.returncode}: {line or 'no output'}"
    return line or "error: --version printed nothing"


def _binary_check(name: str, path: Path | None, explicit: Path | None, pinned: str | None, env_path: str, env_sha: str) -> Check:
    if path is None:
        where = f"{env_path}={explicit} does not exist" if explicit else "not found on PATH"
        return Check(name=name, status="warn", detail=f"{name}: {where} (needed only for --vmm firecracker)",
                     fix=f"install the {name} binary of Firecracker v{EXPECTED_SERIES}.x and set {env_path} (and {env_sha})")
    version = version_of(path)
    digest = sha256_file(path)
    parts = [f"{path}", version]
    status = "ok"
    fix = None
    if version.startswith("error:"):
        status, fix = "fail", f"check that {path} is a working {name} binary for this architecture"
    else:
        m = _VERSION_RE.search(version)
        if not m or f"{m.group(1)}.{m.group(2)}" != EXPECTED_SERIES:
            status, fix = "warn", f"sealbox targets Firecracker v{EXPECTED_SERIES}.x; other versions may reject its config"
    if pinned is None:
        parts.append(f"sha256 {digest} (not pinned)")
        if status == "ok":
            status, fix = "warn", f"pin it: {env_sha}={digest}"
    elif digest == pinned:
        parts.append(f"sha256 {digest[:16]}… matches {env_sha}")
    else:
        parts.append(f"sha256 {digest} does NOT match {env_sha}={pinned}")
        status, fix = "fail", f"the binary changed: reinstall the pinned release or update {env_sha} after verifying it"
    return Check(name=name, status=status, detail="; ".join(parts), fix=fix)


def checks(settings: FirecrackerSettings | None = None) -> list[Check]:
    """Presence, `--version` and digest of both binaries, and the jail base's filesystem."""
    try:
        s = settings or FirecrackerSettings.from_env()
    except SealboxError as e:
        return [Check(name="firecracker", status="fail", detail=str(e), fix="fix the SEALBOX_FIRECRACKER*/SEALBOX_JAILER* variables")]
    out = [
        _binary_check("firecracker", s.firecracker_path(), s.firecracker, s.firecracker_sha256, ENV["firecracker"], ENV["firecracker_sha256"]),
        _binary_check("jailer", s.jailer_path(), s.jailer, s.jailer_sha256, ENV["jailer"], ENV["jailer_sha256"]),
    ]
    try:
        m = check_chroot_base(s.chroot_base)
        out.append(Check(name="jailer-chroot-base", status="ok", detail=f"{s.chroot_base} on {m.fstype} ({m.mount_point})"))
    except SealboxError as e:
        out.append(Check(name="jailer-chroot-base", status="fail", detail=e.message, fix=e.hint))
    return out


def auto_select_ok(kvm_functional: bool, settings: FirecrackerSettings | None = None) -> tuple[bool, str]:
    """Should `--vmm auto` pick Firecracker? Yes when both binaries are present (and match their pinned
    digests) and KVM actually runs vCPUs (Firecracker has no emulation fallback)."""
    try:
        s = settings or FirecrackerSettings.from_env()
    except SealboxError as e:
        return False, str(e)
    fc, jl = s.firecracker_path(), s.jailer_path()
    if fc is None or jl is None:
        missing = " and ".join(n for n, p in (("firecracker", fc), ("jailer", jl)) if p is None)
        return False, f"{missing} not found (set {ENV['firecracker']}/{ENV['jailer']} or put them on PATH)"
    for name, path, pinned, var in (("firecracker", fc, s.firecracker_sha256, ENV["firecracker_sha256"]),
                                    ("jailer", jl, s.jailer_sha256, ENV["jailer_sha256"])):
        if pinned is not None and sha256_file(path) != pinned:
            return False, f"{name} at {path} does not match {var}"
    if not kvm_functional:
        return False, "KVM is not functional on this host (Firecracker needs it; QEMU can fall back to TCG)"
    try:
        check_chroot_base(s.chroot_base)
    except SealboxError as e:
        return False, e.message
    return True, f"firecracker {fc} and jailer {jl} present, KVM functional"
