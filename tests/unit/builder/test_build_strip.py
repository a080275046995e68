"""Strip groups, keep patterns, the ALWAYS list, and the ELF link check (synthetic ELF files and this host's own)."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from build_testlib import elf_dynamic, elf_static
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealbox.builder.strip import ALWAYS, GROUPS, KEEP, elf_needed, link_check, path_glob, strip_tree
from sealbox.errors import BuildError
from sealbox.spec.model import Strip

LIB = "usr/lib/x86_64-linux-gnu"


def put(tree: Path, rel: str, data: bytes = b"x") -> Path:
    p = tree / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def concrete(pattern: str) -> str:
    return pattern.replace("*", "x1")


def image(tmp_path: Path) -> Path:
    tree = tmp_path / "img"
    for group, patterns in GROUPS.items():
        for pat in patterns:
            put(tree, concrete(pat) + ("/inner/file" if "." not in Path(pat).name and "*" not in pat else ""), group.encode() * 3)
    for pat in ALWAYS:
        put(tree, concrete(pat), b"always")
    for pat in KEEP:
        put(tree, concrete(pat), b"keep")
    put(tree, "/usr/share/zoneinfo/Etc/GMT+1", b"tz")
    put(tree, "/usr/share/doc/pkg/copyright", b"(c)")
    put(tree, "/usr/share/doc/pkg/changelog.gz", b"log")
    put(tree, "/usr/bin/bash", b"bash")
    put(tree, "/etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    put(tree, "/var/lib/dpkg/status", b"Package: x\n")
    return tree


def exists(tree: Path, rel: str) -> bool:
    return os.path.lexists(tree / rel.lstrip("/"))


def test_every_group_is_removed_and_counted(tmp_path: Path) -> None:
    tree = image(tmp_path)
    removed = strip_tree(tree, Strip())
    for group, patterns in GROUPS.items():
        assert removed[group] > 0, group
        for pat in patterns:
            assert not exists(tree, concrete(pat)), pat
    assert removed["always"] > 0  # paths under a group's directory are counted for that group
    for pat in ALWAYS:
        assert not exists(tree, concrete(pat)), pat
    for kept in ("/usr/bin/bash", "/etc/passwd", "/var/lib/dpkg/status", "/usr/share/doc/pkg/copyright"):
        assert exists(tree, kept), kept
    assert not exists(tree, "/usr/share/doc/pkg/changelog.gz")


def test_keep_list_survives_every_group(tmp_path: Path) -> None:
    tree = image(tmp_path)
    strip_tree(tree, Strip())
    for pat in KEEP:
        assert exists(tree, concrete(pat)), pat
    assert not exists(tree, "/usr/share/zoneinfo/Etc/GMT+1")  # only UTC stays under Etc


@pytest.mark.parametrize("path, pattern, hit", [
    ("/usr/lib/libx.a", "/usr/lib/*.a", True),
    ("/usr/lib/x86_64-linux-gnu/libx.a", "/usr/lib/*.a", False),  # `*` stays within a component
    ("/usr/lib/x86_64-linux-gnu/libx.a", "/usr/lib/**/*.a", True),
    ("/usr/lib/libx.a", "/usr/lib/**/*.a", True),  # `**` may be empty
    ("/opt/a/b/c", "/opt/**", True),
    ("/opt", "/opt/**", True),
    ("/optx/a", "/opt/**", False),
    ("/etc/passwd-", "/etc/*-", True),
    ("/etc/default/x-", "/etc/*-", False),
    ("/usr/bin/perl5.36", "/usr/bin/perl[0-9]*", True),
    ("/usr/bin/a", "/usr/bin/?", True),
    ("/usr/bin/ab", "/usr/bin/?", False),
])
def test_path_glob(path: str, pattern: str, hit: bool) -> None:
    assert path_glob(path, pattern) is hit


def test_user_paths_and_keep_follow_the_glob_rules(tmp_path: Path) -> None:
    tree = tmp_path / "img"
    for rel in ("/usr/lib/top.a", "/usr/lib/sub/deep.a", "/srv/data/a/b", "/srv/data/c", "/srv/other"):
        put(tree, rel)
    off = Strip(**{g: False for g in GROUPS}, unused_libraries=False, paths=["/usr/lib/*.a", "/srv/*"], keep=["/srv/data"])
    strip_tree(tree, off)
    assert not exists(tree, "/usr/lib/top.a") and exists(tree, "/usr/lib/sub/deep.a")
    assert exists(tree, "/srv/data/a/b") and exists(tree, "/srv/data/c")  # a kept directory is kept whole
    assert not exists(tree, "/srv/other")


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_group_can_be_switched_off(tmp_path: Path, group: str) -> None:
    tree = image(tmp_path)
    removed = strip_tree(tree, Strip(**{group: False}))
    assert group not in removed
    for pat in GROUPS[group]:
        if not any(fnmatch.fnmatchcase(concrete(pat), a) for a in ALWAYS):  # ALWAYS ignores the switches
            assert exists(tree, concrete(pat)), pat
    others = [g for g in GROUPS if g != group]
    assert all(removed[g] > 0 for g in others)


def test_always_list_ignores_the_switches(tmp_path: Path) -> None:
    tree = image(tmp_path)
    off = Strip(**{g: False for g in GROUPS}, unused_libraries=False)
    removed = strip_tree(tree, off)
    assert set(removed) == {"always", "paths", "links"}
    for pat in ALWAYS:
        assert not exists(tree, concrete(pat)), pat


def test_user_paths_and_keep_patterns(tmp_path: Path) -> None:
    tree = image(tmp_path)
    put(tree, "/opt/app/cache/a.bin", b"12345")
    put(tree, "/opt/app/cache/keep.bin", b"k")
    put(tree, "/usr/share/man/man1/ls.1.gz", b"man")
    removed = strip_tree(tree, Strip(paths=["/opt/app/cache"], keep=["/opt/app/cache/keep.bin", "/usr/share/man/man1/ls.1.gz"]))
    assert removed["paths"] == 5
    assert not exists(tree, "/opt/app/cache/a.bin") and exists(tree, "/opt/app/cache/keep.bin")
    assert exists(tree, "/usr/share/man/man1/ls.1.gz") and not exists(tree, "/usr/share/man/inner")


def test_symlinks_are_removed_not_followed(tmp_path: Path) -> None:
    tree = image(tmp_path)
    outside = put(tmp_path, "outside/precious", b"do not touch")
    (tree / "usr/share/man").mkdir(parents=True, exist_ok=True)
    (tree / "usr/share/man/link").symlink_to(outside.parent)
    strip_tree(tree, Strip())
    assert outside.read_bytes() == b"do not touch"
    assert not exists(tree, "/usr/share/man/link")


# --- ELF link check -----------------------------------------------------------------------------------


def elf_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "img"
    put(tree, "usr/bin/prog", elf_dynamic(["libfoo.so.1", "libc.so.6"]))
    put(tree, "usr/sbin/static", elf_static())
    put(tree, f"{LIB}/libc.so.6", elf_dynamic([]))
    put(tree, f"{LIB}/libfoo.so.1.2.3", elf_dynamic(["libbar.so.2", "libc.so.6"]))
    (tree / LIB / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    put(tree, f"{LIB}/libbar.so.2", elf_dynamic(["libc.so.6"]))
    put(tree, "usr/lib/systemd/libsystemd-shared-252.so", elf_dynamic(["libc.so.6"]))
    put(tree, "usr/lib/systemd/systemd", elf_dynamic(["libsystemd-shared-252.so"], runpath=["/usr/lib/systemd"]))
    put(tree, "usr/lib/systemd/systemd-journald", elf_dynamic(["libsystemd-shared-252.so"], runpath=["$ORIGIN"]))
    put(tree, "usr/lib/systemd/plugin.so", elf_dynamic(["libsystemd-shared-252.so"]))  # met via systemd's RUNPATH
    put(tree, "usr/share/not-elf", b"#!/bin/sh\n")
    put(tree, "usr/share/tiny", b"\x7fELF")
    (tree / "lib").symlink_to("usr/lib")
    return tree


def _link_error(tree: Path, *has: str) -> str:
    with pytest.raises(BuildError) as info:
        link_check(tree)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "strip.keep" in text
    for part in has:
        assert part in text, text
    return text


def test_complete_tree_passes(tmp_path: Path) -> None:
    link_check(elf_tree(tmp_path))


def test_removed_library_is_named_with_its_user(tmp_path: Path) -> None:
    tree = elf_tree(tmp_path)
    (tree / LIB / "libbar.so.2").unlink()
    _link_error(tree, f"/{LIB}/libfoo.so.1.2.3 needs libbar.so.2")


def test_dangling_library_symlink_is_not_a_library(tmp_path: Path) -> None:
    tree = elf_tree(tmp_path)
    (tree / LIB / "libfoo.so.1.2.3").unlink()  # strip.paths took the file, the soname link stays
    _link_error(tree, "/usr/bin/prog needs libfoo.so.1")


def test_private_library_found_through_runpath_and_origin(tmp_path: Path) -> None:
    tree = elf_tree(tmp_path)
    (tree / "usr/lib/systemd/libsystemd-shared-252.so").unlink()
    text = _link_error(tree)
    # exactly its three users, each named once; nothing else in the tree is reported, nothing is left uncounted
    assert _listed(text) == ["/usr/lib/systemd/plugin.so needs libsystemd-shared-252.so",
                             "/usr/lib/systemd/systemd needs libsystemd-shared-252.so",
                             "/usr/lib/systemd/systemd-journald needs libsystemd-shared-252.so"], text
    assert "more)" not in text


def _listed(text: str) -> list[str]:
    """The problems a link-check error names (between 'are missing: ' and the '(+N more)' count or the hint)."""
    body = text.split("are missing: ", 1)[1].split(" (", 1)[0]
    return body.split("; ")


def test_runpath_cannot_reach_the_host(tmp_path: Path) -> None:
    """A RUNPATH with '..' or an absolute symlink must resolve inside the image, never on the build host."""
    tree = tmp_path / "img"
    host_dir = "/usr/lib/x86_64-linux-gnu" if Path("/usr/lib/x86_64-linux-gnu/libc.so.6").exists() else None
    if host_dir is None:
        pytest.skip("this host has no /usr/lib/x86_64-linux-gnu/libc.so.6 to be fooled by")
    depth = "/".join([".."] * (len(tree.parts) + 2))
    put(tree, "usr/bin/a", elf_dynamic(["libc.so.6"], runpath=[f"/{depth}{host_dir}"]))
    _link_error(tree, "/usr/bin/a needs libc.so.6")
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/x86_64-linux-gnu").symlink_to(host_dir)  # absolute: means the image's own path
    put(tree, "usr/bin/a", elf_dynamic(["libc.so.6"]))
    _link_error(tree, "/usr/bin/a needs libc.so.6")


def test_many_problems_are_counted(tmp_path: Path) -> None:
    tree = tmp_path / "img"
    for i in range(6):
        put(tree, f"usr/bin/p{i}", elf_dynamic([f"libmissing{i}.so"]))
    text = _link_error(tree, "(+2 more)")
    assert _listed(text) == [f"/usr/bin/p{i} needs libmissing{i}.so" for i in range(4)], text


def test_corrupt_or_truncated_elf_files_do_not_stop_the_check(tmp_path: Path) -> None:
    tree = elf_tree(tmp_path)
    good = elf_dynamic(["libc.so.6"])
    for n, cut in enumerate((4, 5, 20, 64, 100, len(good) - 8)):
        put(tree, f"usr/share/cut{n}", good[:cut])
    put(tree, "usr/share/bogus-phoff", good[:0x20] + b"\xff" * 8 + good[0x28:])
    link_check(tree)


# --- elf_needed on real files and on mutations ----------------------------------------------------


def _host_elf() -> Path | None:
    for name in ("ls", "bash", "cpio", "zstd"):
        p = shutil.which(name)
        if p and Path(p).resolve().read_bytes()[:4] == b"\x7fELF":
            return Path(p).resolve()
    return None


HOST_ELF = _host_elf()


@pytest.mark.skipif(HOST_ELF is None or shutil.which("readelf") is None, reason="needs a dynamic ELF in /usr/bin and readelf")
def test_real_binary_matches_readelf() -> None:
    out = subprocess.run(["readelf", "-dW", str(HOST_ELF)], capture_output=True, text=True, check=True).stdout
    expected = [line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line]
    needed, _paths = elf_needed(HOST_ELF.read_bytes())
    assert needed == expected and "libc.so.6" in needed


def test_synthetic_runpath_and_rpath() -> None:
    assert elf_needed(elf_dynamic(["a.so"], runpath=["/x", "$ORIGIN/../lib"], rpath=["/r"])) == (["a.so"], ["/x", "$ORIGIN/../lib", "/r"])
    assert elf_needed(elf_static()) is None
    assert elf_needed(b"#!/bin/sh\n") is None


SEED = HOST_ELF.read_bytes()[:16384] if HOST_ELF else elf_dynamic(["libc.so.6", "libm.so.6"], runpath=["$ORIGIN"])


@settings(max_examples=int(os.environ.get("SEALBOX_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 4096), st.binary(min_size=1, max_size=8)), max_size=4), cut=st.integers(0, 16384))
def test_elf_needed_never_raises(edits: list[tuple[int, bytes]], cut: int) -> None:
    data = bytearray(SEED[:max(cut, 1)])
    for pos, chunk in edits:
        pos %= len(data)
        data[pos:pos + len(chunk)] = chunk
    result = elf_needed(bytes(data))
    assert result is None or (isinstance(result[0], list) and isinstance(result[1], list))


def test_unused_libraries_follow_dt_needed_from_programs_and_plugins(tmp_path: Path) -> None:
    from build_testlib import elf_dynamic

    from sealbox.builder.strip import unused_libraries

    root = tmp_path / "img"
    lib = root / "usr/lib/x86_64-linux-gnu"
    (lib / "security").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    interp = b"/lib64/ld-linux-x86-64.so.2"  # marks an executable (it has a program interpreter)
    (root / "usr/bin/prog").write_bytes(elf_dynamic(["libA.so.1"]) + interp)
    (lib / "libA.so.1").write_bytes(elf_dynamic(["libB.so.1"]))
    (lib / "libB.so.1").write_bytes(elf_dynamic([]))
    (lib / "libC.so.1").write_bytes(elf_dynamic([]))  # nobody needs it
    (lib / "libC.so").symlink_to("libC.so.1")
    (lib / "security/pam_x.so").write_bytes(elf_dynamic(["libD.so.1"]))  # plugins are roots
    (lib / "libD.so.1").write_bytes(elf_dynamic([]))
    (lib / "libgcc_s.so.1").write_bytes(elf_dynamic([]))  # loaded with dlopen by glibc: kept
    unused = unused_libraries(root)
    assert unused == ["/usr/lib/x86_64-linux-gnu/libC.so", "/usr/lib/x86_64-linux-gnu/libC.so.1"]
    removed = strip_tree(root, Strip(**{g: False for g in GROUPS}))
    assert removed["unused_libraries"] > 0
    assert not (lib / "libC.so.1").exists() and not (lib / "libC.so").is_symlink()
    assert all((lib / n).exists() for n in ("libA.so.1", "libB.so.1", "libD.so.1", "libgcc_s.so.1"))


def test_plugins_outside_the_library_dir_are_roots_too(tmp_path: Path) -> None:
    """Xorg loads its modules from /usr/lib/xorg/modules and Python its extensions from lib-dynload: what they link
    stays (found building the gui module: libGL.so.1 went while Xorg's GLX module needs it)."""
    from build_testlib import elf_dynamic

    from sealbox.builder.strip import unused_libraries

    root = tmp_path / "img"
    lib = root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (root / "usr/lib/xorg/modules/extensions").mkdir(parents=True)
    (root / "usr/lib/xorg/modules/extensions/libglx.so").write_bytes(elf_dynamic(["libGL.so.1"]))
    (lib / "libGL.so.1").write_bytes(elf_dynamic(["libGLdispatch.so.0"]))
    (lib / "libGLdispatch.so.0").write_bytes(elf_dynamic([]))
    (lib / "libunused.so.1").write_bytes(elf_dynamic([]))
    assert unused_libraries(root) == ["/usr/lib/x86_64-linux-gnu/libunused.so.1"]


# --- a library that was never installed: the hint names the package, or the plug-in to strip -------------

IPROUTE2_STATUS = """\
Package: libc6
Status: install ok installed
Version: 2.36-9

Package: iproute2
Status: install ok installed
Version: 6.1.0-3
Depends: debconf (>= 0.5) | debconf-2.0, libbpf1 (>= 1:0.6.0), libc6 (>= 2.34), libcap2 (>= 1:2.10)
Recommends: libatm1 (>= 2.4.1-17~)
Suggests: iproute2-doc, python3:any

Package: libcap2
Status: install ok installed
Version: 1:2.66-4
Depends: libc6 (>= 2.34)
"""


def _plugin_tree(tmp_path: Path, needed: str) -> Path:
    tree = elf_tree(tmp_path)
    put(tree, "var/lib/dpkg/status", IPROUTE2_STATUS.encode())
    put(tree, f"{LIB}/tc/q_atm.so", elf_dynamic([needed, "libc.so.6"]))
    return tree


def test_never_installed_library_names_its_package_and_the_plugin(tmp_path: Path) -> None:
    tree = _plugin_tree(tmp_path, "libatm.so.1")
    with pytest.raises(BuildError) as info:
        link_check(tree)
    text = str(info.value)
    assert len(text.splitlines()) == 1, text
    assert f"/{LIB}/tc/q_atm.so needs libatm.so.1" in text
    assert "never installed" in text and "libatm1" in text and "iproute2" in text  # who recommends it
    assert "packages.include" in text and f"strip.paths = [\"/{LIB}/tc/q_atm.so\"]" in text
    assert "strip.keep" not in text  # keeping what was never there cannot help
    assert "stripping removed" not in text


def test_stripped_library_of_an_installed_package_points_at_strip_keep(tmp_path: Path) -> None:
    tree = _plugin_tree(tmp_path, "libcap.so.2")  # libcap2 is installed: its library was stripped
    text = _link_error(tree, f"/{LIB}/tc/q_atm.so needs libcap.so.2", "libcap2")
    assert "never installed" not in text


def test_library_of_unknown_origin_gets_both_hints(tmp_path: Path) -> None:
    tree = _plugin_tree(tmp_path, "libmystery.so.7")
    text = _link_error(tree, "libmystery.so.7", "packages.include", f"/{LIB}/tc/q_atm.so")
    assert "never installed" not in text


@pytest.mark.parametrize(("soname", "package"), [
    ("libatm.so.1", "libatm1"), ("libgcc_s.so.1", "libgcc-s1"), ("libxtables.so.12", "libxtables12"),
    ("libdb-5.3.so", "libdb5.3"), ("libfoo2.so.3", "libfoo2-3"), ("libstdc++.so.6", "libstdc++6"),
])
def test_soname_to_debian_package_name(soname: str, package: str) -> None:
    from sealbox.builder.missing_libs import package_candidates

    assert package in package_candidates(soname)


def test_links_to_what_was_stripped_go_with_it(tmp_path: Path) -> None:
    """Found building the gui module: ssl-cert's snakeoil certificate was stripped but its OpenSSL hash link (named
    after the build host's name) stayed, dangling, and made two builds differ."""
    tree = tmp_path / "img"
    put(tree, "/etc/ssl/certs/ssl-cert-snakeoil.pem")
    put(tree, "/etc/ssl/certs/ca.pem")
    (tree / "etc/ssl/certs/62742064.0").symlink_to("ssl-cert-snakeoil.pem")
    (tree / "etc/ssl/certs/0badc0de.0").symlink_to("ca.pem")  # to a file that stays
    (tree / "etc/ssl/certs/chain.0").symlink_to("62742064.0")  # a link to the link goes too
    (tree / "etc/ssl/abs").symlink_to("/etc/ssl/certs/ssl-cert-snakeoil.pem")
    (tree / "etc/resolv.conf").symlink_to("/run/sealbox/resolv.conf")  # dangling in the image by design: stays
    off = Strip(**{g: False for g in GROUPS}, unused_libraries=False, paths=["/etc/ssl/certs/ssl-cert-snakeoil.pem"])
    removed = strip_tree(tree, off)
    left = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_symlink())
    assert left == ["etc/resolv.conf", "etc/ssl/certs/0badc0de.0"]
    assert removed["links"] > 0


