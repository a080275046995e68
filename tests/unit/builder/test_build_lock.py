"""The lock: apt pins, read/write round trip, sections per profile set, one lock per spec, version and corruption
errors, and every mismatch message naming its real cause (the spec, or the archive)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sealbox.builder.builder import default_lock_path, default_output
from sealbox.builder.lock import (
    LOCK_VERSION,
    Installed,
    Lock,
    LockedPackage,
    LockFile,
    Selection,
    as_manifest,
    check_against_lock,
    lock_from,
    read_lock,
    read_lock_file,
    selection_of,
    write_lock,
)
from sealbox.errors import BuildError, SpecError
from sealbox.spec import load_spec


def inst(name: str, version: str = "1.0-1", sha: str | None = None, arch: str = "amd64") -> Installed:
    sha = sha or (name.encode().hex() + "0" * 64)[:64]
    return Installed(name, version, arch, sha, f"{name}_{version}_{arch}.deb")


INSTALLED = {n: inst(n) for n in ("libc6", "systemd", "openssh-server", "zlib1g")}
EXTRAS = {"linux-image-cloud-amd64": inst("linux-image-cloud-amd64", "6.1.1-1"), "busybox": inst("busybox", "1:1.35-4")}


def lock() -> Lock:
    return lock_from("bookworm", INSTALLED, EXTRAS)


def test_pins_force_every_installed_version_and_only_those() -> None:
    text = lock().pins()
    stanzas = [s for s in text.split("\n\n") if s]
    assert [s.splitlines()[0] for s in stanzas] == [f"Package: {n}" for n in sorted(INSTALLED)]
    for s in stanzas:
        assert s.splitlines()[1:] == ["Pin: version 1.0-1", "Pin-Priority: 1001"]
    assert "busybox" not in text and text.endswith("\n\n")


def test_write_read_round_trip_is_sorted_json(tmp_path: Path) -> None:
    path = tmp_path / "sealbox.lock"
    write_lock(path, lock())
    assert read_lock(path) == lock().model_copy(update={"profiles": []})
    raw = path.read_text()
    assert raw.endswith("\n") and json.loads(raw)["version"] == LOCK_VERSION
    assert list(json.loads(raw)["sections"][0]["packages"]) == sorted(INSTALLED)
    assert os.listdir(tmp_path) == ["sealbox.lock"]  # written atomically, no temp file left
    write_lock(path, lock_from("bookworm", dict(reversed(INSTALLED.items())), EXTRAS))
    assert path.read_text() == raw


def test_digest_input_is_independent_of_insertion_order() -> None:
    other = lock_from("bookworm", dict(reversed(INSTALLED.items())), dict(reversed(EXTRAS.items())))
    assert other.digest_input() == lock().digest_input()
    changed = lock_from("bookworm", INSTALLED | {"zlib1g": inst("zlib1g", "1.0-2")}, EXTRAS)
    assert changed.digest_input() != lock().digest_input()


def test_missing_lock_is_none(tmp_path: Path) -> None:
    assert read_lock(tmp_path / "sealbox.lock") is None


def _lock_error(path: Path, *has: str) -> str:
    with pytest.raises(SpecError) as info:
        read_lock(path)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and str(path) in text, text
    for part in has:
        assert part in text, text
    return text


def test_other_format_version(tmp_path: Path) -> None:
    path = tmp_path / "sealbox.lock"
    doc = json.loads(lock().model_dump_json())
    path.write_text(json.dumps(doc | {"version": 7}))
    _lock_error(path, "version 7", "expected 2", "--update-lock")


def test_other_format_version_with_another_schema_still_says_version(tmp_path: Path) -> None:
    path = tmp_path / "sealbox.lock"
    path.write_text(json.dumps({"version": 3, "distribution": {"suite": "trixie"}, "pkgs": []}))
    _lock_error(path, "version 3", "expected 2")


def test_a_version_1_lock_still_pins_the_build_it_is_given_to(tmp_path: Path) -> None:
    path = tmp_path / "old.lock"
    doc = json.loads(lock().model_dump_json(exclude={"profiles", "selection"}))
    path.write_text(json.dumps(doc | {"version": 1}))
    section = read_lock(path, ["devtools"])
    assert section is not None and section.packages == lock().packages and section.profiles is None
    write_lock(path, lock_from("bookworm", INSTALLED, EXTRAS, ["devtools"]))
    assert [s.profiles for s in read_lock_file(path).sections] == [["devtools"]]  # rewritten as version 2


@pytest.mark.parametrize(("content", "has"), [
    (b"", "not a valid sealbox lock file"),
    (b"{", "not a valid sealbox lock file"),
    (b"[1, 2]", "not a valid sealbox lock file"),
    (b'{"version": 1, "suite": "bookworm"}', "packages"),
    (b'{"version": 1, "suite": "bookworm", "packages": {"a": {"version": 1}}}', "packages.a"),
    (b'{"version": 2, "sections": [{"suite": "bookworm"}]}', "sections.0.packages"),
    (b'{"version": "one", "sections": []}', "version"),
    (b"\xff\xfe{}", "not a valid sealbox lock file"),
])
def test_corrupt_lock_is_one_spec_error_line(tmp_path: Path, content: bytes, has: str) -> None:
    path = tmp_path / "sealbox.lock"
    path.write_bytes(content)
    _lock_error(path, has, "--update-lock")


def test_lock_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "sealbox.lock").mkdir()
    _lock_error(tmp_path / "sealbox.lock", "cannot read")


# --- check_against_lock -------------------------------------------------------------------------------


def _mismatch(installed: dict[str, Installed], extras: dict[str, Installed], *has: str) -> str:
    path = Path("/srv/img/sealbox.lock")
    with pytest.raises(BuildError) as info:
        check_against_lock(lock(), installed, extras, path)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith(f"{path}: the archive no longer matches the lock for ")
    assert "distribution.snapshot" in text and "--update-lock" in text
    for part in has:
        assert part in text, text
    return text


def test_matching_install_passes() -> None:
    check_against_lock(lock(), dict(INSTALLED), dict(EXTRAS), Path("x.lock"))


def test_extra_package_not_in_the_lock() -> None:
    _mismatch(INSTALLED | {"curl": inst("curl", "7.88-1")}, EXTRAS, "package curl 7.88-1 is not in the lock")


def test_locked_package_not_installed() -> None:
    _mismatch({k: v for k, v in INSTALLED.items() if k != "systemd"}, EXTRAS, "locked package systemd 1.0-1 was not installed")


def test_version_differs() -> None:
    _mismatch(INSTALLED | {"zlib1g": inst("zlib1g", "1:1.3-1")}, EXTRAS, "package zlib1g: locked 1.0-1, got 1:1.3-1")


def test_same_version_other_deb_hash() -> None:
    text = _mismatch(INSTALLED | {"libc6": inst("libc6", sha="ab" * 32)}, EXTRAS, "package libc6 1.0-1: .deb sha256 abababababab")
    assert INSTALLED["libc6"].sha256[:12] in text


def test_download_mismatches_are_named_downloads() -> None:
    _mismatch(INSTALLED, {"busybox": EXTRAS["busybox"]}, "locked download linux-image-cloud-amd64 6.1.1-1 was not installed")
    _mismatch(INSTALLED, EXTRAS | {"busybox": inst("busybox", "1:1.36-1")}, "download busybox: locked 1:1.35-4, got 1:1.36-1")
    _mismatch(INSTALLED, EXTRAS | {"ovmf": inst("ovmf")}, "download ovmf 1.0-1 is not in the lock")


def test_many_mismatches_show_three_and_count_the_rest() -> None:
    extra = {f"pkg{i}": inst(f"pkg{i}") for i in range(5)}
    text = _mismatch(INSTALLED | extra, EXTRAS, "pkg0", "pkg1", "pkg2", "(+2 more)")
    assert "pkg3" not in text


def test_lock_from_and_manifest_rows_are_sorted() -> None:
    lk = lock()
    assert list(lk.packages) == sorted(INSTALLED) and list(lk.extras) == sorted(EXTRAS)
    assert lk.packages["libc6"] == LockedPackage(version="1.0-1", architecture="amd64", sha256=INSTALLED["libc6"].sha256,
                                                 filename="libc6_1.0-1_amd64.deb")
    rows = as_manifest(EXTRAS, "download")
    assert [r["name"] for r in rows] == ["busybox", "linux-image-cloud-amd64"] and {r["role"] for r in rows} == {"download"}


# --- one lock per spec, one section per profile set (issue: a second spec or profile set clobbered the lock) -----


def _spec(d: Path, name: str, body: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{name}.toml"
    f.write_text(f'include = ["base"]\nname = "{name}"\n{body}[profiles.extra]\npackages.include = ["less"]\n')
    return f


def test_each_spec_has_its_own_lock_named_after_it(tmp_path: Path) -> None:
    a, b = load_spec(_spec(tmp_path, "web")), load_spec(_spec(tmp_path, "db"))
    la, lb = default_lock_path(a, default_output(a)), default_lock_path(b, default_output(b))
    assert la == tmp_path / "web.lock" and lb == tmp_path / "db.lock"
    default = load_spec(None)
    assert default_lock_path(default, tmp_path / "out/default") == tmp_path / "out/default.lock"


def test_profile_sets_have_their_own_sections_and_update_one_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "web.lock"
    plain = lock_from("bookworm", INSTALLED, EXTRAS, [])
    extra = lock_from("bookworm", INSTALLED | {"less": inst("less")}, EXTRAS, ["extra"])
    write_lock(path, plain)
    write_lock(path, extra)
    assert read_lock(path, []) == plain and read_lock(path, ["extra"]) == extra
    newer = lock_from("bookworm", INSTALLED | {"less": inst("less", "2.0-1")}, EXTRAS, ["extra"])
    write_lock(path, newer)  # what --update-lock --profile extra does
    assert read_lock(path, []) == plain and read_lock(path, ["extra"]) == newer
    assert read_lock(path, ["extra", "devtools"]) is None  # another profile set resolves afresh


def _section_error(loaded, section: Lock, *has: str) -> str:
    with pytest.raises(BuildError) as info:
        LockFile(sections=[section]).section_for(loaded, Path("/srv/web.lock"))
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "--update-lock" in text and "archive" not in text, text
    for part in has:
        assert part in text, text
    return text


def test_a_spec_change_is_named_as_such_before_anything_is_built(tmp_path: Path) -> None:
    loaded = load_spec(_spec(tmp_path, "web", '[packages]\ninclude = ["curl"]\n'))
    sel = selection_of(loaded)
    assert "curl" in sel.packages and sel.downloads == ["busybox-static", "linux-image-cloud-amd64", "systemd-boot-efi"]
    ok = lock_from("bookworm", INSTALLED, EXTRAS, [], sel)
    assert LockFile(sections=[ok]).section_for(loaded, Path("x")) == ok
    before = lock_from("bookworm", INSTALLED, EXTRAS, [], Selection(packages=[p for p in sel.packages if p != "curl"] + ["vim"],
                                                                     downloads=sel.downloads))
    _section_error(loaded, before, "/srv/web.lock", "packages.include changed", "added: curl", "removed: vim",
                   "the build without profiles")
    other_kernel = lock_from("bookworm", INSTALLED, EXTRAS, [], Selection(packages=sel.packages,
                                                                          downloads=["busybox-static", "linux-image-rt-amd64"]))
    _section_error(loaded, other_kernel, "downloaded packages", "added: linux-image-cloud-amd64, systemd-boot-efi",
                   "removed: linux-image-rt-amd64")
    _section_error(loaded, lock_from("trixie", INSTALLED, EXTRAS, [], sel), "suite 'trixie'", "'bookworm'")
    with_profile = load_spec(tmp_path / "web.toml", ["extra"])
    _section_error(with_profile, lock_from("bookworm", INSTALLED, EXTRAS, ["extra"], sel), "profiles extra", "added: less")
