"""`sealbox fleet ...`: bad input is one line naming the value and a non-zero exit, before anything is started;
the ray start command lines keep Ray local. No Ray cluster needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sealbox.errors import UsageError
from sealbox.fleet import join, rayenv


def sealbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sealbox", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "says"), [
    (["join", "10.0.0.1:6380", "--node-ip", "not-an-ip", "--cpus", "1", "--memory", "64"], "'not-an-ip' is not an IP address"),
    (["join", "10.0.0.1:6380", "--node-ip", "10.0.0.2", "--label", "zone"], "host label 'zone' is not KEY=VALUE"),
    (["join", "10.0.0.1:6380", "--node-ip", "10.0.0.2", "--label", "zone=a,b"], "host label 'zone=a,b'"),
    (["join", "10.0.0.1:6380", "--node-ip", "10.0.0.2", "--label", "a=\x1b[2J"], "host label"),
    (["head", "--node-ip", "::zz"], "'::zz' is not an IP address"),
])
def test_bad_input_is_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    proc = sealbox("fleet", *args, "--temp-dir", str(tmp_path / "ray"))
    assert proc.returncode != 0
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "ray").exists()  # nothing was started


def test_labels() -> None:
    assert join.parse_labels(["zone=b", "sealbox.tdx=true", "example.com/rack=r-1", "empty="]) == {
        "zone": "b", "sealbox.tdx": "true", "example.com/rack": "r-1", "empty": ""}
    for bad in ("=x", "-a=b", "a=b c", "a=" + "v" * 64, "a/b/c=d", "a=b=c"):
        with pytest.raises(UsageError):
            join.parse_labels([bad])


def test_ray_is_started_local_and_quiet(tmp_path: Path) -> None:
    head = rayenv.start_argv(node_ip="10.0.0.1", temp_dir=tmp_path, head=True, port=7000)
    worker = rayenv.start_argv(node_ip="10.0.0.2", temp_dir=tmp_path, address="10.0.0.1:7000",
                               resources={rayenv.RES_VCPUS: 2.0}, labels={"sealbox.host": "h", "sealbox.zone": "b"})
    for argv in (head, worker):
        assert "--disable-usage-stats" in argv and "--block" in argv
        assert argv[argv.index("--node-ip-address") + 1] in ("10.0.0.1", "10.0.0.2")
    assert head[head.index("--include-dashboard") + 1] == "false"
    assert "--include-dashboard" not in worker  # ray start refuses it on a worker
    assert worker[worker.index("--labels") + 1] == "sealbox.host=h,sealbox.zone=b"
    assert rayenv.safe_environ({"RAY_USAGE_STATS_ENABLED": "1"})["RAY_USAGE_STATS_ENABLED"] == "0"


def test_single_host_use_never_imports_ray() -> None:
    code = ("import sys, sealbox; sealbox.Sandbox; sealbox.Pool; import sealbox.cli.main, sealbox.cli.fleet, sealbox.fleet.wire;"
            "assert sealbox.Fleet.__name__ == 'Fleet';"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
