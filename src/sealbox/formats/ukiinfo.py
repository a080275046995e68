"""What systemd-stub 252 sees in a UKI: its sections, the kernel, the initrd and the command line.

Facts from systemd v252 (src/boot/efi/pe.c, stub.c, util.c, fundamental/tpm-pcr.c):
- sections are matched by comparing the first strlen(name) bytes of the 8-byte header name, the last
  matching header wins, and the length used is its VirtualSize (pe.c locate_sections);
- PCR 11 receives, in this fixed order and only for sections present with a non-zero size:
  .linux .osrel .cmdline .initrd .splash .dtb .pcrpkey (.pcrsig is never measured; .uname and .sbat
  are not known to 252), each as two EV_IPL events: the name including its NUL, then the content;
- the command line handed to the kernel is the .cmdline content up to the first NUL, converted from
  UTF-8 to UCS-2, with control characters turned into spaces and trailing spaces removed
  (mangle_stub_cmdline); the kernel receives it as LoadOptions including the UCS-2 NUL terminator.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sealbox.errors import MeasureError
from sealbox.formats.pe import PEImage, parse_pe

# systemd v252 fundamental/tpm-pcr.h UnifiedSection order; .pcrsig is excluded from measurement.
STUB252_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrsig", ".pcrpkey")
STUB252_MEASURED = tuple(s for s in STUB252_SECTIONS if s != ".pcrsig")


@dataclass(frozen=True)
class UkiInfo:
    data: bytes
    pe: PEImage
    sections: dict[str, bytes]  # name -> content (VirtualSize bytes) as systemd-stub 252 finds it

    @property
    def kernel(self) -> bytes:
        return self.sections[".linux"]

    @property
    def initrd(self) -> bytes | None:
        return self.sections.get(".initrd") or None

    @property
    def uname(self) -> str | None:
        raw = self.sections.get(".uname")
        return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip() if raw else None

    def measured_sections(self) -> list[tuple[str, bytes]]:
        """(name, content) in the order systemd-stub 252 extends them into PCR 11."""
        return [(n, self.sections[n]) for n in STUB252_MEASURED if self.sections.get(n)]

    def load_options(self) -> bytes | None:
        """The UCS-2 LoadOptions (with NUL) the stub passes to the kernel, or None without .cmdline."""
        raw = self.sections.get(".cmdline")
        if not raw:
            return None
        return stub_cmdline_to_load_options(raw)


def stub_cmdline_to_load_options(raw: bytes) -> bytes:
    text_bytes = raw.split(b"\0", 1)[0]
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise MeasureError(
            ".cmdline section is not valid UTF-8", hint="rebuild the UKI with a plain ASCII command line"
        ) from None
    if any(ord(c) > 0xFFFF or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        # 252 silently drops these; predicting that is possible but nobody should rely on it.
        raise MeasureError(".cmdline section has characters outside the UCS-2 range", hint="use ASCII")
    text = "".join(" " if ord(c) <= 0x1F else c for c in text).rstrip(" ")
    return text.encode("utf-16-le") + b"\0\0"


def section_digests(info: UkiInfo) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name, content in info.sections.items():
        out[name] = {
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "sha384": hashlib.sha384(content).hexdigest(),
        }
    return out


def read_uki(data: bytes, what: str = "UKI") -> UkiInfo:
    pe = parse_pe(data, what)
    sections: dict[str, bytes] = {}
    for s in pe.sections:  # later headers override earlier ones, as in the stub
        sections[s.name] = pe.content(data, s)
        for known in STUB252_SECTIONS:
            if s.raw_name.startswith(known.encode()):
                sections[known] = pe.content(data, s)
    if not sections.get(".linux"):
        raise MeasureError(f"{what}: no .linux section, so this is not a unified kernel image",
                           hint="pass the <name>.efi UKI of a sealbox build")
    parse_pe(sections[".linux"], f"{what} .linux section")  # the embedded kernel must itself be a PE
    return UkiInfo(data=data, pe=pe, sections=sections)
