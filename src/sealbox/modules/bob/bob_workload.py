#!/usr/bin/python3 -I
"""The searcher's container (guest side): rootless podman from the OCI archive sealbox built, and the way in.

Installed as /usr/lib/sealbox/bob/bob-workload.
  bob-workload run     (sealbox-bob-workload.service, as `searcher`, once /persistent is mounted) load the image
                       from the read-only archive in the image unless podman already holds that image id (the
                       archive's config digest; never a registry: --pull=never), create the container
                       `searcher` once (it keeps what the searcher installs in maintenance; a new image recreates it),
                       then run it in the foreground (`podman start --attach`) as the service's main process
  bob-workload enter   (the data plane sshd's ForceCommand, as `searcher`) `podman exec` into the running container:
                       an interactive shell, or the command the client gave (SSH_ORIGINAL_COMMAND) run by the
                       container's /bin/sh; nothing else of the guest is reachable from that session
  bob-workload sshd    (sealbox-bob-data-sshd.service, as root) exec sshd with the data plane's config on
                       data_ssh_port from config.json
The container: its own network namespace from podman's rootless user-mode network (slirp4netns), with
input_only_udp_port published for UDP only; its log through conmon into RAW_LOG (bob-logs delays it); its data
at /persistent/searcher/data (/data inside), the node service's IPC directory read-only at /node; podman's storage
under /persistent/searcher (HOME); dropped: NET_ADMIN (it would change the drop rules), NET_RAW (a packet socket's
frames pass by netfilter) and SYS_ADMIN; no new privileges.
bob-netguard (root, the unit's ExecStartPost) then puts the drop rules into that namespace.
Stdlib only: the guest has no sealbox package. Every command is an argv list; nothing goes through a shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

LIB = "/usr/lib/sealbox/bob"
ARCHIVE = "/usr/share/sealbox/bob/workload.tar"
NAME = "searcher"
HOME = "/persistent/searcher"
DATA = "/persistent/searcher/data"
RUNTIME = "/run/sealbox-bob-work"  # the unit's RuntimeDirectory (searcher, 0700); bob-netguard reads the pidfile
PIDFILE = f"{RUNTIME}/container.pid"
RAW_LOG = "/persistent/.bob-work/container.log"
DATA_SSHD_CONFIG = f"{LIB}/sshd-data.conf"
CREATE_LABEL = "org.sealbox.bob.create"
NODE_IPC = "/run/sealbox-bob-node"  # the node service's IPC directory (bob_node.IPC_DIR), read-only at /node
# a system service has no systemd user session to ask for cgroups (and the container runs with --cgroups=disabled)
GLOBAL = ["--cgroup-manager", "cgroupfs"]
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_JSON = 1 << 16  # bytes of index.json or a manifest read at most
TIMEOUT = 600

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def config(key: str, path: str = f"{LIB}/config.json") -> int:
    value = json.loads(Path(path).read_text())[key]
    if type(value) is not int or not 1 <= value <= 65535:
        raise SystemExit(f"bob-workload: {key} in {path} is not a port")
    return value


def env() -> dict[str, str]:
    """podman's whole environment: nothing inherited (the session's or the unit's)."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": HOME, "XDG_RUNTIME_DIR": RUNTIME, "LANG": "C.UTF-8"}


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise SystemExit(f"bob-workload: {ARCHIVE} has no {name}: not an OCI archive") from None
    f = tar.extractfile(info) if info.isfile() and info.size <= MAX_JSON else None
    if f is None:
        raise SystemExit(f"bob-workload: {ARCHIVE}: {name} is not a small regular file")
    return f.read(MAX_JSON)


def _digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise SystemExit(f"bob-workload: {ARCHIVE}: {what} is not a sha256 digest")
    return value.split(":", 1)[1]


def archive_image_id(path: str) -> str:
    """The image id (its config's sha256) of the one image in an OCI layout archive, read from the archive alone:
    index.json -> its one manifest (checked against its digest) -> the config's digest."""
    try:
        with tarfile.open(path, "r:") as tar:
            index = json.loads(_member(tar, "index.json"))
            manifests = index.get("manifests") if isinstance(index, dict) else None
            if not isinstance(manifests, list) or len(manifests) != 1 or not isinstance(manifests[0], dict):
                raise SystemExit(f"bob-workload: {path}: index.json must name exactly one manifest")
            digest = _digest(manifests[0].get("digest"), "the manifest's digest")
            blob = _member(tar, f"blobs/sha256/{digest}")
            if hashlib.sha256(blob).hexdigest() != digest:
                raise SystemExit(f"bob-workload: {path}: the manifest does not match its digest")
            manifest = json.loads(blob)
            config = manifest.get("config") if isinstance(manifest, dict) else None
            return _digest(config.get("digest") if isinstance(config, dict) else None, "the config's digest")
    except (OSError, tarfile.TarError, ValueError, RecursionError) as e:
        raise SystemExit(f"bob-workload: {path} cannot be read as an OCI archive: {e}") from None


