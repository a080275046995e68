"""One boot of the default image (TCG) with instance data V2: a non-root user's key works, /etc/resolv.conf holds
the resolvers, and the guest hashed exactly the instance data the host recorded (what MRCONFIGID binds in a TD).

`run` fills `users` from the image's declared users and `dns` from the DNS forwarder of a nat sandbox; the default
image declares no login user and this sandbox is isolated, so a STAND-IN wraps `sealbox run` and sets both: the key
for `nobody` (its shell is nologin, so a working key gets nologin's message instead of "Permission denied"), and the
link's host address plus a documentation address as resolvers.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rt_integ import Sealbox

pytestmark = [pytest.mark.integration, pytest.mark.boot]

STAND_IN = r"""
import sys
from sealbox.cli.main import main
from sealbox.sandbox import lifecycle

real = lifecycle.InstanceFilesStep

def with_users_and_dns(**kw):  # STAND-IN: a declared user and two resolvers for an isolated default sandbox
    return real(**{**kw, "users": ("nobody",), "dns": (kw["gateway"], "192.0.2.53")})

lifecycle.InstanceFilesStep = with_users_and_dns
sys.exit(main(sys.argv[1:]))
"""


def test_user_keys_resolvers_and_binding_in_a_booted_guest(sealbox: Sealbox) -> None:
    name = f"{sealbox.prefix}-inst"
    args = sealbox.run_args(name, "--json")
    proc = subprocess.run([sys.executable, "-c", STAND_IN, *args], capture_output=True, text=True, env=sealbox.env, timeout=420)
    try:
        assert proc.returncode == 0, proc.stderr[-1500:]
        rec = sealbox.record(name)
        assert rec is not None
        gateway = rec["network"]["host_ip"]
        (inst,) = [e for e in rec["steps"]["entries"] if e["kind"] == "instance-files"]

        out = sealbox.exec(name, "sh", "-c", "readlink /etc/resolv.conf; cat /etc/resolv.conf; cat /run/sealbox/instance.binding; "
                                             "ls /run/sealbox/authorized_keys; hostname")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "/run/sealbox/resolv.conf",
            "# sealbox: resolvers from the instance data", f"nameserver {gateway}", "nameserver 192.0.2.53",
            f"not-a-td sha384={inst['outputs']['mrconfigid']}",  # the guest's hash of what it applied = the host's record
            "nobody", "root",
            name,
        ]

        as_nobody = sealbox("exec", "--user", "nobody", name, "--", "true", timeout=60)
        # the key was accepted: sshd started nobody's shell, which is nologin
        assert as_nobody.returncode == 1 and "This account is currently not available." in as_nobody.stdout + as_nobody.stderr
        as_daemon = sealbox("exec", "--user", "daemon", name, "--", "true", timeout=60)
        assert as_daemon.returncode == 255 and "Permission denied (publickey)" in as_daemon.stderr  # no key for daemon
    finally:
        sealbox("rm", "--force", name, timeout=120)
    assert all(r["name"] != name for r in json.loads(sealbox("ps", "--all", "--json").stdout))
