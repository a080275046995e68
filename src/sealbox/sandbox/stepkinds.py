"""Import every module that defines a Step kind, so a record's steps can be rebuilt for undo.

Steps register themselves when their class is defined (steps._REGISTRY); `rm`, `gc` and a failed
`run` replay records that may name kinds this process never imported (a QEMU step during `rm` of a
sandbox started by another process). Imports are deferred to here so `ps` stays fast.
"""

from __future__ import annotations

import importlib

STEP_MODULES = (
    "sealbox.sandbox.host.ipam",
    "sealbox.sandbox.host.netns",
    "sealbox.sandbox.host.firewall",
    "sealbox.sandbox.host.netlink",
    "sealbox.sandbox.host.cgroups",
    "sealbox.sandbox.host.consolefs",
    "sealbox.sandbox.guest.instance",
    "sealbox.sandbox.vmm.qemu_launch",
    "sealbox.sandbox.vmm.firecracker.staging",
    "sealbox.sandbox.vmm.firecracker.launch",
)


def load_all() -> None:
    for module in STEP_MODULES:
        importlib.import_module(module)