def create_args(image: str, port: int) -> list[str]:
    return ["podman", *GLOBAL, "create", "--name", NAME, "--pull=never", "--pidfile", PIDFILE,
            "--network", "slirp4netns", "--publish", f"{port}:{port}/udp",
            "--log-driver", "k8s-file", "--log-opt", f"path={RAW_LOG}",
            "--volume", f"{DATA}:/data", "--volume", f"{NODE_IPC}:/node:ro", "--cgroups=disabled",
            "--cap-drop", "NET_ADMIN,NET_RAW,SYS_ADMIN", "--security-opt", "no-new-privileges", image]


def creation_label(argv: list[str]) -> str:
    """A digest of the arguments a container was made with: an existing container whose label differs (an image
    from before a mount or a port changed, with the same workload archive) is made again."""
    return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]


def labelled(argv: list[str]) -> list[str]:
    """`argv` (create_args) with its creation label added before the image."""
    return [*argv[:-1], "--label", f"{CREATE_LABEL}={creation_label(argv)}", argv[-1]]


class Workload:
    def __init__(self, run: Runner = _run, port: int | None = None) -> None:
        self.run = run
        self.port = port

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(["podman", *GLOBAL, *args])

    def has_image(self, image_id: str) -> bool:
        i = self.podman("image", "inspect", "--format", "{{.Id}}", image_id)
        return i.returncode == 0 and i.stdout.strip() == image_id

    def load(self) -> str:
        """The archive's image in podman's storage (loaded only when it is not there yet) -> its id."""
        image_id = archive_image_id(ARCHIVE)
        if not self.has_image(image_id):
            p = self.podman("load", "--input", ARCHIVE)
            if p.returncode != 0:
                raise SystemExit(f"bob-workload: podman load {ARCHIVE} failed ({p.returncode}): {p.stderr.strip()[-300:]}")
            if not self.has_image(image_id):  # podman's image id is the config's digest
                raise SystemExit(f"bob-workload: podman load {ARCHIVE} did not give image {image_id[:12]}")
        return image_id

    def prepare(self) -> list[str]:
        """Make sure the container exists from the archive's image; the argv that runs it."""
        image_id = self.load()
        port = self.port if self.port is not None else config("input_only_udp_port")
        argv = create_args(image_id, port)
        fmt = "{{.Image}} {{index .Config.Labels \"" + CREATE_LABEL + "\"}}"
        c = self.podman("container", "inspect", "--format", fmt, NAME)
        if c.returncode == 0 and c.stdout.split() != [image_id, creation_label(argv)]:
            self.podman("rm", "--force", NAME)  # another image or other arguments: made again as this image says
            c = self.podman("container", "inspect", "--format", fmt, NAME)
        if c.returncode != 0:
            made = self.run(labelled(argv))
            if made.returncode != 0:
                raise SystemExit(f"bob-workload: creating the container failed: {made.stderr.strip()[-300:]}")
        return ["podman", *GLOBAL, "start", "--attach", NAME]


def enter_args(original: str | None, tty: bool) -> list[str]:
    """The data plane session: a shell in the container, or the client's command given to the container's shell."""
    flags = ["--interactive", "--tty"] if tty else ["--interactive"]
    if original is None or not original.strip():
        return ["podman", *GLOBAL, "exec", *flags, NAME, "/bin/sh", "-l"]
    return ["podman", *GLOBAL, "exec", *flags, NAME, "/bin/sh", "-c", original]


def sshd_args(port: int) -> list[str]:
    return ["/usr/sbin/sshd", "-D", "-e", "-f", DATA_SSHD_CONFIG, "-p", str(port)]


def main(argv: list[str]) -> int:
    if argv == ["run"]:  # the unit made HOME, DATA and RAW_LOG's directory (as root, before this)
        os.chdir(HOME)
        os.environ.clear()
        os.environ.update(env())
        start = Workload().prepare()
        os.execvp(start[0], start)
    if argv == ["enter"]:
        original, tty = os.environ.get("SSH_ORIGINAL_COMMAND"), "SSH_TTY" in os.environ
        args = enter_args(original, tty)
        os.chdir("/")
        os.execvpe(args[0], args, env())
    if argv == ["sshd"]:
        args = sshd_args(config("data_ssh_port"))
        os.execv(args[0], args)
    print("usage: bob-workload run|enter|sshd", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
