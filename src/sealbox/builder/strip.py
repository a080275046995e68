"""Remove what a sandbox never uses, then prove nothing still needed was removed (ELF link check)."""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
import struct
from collections.abc import Iterator
from pathlib import Path

from sealbox.builder.intree import Tree
from sealbox.errors import BuildError
from sealbox.formats import elf
from sealbox.spec.model import Strip

# Each group is a switch in [strip]; paths are globs inside the image (usr-merged layout, `path_glob` rules): a
# pattern that matches a directory removes all of it, a keep pattern that matches a directory keeps all of it.
GROUPS: dict[str, list[str]] = {
    "docs": ["/usr/share/doc/*/*", "/usr/share/info", "/usr/share/lintian", "/usr/share/bug", "/usr/share/common-licenses"],
    "man": ["/usr/share/man"],
    "locales": ["/usr/share/locale", "/usr/share/i18n", "/usr/lib/x86_64-linux-gnu/gconv", "/usr/bin/localedef"],
    "perl": ["/usr/bin/perl*", "/usr/lib/x86_64-linux-gnu/perl*", "/usr/share/perl*", "/usr/share/perl5"],
    "package_manager": [
        "/usr/bin/dpkg*", "/usr/sbin/dpkg-*", "/usr/bin/apt*", "/usr/lib/apt", "/usr/lib/dpkg", "/usr/share/dpkg",
        "/var/lib/dpkg/info", "/var/lib/dpkg/*-old", "/var/lib/dpkg/alternatives", "/var/lib/dpkg/triggers",
        "/var/lib/dpkg/updates", "/var/cache/debconf", "/usr/share/debconf", "/usr/bin/debconf*", "/usr/sbin/update-*",
        "/usr/bin/update-alternatives", "/usr/share/pam-configs", "/usr/sbin/pam-auth-update", "/usr/share/debianutils",
        "/usr/share/base-files/*.md5sums", "/usr/lib/x86_64-linux-gnu/libapt-*", "/etc/apt", "/var/lib/apt",
    ],
    "zoneinfo": ["/usr/share/zoneinfo/*"],
    "extra_tools": [
        "/usr/sbin/useradd", "/usr/sbin/usermod", "/usr/sbin/userdel", "/usr/sbin/groupadd", "/usr/sbin/groupmod",
        "/usr/sbin/groupdel", "/usr/sbin/newusers", "/usr/sbin/chpasswd", "/usr/sbin/chgpasswd", "/usr/sbin/vipw",
        "/usr/sbin/vigr", "/usr/sbin/grpck", "/usr/sbin/pwck", "/usr/sbin/groupmems", "/usr/sbin/grpconv",
        "/usr/sbin/grpunconv", "/usr/sbin/pwconv", "/usr/sbin/pwunconv", "/usr/sbin/cppw", "/usr/sbin/cpgr",
        "/usr/bin/chage", "/usr/bin/chfn", "/usr/bin/chsh", "/usr/bin/gpasswd", "/usr/bin/expiry", "/usr/bin/passwd",
        "/usr/bin/ssh-keyscan", "/usr/bin/ssh-add", "/usr/bin/ssh-agent", "/usr/lib/openssh/ssh-pkcs11-helper",
        "/usr/lib/openssh/ssh-sk-helper", "/usr/lib/openssh/ssh-keysign", "/usr/sbin/tc", "/usr/sbin/devlink",
        "/usr/sbin/rdma", "/usr/sbin/bridge", "/usr/sbin/arpd", "/usr/sbin/dcb", "/usr/sbin/tipc", "/usr/sbin/vdpa", "/usr/lib/x86_64-linux-gnu/tc",
        "/usr/sbin/fdisk", "/usr/sbin/sfdisk", "/usr/sbin/cfdisk", "/usr/sbin/mkswap", "/usr/sbin/swaplabel",
        "/usr/sbin/mkfs*", "/usr/sbin/fsck*", "/usr/sbin/zramctl", "/usr/bin/partx", "/usr/sbin/ldconfig",
        "/usr/lib/systemd/systemd-networkd*", "/usr/bin/networkctl", "/usr/bin/systemd-analyze", "/usr/bin/systemd-repart",
        "/usr/bin/systemd-cryptenroll", "/usr/lib/systemd/systemd-cryptsetup", "/usr/lib/systemd/systemd-veritysetup",
        "/usr/lib/systemd/systemd-integritysetup",  # libmvec is not named: it goes as unused unless a program links it
        "/usr/lib/x86_64-linux-gnu/security/pam_userdb.so",  # libdb goes with it, as unused, unless a package needs it
        # clients and tools a sandbox guest does not run (the host talks to it, not the other way round)
        "/usr/bin/ssh", "/usr/bin/scp", "/usr/bin/sftp", "/usr/bin/slogin", "/usr/bin/ssh-copy-id", "/usr/bin/ssh-argv0",
        "/etc/ssh/moduli", "/usr/bin/lsipc", "/usr/bin/lslogins", "/usr/bin/lsirq", "/usr/bin/irqtop", "/usr/bin/chmem",
        "/usr/bin/lsmem", "/usr/bin/ipcmk", "/usr/bin/ipcrm", "/usr/bin/ipcs", "/usr/bin/choom", "/usr/bin/fincore",
        "/usr/bin/utmpdump", "/usr/bin/wall", "/usr/bin/scriptlive", "/usr/bin/scriptreplay", "/usr/sbin/wipefs",
        "/usr/sbin/fstrim", "/usr/sbin/swapon", "/usr/sbin/swapoff", "/usr/sbin/blkdiscard", "/usr/sbin/blkzone",
        "/usr/sbin/ctrlaltdel", "/usr/sbin/isosize", "/usr/sbin/readprofile", "/usr/sbin/rtcwake", "/usr/sbin/hwclock",
        "/usr/sbin/chcpu", "/usr/sbin/ldattach", "/usr/sbin/fsfreeze", "/usr/sbin/dmsetup", "/usr/sbin/dmstats",
        "/usr/sbin/blkdeactivate", "/usr/sbin/rtacct", "/usr/sbin/rtmon", "/usr/sbin/genl", "/usr/sbin/zic",
        "/usr/sbin/iconvconfig", "/usr/sbin/installkernel", "/usr/lib/x86_64-linux-gnu/cryptsetup",
        "/usr/lib/x86_64-linux-gnu/engines-3", "/usr/share/bash-completion", "/usr/share/zsh", "/usr/bin/tic", "/usr/bin/toe", "/usr/bin/infocmp",
        "/usr/bin/infotocap", "/usr/bin/captoinfo", "/usr/bin/tabs", "/usr/bin/bootctl", "/usr/bin/kernel-install",
        "/usr/lib/kernel", "/usr/bin/systemd-dissect", "/usr/bin/systemd-sysext", "/usr/lib/systemd/systemd-measure",
        "/usr/lib/systemd/systemd-growfs", "/usr/lib/systemd/systemd-makefs", "/usr/lib/systemd/systemd-fsck*",
        "/usr/lib/systemd/systemd-hibernate-resume", "/usr/lib/systemd/systemd-sleep", "/usr/lib/systemd/systemd-backlight",
        "/usr/lib/systemd/systemd-rfkill", "/usr/lib/systemd/systemd-quotacheck", "/usr/lib/systemd/systemd-pcrphase",
        "/usr/lib/systemd/systemd-volatile-root", "/usr/lib/systemd/systemd-sysroot-fstab-check",
        "/usr/lib/systemd/systemd-network-generator", "/usr/lib/systemd/systemd-xdg-autostart-condition",
        # generators run at every boot; these only serve features a sandbox image does not have
        "/usr/lib/systemd/system-generators/systemd-cryptsetup-generator",
        "/usr/lib/systemd/system-generators/systemd-veritysetup-generator",
        "/usr/lib/systemd/system-generators/systemd-integritysetup-generator",
        "/usr/lib/systemd/system-generators/systemd-hibernate-resume-generator",
        "/usr/lib/systemd/system-generators/systemd-gpt-auto-generator",
        "/usr/lib/systemd/system-generators/systemd-rc-local-generator",
        "/usr/lib/systemd/system-generators/systemd-sysv-generator",
        "/usr/lib/systemd/system-generators/systemd-run-generator",
        "/usr/lib/systemd/system-generators/systemd-system-update-generator",
        "/usr/lib/systemd/user-generators/*", "/usr/lib/systemd/system-environment-generators/*",
    ],
}

