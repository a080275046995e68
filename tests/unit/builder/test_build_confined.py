"""The build never writes (or reads) outside the image tree: every path inside the tree resolves as if the tree were /.

The oracle for "as if the tree were /" is the kernel itself: a forked child chroots into the tree and resolves
the same path. A canary directory outside the tree must never change.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from build_testlib import elf_dynamic, write_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealbox.builder.configure import copy_files, lock_accounts, write_in_tree
from sealbox.builder.kernel import KernelFiles, install_modules
from sealbox.builder.strip import link_check, strip_tree, unused_libraries
from sealbox.errors import BuildError, SealboxError
from sealbox.spec import load_spec
from sealbox.spec.model import Strip

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot (the oracle) and chown need root")


def chrooted(tree: Path, fn_name: str, path: str) -> str | None:
    """Run os.<fn_name>(path) (realpath/readlink/read) in a child chrooted into `tree`; its result or None on error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            os.chroot(tree)
            os.chdir("/")
            if fn_name == "read":
                with open(path, "rb") as f:
                    out = b"F" + f.read()
            elif fn_name == "readlink":
                out = b"F" + os.fsencode(os.readlink(path))
            elif fn_name == "isdir":
                out = b"F" + (b"1" if os.path.isdir(path) else b"0")  # a link to a directory is one, as in cp -r
            else:
                out = b"F" + os.fsencode(os.path.realpath(path))
            os.write(w, out)
        except BaseException:  # noqa: BLE001 - report "error" to the parent, whatever it was
            os.write(w, b"E")
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data[1:].decode(errors="surrogateescape") if data[:1] == b"F" else None


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            body = os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(p.relative_to(root))] = f"{oct(st.st_mode)} {st.st_uid}:{st.st_gid} {body}"
    return out


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(tree, canary, spec dir): a minimal image tree, a canary directory outside it, an empty spec directory."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nsvc:x:1000:1000::/home/svc:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\nsvc:x:1000:\n")
    (tree / "etc/shadow").write_text("root:$6$hash:19000:0:99999:7:::\n")
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("host file\n")
    (canary / "libunused.so.1").write_bytes(elf_dynamic([]))
    (canary / "libunused.so").symlink_to("libunused.so.1")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    return tree, canary, spec_dir


def _spec(spec_dir: Path, entries: list[tuple[str, str]]):
    body = 'name = "t"\n' + "".join(f'[[files]]\nsource = "{s}"\ndest = "{d}"\n' for s, d in entries)
    (spec_dir / "t.toml").write_text(body)
    return load_spec(spec_dir / "t.toml")


def _copy(tree: Path, spec_dir: Path, entries: list[tuple[str, str]]) -> None:
    copy_files(tree, _spec(spec_dir, entries))


@needs_root
@pytest.mark.parametrize("in_image", [True, False], ids=["target-in-image", "dangling-in-image"])
@pytest.mark.parametrize("target", ["abs", "rel", "dotdot"])
def test_dest_through_a_symlink_in_the_tree_stays_inside(world, target: str, in_image: bool) -> None:
    """Debian's /var/run -> /run shape: a symlink in the tree pointing at a path that also exists on the host.
    Inside the image the link leads where a chroot says; if it dangles there, the entry fails, naming its key."""
    tree, canary, spec_dir = world
    before = snapshot(canary)
    link = {"abs": str(canary), "rel": "../" * 12 + str(canary).lstrip("/"), "dotdot": "/../../.." + str(canary)}[target]
    (tree / "var").mkdir()
    (tree / "var/run").symlink_to(link)
    if in_image:
        (tree / str(canary).lstrip("/")).mkdir(parents=True)
    (spec_dir / "x").write_text("payload\n")
    if in_image:
        _copy(tree, spec_dir, [("x", "/var/run/x")])
        assert chrooted(tree, "read", "/var/run/x") == "payload\n"
        assert (tree / str(canary).lstrip("/") / "x").read_text() == "payload\n"
    else:
        with pytest.raises(SealboxError, match=r"files\[0\]\.dest: cannot place '/var/run/x'"):
            _copy(tree, spec_dir, [("x", "/var/run/x")])
        assert chrooted(tree, "read", "/var/run/x") is None  # the chroot cannot open it either
    assert snapshot(canary) == before, "the build wrote outside the image tree"


@needs_root
def test_debian_var_run_link_lands_in_the_images_run(world) -> None:
    tree, _canary, spec_dir = world
    (tree / "run").mkdir()
    (tree / "var").mkdir()
    (tree / "var/run").symlink_to("/run")
    (spec_dir / "x").write_text("payload\n")
    _copy(tree, spec_dir, [("x", "/var/run/sealbox-confined-test")])
    assert (tree / "run/sealbox-confined-test").read_text() == "payload\n"
    assert chrooted(tree, "read", "/var/run/sealbox-confined-test") == "payload\n"