def test_links_to_the_apt_state_removed_early_go_as_if_strip_had_removed_it(tmp_path: Path) -> None:
    """The bootstrap step removes apt's lists and cache before strip runs (so the build cache's bootstrap layer
    lacks them); a link left pointing there is removed as it is when strip removes its target itself."""
    from sealbox.builder.strip import APT_STATE, remove_early

    def tree(root: Path) -> Path:
        (root / "var/cache/apt/archives").mkdir(parents=True)
        (root / "var/cache/apt/pkgcache.bin").write_bytes(b"cache")
        (root / "etc").mkdir()
        (root / "etc/apt-cache").symlink_to("../var/cache/apt/pkgcache.bin")
        (root / "etc/resolv.conf").symlink_to("../run/resolv.conf")  # dangles by design: kept
        return root

    off = Strip(**{g: False for g in GROUPS}, unused_libraries=False)
    late, early = tree(tmp_path / "late"), tree(tmp_path / "early")
    strip_tree(late, off)
    remove_early(early, APT_STATE, off)
    strip_tree(early, off)
    for root in (late, early):
        assert not (root / "etc/apt-cache").is_symlink(), root
        assert (root / "etc/resolv.conf").is_symlink()
    assert sorted(p.relative_to(late).as_posix() for p in late.rglob("*")) == \
        sorted(p.relative_to(early).as_posix() for p in early.rglob("*"))


