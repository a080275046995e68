"""The caller's environment never reaches the build: every tool runs with an explicit, minimal environment,
through one helper (util.run) that bounds it in time and takes its whole process tree down with it."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sealbox.builder import bootstrap
from sealbox.errors import ToolError
from sealbox.util.run import run

SRC = Path(__file__).resolve().parents[3] / "src" / "sealbox"

FOREIGN = {"LANGUAGE": "fr_CH:fr", "LANG": "fr_CH.UTF-8", "LC_ALL": "fr_CH.UTF-8", "LC_MESSAGES": "fr_CH.UTF-8",
           "HOME": "/nonexistent-home", "TMPDIR": "/nonexistent-tmp", "SEALBOX_NOISE": "x", "TZ": "Pacific/Chatham"}


def _apt_tree(tmp_path: Path) -> Path:
    """A bootstrapped tree's apt state, just enough for apt-cache: one archive list with a kernel metapackage."""
    tree = tmp_path / "tree"
    for d in ("etc/apt/preferences.d", "etc/apt/apt.conf.d", "var/lib/apt/lists/partial", "var/lib/dpkg",
              "var/cache/apt/archives/partial"):
        (tree / d).mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text("")
    (tree / "etc/apt/sources.list").write_text("deb http://example.invalid/debian bookworm main\n")
    stanza = "Package: {p}\nVersion: 6.1.99-1\nArchitecture: amd64\n{dep}Description: x\nFilename: pool/{p}.deb\nSize: 1\nSHA256: 00\n"
    (tree / "var/lib/apt/lists/example.invalid_debian_dists_bookworm_main_binary-amd64_Packages").write_text(
        stanza.format(p="linux-image-cloud-amd64", dep="Depends: linux-image-6.1.0-99-cloud-amd64 (= 6.1.99-1)\n") + "\n"
        + stanza.format(p="linux-image-6.1.0-99-cloud-amd64", dep=""))
    return tree


@pytest.mark.skipif(not Path("/usr/bin/apt-cache").exists(), reason="apt-cache not installed")
def test_kernel_metapackage_resolves_under_a_foreign_language(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LANGUAGE=fr_CH:fr made apt-cache print `Dépend:` and the metapackage was never resolved (reprotest's locales)."""
    tree = _apt_tree(tmp_path)
    for k, v in FOREIGN.items():
        monkeypatch.setenv(k, v)
    assert bootstrap.resolve_kernel_package("linux-image-cloud-amd64", tree, tmp_path) == "linux-image-6.1.0-99-cloud-amd64"


def test_tools_get_an_explicit_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FOREIGN.items():
        monkeypatch.setenv(k, v)
    env = dict(line.split("=", 1) for line in run(["env"]).stdout.decode().splitlines())
    assert env.get("LC_ALL") == "C.UTF-8" and env.get("TZ") == "UTC"
    leaked = {k for k in FOREIGN if k in env and env[k] == FOREIGN[k]}
    assert not leaked, f"inherited from the caller: {leaked}"
    assert "PATH" in env
    extra = dict(line.split("=", 1) for line in run(["env"], env={"SOURCE_DATE_EPOCH": "7"}).stdout.decode().splitlines())
    assert extra["SOURCE_DATE_EPOCH"] == "7" and "LANGUAGE" not in extra and "HOME" not in extra


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_timeout_kills_the_tool_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    t0 = time.monotonic()
    with pytest.raises(ToolError) as e:
        run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout=1.0, what="sleeper")
    assert time.monotonic() - t0 < 20
    assert "sleeper timed out after 1s" in str(e.value)
    grandchild = int(pidfile.read_text())
    assert _wait_gone(grandchild, 10), "the tool's child outlived the timeout"


def test_a_tool_dies_with_its_sigkilled_caller(tmp_path: Path) -> None:
    pidfile = tmp_path / "tool"
    code = ("import sys; from sealbox.util.run import run; "
            f"run(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 300'], timeout=600)")
    caller = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        tool = int(pidfile.read_text())
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait(10)
        assert _wait_gone(tool, 10), "the tool kept running after its caller was SIGKILLed"
    finally:
        if caller.poll() is None:
            caller.kill()


def test_builder_and_formats_call_tools_only_through_run() -> None:
    """One helper, one error style: no direct subprocess use in the build pipeline."""
    offenders = []
    for path in sorted([*(SRC / "builder").glob("*.py"), *(SRC / "formats").glob("*.py")]):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("subprocess", "os") \
                    and node.attr in ("run", "Popen", "call", "check_call", "check_output", "system", "popen"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not offenders, offenders


@pytest.mark.skipif(not Path("/usr/bin/setarch").exists(), reason="setarch (util-linux) not installed")
def test_a_callers_personality_does_not_reach_the_tools() -> None:
    """setarch --uname-2.6 (reprotest's kernel variation) made libc6's preinst see a 2.6 kernel and refuse to install."""
    code = ("from sealbox.builder.builder import reset_personality; reset_personality(); "
            "from sealbox.util.run import output; print(output(['uname', '-r']))")
    out = subprocess.run(["setarch", "x86_64", "--uname-2.6", sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert not out.startswith("2.6."), out
    assert out == os.uname().release
