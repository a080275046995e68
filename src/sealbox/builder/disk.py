"""Bootable disk images from a built UKI: output formats disk, qcow2, vhd and gcp.

Every format carries the same GPT disk: an EFI system partition (FAT32) holding the UKI as
\\EFI\\BOOT\\BOOTX64.EFI, the path UEFI firmware boots from removable and unconfigured disks, so a cloud
VM or OVMF finds it without a boot entry. By default the image boots from the UKI's initrd and nothing
else is on the disk; with output.disk_root = "verity" the disk also carries the read-only root and its
dm-verity hash tree, and the ESP a UKI that boots from them (builder/verity.py).

Identity: the disk GUID, partition GUID, FAT volume id and the VHD's unique id are derived from the
SHA-256 of the unsigned UKI, and the ESP's size from its length (with room for a signature), so
`sealbox sign` can rewrite the disks around a signed UKI with exactly the same layout.

    disk   disk.raw          raw GPT disk, a multiple of 1 MiB (sparse on the host)
    qcow2  disk.qcow2        the same disk converted by qemu-img (zero clusters unallocated)
    vhd    disk.vhd          fixed VHD (raw + footer) for Azure: size a multiple of 1 MiB
    gcp    disk.gcp.tar.gz   GCP image import: disk.raw (a multiple of 1 GiB) in a GNU tar, gzip
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sealbox.builder.kernel import KernelFiles
from sealbox.builder.verity import ROOT_LABEL, VERITY_LABEL, VerityRoot

__all__ = ["DISK_FORMATS", "FILES", "DiskIdentity", "VerityRoot", "build_step", "explain", "tool_versions", "wanted", "write_disks"]
from sealbox.errors import BuildError
from sealbox.formats import fat, gpt, targz, vhd
from sealbox.spec.model import ImageSpec
from sealbox.util.digest import sha256_file
from sealbox.util.run import output, run

DISK_FORMATS = ("disk", "qcow2", "vhd", "gcp")
FILES = {"disk": "disk.raw", "qcow2": "disk.qcow2", "vhd": "disk.vhd", "gcp": "disk.gcp.tar.gz"}
ESP_PATH = "/EFI/BOOT/BOOTX64.EFI"
GCP_MULTIPLE = 1 << 30
QCOW2_OPTIONS = "compat=1.1,cluster_size=65536,preallocation=off,lazy_refcounts=off"
LOADER_PACKAGE = "busybox-static"  # as builder.LOADER_PACKAGE: downloaded when ext4 is built
GZIP_LEVEL = 6  # level 9 saves <0.1 % on this content (mostly compressed already) and costs 25 % more time


@dataclass(frozen=True)
class DiskIdentity:
    """Everything about the disk that is fixed by the unsigned UKI."""

    digest: str  # sha256 of the unsigned UKI
    esp_size: int

    @classmethod
    def of(cls, unsigned_uki: Path) -> DiskIdentity:
        return cls(sha256_file(unsigned_uki), fat.esp_size(unsigned_uki.stat().st_size))

    @property
    def volume_id(self) -> int:
        return int(hashlib.sha256(f"sealbox-fat:{self.digest}".encode()).hexdigest()[:8], 16)

    def table(self, multiple: int = gpt.ALIGN, verity: VerityRoot | None = None) -> gpt.Table:
        parts = [(gpt.ESP_TYPE, gpt.derived_guid(self.digest, "esp"), self.esp_size, "ESP", 0)]
        if verity is not None:  # read-only root + its hash tree, GUIDs from the root hash (as systemd-repart)
            ro = gpt.ATTR_READ_ONLY
            parts += [(gpt.ROOT_X86_64_TYPE, verity.root_guid, verity.data.stat().st_size, ROOT_LABEL, ro),
                      (gpt.ROOT_X86_64_VERITY_TYPE, verity.verity_guid, _sectors(verity.hash_tree), VERITY_LABEL, ro)]
        return gpt.plan(gpt.derived_guid(self.digest, "disk"), parts, multiple=multiple)


def _sectors(path: Path) -> int:
    """A partition size for `path`: whole MiB, so every partition also ends on an alignment boundary."""
    return -(-path.stat().st_size // gpt.ALIGN) * gpt.ALIGN


def wanted(formats: Iterable[str]) -> list[str]:
    chosen = set(formats)
    return [f for f in DISK_FORMATS if f in chosen]


def tool_versions(formats: Iterable[str]) -> dict[str, str]:
    """Versions of the tools that shape the disk bytes (part of the build key when a disk is wanted)."""
    if not wanted(formats):
        return {}
    import zlib

    def dpkg(pkg: str) -> str:
        try:
            return output(["dpkg-query", "-W", "-f=${Version}", pkg])
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            return "absent"

    return {"dosfstools": dpkg("dosfstools"), "mtools": dpkg("mtools"), "qemu-utils": dpkg("qemu-utils"),
            "cryptsetup-bin": dpkg("cryptsetup-bin"), "zlib": zlib.ZLIB_RUNTIME_VERSION}


def build_step(stage: Path, work: Path, spec: ImageSpec, tree: Path, kernel: KernelFiles, extra_files: dict[str, Path]) -> dict[str, str]:
    """The builder's disk step: {boot key: file} for the manifest. With output.disk_root = "verity" it
    first writes rootfs.verity and <name>.disk.efi (builder/verity.py), which the disk then carries."""
    formats, epoch = spec.output.formats, spec.epoch
    uki = stage / f"{spec.name}.efi"
    if spec.output.disk_root != "verity":
        return write_disks(stage, work, uki, formats, epoch)
    from sealbox.builder import verity as vmod

    root = vmod.hash_tree(stage / "rootfs.ext4", stage / vmod.HASH_FILE)
    loader = work / "verity-loader.cpio.zst"
    vmod.build_loader(tree, extra_files[LOADER_PACKAGE], kernel, work, loader, epoch, spec.output.compression_level)
    stub = next((work / "stub").rglob("linuxx64.efi.stub"), None)
    if stub is None:
        raise BuildError("the UKI step left no systemd stub for the disk's UKI")
    disk_uki = stage / f"{spec.name}.disk.efi"
    vmod.disk_uki(stub, stage / "vmlinuz", loader, list(spec.kernel.cmdline), root, (tree / "usr/lib/os-release").read_bytes(),
                  kernel.version, disk_uki)
    return {**write_disks(stage, work, disk_uki, formats, epoch, verity=root), "disk_uki": disk_uki.name, "verity": vmod.HASH_FILE}


def write_disks(out: Path, work: Path, uki: Path, formats: Iterable[str], epoch: int,
                identity: DiskIdentity | None = None, verity: VerityRoot | None = None) -> dict[str, str]:
    """Write the wanted disk formats into `out`; returns {format: file name} for the manifest's boot map.
    `uki` goes onto the ESP; `identity` (default: from `uki` itself) fixes GUIDs and sizes; `verity` adds
    the root and hash-tree partitions."""
    kinds = wanted(formats)
    if not kinds:
        return {}
    ident = identity or DiskIdentity.of(uki)
    scratch = work / "disk"
    scratch.mkdir(parents=True, exist_ok=True)
    esp = scratch / "esp.fat"
    table = ident.table(verity=verity)
    contents = [esp] + ([verity.data, verity.hash_tree] if verity is not None else [])
    part = table.partitions[0]
    fat.make_esp(esp, ident.esp_size, {ESP_PATH: uki}, ident.volume_id, epoch, hidden_sectors=part.first_lba,
                 scratch=scratch / "fat")
    raw = out / FILES["disk"] if "disk" in kinds else scratch / FILES["disk"]
    gpt.write_disk(raw, table, contents)
    if "qcow2" in kinds:
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", QCOW2_OPTIONS, raw, out / FILES["qcow2"]],
            what="qemu-img convert")
    if "vhd" in kinds:
        vhd.write_fixed_vhd(raw, out / FILES["vhd"], epoch, ident.digest)
    if "gcp" in kinds:
        big = ident.table(GCP_MULTIPLE, verity)  # streamed into the archive: the 1 GiB disk.raw is never written out
        targz.write_targz(out / FILES["gcp"], "disk.raw", big.size, gpt.disk_chunks(big, contents), epoch, GZIP_LEVEL)
    shutil.rmtree(scratch, ignore_errors=True)
    return {k: FILES[k] for k in kinds}


# ---- explaining differences (verify-reproducible) --------------------------------------------------------

def explain(name: str, a: Path, b: Path, scratch: Path) -> list[str]:
    """What differs between two builds of disk artifact `name`: the GPT, the ESP's files, or the container."""
    if name == FILES["disk"]:
        return _explain_raw(a, b, scratch)
    if name == FILES["qcow2"]:
        r = run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", a, b], check=False, what="qemu-img compare")
        if r.returncode == 0:
            return ["the virtual disks are identical: only qcow2 metadata (header, tables) differs"]
        said = " ".join((r.stdout or b"").decode(errors="replace").split())[:200]
        return [f"the virtual disks differ (see disk.raw): qemu-img compare: {said}"]
    if name == FILES["vhd"]:
        fa, fb = vhd.read_footer(a), vhd.read_footer(b)
        diffs = [f"VHD footer {k}: {getattr(fa, k)} != {getattr(fb, k)}" for k in fa.__dataclass_fields__ if getattr(fa, k) != getattr(fb, k)]
        return diffs or ["the footers are equal: the disk content differs (compare disk.raw)"]
    return []