@needs_root
@pytest.mark.parametrize("kind", ["abs", "rel", "chain"])
def test_a_symlink_the_spec_copies_in_cannot_be_written_through(world, kind: str) -> None:
    tree, canary, spec_dir = world
    before = snapshot(canary)
    payload = spec_dir / "payload"
    payload.mkdir()
    target = {"abs": str(canary), "rel": "../../../../../../../../.." + str(canary), "chain": "hop"}[kind]
    (payload / "run").symlink_to(target)
    if kind == "chain":  # a chain of relative links, each climbing with ..
        (payload / "hop").symlink_to("../../../../../../.." + str(canary))
    (spec_dir / "x").write_text("through\n")
    with pytest.raises(SealboxError, match=r"files\[1\]\.dest"):  # the link dangles inside the image
        _copy(tree, spec_dir, [("payload", "/opt/p"), ("x", "/opt/p/run/x")])
    assert snapshot(canary) == before, "the build wrote through a spec-planted symlink to the host"
    (tree / str(canary).lstrip("/")).mkdir(parents=True)  # now the link leads somewhere inside the image
    _copy(tree, spec_dir, [("payload", "/opt/p"), ("x", "/opt/p/run/x")])
    assert snapshot(canary) == before
    assert chrooted(tree, "readlink", "/opt/p/run") == target
    assert chrooted(tree, "read", "/opt/p/run/x") == "through\n"
    assert (tree / str(canary).lstrip("/") / "x").read_text() == "through\n"


@needs_root
def test_a_directory_copied_onto_a_symlinked_directory_stays_inside(world) -> None:
    tree, canary, spec_dir = world
    before = snapshot(canary)
    (tree / "etc/app").symlink_to(str(canary))
    (tree / str(canary).lstrip("/")).mkdir(parents=True)
    src = spec_dir / "app"
    (src / "sub").mkdir(parents=True)
    (src / "sub/conf").write_text("c\n")
    (src / "top").write_text("t\n")
    (src / "back").symlink_to("../../../../../../.." + str(canary) + "/keep")
    _copy(tree, spec_dir, [("app", "/etc/app")])
    assert snapshot(canary) == before
    assert chrooted(tree, "read", "/etc/app/sub/conf") == "c\n"
    assert chrooted(tree, "read", "/etc/app/top") == "t\n"
    assert chrooted(tree, "readlink", "/etc/app/back") == "../../../../../../.." + str(canary) + "/keep"


@needs_root
def test_configure_writes_replace_symlinks_instead_of_following_them(world) -> None:
    tree, canary, _spec_dir = world
    before = snapshot(canary)
    (tree / "etc/hostname").symlink_to(str(canary / "keep"))
    write_in_tree(tree, "/etc/hostname", b"localhost\n", 0o644)
    assert snapshot(canary) == before
    assert not (tree / "etc/hostname").is_symlink() and (tree / "etc/hostname").read_text() == "localhost\n"


@needs_root
def test_account_locking_never_reads_or_writes_a_host_shadow(world) -> None:
    tree, canary, _spec_dir = world
    (canary / "shadow").write_text("host:$6$secret:1:0:99999:7:::\n")
    before = snapshot(canary)
    (tree / "etc/shadow").unlink()
    (tree / "etc/shadow").symlink_to(str(canary / "shadow"))
    spec = load_spec(None).spec
    with pytest.raises(SealboxError):  # the image's own /etc/shadow is missing: an error, not the host's file
        lock_accounts(tree, spec, 0)
    assert snapshot(canary) == before


@needs_root
def test_kernel_modules_are_installed_inside_a_symlinked_modules_dir(world, tmp_path: Path) -> None:
    tree, canary, _spec_dir = world
    before = snapshot(canary)
    mods = tmp_path / "kernel/lib/modules/6.1.0-test"
    write_module(mods, "kernel/drivers/virtio/virtio.ko")
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/modules").symlink_to(str(canary))
    (tree / str(canary).lstrip("/")).mkdir(parents=True)
    kernel = KernelFiles("6.1.0-test", tmp_path / "vmlinuz", None, mods)
    with pytest.raises(SealboxError):  # depmod is not in this synthetic tree
        install_modules(kernel, ["virtio"], tree)
    assert snapshot(canary) == before
    assert (tree / str(canary).lstrip("/") / "6.1.0-test/kernel/drivers/virtio/virtio.ko").is_file()


def _lib_tree(tree: Path) -> Path:
    lib = tree / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/prog").write_bytes(_exe(["libfoo.so.1"]))
    (lib / "libfoo.so.1.0").write_bytes(elf_dynamic([]))
    return lib


def _exe(needed: list[str]) -> bytes:
    # an executable: the pruning treats ELF files naming the program interpreter as roots
    return elf_dynamic(needed) + b"/lib64/ld-linux-x86-64.so.2\0"


