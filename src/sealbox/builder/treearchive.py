"""An image tree as a build-cache blob (a GNU tar archive): stored and restored exactly, never through a link.

What must survive, because the writers read it: owners and groups by number, modes, mtimes to the nanosecond
(the clamp to the epoch, cpio, mkfs.ext4), hard links (cpio and mke2fs keep them), device nodes, symlinks as
links (absolute ones too: Debian's /var/run -> /run), extended attributes and ACLs (mkfs.ext4 -d copies them).

tar runs with the tree as its directory and never dereferences (no -h): a link is stored as a link, and
--one-file-system keeps it on the tree's file system. A restore goes into a fresh, empty directory, from a blob
whose sha256 was checked on the descriptor tar reads; GNU tar refuses member names with '..' and creates links
that point outside (absolute, or with '..') only after every other member, so nothing is written through a link.

A listing digest (each entry's path, type, mode, owner, size, mtime_ns, device number, link target, hard-link
group and extended attributes) is recorded with the blob and recomputed after a restore: a restored tree that
differs in any of them is refused, so nothing tar failed to carry over can make a cached build differ from a
cold one. Sockets cannot be archived: a tree holding one is not stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from sealbox.builder.layers import Entry, LayerCache, TempBlob
from sealbox.errors import BuildError, ToolError
from sealbox.formats.cpio import walk_sorted
from sealbox.util.run import inherited_fds, run

BLOB = "tree.tar"
TAR_TIMEOUT = 1800.0
COMMON = ["--numeric-owner", "--acls", "--xattrs", "--xattrs-include=*"]


def listing(root: Path) -> tuple[str, list[str]]:
    """(digest of every entry's metadata, paths that cannot be archived)."""
    h = hashlib.sha256()
    unstorable: list[str] = []
    first_of: dict[tuple[int, int], str] = {}
    for rel in walk_sorted(root):
        path = root / rel if rel != "." else root
        st = os.lstat(path)
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            unstorable.append(rel)
        group = first_of.setdefault((st.st_dev, st.st_ino), rel) if stat.S_ISREG(mode) and st.st_nlink > 1 else ""
        xattrs = sorted((n, os.getxattr(path, n, follow_symlinks=False).hex()) for n in os.listxattr(path, follow_symlinks=False))
        record: list[Any] = [
            rel, mode, st.st_uid, st.st_gid, st.st_size if stat.S_ISREG(mode) else 0, st.st_mtime_ns,
            st.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0, os.readlink(path) if stat.S_ISLNK(mode) else "",
            group, st.st_nlink if stat.S_ISREG(mode) else 0, xattrs,
        ]
        h.update(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode(errors="surrogateescape") + b"\n")
    return h.hexdigest(), unstorable


def store_tree(cache: LayerCache, kind: str, key: str, root: Path, meta: dict[str, Any],
               extra: dict[str, TempBlob | bytes | Path] | None = None) -> bool:
    """Store `root` (and `extra` blobs) as the `kind` entry for `key`; False if the tree cannot be stored
    faithfully (a socket in it)."""
    if not cache.enabled:
        return False
    digest, unstorable = listing(root)
    if unstorable:
        cache.log.append({"kind": kind, "action": "not stored", "why": f"{unstorable[0]} is a socket", "seconds": 0.0})
        return False
    with cache.new_blob() as tmp, inherited_fds((tmp.fd,)):
        run(["tar", "--create", f"--file={tmp.proc_path}", f"--directory={root}", "--format=posix", *COMMON, "--sparse",
             "--one-file-system", "--pax-option=delete=atime,delete=ctime", "."], timeout=TAR_TIMEOUT, what=f"tar (storing the {kind} layer)")
        cache.store(kind, key, {**(extra or {}), BLOB: tmp}, {**meta, "listing": digest})
    return True


def restore_tree(entry: Entry, dest: Path) -> None:
    """Recreate the stored tree at `dest` (which must not exist). BuildError if the blob or the result is not
    exactly what was stored; `dest` is then removed again."""
    from sealbox.builder.output import remove_tree

    dest.mkdir(mode=0o700)
    try:
        with entry.open(BLOB) as fd, inherited_fds((fd,)):
            try:
                run(["tar", "--extract", f"--file=/proc/self/fd/{fd}", f"--directory={dest}", "--same-owner",
                     "--preserve-permissions", *COMMON], timeout=TAR_TIMEOUT, what=f"tar (restoring the {entry.kind} layer)")
            except ToolError as e:
                raise BuildError(f"build cache: {e.message}") from None
        digest, _ = listing(dest)
        if digest != entry.meta.get("listing"):
            raise BuildError(f"build cache: the restored {entry.kind} layer differs from the tree that was stored")
    except BaseException:
        remove_tree(dest)
        raise
