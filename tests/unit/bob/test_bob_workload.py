"""bob-workload: how it drives podman (a fake runner answering as podman 4.3 does) and the data plane's argv."""

from __future__ import annotations

import subprocess

import pytest

from bobguest import load

bw = load("bob_workload")
ID = "a" * 64


class FakePodman:
    def __init__(self, container_image: str | None) -> None:
        self.container_image = container_image  # the image id of an existing container `searcher`, or none
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        args = argv[1:]
        if args[:1] == ["load"]:
            return subprocess.CompletedProcess(argv, 0, "Getting image source signatures\nLoaded image: localhost/work:latest\n", "")
        if args[:2] == ["image", "inspect"]:
            return subprocess.CompletedProcess(argv, 0, ID + "\n", "")
        if args[:2] == ["container", "inspect"]:
            if self.container_image is None:
                return subprocess.CompletedProcess(argv, 125, "", "no such container")
            return subprocess.CompletedProcess(argv, 0, self.container_image + "\n", "")
        if args[:1] == ["rm"]:
            self.container_image = None
        return subprocess.CompletedProcess(argv, 0, "", "")

    def verbs(self) -> list[str]:
        return [" ".join(c[1:3]) for c in self.calls]


def test_first_start_loads_the_archive_and_creates_the_container() -> None:
    pm = FakePodman(None)
    assert bw.Workload(pm, port=27017).prepare() == ["podman", "start", "--attach", "searcher"]
    assert pm.calls[0] == ["podman", "load", "--input", "/usr/share/sealbox/bob/workload.tar"]
    create = pm.calls[-1]
    assert create[:2] == ["podman", "create"] and create[-1] == "localhost/work:latest"
    text = " ".join(create)
    for must in ("--pull=never", "--publish 27017:27017/udp", "--pidfile /run/sealbox-bob-work/container.pid",
                 "--log-driver k8s-file", "path=/persistent/.bob-work/container.log", "--network slirp4netns",
                 "--cap-drop NET_ADMIN,NET_RAW,SYS_ADMIN", "/persistent/searcher/data:/data"):
        assert must in text, must
    assert "--privileged" not in text and "tcp" not in text  # the channel is UDP only


def test_a_later_start_keeps_the_container() -> None:
    pm = FakePodman(ID)
    bw.Workload(pm, port=27017).prepare()
    assert pm.verbs() == ["load --input", "image inspect", "container inspect"]


def test_a_new_image_recreates_the_container() -> None:
    pm = FakePodman("b" * 64)
    bw.Workload(pm, port=27017).prepare()
    assert [c[1] for c in pm.calls][3:] == ["rm", "container", "create"]


def test_a_load_that_names_no_single_image_is_an_error() -> None:
    def bad(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, "Loaded image: a:1\nLoaded image: b:2\n", "")
    with pytest.raises(SystemExit, match="podman load"):
        bw.Workload(bad, port=1).prepare()


@pytest.mark.parametrize("original, tty, want", [
    (None, True, ["podman", "exec", "--interactive", "--tty", "searcher", "/bin/sh", "-l"]),
    ("  ", False, ["podman", "exec", "--interactive", "searcher", "/bin/sh", "-l"]),
    ("apt-get install -y jq; --privileged", False,
     ["podman", "exec", "--interactive", "searcher", "/bin/sh", "-c", "apt-get install -y jq; --privileged"]),
])
def test_the_data_plane_session_runs_inside_the_container(original: str | None, tty: bool, want: list[str]) -> None:
    assert bw.enter_args(original, tty) == want  # the client's words reach the container's shell, never podman's flags


def test_the_data_plane_sshd_gets_its_port_and_config() -> None:
    assert bw.sshd_args(10022) == ["/usr/sbin/sshd", "-D", "-e", "-f", "/usr/lib/sealbox/bob/sshd-data.conf", "-p", "10022"]
