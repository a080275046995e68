"""Why a shared library the link check misses is missing, and what would fix it.

Two different causes need different fixes: stripping removed a library that an installed package
shipped (keep it, or turn the strip group off), or the library was never installed at all, usually
because it belongs to a package that another one only recommends, such as libatm1 for iproute2's
tc plug-in q_atm.so (install that package, or strip the plug-in). The image's own dpkg status file, which
stripping leaves in place, tells which: the library's package is guessed from its soname by Debian's
naming policy and looked up there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

STATUS = "var/lib/dpkg/status"
RELATIONS = ("Pre-Depends", "Depends", "Recommends", "Suggests")
MAX_STATUS_BYTES = 64 << 20


def package_candidates(soname: str) -> list[str]:
    """Debian package names a library with this soname is normally shipped in (policy 8.1), best first.

    libatm.so.1 -> libatm1, libfoo2.so.3 -> libfoo2-3, libdb-5.3.so -> libdb5.3; '_' becomes '-'.
    A t64 variant is added for the 64-bit time_t renames of later suites.
    """
    m = re.fullmatch(r"(.+?)\.so(?:\.(.+))?", soname)
    if not m:
        return []
    stem, version = m.group(1).lower().replace("_", "-"), m.group(2)
    if version:
        names = [f"{stem}-{version}" if stem[-1].isdigit() else f"{stem}{version}"]
    else:
        names = [stem.replace("-", "", 1) if re.search(r"-[0-9.]+$", stem) else stem, stem]
    out = list(dict.fromkeys(names))
    return out + [f"{n}t64" for n in out]


@dataclass
class DpkgStatus:
    installed: set[str] = field(default_factory=set)
    wanted_by: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # package -> [(by, relation)]


def read_status(tree: Path) -> DpkgStatus | None:
    """Installed packages and who names which package in a relation; None if the image has no status."""
    path = tree / STATUS
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, "rb") as f:
            text = f.read(MAX_STATUS_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    out = DpkgStatus()
    for stanza in text.split("\n\n"):
        fields = _fields(stanza)
        name = fields.get("Package")
        if not name or not fields.get("Status", "").endswith(" installed"):
            continue
        out.installed.add(name)
        for rel in RELATIONS:
            for alt in fields.get(rel, "").replace("|", ",").split(","):
                dep = alt.strip().split(" ", 1)[0].split(":", 1)[0]
                if dep:
                    out.wanted_by.setdefault(dep, []).append((name, rel))
    return out


def _fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def hint(missing: dict[str, list[str]], status: DpkgStatus | None) -> str:
    """One line of advice for {library: [needing files]} (files as the guest sees them)."""
    never, stripped, unknown = [], [], []
    for lib, users in sorted(missing.items()):
        cands = package_candidates(lib)
        installed = next((c for c in cands if status and c in status.installed), None)
        known = next((c for c in cands if status and c in status.wanted_by), None)
        if installed:
            stripped.append(f"{lib} (package {installed} is installed)")
        elif known and status:
            by = ", ".join(f"{who} {rel.lower()}" for who, rel in status.wanted_by[known][:3])
            plugins = ", ".join(f'"{u}"' for u in sorted(users)[:4])
            never.append(f"{lib} was never installed ({by} {known}, which is not in the image): add {known} to "
                         f"packages.include, or strip what needs it with strip.paths = [{plugins}]")
        else:
            unknown.append((lib, users))
    parts = never[:]
    if stripped:
        parts.append(f"stripping removed {', '.join(stripped)}: add the library to strip.keep or turn the strip group off")
    for lib, users in unknown:
        parts.append(f"{lib}: if stripping removed it, add it to strip.keep or turn the strip group off; if no installed "
                     f"package ships it, add the one that does to packages.include or strip {sorted(users)[0]} with strip.paths")
    return "; ".join(parts)
