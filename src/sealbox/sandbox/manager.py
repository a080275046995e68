"""The sandbox runtime's public API (the CLI calls only these).

    run(spec, state)            -> summary once the guest is ready (lifecycle.py)
    dry_run(spec, state)        -> every step, the VMM argv/config; nothing created
    ps / inspect / follow_logs / stop / remove / exec_command / interactive   (control.py)
    collect(state)              -> gc report (gc.py)
    make_spec(**flags)          -> validated SandboxSpec (planning.py)

Module map: image.py (image dir + manifest), planning.py (flags -> backend, accel, VmPlan),
lifecycle.py (run + readiness), control.py (verbs on existing sandboxes), status.py (real status),
gc.py (dead sandboxes and leftovers), guest/ (instance disk, console markers, ssh).
"""

from __future__ import annotations

from sealbox.sandbox.control import exec_command, follow_logs, inspect, interactive, ps, remove, ssh_target, stop
from sealbox.sandbox.gc import collect
from sealbox.sandbox.lifecycle import dry_run, run
from sealbox.sandbox.planning import make_spec

__all__ = ["collect", "dry_run", "exec_command", "follow_logs", "inspect", "interactive", "make_spec", "ps", "remove", "run",
           "ssh_target", "stop"]
