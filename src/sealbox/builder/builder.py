"""`sealbox build`: spec → the named steps of steps.py → one commit of output and lock.

All artifacts are written into a staging directory beside the output and swapped in, together with the
lock, only when every step succeeded (output.OutputTransaction), so a failed, interrupted or killed build
never leaves a partial or stale artifact at the output path. The work tree lives in its own locked
directory that is always removed (or swept by the next build if this one was SIGKILLed).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sealbox.builder import disk, oci, steps
from sealbox.builder import manifest as mf
from sealbox.builder.cache import DEFAULT_CACHE, DebCache
from sealbox.builder.interrupt import signals_raise
from sealbox.builder.layers import KINDS, LayerCache
from sealbox.builder.lock import LockFile, lock_file_path, read_lock_file, write_lock_file
from sealbox.builder.output import OutputTransaction, WorkDir, held_by_tools, sweep_work_dirs
from sealbox.builder.pipeline import Pipeline, Progress, boundary
from sealbox.builder.sources import resolve_sources
from sealbox.errors import BuildError, SealboxError
from sealbox.spec.load import LoadedSpec

PER_LINUX = 0
DEFAULT_WORK_BASE = "/var/tmp"  # noqa: S108 - a base for mkdtemp-made, flocked build directories, never a fixed name


@dataclass
class BuildOptions:
    output: Path | None = None  # default: ./build/<name>
    lock_path: Path | None = None  # default: <spec>.lock beside the spec, or build/<name>.lock for the built-in default
    update_lock: bool = False
    no_cache: bool = False
    cache_dir: Path = DEFAULT_CACHE
    layer_cache: Path | None = None  # default: <cache_dir>/layers
    reuse: frozenset[str] = frozenset(KINDS)  # build-cache kinds this build may read (it writes all of them)
    work_base: Path | None = None
    keep_work: bool = False
    progress: Progress | None = None
    notice: Callable[[str], None] | None = None  # one-line notes for the user (waiting for another build ...)


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
    cache: list[dict[str, Any]] = field(default_factory=list)  # what the build cache did (builder/layers.py)

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.output), "name": self.manifest["name"], "up_to_date": self.up_to_date,
            "build_key": self.manifest["build_key"], "lock": str(self.lock_path), "lock_written": self.lock_written,
            "artifacts": self.manifest["artifacts"], "steps": self.steps, "stripped_bytes": self.stripped, "cache": self.cache,
        }


def default_output(loaded: LoadedSpec) -> Path:
    return Path("build") / loaded.spec.name


def default_lock_path(loaded: LoadedSpec, output: Path) -> Path:
    return lock_file_path(loaded.spec_path, loaded.spec.name, output)


def work_base(opts: BuildOptions) -> Path:
    return opts.work_base or Path(os.environ.get("SEALBOX_WORK_DIR") or DEFAULT_WORK_BASE)


def reset_personality() -> None:
    """Run the build, and every tool it starts, in the plain Linux execution domain.

    A caller under `setarch --uname-2.6` (reprotest's kernel variation) or `linux32` passes its personality on to
    every child: libc6's maintainer script then sees a 2.6 kernel and refuses to install. Personality is process
    state the caller set, like the umask; the build fixes both.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.personality(ctypes.c_ulong(PER_LINUX)) == -1:
        raise BuildError(f"cannot reset the process personality: {os.strerror(ctypes.get_errno())}")


def build_image(loaded: LoadedSpec, opts: BuildOptions) -> BuildResult:
    """Build, or find the output up to date. SIGINT/SIGTERM/SIGHUP raise interrupt.Interrupted after cleanup."""
    reset_personality()
    # the caller's umask must not reach file modes (ours or mmdebstrap's): fix it for the whole build
    old_umask = os.umask(0o022)
    try:
        with signals_raise():
            return _build(loaded, opts)
    finally:
        os.umask(old_umask)


def _build(loaded: LoadedSpec, opts: BuildOptions) -> BuildResult:
    spec = loaded.spec
    output = (opts.output or default_output(loaded)).absolute()
    lock_path = (opts.lock_path or default_lock_path(loaded, output)).absolute()
    pipe = Pipeline(progress=opts.progress)
    boundary("check-cache")
    with OutputTransaction(output, lock_path, opts.notice) as txn:
        lock_file = read_lock_file(lock_path) or LockFile()
        section = None if opts.update_lock else lock_file.section_for(loaded, lock_path)
        sources = resolve_sources(spec.distribution)
        tools = {**mf.tool_versions(), **disk.tool_versions(spec.output.formats), **oci.tool_versions(spec.output.formats)}
        spec_digest = loaded.digest()
        # warm rebuild: same spec, lock and tools -> the existing output is the result
        if section is not None and not opts.no_cache:
            key = mf.build_key(spec_digest, section.digest_input(), loaded.profiles, tools)
            existing = pipe.step("check-cache", lambda: mf.up_to_date(output, key))
            if existing is not None:
                return BuildResult(output, existing, True, lock_path, False, pipe.summary())
        if os.geteuid() != 0:
            raise BuildError("building an image needs root (mmdebstrap --mode=root, chroot, device nodes)", hint="run as root")
        txn.sweep()
        sweep_work_dirs(work_base(opts))
        work = WorkDir(work_base(opts))
        pipe.log = work.path / "build.log"
        layers = LayerCache(opts.layer_cache or opts.cache_dir / "layers", enabled=not opts.no_cache, reuse=opts.reuse)
        ctx = steps.BuildContext(loaded=loaded, sources=sources, tools=tools, spec_digest=spec_digest, lock=section,
                                 lock_path=lock_path, work=work.path, stage=txn.make_stage(),
                                 cache=DebCache(opts.cache_dir, enabled=not opts.no_cache), log=pipe.log, layers=layers)
        try:
            with held_by_tools(work.lock_fd):
                try:
                    for step in steps.STEPS:
                        pipe.step(step.name, partial(step.run, ctx), skip=not step.wanted(ctx))
                except SealboxError as e:
                    failed = txn.keep_failed_log(pipe.log, str(e))
                    hint = f"{e.hint}; full log: {failed}" if e.hint else f"full log: {failed}"
                    raise BuildError(e.message, hint=hint) from None
            final_lock = ctx.final_lock
            assert final_lock is not None
            boundary("commit")
            txn.commit((lambda: write_lock_file(lock_path, lock_file.with_section(final_lock))) if ctx.lock_written else None)
        finally:
            work.close(keep=opts.keep_work)
    boundary("end")
    result = BuildResult(output, ctx.manifest, False, lock_path, ctx.lock_written, pipe.summary(),
                         work.path if opts.keep_work else None)
    result.stripped = ctx.stripped  # host-dependent (logs, caches): reported, not recorded in the manifest
    result.cache = ctx.layers.log
    return result
