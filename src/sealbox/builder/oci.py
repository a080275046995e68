"""The oci step: the finished image tree as an OCI image archive (formats/oci.py), configured by [oci].

The runtime settings are checked against the tree as it will ship (after strip), so a user, group, working
directory or program the image lacks fails the build naming the setting, instead of failing at `podman run`.
"""

from __future__ import annotations

import os
import platform
import stat
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sealbox.builder.intree import Tree
from sealbox.errors import BuildError
from sealbox.formats import oci as fmt
from sealbox.spec.model import DEFAULT_PATH, OCI_FORMAT, ImageSpec, Oci


def file_name(spec: ImageSpec) -> str:
    return f"{spec.name}.oci.tar"


def reference(spec: ImageSpec) -> str:
    return f"localhost/{spec.name}:{spec.oci.tag}"


def tool_versions(formats: Iterable[str]) -> dict[str, str]:
    """What shapes the archive's bytes besides sealbox's code (part of the build key when oci is built)."""
    if OCI_FORMAT not in formats:
        return {}
    return {"zlib": zlib.ZLIB_RUNTIME_VERSION, "python-gzip": platform.python_version()}


def _ids(t: Tree, file: str) -> set[str]:
    try:
        text = t.read_bytes(f"/etc/{file}").decode(errors="replace")
    except BuildError:
        return set()
    return {line.split(":", 1)[0] for line in text.splitlines() if ":" in line}


def _check_user(t: Tree, user: str) -> None:
    name, _, group = user.partition(":")
    if not name.isdigit() and name not in _ids(t, "passwd"):
        raise BuildError(f"oci.user: {name!r} is not an account in the image (/etc/passwd)",
                         hint=f"declare it in [users.{name}], use a uid, or choose an existing account")
    if group and not group.isdigit() and group not in _ids(t, "group"):
        raise BuildError(f"oci.user: group {group!r} is not a group in the image (/etc/group)", hint="use a gid or an existing group")


def _executable(t: Tree, path: str) -> bool:
    real = t.resolve(path)
    if real is None:
        return False
    st = os.stat(real)  # resolved inside the tree: not a link any more
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def _check_program(t: Tree, oci: Oci, path_var: str) -> None:
    argv, key = (oci.entrypoint, "oci.entrypoint[0]") if oci.entrypoint else (oci.cmd, "oci.cmd[0]")
    if not argv:
        return  # `podman run IMAGE COMMAND` supplies one
    prog = argv[0]
    if "/" in prog:
        candidates = [prog if prog.startswith("/") else f"{oci.workdir.rstrip('/')}/{prog}"]
    else:
        candidates = [f"{d.rstrip('/')}/{prog}" for d in path_var.split(":") if d.startswith("/")]
    if not any(_executable(t, c) for c in candidates):
        where = "" if "/" in prog else f" on PATH {path_var}"
        raise BuildError(f"{key}: {prog!r} is not an executable file in the image{where}",
                         hint="install the package that provides it (and keep it from [strip]), or fix the path")


def runtime_config(tree: Path, oci: Oci) -> fmt.ImageConfig:
    """The OCI config of the image, checked against the tree."""
    env = {"PATH": DEFAULT_PATH, **oci.env}
    with Tree(tree) as t:
        _check_user(t, oci.user)
        real = t.resolve(oci.workdir)
        if real is None or not real.is_dir():
            raise BuildError(f"oci.workdir: {oci.workdir!r} is not a directory in the image",
                             hint="create it with a [[files]] entry or choose an existing directory")
        _check_program(t, oci, env["PATH"])
    return fmt.ImageConfig(entrypoint=list(oci.entrypoint), cmd=list(oci.cmd), env=[f"{k}={v}" for k, v in sorted(env.items())],
                           user=oci.user, workdir=oci.workdir)


def build_step(stage: Path, work: Path, spec: ImageSpec, tree: Path) -> dict[str, Any]:
    """Write <name>.oci.tar into the staging directory; returns what the build manifest records about it."""
    config = runtime_config(tree, spec.oci)
    scratch = work / "oci"
    scratch.mkdir(exist_ok=True)
    name = file_name(spec)
    result = fmt.write_archive(stage / name, tree, config, reference(spec), spec.oci.tag, spec.epoch,
                               spec.oci.compression_level, scratch)
    return {"file": name, **result.record()}