# Libraries nobody links but that are loaded at run time (dlopen): never pruned as "unused".
DLOPENED = ["libgcc_s.so*", "libnss_*", "libpthread.so*", "libdl.so*", "librt.so*", "libutil.so*", "libanl.so*",
            "libresolv.so*", "libpam.so*", "libpamc.so*", "libpam_misc.so*", "libcrypt.so*"]
LIB_DIR = "/usr/lib/x86_64-linux-gnu"

# Always removed: caches, logs, per-host and per-boot state, anything secret or random.
ALWAYS = [
    "/var/lib/apt/lists/*", "/var/cache/apt/*", "/var/cache/ldconfig/aux-cache", "/var/log/*", "/var/tmp/*", "/tmp/*",  # noqa: S108 globs inside the image
    "/etc/ssh/ssh_host_*", "/var/lib/systemd/random-seed", "/var/lib/dbus/machine-id", "/etc/*-", "/etc/.pwd.lock",
    "/var/lib/systemd/catalog/database", "/usr/lib/udev/hwdb.bin", "/etc/udev/hwdb.bin",
    "/root/.bash_history", "/var/lib/systemd/deb-systemd-*", "/var/lib/systemd/timers", "/var/cache/private",
    "/var/lib/dpkg/lock*", "/var/cache/debconf/*-old", "/var/lib/sgml-base/*", "/etc/apt/preferences.d/sealbox-lock.pref",
]
# Never removed by a group (the C.UTF-8 locale, copyright files, UTC).
KEEP = ["/usr/share/doc/*/copyright", "/usr/lib/locale/C.utf8*", "/usr/share/zoneinfo/Etc/UTC",
        "/usr/share/zoneinfo/UTC", "/usr/share/zoneinfo/tzdata.zi"]