def test_pruning_resolves_absolute_soname_links_inside_the_tree(world) -> None:
    """libfoo.so.1 -> /usr/lib/x86_64-linux-gnu/libfoo.so.1.0 means the image's file, not the host's path."""
    tree, _canary, _spec = world
    lib = _lib_tree(tree)
    (lib / "libfoo.so.1").symlink_to("/usr/lib/x86_64-linux-gnu/libfoo.so.1.0")
    assert "/usr/lib/x86_64-linux-gnu/libfoo.so.1.0" not in unused_libraries(tree)
    strip_tree(tree, Strip(unused_libraries=True, docs=False, man=False, locales=False, perl=False, package_manager=False,
                           zoneinfo=False, extra_tools=False))
    assert (lib / "libfoo.so.1.0").is_file()
    link_check(tree)


def test_pruning_never_touches_a_host_library_dir_the_tree_links_to(world) -> None:
    tree, canary, _spec = world
    before = snapshot(canary)
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/x86_64-linux-gnu").symlink_to(str(canary))
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/prog").write_bytes(_exe([]))
    strip_tree(tree, Strip(unused_libraries=True))
    assert snapshot(canary) == before


def test_link_check_does_not_count_host_libraries(world) -> None:
    tree, canary, _spec = world
    lib = _lib_tree(tree)
    (lib / "libfoo.so.1.0").unlink()
    (lib / "libfoo.so.1").symlink_to(str(canary / "libunused.so.1"))  # exists on the host, not in the image
    with pytest.raises(SealboxError, match="needs libfoo.so.1"):
        link_check(tree)


# --- fuzz: random files[] entries against a small synthetic tree full of links ------------------------------------

BUDGET = int(os.environ.get("SEALBOX_FUZZ_EXAMPLES", "60"))
NAMES = ["a", "b", "c", "l1", "l2", "x"]
TARGETS = ["/", "/a", "a", "..", "../..", "../../../..", "/b/../..", "c", "/nonexistent", "CANARY", "UP-CANARY", "/a/c/.."]

dests = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
entries = st.lists(st.tuples(st.sampled_from(["file", "dir"]), dests, st.sampled_from(TARGETS)), min_size=1, max_size=6)
links = st.lists(st.tuples(st.sampled_from(["l1", "l2", "a/l1", "b/l2", "a/c/l1"]), st.sampled_from(TARGETS)), max_size=4)


@needs_root
@settings(max_examples=BUDGET, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(links=links, entries=entries)
def test_fuzz_files_entries_never_leave_the_tree(tmp_path_factory: pytest.TempPathFactory, links, entries) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    tree, canary, spec_dir = base / "tree", base / "canary", base / "spec"
    for d in ("etc", "a/c", "b"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\n")
    canary.mkdir()
    (canary / "keep").write_text("host\n")
    (canary / "a").mkdir()
    spec_dir.mkdir()

    def target(t: str) -> str:
        return {"CANARY": str(canary), "UP-CANARY": "../" * 9 + str(canary).lstrip("/")}.get(t, t)

    for where, t in links:
        p = tree / where
        if not p.parent.is_dir() or p.is_symlink() or p.exists():
            continue
        p.symlink_to(target(t))
    outside = {p: snapshot(p) for p in (canary, spec_dir)}
    for i, (kind, dest, t) in enumerate(entries):
        if kind == "file":
            (spec_dir / f"f{i}").write_text(f"content {i}\n")
            src = f"f{i}"
        else:
            d = spec_dir / f"d{i}"
            d.mkdir()
            (d / "inner").write_text(f"inner {i}\n")
            (d / "ln").symlink_to(target(t))
            src = f"d{i}"
        loaded = _spec(spec_dir, [(src, dest)])
        outside[spec_dir] = snapshot(spec_dir)
        try:
            copy_files(tree, loaded)
        except SealboxError as e:
            assert "files[0]" in str(e) and "\n" not in str(e)
        else:  # what the kernel shows a chrooted process is what we meant to write
            if kind == "file":
                assert chrooted(tree, "read", dest) == f"content {i}\n"
            else:
                assert chrooted(tree, "isdir", dest) == "1"
                assert chrooted(tree, "read", dest + "/inner") == f"inner {i}\n"
                assert chrooted(tree, "readlink", dest + "/ln") == target(t)
        for p, snap in outside.items():
            assert snapshot(p) == snap, f"entry {i} ({kind} -> {dest}) changed {p} outside the tree"


def test_a_destination_through_the_link_it_replaces_is_refused(tmp_path: Path) -> None:
    """Found by the fuzz test: with /l -> /, files[].dest /l/l resolves its parent through l and then replaces l
    itself, so nothing is at /l/l afterwards (a chroot's cp fails there). Refused, naming the entry."""
    tree, spec_dir = tmp_path / "tree", tmp_path / "spec"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\n")
    spec_dir.mkdir()
    (tree / "l").symlink_to("/")
    (spec_dir / "f").write_text("content\n")
    with pytest.raises(BuildError, match=r"files\[0\]\.dest.*replaced a link on its own path"):
        copy_files(tree, _spec(spec_dir, [("f", "/l/l")]))
