"""Constants shared by the guest scripts (files/*.sh, substituted at build time) and the host side."""

from __future__ import annotations

HOSTKEY = "SEALBOX-HOSTKEY"  # console: one line per host key, before READY
READY = "SEALBOX-READY"  # console: the guest is ready; nothing after it is trusted
INSTANCE_MAGIC = "SEALBOX-INSTANCE-V2"  # first line of the instance disk (the schema version: guest/instance.py)
INSTANCE_END = "END"  # last line of the instance disk's text block

# @NAME@ in a guest file is replaced by the value (see files.read)
PLACEHOLDERS = {
    "SEALBOX_HOSTKEY": HOSTKEY,
    "SEALBOX_READY": READY,
    "SEALBOX_INSTANCE_MAGIC": INSTANCE_MAGIC,
    "SEALBOX_INSTANCE_END": INSTANCE_END,
}