def elf_files(tree: Path) -> Iterator[tuple[Path, bytes]]:
    """(path, content) of every regular ELF file in the tree (symlinks skipped)."""
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
                f.seek(0)
                yield path, f.read()


def unused_libraries(tree: Path) -> list[str]:
    """Shared libraries in the main library dir that no program, PAM/NSS module or plugin can reach.

    Roots: every ELF with a program interpreter (executables) and every ELF outside the library dir itself:
    PAM modules, OpenSSL providers and plugins in its subdirectories, and the plugins other programs load from
    elsewhere (Xorg's modules, Python's extensions). Reachability follows DT_NEEDED by soname.
    """
    with Tree(tree) as t:  # links are resolved as the image sees them, never on the build host
        libdir = t.resolve(LIB_DIR)
        if libdir is None or not libdir.is_dir():
            return []
        elves: dict[Path, list[str]] = {}
        roots: list[Path] = []
        for path, data in elf_files(tree):
            info = elf_needed(data)
            elves[path] = info[0] if info else []
            if b"/lib64/ld-linux" in data[:4096] or path.parent != libdir:
                roots.append(path)
        soname = {p.name: p for p in libdir.iterdir()}
        for d in {p.parent for p in elves}:
            for p in d.iterdir():
                soname.setdefault(p.name, p)
        seen: set[Path] = set()
        todo = list(roots)
        while todo:
            real = t.resolve("/" + str(todo.pop().relative_to(tree)))
            if real is None or real in seen:
                continue
            seen.add(real)
            todo += [soname[n] for n in elves.get(real, []) if n in soname]
        unused = []
        for p in sorted(libdir.iterdir()):
            if p.name.startswith("lib") and ".so" in p.name and not any(fnmatch.fnmatchcase(p.name, k) for k in DLOPENED) \
                    and t.resolve("/" + str(p.relative_to(tree))) not in seen and (p.is_symlink() or p in elves):
                unused.append("/" + str(p.relative_to(tree)))
        return unused


def path_glob(path: str, pattern: str) -> bool:
    """Shell-like path glob: `*`, `?` and `[...]` stay within one path component, a `**` component spans any number."""
    return _glob_parts(tuple(path.split("/")), _split(pattern))


@functools.lru_cache(maxsize=4096)
def _split(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("/"))


def _glob_parts(parts: tuple[str, ...], pat: tuple[str, ...]) -> bool:
    if "**" not in pat:  # the common case: same depth, component by component
        return len(parts) == len(pat) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pat, strict=True))
    i = pat.index("**")
    head, tail = pat[:i], pat[i + 1:]
    if len(parts) < len(head) or not all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, head, strict=False)):
        return False
    rest = parts[len(head):]
    return any(_glob_parts(rest[k:], tail) for k in range(len(rest) + 1))


@functools.lru_cache(maxsize=256)
def _index(patterns: tuple[str, ...]) -> tuple[dict[int, list[tuple[str, ...]]], list[tuple[str, ...]]]:
    """Patterns by depth (one without `**` matches only paths of its own depth: most need not be tried) and the
    patterns with `**`."""
    by_depth: dict[int, list[tuple[str, ...]]] = {}
    deep: list[tuple[str, ...]] = []
    for pattern in patterns:
        parts = _split(pattern)
        if "**" in parts:
            deep.append(parts)
        else:
            by_depth.setdefault(len(parts), []).append(parts)
    return by_depth, deep


