"""TCG event type names (PC Client Platform Firmware Profile, "Event Types") and short,
best-effort descriptions of event data for humans. Descriptions never raise: event data is
untrusted and only decorates the output; replay uses the digests alone.
"""

from __future__ import annotations

import struct

EV_NO_ACTION = 0x3

EVENT_TYPES: dict[int, str] = {
    0x0: "EV_PREBOOT_CERT",
    0x1: "EV_POST_CODE",
    0x2: "EV_UNUSED",
    0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION",
    0x6: "EV_EVENT_TAG",
    0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION",
    0x9: "EV_CPU_MICROCODE",
    0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES",
    0xC: "EV_COMPACT_HASH",
    0xD: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x13: "EV_POST_CODE2",
    0x80000000: "EV_EFI_EVENT_BASE",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x8000000D: "EV_EFI_GPT_EVENT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
    0x800000E3: "EV_EFI_SPDM_DEVICE_POLICY",
    0x800000E4: "EV_EFI_SPDM_DEVICE_AUTHORITY",
}

_VARIABLE_TYPES = {0x80000001, 0x80000002, 0x8000000C, 0x800000E0}
_IMAGE_TYPES = {0x80000003, 0x80000004, 0x80000005}
_TEXT_TYPES = {0x1, 0x4, 0x5, 0x7, 0x8, 0xD, 0x80000007}
_MAX_DESC = 120


def type_name(event_type: int) -> str:
    return EVENT_TYPES.get(event_type, f"0x{event_type:08X}")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DESC else text[: _MAX_DESC - 1] + "…"


def _printable(data: bytes) -> str | None:
    """ASCII or UTF-16LE text if the bytes look like text, else None."""
    for enc, trimmed in (("ascii", data.rstrip(b"\0")), ("utf-16-le", data.rstrip(b"\0"))):
        if enc == "utf-16-le":
            if len(trimmed) % 2:
                trimmed += b"\0"
            if len(trimmed) < 2 or any(trimmed[1::2]):
                continue
        try:
            text = trimmed.decode(enc)
        except UnicodeDecodeError:
            continue
        if text and all(c.isprintable() or c in "\t\n" for c in text):
            return text
    return None


def _variable(data: bytes) -> str | None:
    # UEFI_VARIABLE_DATA: GUID 16, name length (chars) u64, data length u64, UTF-16 name, data
    if len(data) < 32:
        return None
    name_len, data_len = struct.unpack_from("<QQ", data, 16)
    if name_len > (len(data) - 32) // 2:
        return None
    name = data[32 : 32 + 2 * name_len].decode("utf-16-le", "replace")
    return f"variable {name} ({data_len} bytes)"


def _image(data: bytes) -> str | None:
    # UEFI_IMAGE_LOAD_EVENT: location u64, length u64, link-time address u64, device path length u64
    if len(data) < 32:
        return None
    _, length, _, dp_len = struct.unpack_from("<QQQQ", data, 0)
    return f"image of {length} bytes, device path {dp_len} bytes"


def _blob2(data: bytes) -> str | None:
    # UEFI_PLATFORM_FIRMWARE_BLOB2 / HANDOFF_TABLES2: u8 description size + description, then more
    if not data or data[0] + 1 > len(data):
        return None
    return _printable(data[1 : 1 + data[0]])


def describe(event_type: int, data: bytes) -> str:
    """A short human description of the event data ('' if nothing useful can be said)."""
    try:
        text: str | None = None
        if event_type in _VARIABLE_TYPES:
            text = _variable(data)
        elif event_type in _IMAGE_TYPES:
            text = _image(data)
        elif event_type in (0x8000000A, 0x8000000B):
            text = _blob2(data)
        elif event_type == 0x6 and len(data) >= 8:
            tag, size = struct.unpack_from("<II", data, 0)
            body = _printable(data[8 : 8 + size])
            text = f"tag {tag:#x}: {body}" if body else f"tag {tag:#x} ({size} bytes)"
        elif event_type in _TEXT_TYPES or event_type == EV_NO_ACTION:
            text = _printable(data)
        if text is None:
            text = _printable(data) or ""
        return _clip(text)
    except Exception:  # noqa: BLE001 - decoration only; the digests are what count
        return ""
