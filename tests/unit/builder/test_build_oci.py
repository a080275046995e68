"""The builder's side of output.formats = ["oci"]: which steps run, the container's tree, the [oci] settings checked
against the finished tree, the lock's downloads, verify-reproducible's explanation and `run` refusing the image."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from sealbox.builder import oci as oci_step
from sealbox.builder.compare import explain
from sealbox.builder.container import configure_container
from sealbox.builder.lock import selection_of
from sealbox.builder.steps import STEPS
from sealbox.errors import BuildError, UsageError
from sealbox.formats import oci as fmt
from sealbox.sandbox import image
from sealbox.spec import load_spec
from sealbox.spec.model import Oci

PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n"


def fake_image(root: Path) -> Path:
    """A tree shaped like a Debian one (merged /usr) with the files the container steps look at."""
    for d in ("usr/bin", "etc", "dev/pts", "opt/app", "home/app"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/shadow").write_text("root:$6$x:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n")
    (root / "usr/bin/sh").write_bytes(b"\x7fELF")
    (root / "usr/bin/sh").chmod(0o755)
    (root / "usr/bin/data").write_text("not a program")
    return root


def _spec(tmp_path: Path, body: str = "") -> Path:
    spec = tmp_path / "spec" / "app.toml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text("name = 'app'\noutput.formats = ['oci']\n" + body)
    return spec


def test_an_oci_build_runs_no_kernel_step(tmp_path: Path) -> None:
    def wanted(formats: list[str]) -> list[str]:  # a cold build without the build cache (--no-cache)
        ctx = SimpleNamespace(formats=set(formats), layers=SimpleNamespace(enabled=False), lock=None, restored=None,
                              tree_needed=True)
        return [s.name for s in STEPS if s.wanted(ctx)]  # type: ignore[arg-type]

    assert wanted(["oci"]) == ["bootstrap", "lock", "configure", "strip", "link-check", "normalise", "oci", "manifest"]
    assert "kernel" in wanted(["initrd"]) and "oci" not in wanted(["initrd", "ext4", "uki"])
    loaded = load_spec(_spec(tmp_path))
    assert selection_of(loaded).downloads == []  # no kernel, stub or loader .deb is fetched or locked


def test_the_container_tree_has_no_host_or_device_files(tmp_path: Path) -> None:
    tree = fake_image(tmp_path / "tree")
    (tmp_path / "host-resolv.conf").write_text("nameserver 192.0.2.1\n")
    (tree / "etc/resolv.conf").write_text("nameserver 192.0.2.53\n")  # what the bootstrap copied from the build host
    (tree / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (tree / "etc/hostname").write_text("buildhost\n")
    os.mkfifo(tree / "dev/initctl")
    (tree / "dev/pts/ptmx").write_text("")
    (tree / "dev/stdin").symlink_to("/proc/self/fd/0")
    configure_container(tree, load_spec(_spec(tmp_path)), 1735689600)
    assert not (tree / "etc/resolv.conf").exists() and (tmp_path / "host-resolv.conf").exists()
    assert list((tree / "dev").iterdir()) == []
    assert (tree / "etc/machine-id").read_text() == "" and (tree / "etc/hostname").read_text() == "localhost\n"
    assert "localhost" in (tree / "etc/hosts").read_text()
    assert (tree / "etc/shadow").read_text().startswith("root:!*:20089:")  # root locked, dates fixed, as in a VM
    assert not (tree / "usr/lib/sealbox").exists() and not (tree / "init").exists()  # no guest protocol


def test_a_resolv_conf_link_is_removed_not_followed(tmp_path: Path) -> None:
    tree = fake_image(tmp_path / "tree")
    outside = tmp_path / "outside.conf"
    outside.write_text("keep me\n")
    (tree / "etc/resolv.conf").symlink_to(outside)
    configure_container(tree, load_spec(_spec(tmp_path)), 1735689600)
    assert not os.path.lexists(tree / "etc/resolv.conf") and outside.read_text() == "keep me\n"


def test_runtime_config_from_the_spec(tmp_path: Path) -> None:
    tree = fake_image(tmp_path / "tree")
    cfg = oci_step.runtime_config(tree, Oci(cmd=["sh", "-c", "echo"], env={"B": "2", "A": "1"}, user="app:app", workdir="/opt/app"))
    assert cfg == fmt.ImageConfig(cmd=["sh", "-c", "echo"], env=["A=1", "B=2", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                                  user="app:app", workdir="/opt/app")
    assert oci_step.runtime_config(tree, Oci(entrypoint=["/bin/sh"], env={"PATH": "/nowhere"})).env == ["PATH=/nowhere"]
    assert oci_step.runtime_config(tree, Oci(user="4242:4242")).user == "4242:4242"  # numeric ids need no account


@pytest.mark.parametrize("oci, has", [
    (Oci(user="ghost"), ["oci.user", "'ghost'", "/etc/passwd", "[users.ghost]"]),
    (Oci(user="app:ghosts"), ["oci.user", "group 'ghosts'"]),
    (Oci(workdir="/srv/app"), ["oci.workdir", "'/srv/app'", "not a directory"]),
    (Oci(workdir="/etc/passwd"), ["oci.workdir", "not a directory"]),
    (Oci(cmd=["/usr/bin/python3"]), ["oci.cmd[0]", "'/usr/bin/python3'", "not an executable file"]),
    (Oci(cmd=["data"]), ["oci.cmd[0]", "'data'", "on PATH"]),
    (Oci(entrypoint=["nosuch"], cmd=["/bin/sh"]), ["oci.entrypoint[0]", "'nosuch'"]),
    (Oci(cmd=["sh"], env={"PATH": "/opt"}), ["oci.cmd[0]", "on PATH /opt"]),
    (Oci(cmd=["./run"], workdir="/opt/app"), ["oci.cmd[0]", "'./run'"]),
])
def test_settings_the_image_cannot_honour_fail_the_build_by_name(tmp_path: Path, oci: Oci, has: list[str]) -> None:
    tree = fake_image(tmp_path / "tree")
    with pytest.raises(BuildError) as e:
        oci_step.runtime_config(tree, oci)
    assert all(h in str(e.value) for h in has), str(e.value)


def test_a_program_link_resolves_inside_the_image(tmp_path: Path) -> None:
    tree = fake_image(tmp_path / "tree")
    (tree / "usr/bin/python3").symlink_to("/usr/bin/sh")  # absolute: the image's /usr/bin/sh, not the build host's
    assert oci_step.runtime_config(tree, Oci(cmd=["python3"])).cmd == ["python3"]
    (tree / "usr/bin/escape").symlink_to("../../../../../../usr/bin/env")  # the host has it; the image does not
    with pytest.raises(BuildError, match="'escape' is not an executable file"):
        oci_step.runtime_config(tree, Oci(cmd=["escape"]))


def test_verify_reproducible_explains_an_oci_archive_per_file(tmp_path: Path) -> None:
    tree = fake_image(tmp_path / "tree")
    cfg = fmt.ImageConfig(cmd=["/bin/sh"], env=["A=1"])
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    fmt.write_archive(tmp_path / "a/x.oci.tar", tree, cfg, "localhost/x:latest", "latest", 1735689600, 6, tmp_path / "a")
    (tree / "opt/app/new").write_text("only in b\n")
    (tree / "etc/group").chmod(0o600)
    fmt.write_archive(tmp_path / "b/x.oci.tar", tree, fmt.ImageConfig(cmd=["/bin/sh"], env=["A=2"]), "localhost/x:latest", "latest",
                      1735689600, 6, tmp_path / "b")
    lines = explain("x.oci.tar", tmp_path / "a/x.oci.tar", tmp_path / "b/x.oci.tar", tmp_path)
    assert lines[0] == "layer /etc/group: mode 0o644 != 0o600"
    assert "layer /opt/app/new: only in the second build" in lines
    assert any(line.startswith('config: config.Env: ["A=1"] != ["A=2"]') for line in lines)
    assert any(line.startswith("config: rootfs.diff_ids") for line in lines)
    assert any(line.startswith("index.json: manifests") for line in lines)


def test_run_refuses_a_container_image_with_what_to_do(tmp_path: Path) -> None:
    d = tmp_path / "app"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"schema": "sealbox.manifest/v1", "name": "app", "kernel": None, "boot": {},
                                                 "oci": {"file": "app.oci.tar"}}))
    with pytest.raises(UsageError) as e:
        image.load(d)
    text = str(e.value)
    assert "is a container image" in text and "no kernel to boot" in text and f"{d}/app.oci.tar" in text and "podman load" in text


def test_the_build_cache_keeps_container_and_vm_trees_apart(tmp_path: Path) -> None:
    """output.* is writer-only for the tree layer's key, but a container's tree is made differently (no guest
    protocol, no kernel modules): the same spec and bootstrap as oci and as a VM must not share a configured tree."""
    from sealbox.builder.reuse import tree_key

    def key(formats: str) -> str:
        d = tmp_path / formats.replace('"', "").replace(",", "-")
        d.mkdir()
        spec = d / "app.toml"
        spec.write_text(f"name = 'app'\noutput.formats = [{formats}]\n")
        loaded = load_spec(spec)
        ctx = SimpleNamespace(loaded=loaded, formats=set(loaded.spec.output.formats))
        return tree_key(ctx, "same-bootstrap")  # type: ignore[arg-type]

    vm = key('"initrd"')
    assert key('"initrd", "ext4"') == vm  # only the writers differ: the configured tree is reused
    assert key('"oci"') != vm


def test_a_spec_without_packages_gives_mmdebstrap_no_empty_include(tmp_path: Path) -> None:
    """A container image may install nothing beyond Debian's essential set: mmdebstrap refuses an empty --include=
    ("Option include requires an argument", its usage and exit 2: seen building such an oci spec)."""
    from sealbox.builder.bootstrap import mmdebstrap_argv
    from sealbox.builder.sources import Sources

    sources = Sources("http://mirror.invalid/debian", None, "bookworm", ("main",))
    loaded = load_spec(_spec(tmp_path))
    assert loaded.spec.packages.include == []
    argv = mmdebstrap_argv(loaded.spec, sources, tmp_path / "tree", tmp_path / "in", tmp_path / "out", None)
    assert not [a for a in argv if a.startswith("--include")], argv
    with_pkgs = load_spec(_spec(tmp_path / "p", '[packages]\ninclude = ["passwd", "busybox"]\n')).spec
    assert "--include=busybox,passwd" in mmdebstrap_argv(with_pkgs, sources, tmp_path / "tree", tmp_path / "in", tmp_path / "out", None)
