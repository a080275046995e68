"""Reading an image directory (what `sealbox build` writes) for `sealbox run`.

Contract: `manifest.json` {"schema": "sealbox.manifest/v1", "name", "kernel": {"version", "cmdline": [...]},
"boot": {"vmlinuz", "vmlinux", "initrd", "rootfs", "loader", "uki"} (file names, each optional; other
keys ignored), "artifacts": {file: {"sha256", "size"}}}. Which files a sandbox needs depends on the
backend and the boot mode; each one must exist, be a regular file inside the image directory, and
have the size the manifest records (a cheap check that catches truncated or half-copied images; the
sha256 is not recomputed per run because hashing ~40 MB costs more than the whole host-side setup).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sealbox.errors import UsageError
from sealbox.spec.model import USER_RE

SCHEMA = "sealbox.manifest/v1"
BOOT_KEYS = ("vmlinuz", "vmlinux", "initrd", "rootfs", "loader", "uki", "disk", "qcow2", "vhd")
DISK_IMAGE_KEYS = ("disk", "qcow2", "vhd")  # bootable GPT disks (builder/disk.py), in order of preference
MAX_MEMORY_MIB = 1024 * 1024  # the largest --memory


class KernelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str
    cmdline: list[str] = []


class Artifact(BaseModel):
    model_config = ConfigDict(extra="allow")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Access(BaseModel):
    """manifest `access` (bob images; absent: root SSH on port 22): whether sealbox's root management path exists."""

    model_config = ConfigDict(extra="ignore")
    root_ssh: bool = True
    ssh_port: int = Field(22, ge=1, le=65535)
    why: str = Field("", max_length=300)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")
    access: Access = Access()
    schema_: str = Field(alias="schema")
    name: str
    kernel: KernelInfo
    boot: dict[str, Any]
    artifacts: dict[str, Artifact] = {}
    # least guest RAM per boot mode ("initrd", "disk"), measured rule in builder/bootmem.py; absent in older images
    min_memory_mib: dict[str, Annotated[int, Field(strict=True, ge=0, le=MAX_MEMORY_MIB)]] = {}


class BootFiles(BaseModel):
    """The host files one sandbox boots from (absolute paths inside the image directory)."""

    kernel: Path  # for --boot disk-image: the GPT disk image the firmware boots
    initrd: Path | None = None
    rootfs: Path | None = None
    cmdline: list[str]  # the image's baked arguments (+ root= for --rootfs disk on direct boot)


class Image(BaseModel):
    dir: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def kernel_version(self) -> str:
        return self.manifest.kernel.version

    def min_memory(self, rootfs: Literal["initrd", "disk"]) -> int:
        """The least RAM (MiB) this image boots in with its root in the initramfs or on disk (0: not recorded)."""
        return self.manifest.min_memory_mib.get(rootfs, 0)

    def _users(self) -> dict[str, Any]:
        spec = (self.manifest.model_extra or {}).get("spec")
        users = spec.get("users", {}) if isinstance(spec, dict) else {}
        if not isinstance(users, dict):
            raise UsageError(f"{self.dir}/manifest.json: spec.users is not a table", hint="rebuild the image")
        for name in users:
            if not USER_RE.fullmatch(name) or name == "root":
                raise UsageError(f"{self.dir}/manifest.json: spec.users has {name!r}, which is not a user name", hint="rebuild the image")
        return users

    def declared_users(self) -> list[str]:
        """The non-root users the image's spec declares (manifest `spec.users`): they get the sandbox's key too."""
        return sorted(self._users())

    def password_users(self) -> list[str]:
        """The users whose spec sets `instance_password`: each sandbox makes them a password (e.g. gui's `desktop`)."""
        return sorted(n for n, u in self._users().items() if isinstance(u, dict) and u.get("instance_password") is True)

    def boot_file(self, key: str) -> str | None:
        value = self.manifest.boot.get(key)
        return value if isinstance(value, str) and value else None

    def _file(self, key: str, why: str) -> Path:
        rel = self.boot_file(key)
        if rel is None:
            raise UsageError(f"image {self.dir} has no '{key}' boot file, which {why} needs",
                             hint="rebuild the image with that output enabled, or choose another boot mode")
        path = (self.dir / rel).resolve()
        if self.dir.resolve() not in path.parents:
            raise UsageError(f"{self.dir}/manifest.json: boot.{key}={rel!r} points outside the image directory")
        if not path.is_file():
            raise UsageError(f"image file {path} (boot.{key}) is missing", hint="rebuild the image")
        art = self.manifest.artifacts.get(rel)
        if art is not None and path.stat().st_size != art.size:
            raise UsageError(f"image file {path} has {path.stat().st_size} bytes but the manifest records {art.size}",
                             hint="the image is damaged or still being copied: rebuild or re-copy it")
        return path

    def boot_files(self, *, vmm: Literal["qemu", "firecracker"], rootfs: Literal["initrd", "disk"],
                   firmware: Literal["direct", "ovmf"] = "direct", tdx: bool = False,
                   boot: Literal["kernel", "disk-image"] = "kernel") -> BootFiles:
        baked = list(self.manifest.kernel.cmdline)
        if boot == "disk-image":  # the disk's ESP carries the UKI and its measured command line
            key = next((k for k in DISK_IMAGE_KEYS if self.boot_file(k)), "disk")
            return BootFiles(kernel=self._file(key, "--boot disk-image (output format disk, qcow2 or vhd)"), cmdline=baked)
        if firmware == "ovmf" or tdx:  # the UKI carries kernel, initrd and a measured command line
            what = "--tdx" if tdx else "--firmware ovmf"
            disk = self._file("rootfs", "--rootfs disk") if rootfs == "disk" else None  # the UKI's cmdline names the root
            return BootFiles(kernel=self._file("uki", what), rootfs=disk, cmdline=baked)
        kernel = self._file("vmlinux", "--vmm firecracker") if vmm == "firecracker" else self._file("vmlinuz", "QEMU direct boot")
        if rootfs == "disk":
            disk = self._file("rootfs", "--rootfs disk")
            loader = self._file("loader", "--rootfs disk") if self.boot_file("loader") else None
            if vmm == "qemu":  # Firecracker appends root=/dev/vda ro itself for its root drive
                baked = [a for a in baked if not a.startswith("root=") and a not in ("ro", "rw")] + ["root=/dev/vda", "ro"]
            return BootFiles(kernel=kernel, initrd=loader, rootfs=disk, cmdline=baked)
        return BootFiles(kernel=kernel, initrd=self._file("initrd", "--rootfs initrd"), cmdline=baked)


def load(image_dir: Path) -> Image:
    """Validate an image directory; every problem is one line naming the file and key."""
    d = Path(image_dir)
    if not d.is_dir():
        raise UsageError(f"image directory {d} does not exist", hint="pass the directory 'sealbox build' wrote (build/<name>)")
    path = d / "manifest.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{d} is not a sealbox image: {path} is missing", hint="pass the directory 'sealbox build' wrote (build/<name>)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise UsageError(f"{path}: schema is {found!r}, expected {SCHEMA!r}", hint="rebuild the image with this sealbox version")
    if raw.get("kernel") is None and isinstance(raw.get("oci"), dict):  # output.formats = ["oci"]: nothing to boot
        file = raw["oci"].get("file")
        raise UsageError(f"{d} is a container image (output.formats = [\"oci\"]), not a VM image: it has no kernel to boot",
                         hint=f"load {d / str(file)} with podman load or docker load")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise UsageError(f"{path}: {loc}: {err['msg']}", hint="rebuild the image") from None
    return Image(dir=d.resolve(), manifest=manifest)