@pytest.mark.parametrize("plugin", [True, False])
def test_a_library_a_package_plugin_needs_is_kept_by_the_default_strip(tmp_path: Path, plugin: bool) -> None:
    """curl pulls in libsasl2-modules-db, whose plugin links libdb-5.3: the default strip removed libdb by name and
    the link check then failed the README's own example spec. Unreferenced, libdb still goes (pruned as unused)."""
    from build_testlib import elf_dynamic

    root = tmp_path / "img"
    lib = root / "usr/lib/x86_64-linux-gnu"
    (lib / "sasl2").mkdir(parents=True)
    (lib / "security").mkdir()
    (lib / "libdb-5.3.so").write_bytes(elf_dynamic([]))
    (lib / "security/pam_userdb.so").write_bytes(elf_dynamic(["libdb-5.3.so"]))  # the base strip removes it
    if plugin:
        (lib / "sasl2/libsasldb.so.2").write_bytes(elf_dynamic(["libdb-5.3.so"]))
    strip_tree(root, Strip())
    assert not (lib / "security/pam_userdb.so").exists()
    assert (lib / "libdb-5.3.so").exists() == plugin


@pytest.mark.parametrize("user", [True, False])
def test_libmvec_is_kept_when_a_program_links_it(tmp_path: Path, user: bool) -> None:
    """glibc's vector maths library is linked by programs built with vectorised maths; the default strip removed it by
    name, so such a package failed the link check. Unreferenced, it still goes (pruned as unused)."""
    from build_testlib import elf_dynamic

    root = tmp_path / "img"
    lib = root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (root / "usr/bin").mkdir()
    (lib / "libmvec.so.1").write_bytes(elf_dynamic([]))
    if user:
        (root / "usr/bin/simd-maths").write_bytes(elf_dynamic(["libmvec.so.1"]))
    strip_tree(root, Strip())
    assert (lib / "libmvec.so.1").exists() == user