def _explain_raw(a: Path, b: Path, scratch: Path) -> list[str]:
    ga, gb = gpt.read_gpt(a), gpt.read_gpt(b)
    out = []
    if ga.disk_guid != gb.disk_guid:
        out.append(f"GPT disk GUID {ga.disk_guid} != {gb.disk_guid}")
    if ga.partitions != gb.partitions:
        out.append(f"GPT partitions {ga.partitions} != {gb.partitions}")
    if out or not ga.partitions:
        return out
    (la, fa), (lb, fb) = (_esp_files(d, ga.partitions[0], scratch / tag) for d, tag in ((a, "a"), (b, "b")))
    out += [f"ESP listing, first build only: {line}" for line in la if line not in lb]
    out += [f"ESP listing, second build only: {line}" for line in lb if line not in la]
    for path in sorted(set(fa) | set(fb)):
        if fa.get(path) != fb.get(path):
            out.append(f"ESP {path}: content {fa.get(path, 'missing')} != {fb.get(path, 'missing')}")
    return out or ["same GPT, ESP listing (names, sizes, dates) and file contents: the difference is in FAT metadata"]


def _esp_files(disk_path: Path, esp: gpt.Partition, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """(mdir listing lines, {path: content digest}) of the ESP (mtools, no mount)."""
    scratch.mkdir(parents=True, exist_ok=True)
    img = scratch / "esp.fat"
    with open(disk_path, "rb") as f, open(img, "wb") as o:
        f.seek(esp.offset)
        o.write(f.read(esp.size))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC", "LC_ALL": "C"}
    listing = run(["mdir", "-/", "-i", img, "::/"], env=env, what="mdir").stdout.decode(errors="replace")
    lines, where = [], "::/"
    for ln in listing.splitlines():
        if ln.startswith("Directory for "):
            where = ln.removeprefix("Directory for ").strip()
        elif ln.startswith(" ") or not ln.strip() or ln.split()[0] in (".", ".."):
            continue  # volume header, totals, self and parent entries
        else:
            lines.append(f"{where.rstrip('/')}/{' '.join(ln.split())}")
    names = run(["mdir", "-/", "-b", "-i", img, "::/"], env=env, what="mdir").stdout.decode(errors="replace").split()
    digests = {}
    for entry in sorted(n for n in names if n.startswith("::") and not n.endswith("/")):
        data = run(["mtype", "-i", img, entry], env=env, check=False, what="mtype").stdout
        digests[entry[2:]] = f"sha256:{hashlib.sha256(data).hexdigest()[:16]} ({len(data)} bytes)"
    return lines, digests
