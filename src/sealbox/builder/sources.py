"""Where packages come from: the spec's mirror/snapshot, else the Debian mirror in the host's apt sources."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sealbox.errors import BuildError
from sealbox.spec.model import Distribution

APT_DIR = Path("/etc/apt")
APT_FALSE = {"no", "false", "without", "off", "disable"}  # the spellings apt reads as false


@dataclass(frozen=True)
class AptEntry:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def _parse_one_line(text: str) -> list[AptEntry]:
    out = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()  # drop comments and [options]
        if words[:1] != ["deb"]:  # any whitespace separates fields, tabs too
            continue
        if len(words) >= 3:
            out.append(AptEntry(words[1].rstrip("/"), (words[2],), tuple(words[3:])))
    return out


def _parse_deb822(text: str) -> list[AptEntry]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() in APT_FALSE:
            continue
        for uri in fields.get("uris", "").split():
            out.append(AptEntry(uri.rstrip("/"), tuple(fields.get("suites", "").split()), tuple(fields.get("components", "").split())))
    return out


def host_apt_entries(apt_dir: Path = APT_DIR) -> list[AptEntry]:
    entries: list[AptEntry] = []
    files = [apt_dir / "sources.list"] + sorted((apt_dir / "sources.list.d").glob("*"))
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        if f.name.endswith(".list"):
            entries += _parse_one_line(text)
        elif f.name.endswith(".sources"):
            entries += _parse_deb822(text)
    return entries


@dataclass(frozen=True)
class Sources:
    """The apt source lines given to mmdebstrap, and the URLs recorded in the manifest."""

    main: str
    security: str | None
    suite: str
    components: tuple[str, ...]

    def lines(self) -> list[str]:
        comps = " ".join(self.components)
        out = [f"deb {self.main} {self.suite} {comps}"]
        if self.security is not None:
            out.append(f"deb {self.main} {self.suite}-updates {comps}")
            out.append(f"deb {self.security} {self.suite}-security {comps}")
        return out


def _last_segment(uri: str) -> str:
    return urlsplit(uri).path.rstrip("/").rsplit("/", 1)[-1]


def _pick(uris: list[str], segment: str) -> str | None:
    """The first URI laid out like the Debian archive (path ending in /debian or /debian-security), else the first.

    Vendor repositories often use the same suite and a 'main' component; they must not become the mirror.
    """
    return next((u for u in uris if _last_segment(u) == segment), uris[0] if uris else None)


def _snapshot_security(base: str) -> str | None:
    """A dated snapshot archive serves debian/ and debian-security/ side by side: swap that path segment."""
    parts = urlsplit(base)
    segs = parts.path.split("/")
    idx = [i for i, s in enumerate(segs) if s == "debian"]
    if not idx:
        return None
    segs[idx[-1]] = "debian-security"
    return urlunsplit(parts._replace(path="/".join(segs)))


def resolve_sources(dist: Distribution, apt_dir: Path = APT_DIR) -> Sources:
    comps = tuple(dist.components)
    no_security = f"set distribution.security_mirror, or distribution.security = false to build without {dist.suite}-security"
    if dist.snapshot:
        sec = _snapshot_security(dist.snapshot) if dist.security else None
        if dist.security and sec is None:
            raise BuildError(f"cannot derive the {dist.suite}-security snapshot from distribution.snapshot {dist.snapshot!r} "
                             "(no /debian/ path segment)", hint="set distribution.security = false or use a .../debian/<date> URL")
        return Sources(dist.snapshot, sec, dist.suite, comps)
    main, security = dist.mirror, dist.security_mirror
    if not main or (dist.security and not security):
        entries = host_apt_entries(apt_dir)
        if not main:
            main = _pick([e.uri for e in entries if dist.suite in e.suites and "main" in e.components], "debian") or ""
            if not main:
                raise BuildError(
                    f"no apt source for suite '{dist.suite}' found in {apt_dir}/sources.list(.d)",
                    hint="set distribution.mirror in the spec",
                )
        if dist.security and not security:
            security = _pick([e.uri for e in entries if f"{dist.suite}-security" in e.suites], "debian-security") or ""
            if not security:  # never drop security updates silently
                raise BuildError(f"no apt source for '{dist.suite}-security' found in {apt_dir}/sources.list(.d)", hint=no_security)
    return Sources(main, security if dist.security else None, dist.suite, comps)