def _match(rel: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """path_glob(rel, p) for any p in patterns."""
    by_depth, deep = _index(tuple(patterns))
    parts = tuple(rel.split("/"))
    return any(_glob_parts(parts, p) for p in by_depth.get(len(parts), ())) or any(_glob_parts(parts, p) for p in deep)


def strip_tree(tree: Path, strip: Strip) -> dict[str, int]:
    """Delete matching paths, then the links left pointing at them; returns bytes removed per group."""
    patterns = {g: tuple(globs) for g, globs in GROUPS.items() if getattr(strip, g)}
    patterns["always"] = tuple(ALWAYS)
    patterns["paths"] = tuple(strip.paths)
    keep = tuple(KEEP + list(strip.keep))
    removed: dict[str, int] = {g: 0 for g in patterns}
    gone: set[str] = set()  # image paths removed, for the links that pointed at them
    for dirpath, dirnames, filenames in os.walk(tree, topdown=True):
        base = "" if Path(dirpath) == tree else "/" + os.path.relpath(dirpath, tree)
        for name in sorted(dirnames + filenames):
            rel = f"{base}/{name}"
            if _match(rel, keep):  # a kept directory is kept whole
                if name in dirnames:
                    dirnames.remove(name)
                continue
            group = next((g for g, p in patterns.items() if _match(rel, p)), None)
            if group is None:
                continue
            path = Path(dirpath) / name
            removed[group] += _remove(path, tree, keep, gone)
            if name in dirnames and not path.exists():
                dirnames.remove(name)
    if strip.unused_libraries:  # after the groups: removing programs can orphan their libraries
        libs = [tree / p.lstrip("/") for p in unused_libraries(tree) if not _match(p, keep)]
        removed["unused_libraries"] = sum(_remove(p, tree, keep, gone) for p in libs if p.is_symlink() or p.exists())
    removed["links"] = _remove_links_to(tree, gone, keep)
    return removed


# What the bootstrap leaves only for its own downloads: removed as soon as it is done (builder/steps.py), so the
# bootstrap layer of the build cache does not carry it; the strip step would remove exactly the same (ALWAYS).
APT_STATE = ["/var/lib/apt/lists/*", "/var/cache/apt/*"]


def remove_early(tree: Path, patterns: list[str], strip: Strip) -> int:
    """Remove what `patterns` (each "<directory>/*", a subset of ALWAYS) match now, honouring the same keep rules
    as strip_tree; returns the bytes removed."""
    keep = KEEP + list(strip.keep)
    removed = 0
    for pattern in patterns:
        parent = tree / pattern.removesuffix("/*").lstrip("/")
        if parent.is_symlink() or not parent.is_dir():
            continue
        for child in sorted(parent.iterdir()):
            rel = "/" + child.relative_to(tree).as_posix()
            if path_glob(rel, pattern) and not _match(rel, keep):
                removed += _remove(child, tree, keep, set())
    return removed


def _removed_early(path: str) -> bool:
    """A path below what remove_early took away before strip_tree ran (the links to it dangle the same way)."""
    return any(path.startswith(p.removesuffix("*")) for p in APT_STATE)


def _remove(path: Path, tree: Path, keep: list[str] | tuple[str, ...], gone: set[str]) -> int:
    if path.is_dir() and not path.is_symlink():
        size = 0
        for child in sorted(path.iterdir()):
            rel = "/" + str(child.relative_to(tree))
            if not _match(rel, keep):
                size += _remove(child, tree, keep, gone)
        if not any(path.iterdir()):
            path.rmdir()
            gone.add("/" + str(path.relative_to(tree)))
        return size
    size = path.lstat().st_size
    path.unlink()
    gone.add("/" + str(path.relative_to(tree)))
    return size


def _remove_links_to(tree: Path, gone: set[str], keep: list[str] | tuple[str, ...]) -> int:
    """Symlinks left dangling because their target was stripped (e.g. the OpenSSL hash link of a stripped
    certificate, named after the build host): they point at nothing and can make two builds differ. Links that
    dangle in the image by design (/etc/resolv.conf -> /run/...) point at paths never stripped and stay."""
    size = 0
    for _ in range(MAX_SYMLINKS):  # a link to a removed link goes in the next pass
        found = []
        for dirpath, dirnames, filenames in os.walk(tree):
            base = "/" + os.path.relpath(dirpath, tree) if Path(dirpath) != tree else "/"
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if not path.is_symlink():
                    continue
                rel = posixpath.join(base, name)
                target = posixpath.normpath(posixpath.join(base, os.readlink(path)))
                if (target in gone or _removed_early(target)) and in_image(tree, rel) is None and not _match(rel, keep):
                    found.append(path)
        if not found:
            break
        size += sum(_remove(p, tree, keep, gone) for p in found)
    return size


# --- ELF link check ---------------------------------------------------------------------------

LIB_DIRS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/lib64", "/lib/x86_64-linux-gnu", "/lib", "/lib64"]
MAX_SYMLINKS = 40


def elf_needed(data: bytes) -> tuple[list[str], list[str]] | None:
    """(DT_NEEDED names, RUNPATH/RPATH dirs) of a dynamically linked ELF64 LE file, None otherwise.

    Anything truncated or inconsistent is "not a dynamic ELF" (None): the check reads every file of the
    image, including data files that merely start with the ELF magic.
    """
    try:
        return _elf_needed(data)
    except (struct.error, ValueError, IndexError, OverflowError):
        return None


def _elf_needed(data: bytes) -> tuple[list[str], list[str]] | None:
    if not elf.is_elf64_le(data):
        return None
    segs = elf.segments(data)
    loads = [(s.vaddr, s.offset, s.filesz) for s in segs if s.type == elf.PT_LOAD]
    dynamics = [(s.offset, s.filesz) for s in segs if s.type == elf.PT_DYNAMIC]
    if not dynamics:
        return None
    dynamic = dynamics[-1]  # the last one, as ld.so reads them

    def v2o(vaddr: int) -> int | None:
        for va, off, size in loads:
            if va <= vaddr < va + size:
                return vaddr - va + off
        return None

    entries = []
    for pos in range(dynamic[0], min(dynamic[0] + dynamic[1], len(data)) - 15, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab = next((v2o(v) for t, v in entries if t == 5), None)
    if strtab is None:
        return None

    def cstr(off: int) -> str:
        return data[strtab + off:data.index(b"\0", strtab + off)].decode(errors="replace")

    needed = [cstr(v) for t, v in entries if t == 1]
    paths = [d for t, v in entries if t in (15, 29) for d in cstr(v).split(":") if d]
    return needed, paths


def in_image(tree: Path, path: str) -> Path | None:
    """`path` as the guest sees it, resolved inside `tree`: '..' stops at the image root and absolute symlinks
    mean the image's own paths, so nothing on the build host is ever looked at. None if it does not exist."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            resolved = resolved[:-1]
            continue
        here = tree.joinpath(*resolved, part)
        if here.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not os.path.lexists(here):
            return None
        resolved.append(part)
    return tree.joinpath(*resolved)


def link_check(tree: Path) -> None:
    """Fail if any ELF file in the image needs a shared library the image no longer has."""
    # a library's needs may be met by what its loading executable already mapped through its RUNPATH
    # (systemd's private libraries), so every RUNPATH directory in the image counts as a search dir
    elves: list[tuple[Path, list[str], list[str]]] = []
    for path, data in elf_files(tree):
        info = elf_needed(data)
        if info is None:
            continue
        origin = "/" + str(path.parent.relative_to(tree))
        elves.append((path, info[0], [r.replace("$ORIGIN", origin) for r in info[1]]))
    search = LIB_DIRS + sorted({r for _p, _n, runpaths in elves for r in runpaths})
    dirs = [d for d in (in_image(tree, s) for s in search) if d is not None and d.is_dir()]
    found: dict[str, bool] = {}

    def present(lib: str) -> bool:
        if lib not in found:  # a soname link whose file was stripped does not count
            found[lib] = any((f := in_image(tree, f"/{d.relative_to(tree)}/{lib}")) is not None and f.is_file() for d in dirs)
        return found[lib]

    problems = [f"/{path.relative_to(tree)} needs {lib}" for path, needed, _r in elves for lib in needed if not present(lib)]
    if problems:
        from sealbox.builder.missing_libs import hint, read_status

        missing: dict[str, list[str]] = {}
        for path, needed, _r in elves:
            for lib in needed:
                if not present(lib):
                    missing.setdefault(lib, []).append(f"/{path.relative_to(tree)}")
        raise BuildError(
            f"shared libraries needed in the image are missing: {'; '.join(sorted(problems)[:4])}"
            + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""),
            hint=hint(missing, read_status(tree)),
        )
