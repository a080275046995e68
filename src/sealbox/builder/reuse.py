"""What a build takes from the build cache (builder/layers.py), and what it gives back: the step-side half.

Before bootstrap, with a lock section (without one the packages are not known until mmdebstrap resolves them),
the deepest cached layer for this build's exact inputs is restored into the work tree: the configured tree
(then kernel modules, configure, strip, link-check and normalise are skipped) or the bootstrapped tree (then
only mmdebstrap is). The downloaded .debs (kernel, stub, busybox) come from the .deb cache by their locked
sha256; if one is not there, nothing is restored and the bootstrap downloads it. A layer that cannot be
restored exactly is dropped from the cache and the build carries on from the layer below, or cold.

Keys: the bootstrap layer's is every input of mmdebstrap and the downloads (lock pins, distribution and the
sources it resolved to, packages, the dpkg path filters the strip switches set, the epoch, mmdebstrap's
version) plus every builder module; the tree layer's is that key plus the spec without its writer-only
settings (WRITER_ONLY), the content of its files[] and whether it is a container's tree. Kernel and loader
artifacts are keyed by the .debs they come from; the kernel modules an image needs (the closure of
kernel.modules and kernel.load, with the kernel's module lists) by the kernel .deb and that list, so a
rebuild installs them without unpacking the whole kernel package.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sealbox.builder.bootstrap import DPKG_EXCLUDES, BootstrapResult
from sealbox.builder.kernel import (
    KernelFiles,
    extract_kernel_deb,
    extract_vmlinux,
    install_modules,
    kernel_files_in,
    module_closure,
)
from sealbox.builder.layers import layer_key
from sealbox.builder.loader import build_loader
from sealbox.builder.lock import Installed, Lock, LockedPackage
from sealbox.builder.treearchive import restore_tree, store_tree
from sealbox.errors import BuildError
from sealbox.spec.model import needs_kernel

if TYPE_CHECKING:
    from sealbox.builder.steps import BuildContext

# settings only the writers read (file names and UUIDs, formats, compression, the UKI's command line): a change
# to them reuses the configured tree
WRITER_ONLY = ("name", "output", "kernel.cmdline")
LOADER_PACKAGE = "busybox-static"


class _Pinned(Protocol):
    version: str
    sha256: str


def pins(packages: Mapping[str, _Pinned], extras: Mapping[str, _Pinned]) -> dict[str, Any]:
    return {"packages": {n: [p.version, p.sha256] for n, p in sorted(packages.items())},
            "extras": {n: [p.version, p.sha256] for n, p in sorted(extras.items())}}


def bootstrap_key(ctx: BuildContext, pinned: dict[str, Any]) -> str:
    spec = ctx.loaded.spec
    return layer_key("bootstrap", {
        **ctx.code(), "mmdebstrap": ctx.tools.get("mmdebstrap", ""), "distribution": spec.distribution.model_dump(mode="json"),
        "sources": ctx.sources.lines(), "packages": sorted(set(spec.packages.include)),
        "dpkg_excludes": {g: bool(getattr(spec.strip, g)) for g in sorted(DPKG_EXCLUDES)}, "epoch": spec.epoch,
        "downloads": ctx.extras_wanted(), "pins": pinned,
    })


def tree_key(ctx: BuildContext, bootstrap: str) -> str:
    # output.formats is writer-only but for one bit: a container image (oci alone) gets a container's tree
    # (builder/container.py), every VM format the same VM tree
    return layer_key("tree", {"bootstrap": bootstrap, "spec": ctx.loaded.digest(omit=WRITER_ONLY),
                              "container": not needs_kernel(ctx.formats)})


def _installed(locked: Mapping[str, LockedPackage]) -> dict[str, Installed]:
    return {n: Installed(n, p.version, p.architecture, p.sha256, p.filename) for n, p in locked.items()}


def _valid_meta(kind: str, meta: dict[str, Any]) -> bool:
    ok = isinstance(meta.get("kernel_package"), str)
    if kind == "tree":
        ok = ok and isinstance(meta.get("modules"), list) and all(isinstance(m, str) for m in meta["modules"]) \
            and isinstance(meta.get("stripped"), dict)
    return ok


def restore(ctx: BuildContext, lock: Lock) -> None:
    """Restore the deepest cached layer for this build's inputs into the work tree, if there is one."""
    files = {}
    for name, p in lock.extras.items():
        got = ctx.cache.fetch(p.filename, p.sha256, ctx.work / "extras")
        if got is None:
            ctx.layers.log.append({"kind": "restore", "action": "skipped", "why": f"{p.filename} is not in the .deb cache", "seconds": 0.0})
            return
        files[name] = got
    bkey = bootstrap_key(ctx, pins(lock.packages, lock.extras))
    keys = {"bootstrap": bkey, "tree": tree_key(ctx, bkey)}
    for kind in ("tree", "bootstrap"):
        entry = ctx.layers.lookup(kind, keys[kind])
        if entry is None:
            continue
        try:
            if not _valid_meta(kind, entry.meta):
                raise BuildError(f"build cache: the {kind} entry's metadata is malformed")
            restore_tree(entry, ctx.tree)
        except BuildError as e:
            ctx.layers.log.append({"kind": kind, "action": "rejected", "why": e.message, "seconds": 0.0})
            ctx.layers.discard(kind, keys[kind])
            continue
        ctx.boot = BootstrapResult(_installed(lock.packages), _installed(lock.extras), files, entry.meta["kernel_package"])
        if kind == "tree":
            ctx.modules, ctx.stripped = list(entry.meta["modules"]), dict(entry.meta["stripped"])
        ctx.restored, ctx.layer_keys = kind, keys
        return


