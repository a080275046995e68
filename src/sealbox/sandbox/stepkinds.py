"""Import every module of `sealbox.sandbox` so a record's step kinds can be rebuilt for undo.

Steps register themselves when their class is defined (steps._REGISTRY); `rm`, `gc` and a failed
`run` replay records that may name kinds this process never imported (a QEMU step during `rm` of a
sandbox started by another process). The walk finds every module itself: a new step kind needs no
list to be kept by hand. Deferred to here so `ps` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

import sealbox.sandbox


@functools.cache
def load_all() -> tuple[str, ...]:
    """Import the whole sandbox package once; returns the module names imported."""
    names = [m.name for m in pkgutil.walk_packages(sealbox.sandbox.__path__, prefix="sealbox.sandbox.")]
    for name in names:
        importlib.import_module(name)
    return tuple(names)
