"""Constants shared by the guest scripts (files/*.sh, substituted at build time) and the host side."""

from __future__ import annotations

HOSTKEY = "SEALBOX-HOSTKEY"  # console: one line per host key, before READY (also in a restore answer)
READY = "SEALBOX-READY"  # console: the guest is ready; nothing after it is trusted
INSTANCE_MAGIC = "SEALBOX-INSTANCE-V2"  # first line of the instance disk (the schema version: guest/instance.py)
INSTANCE_END = "END"  # last line of the instance disk's text block

# The restore agent (files/agent.sh) on a virtio-serial port; docs/guest-protocol.md describes the exchange.
AGENT_PORT = "org.sealbox.agent.0"  # the port's name, as the guest finds it in /sys/class/virtio-ports/*/name
AGENT_HELLO = "SEALBOX-AGENT-V1"  # the agent's first line once the host is connected
RESTORE_REQUEST = "SEALBOX-RESTORE-V1"  # host -> guest: `<magic> <nonce>`, time=, END, then the entropy's bytes
RESTORED = "SEALBOX-RESTORED"  # guest -> host: `<marker> <nonce>`, the host key, its signature, RESTORE_END
RESTORE_END = "SEALBOX-RESTORE-END"
RESTORE_FAILED = "SEALBOX-RESTORE-FAILED"  # guest -> host: `<marker> <nonce> <step>`
RESTORE_SIG_NAMESPACE = "restore@sealbox"  # SSHSIG namespace of the agent's signature with the new host key

# @NAME@ in a guest file is replaced by the value (see files.read)
PLACEHOLDERS = {
    "SEALBOX_HOSTKEY": HOSTKEY,
    "SEALBOX_READY": READY,
    "SEALBOX_INSTANCE_MAGIC": INSTANCE_MAGIC,
    "SEALBOX_INSTANCE_END": INSTANCE_END,
    "SEALBOX_AGENT_PORT": AGENT_PORT,
    "SEALBOX_AGENT_HELLO": AGENT_HELLO,
    "SEALBOX_RESTORE_REQUEST": RESTORE_REQUEST,
    "SEALBOX_RESTORED": RESTORED,
    "SEALBOX_RESTORE_END": RESTORE_END,
    "SEALBOX_RESTORE_FAILED": RESTORE_FAILED,
    "SEALBOX_RESTORE_SIG_NAMESPACE": RESTORE_SIG_NAMESPACE,
}