def save_bootstrap(ctx: BuildContext) -> None:
    boot = ctx.need()
    ctx.layer_keys["bootstrap"] = key = bootstrap_key(ctx, pins(boot.installed, boot.extras))
    store_tree(ctx.layers, "bootstrap", key, ctx.tree, {"kernel_package": boot.kernel_package})


def save_tree(ctx: BuildContext) -> None:
    boot = ctx.need()
    bkey = ctx.layer_keys.get("bootstrap") or bootstrap_key(ctx, pins(boot.installed, boot.extras))
    store_tree(ctx.layers, "tree", tree_key(ctx, bkey), ctx.tree,
               {"kernel_package": boot.kernel_package, "modules": ctx.modules, "stripped": ctx.stripped})


# --- kernel and loader artifacts ------------------------------------------------------------------

def _kernel_key(ctx: BuildContext) -> str:
    boot = ctx.need()
    return layer_key("kernel", {**ctx.code(), "deb": boot.extras[boot.kernel_package].sha256})


def kernel_artifacts(ctx: BuildContext) -> None:
    """vmlinuz and vmlinux into the staging directory, from the cache or from the kernel package."""
    key = _kernel_key(ctx)
    entry = ctx.layers.lookup("kernel", key)
    if entry is not None:
        try:
            entry.copy_to("vmlinuz", ctx.stage / "vmlinuz")
            entry.copy_to("vmlinux", ctx.stage / "vmlinux")
            ctx.kernel_version, ctx.kernel_entry = str(entry.meta["version"]), entry
            return
        except (BuildError, KeyError) as e:
            ctx.layers.log.append({"kind": "kernel", "action": "rejected", "why": str(e), "seconds": 0.0})
            ctx.layers.discard("kernel", key)
    kf = kernel_files(ctx)
    shutil.copyfile(kf.vmlinuz, ctx.stage / "vmlinuz")
    (ctx.stage / "vmlinux").write_bytes(extract_vmlinux(kf.vmlinuz.read_bytes()))
    ctx.kernel_version = kf.version
    store_tree(ctx.layers, "kernel", key, ctx.work / "kernel", {"version": kf.version},
               extra={"vmlinuz": ctx.stage / "vmlinuz", "vmlinux": ctx.stage / "vmlinux"})


def kernel_files(ctx: BuildContext) -> KernelFiles:
    """The kernel package unpacked in the work directory (from the cache when it has it), made on first use."""
    if ctx.kfiles is not None:
        return ctx.kfiles
    boot = ctx.need()
    dest = ctx.work / "kernel"
    if ctx.kernel_entry is not None:
        try:
            restore_tree(ctx.kernel_entry, dest)
            ctx.kfiles = kernel_files_in(dest, boot.kernel_package)
            return ctx.kfiles
        except BuildError as e:
            ctx.layers.log.append({"kind": "kernel", "action": "rejected", "why": e.message, "seconds": 0.0})
            ctx.layers.discard("kernel", ctx.kernel_entry.key)
    ctx.kfiles = extract_kernel_deb(boot.extra_files[boot.kernel_package], dest)
    return ctx.kfiles


META_FILES = ("modules.order", "modules.builtin", "modules.builtin.modinfo")  # what install_modules copies besides modules


def modules(ctx: BuildContext) -> list[str]:
    """Install the modules the spec needs into the tree (kernel.install_modules), from the cached subset of the
    kernel's modules when there is one: the same files, so the same tree and the same depmod output."""
    spec = ctx.loaded.spec
    boot = ctx.need()
    wanted = sorted(set(spec.kernel.modules) | set(spec.kernel.load))
    key = layer_key("modules", {**ctx.code(), "deb": boot.extras[boot.kernel_package].sha256, "wanted": wanted})
    entry = ctx.layers.lookup("modules", key)
    if entry is not None:
        try:
            restore_tree(entry, ctx.work / "modules")
            subset = KernelFiles(str(entry.meta["version"]), ctx.stage / "vmlinuz", None, ctx.work / "modules")
            return install_modules(subset, wanted, ctx.tree)
        except (BuildError, KeyError) as e:
            ctx.layers.log.append({"kind": "modules", "action": "rejected", "why": str(e), "seconds": 0.0})
            ctx.layers.discard("modules", key)
    kf = kernel_files(ctx)
    names = install_modules(kf, wanted, ctx.tree)
    if ctx.layers.enabled:  # the closure and the module lists: all install_modules reads of the kernel
        copy = ctx.work / "modules-subset"
        for src in [*module_closure(wanted, kf.modules_root), *(kf.modules_root / m for m in META_FILES)]:
            if src.exists():
                dest = copy / src.relative_to(kf.modules_root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
        copy.mkdir(exist_ok=True)
        store_tree(ctx.layers, "modules", key, copy, {"version": kf.version})
    return names


def loader(ctx: BuildContext) -> None:
    """loader.cpio.zst into the staging directory, from the cache or built from busybox and the kernel's modules."""
    boot = ctx.need()
    spec = ctx.loaded.spec
    out = ctx.stage / "loader.cpio.zst"
    key = layer_key("loader", {**ctx.code(), "busybox": boot.extras[LOADER_PACKAGE].sha256,
                               "kernel": boot.extras[boot.kernel_package].sha256, "level": spec.output.compression_level,
                               "epoch": spec.epoch})
    entry = ctx.layers.lookup("loader", key)
    if entry is not None:
        try:
            entry.copy_to("loader", out)
            return
        except BuildError as e:
            ctx.layers.log.append({"kind": "loader", "action": "rejected", "why": e.message, "seconds": 0.0})
            ctx.layers.discard("loader", key)
    build_loader(boot.extra_files[LOADER_PACKAGE], kernel_files(ctx), ctx.work, out, spec.epoch, spec.output.compression_level)
    ctx.layers.store("loader", key, {"loader": out}, {})
