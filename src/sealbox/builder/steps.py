"""The build as a list of named steps, each a small function of the shared BuildContext.

restore → bootstrap → lock → save-bootstrap → kernel → configure → strip → link-check → normalise → save-tree
→ initrd → rootfs → loader → uki → disk → oci → manifest. A container image (output.formats = ["oci"]) skips the
kernel and gets a container's tree (builder/container.py); the steps that need a kernel are the VM formats', which
it cannot have.
Every step writes only into the work tree or the staging directory; builder.py runs them (pipeline.py times
them, names the one that failed, and offers the test hook that stops the build at a step boundary) and commits
the staging directory and the lock in one transaction (output.py) only when all succeeded. A step runs only if
its `wanted` predicate holds when the build reaches it.

The build cache (builder/layers.py, builder/reuse.py): `restore` puts the deepest cached layer for this build's
inputs into the work tree, so `bootstrap` (bootstrap layer found) or everything up to `normalise` (tree layer
found) is skipped; `save-bootstrap` and `save-tree` store what this build made. The kernel, loader and each
initrd segment (builder/segments.py) are cached by their own inputs. A cached layer is a faithful copy of what
the steps produce, so every artifact is byte-identical to a cold build's.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealbox.builder import bob_image, bootmem, disk, reuse, segments
from sealbox.builder import manifest as mf
from sealbox.builder import oci as oci_step
from sealbox.builder.bootstrap import BootstrapResult, bootstrap
from sealbox.builder.cache import DebCache
from sealbox.builder.configure import configure
from sealbox.builder.kernel import KernelFiles
from sealbox.builder.layers import Entry, LayerCache
from sealbox.builder.lock import Lock, as_manifest, check_against_lock, lock_from, selection_of
from sealbox.builder.reuse import LOADER_PACKAGE
from sealbox.builder.sources import Sources
from sealbox.builder.strip import APT_STATE, link_check, remove_early, strip_tree
from sealbox.errors import BuildError
from sealbox.formats.ext4 import make_ext4
from sealbox.spec.load import LoadedSpec
from sealbox.spec.model import needs_kernel
from sealbox.util import atomic
from sealbox.util.run import run

STUB_PACKAGE = "systemd-boot-efi"
__all__ = ["LOADER_PACKAGE", "STEPS", "STUB_PACKAGE", "BuildContext", "Step"]


@dataclass
class BuildContext:
    """Inputs fixed before the first step, and what each step hands to the next."""

    loaded: LoadedSpec
    sources: Sources
    tools: dict[str, str]
    spec_digest: str
    lock: Lock | None  # the lock section for this profile set (None: resolve afresh)
    lock_path: Path
    work: Path
    stage: Path
    cache: DebCache
    log: Path  # the build's transcript (tool output); kept as the failed log if a step fails
    layers: LayerCache
    boot: BootstrapResult | None = None
    restored: str | None = None  # the layer restore put into the work tree: "tree", "bootstrap" or None
    layer_keys: dict[str, str] = field(default_factory=dict)
    kernel_version: str = ""
    kernel_entry: Entry | None = None  # the cached kernel, unpacked into the work directory only when needed
    segments: list[dict[str, Any]] = field(default_factory=list)
    final_lock: Lock | None = None
    lock_written: bool = False
    key: str = ""
    kfiles: KernelFiles | None = None
    modules: list[str] = field(default_factory=list)
    stripped: dict[str, int] = field(default_factory=dict)
    boot_files: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    oci: dict[str, Any] = field(default_factory=dict)  # what the manifest records about <name>.oci.tar

    @property
    def tree(self) -> Path:
        return self.work / "tree"

    @property
    def formats(self) -> set[str]:
        return set(self.loaded.spec.output.formats)

    def extras_wanted(self) -> list[str]:
        return selection_of(self.loaded).downloads

    @property
    def tree_needed(self) -> bool:
        """The configured tree is to be made (not restored from the build cache)."""
        return self.restored != "tree"

    def code(self) -> dict[str, str]:
        """Every builder module, as part of each build-cache key."""
        return {"sealbox": self.tools.get("sealbox", ""), "code": self.tools.get("sealbox-builder-code", "")}

    def need(self) -> BootstrapResult:
        if self.boot is None:
            raise BuildError("internal: a step ran before bootstrap")
        return self.boot


def do_restore(ctx: BuildContext) -> None:
    assert ctx.lock is not None
    reuse.restore(ctx, ctx.lock)


def do_bootstrap(ctx: BuildContext) -> None:
    spec = ctx.loaded.spec
    ctx.boot = bootstrap(spec, ctx.sources, ctx.tree, ctx.work, ctx.cache, ctx.lock, ctx.extras_wanted(), spec.epoch, ctx.log)
    remove_early(ctx.tree, APT_STATE, spec.strip)  # apt's lists: needed for the downloads above, never after


def do_lock(ctx: BuildContext) -> None:
    boot = ctx.boot
    assert boot is not None
    if ctx.lock is not None:
        check_against_lock(ctx.lock, boot.installed, boot.extras, ctx.lock_path)
        ctx.final_lock = ctx.lock
    else:  # written with the output, in the same transaction
        ctx.final_lock = lock_from(ctx.loaded.spec.distribution.suite, boot.installed, boot.extras, list(ctx.loaded.profiles),
                                   selection_of(ctx.loaded))
        ctx.lock_written = True
    ctx.key = mf.build_key(ctx.spec_digest, ctx.final_lock.digest_input(), ctx.loaded.profiles, ctx.tools)


def do_save_bootstrap(ctx: BuildContext) -> None:
    reuse.save_bootstrap(ctx)


def do_kernel(ctx: BuildContext) -> None:
    """vmlinuz and vmlinux into the stage; the modules the spec needs into the tree (unless it was restored)."""
    reuse.kernel_artifacts(ctx)
    if ctx.tree_needed:
        ctx.modules = reuse.modules(ctx)
    ctx.boot_files = {"vmlinuz": "vmlinuz", "vmlinux": "vmlinux"}


def do_configure(ctx: BuildContext) -> None:
    if not needs_kernel(ctx.formats):  # a container image: no guest protocol, no units (builder/container.py)
        from sealbox.builder.container import configure_container

        configure_container(ctx.tree, ctx.loaded, ctx.loaded.spec.epoch)
        return
    configure(ctx.tree, ctx.loaded, ctx.loaded.spec.kernel.load, ctx.loaded.spec.epoch)


def do_strip(ctx: BuildContext) -> None:
    ctx.stripped = strip_tree(ctx.tree, ctx.loaded.spec.strip)


def do_link_check(ctx: BuildContext) -> None:
    link_check(ctx.tree)


def do_normalise(ctx: BuildContext) -> None:
    """Every mtime newer than the epoch is clamped to it (older ones are kept, as the packages ship them)."""
    epoch = ctx.loaded.spec.epoch
    for dirpath, dirnames, filenames in os.walk(ctx.tree):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.lstat(p).st_mtime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)
    os.utime(ctx.tree, (epoch, epoch))


def do_save_tree(ctx: BuildContext) -> None:
    reuse.save_tree(ctx)


def do_initrd(ctx: BuildContext) -> None:
    """initrd.cpio.zst as a few segments, each compressed on its own, the unchanged ones from the cache."""
    spec = ctx.loaded.spec
    ctx.segments = segments.write_initrd(ctx.tree, ctx.stage / "initrd.cpio.zst", spec.epoch, spec.output.compression_level,
                                         [f.dest for f in spec.files], ctx.layers, ctx.code())
    ctx.boot_files["initrd"] = "initrd.cpio.zst"


def do_rootfs(ctx: BuildContext) -> None:
    spec = ctx.loaded.spec
    fs_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"sealbox:{spec.name}:{ctx.spec_digest}")
    make_ext4(ctx.tree, ctx.stage / "rootfs.ext4", fs_uuid, spec.epoch, spec.output.ext4_extra_mib)
    ctx.boot_files["rootfs"] = "rootfs.ext4"


def do_loader(ctx: BuildContext) -> None:
    reuse.loader(ctx)
    ctx.boot_files["loader"] = "loader.cpio.zst"


def do_uki(ctx: BuildContext) -> None:
    from sealbox.formats.uki import build_uki

    boot = ctx.need()
    spec = ctx.loaded.spec
    stub_dir = ctx.work / "stub"
    run(["dpkg-deb", "-x", boot.extra_files[STUB_PACKAGE], stub_dir], what=f"dpkg-deb -x {STUB_PACKAGE}")
    stub = next(stub_dir.rglob("linuxx64.efi.stub"), None)
    if stub is None:
        raise BuildError(f"{STUB_PACKAGE} has no linuxx64.efi.stub")
    osrel = (ctx.tree / "usr/lib/os-release").read_bytes()
    build_uki(stub, ctx.stage / "vmlinuz", ctx.stage / "initrd.cpio.zst", " ".join(spec.kernel.cmdline), osrel, ctx.kernel_version,
              ctx.stage / f"{spec.name}.efi")
    ctx.boot_files["uki"] = f"{spec.name}.efi"
    ctx.tools = {**ctx.tools, STUB_PACKAGE: boot.extras[STUB_PACKAGE].version}


def do_disk(ctx: BuildContext) -> None:
    """Bootable disk images carrying the UKI (builder/disk.py): disk, qcow2, vhd, gcp."""
    boot = ctx.need()
    spec = ctx.loaded.spec
    # only a verity root's loader reads the kernel's modules: otherwise the unpacked kernel is not needed
    kfiles = reuse.kernel_files(ctx) if spec.output.disk_root == "verity" else \
        KernelFiles(ctx.kernel_version, ctx.stage / "vmlinuz", None, ctx.work / "kernel-not-unpacked")
    ctx.boot_files.update(disk.build_step(ctx.stage, ctx.work, spec, ctx.tree, kfiles, boot.extra_files))


def do_oci(ctx: BuildContext) -> None:
    """The container image archive (builder/oci.py): <name>.oci.tar."""
    ctx.oci = oci_step.build_step(ctx.stage, ctx.work, ctx.loaded.spec, ctx.tree)


def do_manifest(ctx: BuildContext) -> None:
    boot = ctx.need()
    assert ctx.final_lock is not None
    spec = ctx.loaded.spec
    mf.file_mode_world_readable(ctx.stage)
    m = {
        "schema": mf.SCHEMA, "name": spec.name, "build_key": ctx.key, **mf.spec_record(ctx.loaded, ctx.spec_digest),
        "epoch": spec.epoch,
        "inputs": {"sources": ctx.sources.lines(), "snapshot": spec.distribution.snapshot or None,
                   "lock_sha256": hashlib.sha256(ctx.final_lock.digest_input().encode()).hexdigest()},
        "packages": as_manifest(boot.installed, "installed"),
        "downloads": as_manifest(boot.extras, "downloaded"),
        "kernel": {"package": boot.kernel_package, "version": ctx.kernel_version, "cmdline": list(spec.kernel.cmdline),
                   "modules": ctx.modules, "load": list(spec.kernel.load)} if needs_kernel(ctx.formats) else None,
        "boot": ctx.boot_files, "tools": ctx.tools, "min_memory_mib": bootmem.min_memory_mib(ctx.stage, ctx.boot_files),
        "artifacts": mf.artifact_entries(ctx.stage, sorted(os.listdir(ctx.stage))),
        **({"oci": ctx.oci} if ctx.oci else {}),
        **({"access": bob_image.manifest_record(spec.bob)} if spec.bob.enable else {}),
    }
    if ctx.segments:
        m["initrd_segments"] = ctx.segments
    atomic.write_json(ctx.stage / mf.MANIFEST, m)
    ctx.manifest = m


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[BuildContext], None]
    wanted: Callable[[BuildContext], bool] = lambda _ctx: True


def _tree_needed(ctx: BuildContext) -> bool:
    return ctx.tree_needed


STEPS: list[Step] = [
    Step("restore", do_restore, lambda c: c.layers.enabled and c.lock is not None),
    Step("bootstrap", do_bootstrap, lambda c: c.restored is None),
    Step("lock", do_lock),
    Step("save-bootstrap", do_save_bootstrap, lambda c: c.layers.enabled and c.restored is None),
    Step("kernel", do_kernel, lambda c: needs_kernel(c.formats)),
    Step("configure", do_configure, _tree_needed),
    Step("strip", do_strip, _tree_needed),
    Step("link-check", do_link_check, _tree_needed),
    Step("normalise", do_normalise, _tree_needed),
    Step("save-tree", do_save_tree, lambda c: c.layers.enabled and c.tree_needed),
    Step("initrd", do_initrd, lambda c: bool(c.formats & {"initrd", "uki"})),
    Step("rootfs", do_rootfs, lambda c: "ext4" in c.formats),
    Step("loader", do_loader, lambda c: "ext4" in c.formats),
    Step("uki", do_uki, lambda c: "uki" in c.formats),
    Step("disk", do_disk, lambda c: bool(disk.wanted(c.formats))),
    Step("oci", do_oci, lambda c: "oci" in c.formats),
    Step("manifest", do_manifest),
]
