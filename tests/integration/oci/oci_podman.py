"""Debian's podman, rootful but confined to this test: its own storage (vfs), run and temp directories, empty config
files, runc (crun refuses this kind of host's hybrid cgroup layout), a cgroup parent of its own that is removed
afterwards, and each podman command in a mount namespace of its own where /var/lib and /run are empty tmpfs: as root,
`podman load` writes a blob-info cache to /var/lib/containers/cache and runc keeps its state in /run/runc, with no
option that reaches the cleanup podman runs when a container ends (conmon runs it in the same namespace). Nothing
touches the host's container storage; everything loaded is removed with the directory."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TIMEOUT = 300
# run as `sh -c PRIVATE_DIRS sh podman ARGS...` inside `unshare --mount`: the arguments never enter the script text
PRIVATE_DIRS = ('mount -t tmpfs -o mode=0755,size=16m sealbox-test-oci /var/lib && '
                'mount -t tmpfs -o mode=0755,size=16m sealbox-test-oci /run && exec "$@"')


class Podman:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.cgroup_parent = f"/sealbox-test-oci-{base.name}"
        for d in ("root", "runroot", "tmp", "home"):
            (base / d).mkdir()
        (base / "storage.conf").write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{base}/runroot"\ngraphroot = "{base}/root"\n')
        (base / "containers.conf").write_text("")
        (base / "registries.conf").write_text("")
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(base / "tmp"),
                    "TMPDIR": str(base / "tmp"), "CONTAINERS_CONF": str(base / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"), "CONTAINERS_STORAGE_CONF": str(base / "storage.conf")}
        self.global_args = ["--root", str(base / "root"), "--runroot", str(base / "runroot"), "--tmpdir", str(base / "tmp"),
                            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                            "--runtime", "runc", "--log-level", "error"]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", PRIVATE_DIRS, "sh",
                "podman", *self.global_args, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=TIMEOUT)
        if check and proc.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
        return proc

    def run_args(self) -> list[str]:
        """Flags `podman run` needs on this kind of host besides the test's own: rlimits it may set without
        CAP_SYS_RESOURCE (podman's defaults are above the hard limits here), no cgroup for conmon, our cgroup parent."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = min(1024, soft if soft != resource.RLIM_INFINITY else 1024)
        return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=1024:1024", "--cgroups=no-conmon",
                "--cgroup-parent", self.cgroup_parent]

    def cleanup(self) -> list[str]:
        """Remove our cgroup parents, every mount under our directories and the directories; returns what was left over."""
        left = []
        for mnt in _cgroup_mounts():
            parent = Path(mnt) / self.cgroup_parent.lstrip("/")
            if parent.is_dir():
                for child in sorted((p for p in parent.iterdir() if p.is_dir()), reverse=True):
                    left.append(str(child))
                    with contextlib.suppress(OSError):
                        child.rmdir()
                parent.rmdir()
        for mnt in sorted(_mounts_under(self.base), reverse=True):
            left.append(mnt)
            subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(self.base)
        return left


def _mountinfo() -> list[list[str]]:
    return [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _cgroup_mounts() -> list[str]:
    return [f[4] for f in _mountinfo() if f[f.index("-") + 1] in ("cgroup", "cgroup2")]


def _mounts_under(base: Path) -> list[str]:
    return [f[4] for f in _mountinfo() if f[4].startswith(str(base) + "/")]


@contextlib.contextmanager
def podman() -> Iterator[Podman]:
    if os.geteuid() != 0:
        pytest.skip("rootful podman needs root")  # a failure in strict mode: CI runs as root
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (run scripts/setup.sh)")
    # a short path: conmon's attach socket lives below the run root and a unix socket path has at most 107 bytes
    p = Podman(Path(tempfile.mkdtemp(prefix="sbpm-", dir=os.environ.get("TMPDIR") or "/var/tmp")))  # noqa: S108
    try:
        yield p
    finally:
        left = p.cleanup()
        assert not left, f"podman left these behind: {left}"
