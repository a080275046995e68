"""bob-workload: how it drives podman (a fake runner answering as podman 4.3 does) and the data plane's argv."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from bobguest import load

bw = load("bob_workload")


def oci_archive(path: Path, *, manifests: int = 1, tamper: bool = False) -> str:
    """A minimal OCI layout archive (index.json, a manifest, a config) -> the config's sha256 (podman's image id)."""
    config = b'{"architecture":"amd64","os":"linux"}'
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": f"sha256:{config_hex}", "size": len(config)},
                           "layers": []}).encode()
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": f"sha256:{manifest_hex}"}] * manifests}).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                           (f"blobs/sha256/{manifest_hex}", manifest + (b" " if tamper else b"")),
                           (f"blobs/sha256/{config_hex}", config)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return config_hex


class FakePodman:
    def __init__(self, image_id: str, container_image: str | None, loaded: bool = False, label: str | None = None) -> None:
        self.image_id = image_id
        # the creation label of the existing container: by default the one this code's arguments give
        self.label = bw.creation_label(bw.create_args(container_image, 27017)) if label is None and container_image else label
        self.loaded = loaded
        self.container_image = container_image  # the image id of an existing container `searcher`, or none
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        assert argv[:3] == ["podman", "--cgroup-manager", "cgroupfs"]
        args = argv[3:]
        if args[:1] == ["load"]:
            self.loaded = True
            return subprocess.CompletedProcess(argv, 0, "Loaded image: localhost/work:latest\n", "")
        if args[:2] == ["image", "inspect"]:
            ok = self.loaded and args[-1] == self.image_id
            return subprocess.CompletedProcess(argv, 0 if ok else 125, self.image_id + "\n" if ok else "", "")
        if args[:2] == ["container", "inspect"]:
            if self.container_image is None:
                return subprocess.CompletedProcess(argv, 125, "", "no such container")
            return subprocess.CompletedProcess(argv, 0, f"{self.container_image} {self.label or '<no value>'}\n", "")
        if args[:1] == ["rm"]:
            self.container_image = None
        return subprocess.CompletedProcess(argv, 0, "", "")

    def verbs(self) -> list[str]:
        return [" ".join(c[3:5]) for c in self.calls]


@pytest.fixture
def image_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(bw, "ARCHIVE", str(tmp_path / "workload.tar"))
    return oci_archive(tmp_path / "workload.tar")


def test_first_start_loads_the_archive_and_creates_the_container(image_id: str) -> None:
    pm = FakePodman(image_id, None)
    assert bw.Workload(pm, port=27017).prepare() == ["podman", "--cgroup-manager", "cgroupfs", "start", "--attach", "searcher"]
    assert ["podman", "--cgroup-manager", "cgroupfs", "load", "--input", bw.ARCHIVE] in pm.calls
    create = pm.calls[-1]
    assert create[:4] == ["podman", "--cgroup-manager", "cgroupfs", "create"] and create[-1] == image_id  # the archive's image, by its id
    text = " ".join(create)
    for must in ("--pull=never", "--publish 27017:27017/udp", "--pidfile /run/sealbox-bob-work/container.pid",
                 "--log-driver k8s-file", "path=/persistent/.bob-work/container.log", "--network slirp4netns",
                 "--cap-drop NET_ADMIN,NET_RAW,SYS_ADMIN", "/persistent/searcher/data:/data",
                 "--volume /run/sealbox-bob-node:/node:ro"):  # the node service's IPC directory, read-only
        assert must in text, must
    assert "--privileged" not in text and "tcp" not in text  # the channel is UDP only


def test_a_later_start_keeps_the_image_and_the_container(image_id: str) -> None:
    pm = FakePodman(image_id, image_id, loaded=True)
    bw.Workload(pm, port=27017).prepare()
    assert pm.verbs() == ["image inspect", "container inspect"]  # nothing loaded again, nothing made again


def test_a_new_image_recreates_the_container(image_id: str) -> None:
    pm = FakePodman(image_id, "b" * 64)
    bw.Workload(pm, port=27017).prepare()
    assert [c[3] for c in pm.calls][-3:] == ["rm", "container", "create"]


@pytest.mark.parametrize("label", ["", "0" * 16])
def test_a_container_made_with_other_arguments_is_made_again(image_id: str, label: str) -> None:
    # e.g. one made by an image from before the node's /node mount, with the same workload archive: the image id
    # matches, the arguments do not (no label at all, or another one)
    pm = FakePodman(image_id, image_id, loaded=True, label=label)
    bw.Workload(pm, port=27017).prepare()
    assert [c[3] for c in pm.calls][-3:] == ["rm", "container", "create"]
    create = pm.calls[-1]
    assert create[create.index("--label") + 1] == f"{bw.CREATE_LABEL}={bw.creation_label(bw.create_args(image_id, 27017))}"


def test_the_creation_label_follows_every_argument() -> None:
    base = bw.creation_label(bw.create_args("a" * 64, 27017))
    assert base == bw.creation_label(bw.create_args("a" * 64, 27017)) and len(base) == 16
    assert base != bw.creation_label(bw.create_args("a" * 64, 27018))


def test_a_load_that_does_not_give_the_archives_image_is_an_error(image_id: str) -> None:
    pm = FakePodman("c" * 64, None)  # podman ends up with another image than the archive names
    with pytest.raises(SystemExit, match="did not give image"):
        bw.Workload(pm, port=1).prepare()


@pytest.mark.parametrize("kw, has", [({"manifests": 2}, "exactly one manifest"), ({"tamper": True}, "does not match")])
def test_an_archive_not_naming_one_image_is_refused(tmp_path: Path, kw: dict[str, Any], has: str) -> None:
    oci_archive(tmp_path / "w.tar", **kw)
    with pytest.raises(SystemExit, match=has):
        bw.archive_image_id(str(tmp_path / "w.tar"))
    (tmp_path / "x.tar").write_bytes(b"not a tar")
    with pytest.raises(SystemExit, match="cannot be read as an OCI archive"):
        bw.archive_image_id(str(tmp_path / "x.tar"))


@pytest.mark.parametrize("original, tty, want", [
    (None, True, ["podman", "--cgroup-manager", "cgroupfs", "exec", "--interactive", "--tty", "searcher", "/bin/sh", "-l"]),
    ("  ", False, ["podman", "--cgroup-manager", "cgroupfs", "exec", "--interactive", "searcher", "/bin/sh", "-l"]),
    ("apt-get install -y jq; --privileged", False,
     ["podman", "--cgroup-manager", "cgroupfs", "exec", "--interactive", "searcher", "/bin/sh", "-c", "apt-get install -y jq; --privileged"]),
])
def test_the_data_plane_session_runs_inside_the_container(original: str | None, tty: bool, want: list[str]) -> None:
    assert bw.enter_args(original, tty) == want  # the client's words reach the container's shell, never podman's flags


def test_the_data_plane_sshd_gets_its_port_and_config() -> None:
    assert bw.sshd_args(10022) == ["/usr/sbin/sshd", "-D", "-e", "-f", "/usr/lib/sealbox/bob/sshd-data.conf", "-p", "10022"]
