"""output.formats = ["oci"] end to end: a small spec built by `sealbox build` (no kernel), loaded by Debian's podman
and run: the container prints what the spec put in (a files[] entry, env from [oci], the user, the workdir).
skopeo, GNU tar and sha256sum check the archive independently; verify-reproducible builds it twice."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from oci_podman import podman

from imagecache import spec_image

pytestmark = pytest.mark.integration

SPEC = """\
name = "ocitest"
[packages]
include = ["passwd"]  # useradd, for [users.app]
[users.app]
[[files]]
source = "files"
dest = "/opt/app"
[oci]
entrypoint = ["/bin/sh", "-c"]
cmd = ['cat /opt/app/hello; echo "greeting=$GREETING"; echo "user=$(id -un):$(id -gn) uid=$(id -u)"; echo "pwd=$(pwd)"']
env = { GREETING = "hello from [oci].env" }
user = "app"
workdir = "/opt/app"
compression_level = 1
[output]
formats = ["oci"]
"""
FILES = {"files/hello": "hello from files[]\n"}
EXPECTED = ["hello from files[]", "greeting=hello from [oci].env", "user=app:app uid=1000", "pwd=/opt/app"]


@pytest.fixture(scope="module")
def built() -> Path:
    return Path(spec_image("oci-small", SPEC, files=FILES))


def _manifest(built: Path) -> dict[str, Any]:
    m: dict[str, Any] = json.loads((built / "manifest.json").read_text())
    return m


def test_an_oci_build_has_no_kernel(built: Path) -> None:
    m = _manifest(built)
    assert sorted(p.name for p in built.iterdir()) == ["manifest.json", "ocitest.oci.tar"]
    assert m["kernel"] is None and m["downloads"] == [] and m["boot"] == {}
    assert m["oci"]["file"] == "ocitest.oci.tar" and m["oci"]["reference"] == "localhost/ocitest:latest"
    assert m["artifacts"]["ocitest.oci.tar"]["size"] == (built / "ocitest.oci.tar").stat().st_size


def test_podman_loads_and_runs_what_the_spec_put_in(built: Path) -> None:
    m = _manifest(built)
    with podman() as pm:
        out = pm("load", "-i", str(built / "ocitest.oci.tar")).stdout
        assert "Loaded image: localhost/ocitest:latest" in out, out
        [info] = json.loads(pm("image", "inspect", "localhost/ocitest:latest").stdout)
        assert "sha256:" + info["Id"] == m["oci"]["config_digest"]  # podman's image ID is the config digest
        assert info["Digest"] == m["oci"]["manifest_digest"]
        run = pm("run", "--rm", "--pull=never", "--network=none", *pm.run_args(), "localhost/ocitest:latest")
        assert run.stdout.splitlines() == EXPECTED, run.stdout + run.stderr
        # the runtime, not the image, makes the root read-only (the VM guest protocol's job is podman's here)
        ro = pm("run", "--rm", "--pull=never", "--network=none", "--read-only", "--user", "root", *pm.run_args(),
                "localhost/ocitest:latest", "touch /opt/app/x 2>&1; id -un")
        assert "Read-only file system" in ro.stdout and ro.stdout.endswith("root\n"), ro.stdout
        pm("rmi", "localhost/ocitest:latest")
        assert pm("images", "--quiet").stdout.strip() == ""


def test_skopeo_reads_the_archive_as_sealbox_wrote_it(built: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (run scripts/setup.sh)")
    m = _manifest(built)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": os.environ.get("TMPDIR") or "/var/tmp"}  # noqa: S108
    ref = f"oci-archive:{built / 'ocitest.oci.tar'}"
    info = json.loads(subprocess.run(["skopeo", "inspect", ref], capture_output=True, text=True, check=True, env=env).stdout)
    assert info["Digest"] == m["oci"]["manifest_digest"] and info["Layers"] == [m["oci"]["layer_digest"]]
    assert info["Created"] == "2025-01-01T00:00:00Z" and info["Architecture"] == "amd64" and info["Os"] == "linux"
    config = json.loads(subprocess.run(["skopeo", "inspect", "--config", ref], capture_output=True, text=True, check=True,
                                       env=env).stdout)
    assert config["config"]["User"] == "app" and config["config"]["WorkingDir"] == "/opt/app"
    assert config["config"]["Entrypoint"] == ["/bin/sh", "-c"] and len(config["config"]["Cmd"]) == 1
    assert "GREETING=hello from [oci].env" in config["config"]["Env"]
    assert any(e.startswith("PATH=/usr/local/sbin:") for e in config["config"]["Env"])
    assert config["rootfs"]["diff_ids"] == [m["oci"]["diff_id"]]


def test_blobs_are_named_by_their_sha256_and_the_layer_holds_nothing_per_host(built: Path, tmp_path: Path) -> None:
    m = _manifest(built)
    subprocess.run(["tar", "-xf", str(built / "ocitest.oci.tar"), "-C", str(tmp_path)], check=True)
    blobs = sorted((tmp_path / "blobs/sha256").iterdir())
    sums = subprocess.run(["sha256sum", *map(str, blobs)], capture_output=True, text=True, check=True).stdout.split()
    assert sums[0::2] == [b.name for b in blobs]
    layer = tmp_path / "blobs/sha256" / m["oci"]["layer_digest"][7:]
    plain = subprocess.run(["gzip", "-dc", str(layer)], capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(plain).hexdigest() == m["oci"]["diff_id"]
    listing = subprocess.run(["tar", "-tvzf", str(layer), "--numeric-owner", "--full-time"], capture_output=True, text=True,
                             check=True, env={"PATH": "/usr/bin:/bin", "TZ": "UTC", "LC_ALL": "C.UTF-8"}).stdout.splitlines()
    names = [line.split(None, 5)[5].split(" -> ")[0].split(" link to ")[0].rstrip("/") for line in listing]
    assert names == sorted(names, key=os.fsencode) and len(names) == m["oci"]["layer_entries"]
    assert all(f"{line.split()[3]} {line.split()[4]}" <= "2025-01-01 00:00:00" for line in listing)  # clamped to the epoch
    by = {n: line for n, line in zip(names, listing, strict=True)}
    assert by["opt/app/hello"].split()[1] == "0/0" and by["home/app"].split()[1] == "1000/1000"
    for gone in ("etc/resolv.conf", "usr/lib/sealbox", "init", "usr/lib/modules", "var/lib/apt/lists", "usr/share/man"):
        assert gone not in by, gone
    assert [n for n in names if n.startswith(("dev/", "etc/ssh/ssh_host_", "var/log/", "tmp/"))] == []
    with tarfile.open(layer, "r:gz") as tf:
        files = {n: tf.extractfile(n).read() for n in ("etc/hostname", "etc/passwd", "etc/shadow")}  # type: ignore[union-attr]
    assert files["etc/hostname"] == b"localhost\n" and b"app:x:1000:1000" in files["etc/passwd"]
    assert files["etc/shadow"].startswith(b"root:!*:")
    host = socket.gethostname().encode()
    if len(host) >= 6:  # a name this long does not turn up by chance
        assert host not in plain


@pytest.mark.slow
def test_verify_reproducible_covers_the_oci_archive(built: Path, tmp_path: Path) -> None:
    spec = built.parent / "specs" / "oci-small" / "spec.toml"
    lock = built.parent / "oci-small.sealbox.lock"
    shutil.copyfile(lock, spec.with_suffix(".lock"))  # the locked versions of the build above
    proc = subprocess.run([sys.executable, "-m", "sealbox", "verify-reproducible", str(spec), "--json",
                           "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(proc.stdout)
    assert report["reproducible"] is True, json.dumps(report["artifacts"], indent=1)[:3000]
    assert report["artifacts"] == {"manifest.json": {"identical": True}, "ocitest.oci.tar": {"identical": True}}
