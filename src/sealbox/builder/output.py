"""Where a build writes, and how it commits: locks, staging, one atomic swap with the lock file, leftovers.

- Builds that share an output directory or a lock directory run one at a time: each holds a flock on those
  directories (taken in a fixed order, so two builds cannot deadlock) from its start to its commit.
- Artifacts are written into a staging directory beside the output. The commit writes the lock file and then
  swaps the staging directory in with one renameat2(RENAME_EXCHANGE), with signals held back in between:
  the output path always holds a complete tree, and the lock that goes with it is on disk first.
- The work tree lives in its own directory under the work base, flocked by its build (and by every tool the
  build runs, which inherit the lock file). A build that died (even by SIGKILL) leaves its work tree,
  staging directory or temp files unlocked; the next build sweeps them: the staging directories of the
  output it holds the lock for, and any unlocked work directory under its work base.
- A failed build keeps its log as `.<name>.failed.log` beside the output (replaced by the next build, removed
  by a successful one) and creates nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sealbox.builder.interrupt import deferred
from sealbox.errors import BuildError
from sealbox.util import atomic
from sealbox.util.flock import try_exclusive

LOCK_WAIT = 3600.0  # seconds a build waits for another build of the same output or lock to finish
WORK_PREFIXES = ("sealbox-build-", "sealbox-repro-")
NEW_PREFIX = ".sealbox-new-"  # a work dir before its lock is taken; swept only when clearly abandoned
NEW_GRACE = 3600.0
LOCK_FILE = ".lock"


def remove_tree(path: Path) -> bool:
    """Remove `path` without ever leaving its file system (a mount inside is left alone, and so is its parent).
    True if it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        path.unlink(missing_ok=True)
        return True
    for _ in range(3):  # a file system with unstable readdir order (disorderfs) can miss entries in one pass
        ok = True
        for entry in os.scandir(path):
            est = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(est.st_mode):
                ok = est.st_dev == st.st_dev and remove_tree(Path(entry.path)) and ok
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        if not ok:
            return False
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
    return False


# --- work directories ---------------------------------------------------------------------------------

class WorkDir:
    """A fresh directory under `base`, flocked for as long as this build (or a tool it started) lives."""

    def __init__(self, base: Path, prefix: str = "sealbox-build-") -> None:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=NEW_PREFIX, dir=base))
        self.lock_fd = os.open(tmp / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        self.path = base / (prefix + tmp.name.removeprefix(NEW_PREFIX))
        os.rename(tmp, self.path)  # only now can a sweeper see it, and it is locked

    def close(self, keep: bool = False) -> None:
        try:
            if keep:
                (self.path / "KEPT").write_text("kept with --keep-work; remove it yourself\n")
            else:
                remove_tree(self.path)
        except OSError:
            pass  # never mask the build's own result; the next build sweeps what is left once the lock is free
        finally:
            os.close(self.lock_fd)


def sweep_work_dirs(base: Path) -> list[Path]:
    """Remove work directories of builds that are gone (their lock is free); returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        if not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith(NEW_PREFIX):
            if time.time() - entry.stat(follow_symlinks=False).st_mtime > NEW_GRACE and remove_tree(path):
                removed.append(path)
            continue
        if not entry.name.startswith(WORK_PREFIXES) or (path / "KEPT").exists():
            continue
        try:
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # not ours, or not yet/no longer a build directory
        try:
            if try_exclusive(fd) and remove_tree(path):
                removed.append(path)
        finally:
            os.close(fd)
    return removed


# --- the output transaction ------------------------------------------------------------------------

def failed_log_path(output: Path) -> Path:
    return output.parent / f".{output.name}.failed.log"


class OutputTransaction:
    """Locks for `output` and `lock_path`, a staging directory, and the commit that publishes both."""

    def __init__(self, output: Path, lock_path: Path, notice: Callable[[str], None] | None = None) -> None:
        self.output, self.lock_path, self.notice = output, lock_path, notice
        self.created_parent = False
        self.fds: list[int] = []
        self.stage: Path | None = None

    def __enter__(self) -> OutputTransaction:
        if not self.output.parent.exists():
            self.output.parent.mkdir(parents=True)
            self.created_parent = True
        dirs: dict[tuple[int, int], Path] = {}
        for d in (self.output.parent, self.lock_path.parent):
            if d.is_dir():
                st = d.stat()
                dirs[(st.st_dev, st.st_ino)] = d
        try:
            for key in sorted(dirs):  # a fixed order: two builds can never wait for each other in a cycle
                self._lock(dirs[key])
        except BaseException:
            self._release()
            raise
        return self

    def _lock(self, d: Path) -> None:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.fds.append(fd)
        if try_exclusive(fd):
            return
        if self.notice:
            self.notice(f"waiting for another build using {d} to finish")
        deadline = time.monotonic() + LOCK_WAIT
        while not try_exclusive(fd):
            if time.monotonic() > deadline:
                raise BuildError(f"another build has held {d} for over {LOCK_WAIT:.0f}s", hint="is a build stuck? check with ps")
            time.sleep(0.2)

    def sweep(self) -> None:
        """Leftovers of dead builds of this output and lock: we hold both locks, so nothing here is in use."""
        parent = self.output.parent
        for p in parent.glob(f".{self.output.name}.staging.*"):  # only this output's: other writers may share the dir
            remove_tree(p)
        old = sorted(parent.glob(f".{self.output.name}.old.*"))  # a two-rename swap cut short (no RENAME_EXCHANGE)
        if old and not os.path.lexists(self.output):
            os.rename(old[-1], self.output)
        for p in [*old, *parent.glob(f".{self.output.name}.old.*")]:
            if p.exists():
                remove_tree(p)
        for p in self.lock_path.parent.glob(f".{self.lock_path.name}.*.tmp"):
            p.unlink(missing_ok=True)

    def make_stage(self) -> Path:
        self.stage = Path(tempfile.mkdtemp(dir=self.output.parent, prefix=f".{self.output.name}.staging."))
        os.chmod(self.stage, 0o755)  # mkdtemp makes it 0700; the output is an ordinary public directory
        return self.stage

    def commit(self, write_lock: Callable[[], None] | None) -> None:
        """The lock file first, then the output, with signals held back between them; the old output goes last."""
        assert self.stage is not None
        with deferred():
            if write_lock is not None:
                write_lock()
            old = atomic.swap_in(self.stage, self.output)
            self.stage = None
            failed_log_path(self.output).unlink(missing_ok=True)
        if old is not None:
            remove_tree(old)

    def keep_failed_log(self, log: Path, error: str) -> Path:
        dest = failed_log_path(self.output)
        body = log.read_bytes() if log.is_file() else b""
        atomic.write_bytes(dest, body + f"\nsealbox: error: {error}\n".encode())
        return dest

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if self.stage is not None:
                remove_tree(self.stage)
            if self.created_parent:
                with contextlib.suppress(OSError):  # only if nothing (not even a failed log) was left in it
                    self.output.parent.rmdir()
        finally:
            self._release()

    def _release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


@contextlib.contextmanager
def held_by_tools(fd: int) -> Iterator[None]:
    """Let the tools a build runs inherit its work-dir lock, so the lock lasts while any of them lives."""
    from sealbox.util.run import inherited_fds

    with inherited_fds((fd,)):
        yield

