"""`sealbox build`: spec → bootstrap → lock → kernel → configure → strip → normalise → artifacts → manifest.

All artifacts are written into a staging directory beside the output and swapped in only when every
step succeeded (util.atomic.staged_dir), so a failed or interrupted build never leaves a partial or
stale artifact at the output path. The work tree lives in a temporary directory that is always removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealbox.builder import manifest as mf
from sealbox.builder.bootstrap import bootstrap
from sealbox.builder.cache import DEFAULT_CACHE, DebCache
from sealbox.builder.configure import configure
from sealbox.builder.kernel import extract_kernel_deb, extract_vmlinux, install_modules
from sealbox.builder.loader import build_loader
from sealbox.builder.lock import Lock, as_manifest, check_against_lock, lock_from, read_lock, write_lock
from sealbox.builder.pipeline import Pipeline, Progress
from sealbox.builder.sources import resolve_sources
from sealbox.builder.strip import link_check, strip_tree
from sealbox.errors import BuildError
from sealbox.formats.compress import zstd_writer
from sealbox.formats.cpio import write_cpio
from sealbox.formats.ext4 import make_ext4
from sealbox.spec.load import LoadedSpec
from sealbox.util import atomic

STUB_PACKAGE = "systemd-boot-efi"
LOADER_PACKAGE = "busybox-static"


@dataclass
class BuildOptions:
    output: Path | None = None  # default: ./build/<name>
    lock_path: Path | None = None  # default: beside the spec (<spec-dir>/sealbox.lock) or build/<name>.sealbox.lock
    update_lock: bool = False
    no_cache: bool = False
    cache_dir: Path = DEFAULT_CACHE
    work_base: Path | None = None
    keep_work: bool = False
    progress: Progress | None = None


@dataclass
class BuildResult:
    output: Path
    manifest: dict[str, Any]
    up_to_date: bool
    lock_path: Path
    lock_written: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    work: Path | None = None
    stripped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.output), "name": self.manifest["name"], "up_to_date": self.up_to_date,
            "build_key": self.manifest["build_key"], "lock": str(self.lock_path), "lock_written": self.lock_written,
            "artifacts": self.manifest["artifacts"], "steps": self.steps, "stripped_bytes": self.stripped,
        }


def default_output(loaded: LoadedSpec) -> Path:
    return Path("build") / loaded.spec.name


def default_lock_path(loaded: LoadedSpec, output: Path) -> Path:
    if loaded.spec_path is not None:
        return loaded.spec_path.resolve().parent / "sealbox.lock"
    return output.resolve().parent / f"{loaded.spec.name}.sealbox.lock"


def _clamp_mtimes(tree: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.lstat(p).st_mtime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))


def build_image(loaded: LoadedSpec, opts: BuildOptions) -> BuildResult:
    # the caller's umask must not reach file modes (ours or mmdebstrap's): fix it for the whole build
    old_umask = os.umask(0o022)
    try:
        return _build_image(loaded, opts)
    finally:
        os.umask(old_umask)


def _build_image(loaded: LoadedSpec, opts: BuildOptions) -> BuildResult:
    spec = loaded.spec
    epoch = spec.epoch
    output = (opts.output or default_output(loaded)).absolute()
    lock_path = (opts.lock_path or default_lock_path(loaded, output)).absolute()
    pipe = Pipeline(progress=opts.progress)
    lock = None if opts.update_lock else read_lock(lock_path)
    if lock is not None and lock.suite != spec.distribution.suite:
        raise BuildError(f"{lock_path}: lock is for suite {lock.suite!r} but the spec asks for {spec.distribution.suite!r}",
                         hint="rebuild with --update-lock")
    sources = resolve_sources(spec.distribution)
    tools = mf.tool_versions()
    spec_digest = loaded.digest()

    # warm rebuild: same spec, lock and tools -> the existing output is the result
    if lock is not None and not opts.no_cache:
        key = mf.build_key(spec_digest, lock.digest_input(), loaded.profiles, tools)
        existing = pipe.step("check-cache", lambda: mf.up_to_date(output, key))
        if existing is not None:
            return BuildResult(output, existing, True, lock_path, False, pipe.summary())

    if os.geteuid() != 0:
        raise BuildError("building an image needs root (mmdebstrap --mode=root, chroot, device nodes)", hint="run as root")
    work_base = opts.work_base or Path(os.environ.get("SEALBOX_WORK_DIR", "/var/tmp"))
    work_base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sealbox-build-", dir=work_base))
    tree = work / "tree"
    cache = DebCache(opts.cache_dir, enabled=not opts.no_cache)
    wanted_formats = set(spec.output.formats)
    extras_wanted = [spec.kernel.package]
    if "uki" in wanted_formats:
        extras_wanted.append(STUB_PACKAGE)
    if "ext4" in wanted_formats:
        extras_wanted.append(LOADER_PACKAGE)
    try:
        with atomic.staged_dir(output) as stage:
            boot = pipe.step("bootstrap", lambda: bootstrap(spec, sources, tree, work, cache, lock, extras_wanted,
                                                          epoch, work / "mmdebstrap.log"))

            def do_lock() -> tuple[Lock, bool]:
                if lock is not None:
                    check_against_lock(lock, boot.installed, boot.extras, lock_path)
                    return lock, False
                return lock_from(spec.distribution.suite, boot.installed, boot.extras), True  # written on success

            final_lock, lock_written = pipe.step("lock", do_lock)
            key = mf.build_key(spec_digest, final_lock.digest_input(), loaded.profiles, tools)

            def do_kernel():
                kfiles = extract_kernel_deb(boot.extra_files[boot.kernel_package], work / "kernel")
                shutil.copyfile(kfiles.vmlinuz, stage / "vmlinuz")
                (stage / "vmlinux").write_bytes(extract_vmlinux(kfiles.vmlinuz.read_bytes()))
                mods = install_modules(kfiles, sorted(set(spec.kernel.modules) | set(spec.kernel.load)), tree)
                return kfiles, mods

            kfiles, modules = pipe.step("kernel", do_kernel)
            pipe.step("configure", lambda: configure(tree, loaded, spec.kernel.load, epoch))
            stripped = pipe.step("strip", lambda: strip_tree(tree, spec.strip))
            pipe.step("link-check", lambda: link_check(tree))
            pipe.step("normalise", lambda: _clamp_mtimes(tree, epoch))
            level = spec.output.compression_level

            def do_initrd() -> None:
                with zstd_writer(stage / "initrd.cpio.zst", level) as w:
                    write_cpio(tree, w, epoch)

            boot_files = {"vmlinuz": "vmlinuz", "vmlinux": "vmlinux"}
            pipe.step("initrd", do_initrd, skip="initrd" not in wanted_formats and "uki" not in wanted_formats)
            if "initrd" in wanted_formats or "uki" in wanted_formats:
                boot_files["initrd"] = "initrd.cpio.zst"
            fs_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"sealbox:{spec.name}:{spec_digest}")
            pipe.step("rootfs", lambda: make_ext4(tree, stage / "rootfs.ext4", fs_uuid, epoch, spec.output.ext4_extra_mib),
                      skip="ext4" not in wanted_formats)
            pipe.step("loader", lambda: build_loader(boot.extra_files[LOADER_PACKAGE], kfiles, work, stage / "loader.cpio.zst",
                                                     epoch, level), skip="ext4" not in wanted_formats)
            if "ext4" in wanted_formats:
                boot_files.update(rootfs="rootfs.ext4", loader="loader.cpio.zst")
            cmdline = " ".join(spec.kernel.cmdline)

            def do_uki() -> dict[str, Any]:
                from sealbox.formats.uki import build_uki

                stub_dir = work / "stub"
                from sealbox.util.run import run

                run(["dpkg-deb", "-x", boot.extra_files[STUB_PACKAGE], stub_dir])
                stub = next(stub_dir.rglob("linuxx64.efi.stub"), None)
                if stub is None:
                    raise BuildError(f"{STUB_PACKAGE} has no linuxx64.efi.stub")
                osrel = (tree / "usr/lib/os-release").read_bytes()
                return build_uki(stub, stage / "vmlinuz", stage / "initrd.cpio.zst", cmdline, osrel, kfiles.version,
                                 stage / f"{spec.name}.efi")

            pipe.step("uki", do_uki, skip="uki" not in wanted_formats)
            if "uki" in wanted_formats:
                boot_files["uki"] = f"{spec.name}.efi"
                tools = {**tools, STUB_PACKAGE: boot.extras[STUB_PACKAGE].version}

            def do_manifest() -> dict[str, Any]:
                mf.file_mode_world_readable(stage)
                names = sorted(os.listdir(stage))
                m = {
                    "schema": mf.SCHEMA, "name": spec.name, "build_key": key, **mf.spec_record(loaded, spec_digest), "epoch": epoch,
                    "inputs": {"sources": sources.lines(), "snapshot": spec.distribution.snapshot or None,
                               "lock_sha256": hashlib.sha256(final_lock.digest_input().encode()).hexdigest()},
                    "packages": as_manifest(boot.installed, "installed"),
                    "downloads": as_manifest(boot.extras, "downloaded"),
                    "kernel": {"package": boot.kernel_package, "version": kfiles.version, "cmdline": list(spec.kernel.cmdline),
                               "modules": modules, "load": list(spec.kernel.load)},
                    "boot": boot_files, "tools": tools,
                    "artifacts": mf.artifact_entries(stage, names),
                }
                atomic.write_json(stage / mf.MANIFEST, m)
                return m

            manifest = pipe.step("manifest", do_manifest)
        if lock_written:
            write_lock(lock_path, final_lock)
    finally:
        if not opts.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    result = BuildResult(output, manifest, False, lock_path, lock_written, pipe.summary(), work if opts.keep_work else None)
    result.stripped = stripped  # host-dependent (logs, caches): reported, not recorded in the manifest
    return result
