"""Host apt sources (one-line and deb822), security detection, snapshot mapping and the spec's mirror override.
Only made-up mirror host names (*.example) appear here."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sealbox.builder.sources import AptEntry, Sources, _parse_deb822, _parse_one_line, host_apt_entries, resolve_sources
from sealbox.errors import BuildError
from sealbox.spec.model import Distribution

MAIN = "http://mirror.example/debian"
SEC = "http://security.example/debian-security"


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(textwrap.dedent(text))
    return d


# --- one-line format ------------------------------------------------------------------------------


def test_one_line_entries_options_comments_and_disabled_lines() -> None:
    text = f"""\
        # deb http://old.example/debian bookworm main
        deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] {MAIN}/ bookworm main contrib  # trailing comment
        deb-src {MAIN} bookworm main
        deb [ arch=amd64 ] {SEC} bookworm-security main
        deb http://short.example
        \tdeb\t{MAIN}\tbookworm-updates\tmain
        """
    assert _parse_one_line(textwrap.dedent(text)) == [
        AptEntry(MAIN, ("bookworm",), ("main", "contrib")),
        AptEntry(SEC, ("bookworm-security",), ("main",)),
        AptEntry(MAIN, ("bookworm-updates",), ("main",)),
    ]


# --- deb822 format --------------------------------------------------------------------------------


def test_deb822_stanzas_types_multiple_uris_and_continuations() -> None:
    text = f"""\
        Types: deb deb-src
        # a comment inside the stanza
        URIs: {MAIN}/ http://mirror2.example/debian
        Suites: bookworm
         bookworm-updates
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

        types: deb
        uris: {SEC}
        suites: bookworm-security
        components: main non-free-firmware

        Types: deb-src
        URIs: http://src.example/debian
        Suites: bookworm
        Components: main
        """
    assert _parse_deb822(textwrap.dedent(text)) == [
        AptEntry(MAIN, ("bookworm", "bookworm-updates"), ("main",)),
        AptEntry("http://mirror2.example/debian", ("bookworm", "bookworm-updates"), ("main",)),
        AptEntry(SEC, ("bookworm-security",), ("main", "non-free-firmware")),
    ]


@pytest.mark.parametrize("value", ["no", "No", "false", "off", "disable", "without"])
def test_deb822_disabled_stanza(value: str) -> None:
    text = f"Types: deb\nURIs: {MAIN}\nSuites: bookworm\nComponents: main\nEnabled: {value}\n"
    assert _parse_deb822(text) == []


@pytest.mark.parametrize("value", ["yes", "true"])
def test_deb822_enabled_stanza(value: str) -> None:
    text = f"Types: deb\nURIs: {MAIN}\nSuites: bookworm\nComponents: main\nEnabled: {value}\n"
    assert len(_parse_deb822(text)) == 1


def test_host_entries_read_list_and_sources_files_in_order(tmp_path: Path) -> None:
    d = apt_dir(tmp_path, {
        "sources.list": f"deb {MAIN} bookworm main\n",
        "sources.list.d/b.sources": f"Types: deb\nURIs: {SEC}\nSuites: bookworm-security\nComponents: main\n",
        "sources.list.d/a.list": "deb http://a.example/debian bookworm main\n",
        "sources.list.d/c.list.disabled": "deb http://disabled.example/debian bookworm main\n",
        "sources.list.d/d.sources.save": "Types: deb\nURIs: http://save.example\nSuites: bookworm\nComponents: main\n",
    })
    assert [e.uri for e in host_apt_entries(d)] == [MAIN, "http://a.example/debian", SEC]


def test_host_without_any_sources(tmp_path: Path) -> None:
    assert host_apt_entries(tmp_path / "nope") == []


# --- resolve_sources ------------------------------------------------------------------------------

HOST = {"sources.list.d/debian.sources": f"""\
    Types: deb
    URIs: {MAIN}
    Suites: bookworm bookworm-updates
    Components: main

    Types: deb
    URIs: {SEC}
    Suites: bookworm-security
    Components: main
    """}


def test_from_the_host_sources(tmp_path: Path) -> None:
    src = resolve_sources(Distribution(), apt_dir(tmp_path, HOST))
    assert src == Sources(MAIN, SEC, "bookworm", ("main",))
    assert src.lines() == [f"deb {MAIN} bookworm main", f"deb {MAIN} bookworm-updates main", f"deb {SEC} bookworm-security main"]


def test_a_vendor_repository_for_the_same_suite_is_not_taken_for_debian(tmp_path: Path) -> None:
    files = dict(HOST) | {"sources.list.d/0-vendor.list": "deb [signed-by=/k.gpg] http://apt.vendor.example/repo bookworm main\n"}
    assert resolve_sources(Distribution(), apt_dir(tmp_path, files)).main == MAIN


def test_spec_mirrors_override_the_host(tmp_path: Path) -> None:
    dist = Distribution(mirror="http://local.example/debian/", security_mirror="http://local.example/debian-security")
    src = resolve_sources(dist, tmp_path / "no-apt-dir")  # the host is not consulted at all
    assert src.main == "http://local.example/debian" and src.security == "http://local.example/debian-security"


def test_spec_mirror_with_the_security_mirror_from_the_host(tmp_path: Path) -> None:
    src = resolve_sources(Distribution(mirror="http://local.example/debian"), apt_dir(tmp_path, HOST))
    assert (src.main, src.security) == ("http://local.example/debian", SEC)


def test_security_off(tmp_path: Path) -> None:
    src = resolve_sources(Distribution(mirror="http://local.example/debian", security=False), tmp_path / "none")
    assert src.security is None and src.lines() == ["deb http://local.example/debian bookworm main"]


def test_components_are_passed_on(tmp_path: Path) -> None:
    src = resolve_sources(Distribution(components=["main", "contrib"], security=False), apt_dir(tmp_path, HOST))
    assert src.lines() == [f"deb {MAIN} bookworm main contrib"]


def test_no_host_source_for_the_suite_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as info:
        resolve_sources(Distribution(suite="trixie"), apt_dir(tmp_path, HOST))
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "'trixie'" in text and "distribution.mirror" in text


def test_missing_security_source_is_an_error_not_silently_dropped(tmp_path: Path) -> None:
    host = {"sources.list": f"deb {MAIN} bookworm main\n"}
    with pytest.raises(BuildError) as info:
        resolve_sources(Distribution(), apt_dir(tmp_path, host))
    text = str(info.value)
    assert "bookworm-security" in text and "distribution.security_mirror" in text and "distribution.security = false" in text


@pytest.mark.parametrize(("snapshot", "security"), [
    ("http://snapshot.example/archive/debian/20250101T000000Z", "http://snapshot.example/archive/debian-security/20250101T000000Z"),
    ("http://snapshot.example/archive/debian", "http://snapshot.example/archive/debian-security"),
    ("http://debian/archive/debian/20250101T000000Z", "http://debian/archive/debian-security/20250101T000000Z"),
    ("http://snapshot.example/debian-archive/debian/20250101T000000Z",
     "http://snapshot.example/debian-archive/debian-security/20250101T000000Z"),
])
def test_snapshot_maps_debian_to_debian_security(tmp_path: Path, snapshot: str, security: str) -> None:
    src = resolve_sources(Distribution(snapshot=snapshot, mirror="http://ignored.example/debian"), tmp_path / "none")
    assert (src.main, src.security) == (snapshot, security)


def test_snapshot_without_a_debian_path_needs_security_off(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="distribution.security = false"):
        resolve_sources(Distribution(snapshot="http://snapshot.example/frozen"), tmp_path / "none")
    src = resolve_sources(Distribution(snapshot="http://snapshot.example/frozen", security=False), tmp_path / "none")
    assert src.lines() == ["deb http://snapshot.example/frozen bookworm main"]
