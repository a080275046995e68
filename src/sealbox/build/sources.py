"""Where packages come from: the spec's mirror/snapshot, else the Debian mirror in the host's apt sources."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sealbox.errors import BuildError
from sealbox.spec.model import Distribution

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class AptEntry:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def _parse_one_line(text: str) -> list[AptEntry]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = re.sub(r"\[[^]]*\]", "", line).split()  # drop [options]
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
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
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


def resolve_sources(dist: Distribution, apt_dir: Path = APT_DIR) -> Sources:
    comps = tuple(dist.components)
    if dist.snapshot:
        # a dated snapshot archive serves debian/ and debian-security/ side by side
        base = dist.snapshot
        sec = re.sub(r"/debian(/|$)", r"/debian-security\1", base, count=1) if "/debian" in base else None
        return Sources(base, sec if dist.security else None, dist.suite, comps)
    main, security = dist.mirror, dist.security_mirror
    if not main or (dist.security and not security):
        entries = host_apt_entries(apt_dir)
        if not main:
            cands = [e.uri for e in entries if dist.suite in e.suites and "main" in e.components]
            if not cands:
                raise BuildError(
                    f"no apt source for suite '{dist.suite}' found in {apt_dir}/sources.list(.d)",
                    hint="set distribution.mirror in the spec",
                )
            main = cands[0]
        if dist.security and not security:
            cands = [e.uri for e in entries if f"{dist.suite}-security" in e.suites]
            security = cands[0] if cands else ""
    return Sources(main, (security or None) if dist.security else None, dist.suite, comps)
