"""`sealbox ps` loads only what it needs: an allow-list, checked against `python -X importtime -m sealbox ps`.

A module missing from the allow-list fails here, so start-up cannot grow silently (pydantic alone costs ~150 ms;
the whole of `ps` on top of click is ~15 ms). What click itself loads is measured in the same test (`python -X
importtime -c "import click"`: the interpreter's start, site's .pth files and click's own imports) and allowed.
-X importtime lists each `import` statement's module, also one that failed (copy's Jython probe, ntpath's Windows
ones); a module loaded by importlib.import_module (the verb's own module, by LazyGroup) is not listed, but every
import in it is.

Also here: `sealbox --help` lists the verbs exactly as click would with every command module imported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

# sealbox's modules on the path of `ps`: the CLI, the SDK's LocalHost and Sandbox.list, the pydantic-free readers
PS_SEALBOX = {
    "sealbox", "sealbox.__main__", "sealbox.errors", "sealbox.cli", "sealbox.cli.main", "sealbox.cli.sandbox",
    "sealbox.sdk", "sealbox.sdk.host", "sealbox.sdk.sandbox",
    "sealbox.sandbox", "sealbox.sandbox.status", "sealbox.sandbox.query", "sealbox.sandbox.recordview",
    "sealbox.sandbox.layout", "sealbox.sandbox.labels", "sealbox.util", "sealbox.util.procs", "sealbox.util.names",
}
# the standard library beyond click's, and why
PS_STDLIB = {
    "json", "json.decoder", "json.encoder", "json.scanner", "_json",  # records are JSON; ps --json
    "pathlib", "fnmatch", "ntpath", "nt", "_winapi", "urllib", "urllib.parse", "ipaddress",  # paths (state dir)
    "dataclasses", "copy", "org", "org.python", "org.python.core",  # status rows and record views
    "locale", "_locale",  # click's gettext, at run time
    "encodings.ascii",  # click's check of the output's encoding, if it is ascii (a C locale without coercion)
    "runpy", "importlib.util", "importlib._abc", "importlib.machinery",  # python -m
    "heapq", "_heapq", "difflib",  # click's parser tries a short option (-a) as a long one first
}
NEVER = ("pydantic", "pydantic_core", "annotated_types", "ray", "logging", "importlib.metadata")

_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| ( *)(\S+)$")


def importtime(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[set[str], str]:
    """The modules `python -X importtime ARGV` imports (from its stderr), and its stdout."""
    p = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=120, cwd=cwd,
                       env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    mods = set()
    for line in p.stderr.splitlines():
        if m := _LINE.match(line):
            mods.add(m.group(2))
        elif line.startswith("import time:") and "| imported package" not in line:
            raise AssertionError(f"an -X importtime line not understood: {line!r}")
    return mods, p.stdout


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "SEALBOX_STATE_DIR": str(state)}


def _records(root: Path) -> None:
    """A running, an exited and a stopped sandbox, written by the real writer (the pydantic model, in this process)."""
    from sealbox.sandbox.state import SandboxRecord, StateDir, process_start_time
    from sealbox.sandbox.steps import StepEntry

    state = StateDir(root)
    me = os.getpid()
    for name, status, vmm in (("up", "running", {"backend": "qemu", "accel": "tcg", "pid": me, "start_time": process_start_time(me)}),
                              ("gone", "running", {"backend": "qemu", "pid": 2**22 + 1, "start_time": 1}),
                              ("off", "stopped", {"backend": "qemu"})):
        r = SandboxRecord(name=name, status=status, created_at=time.time(), vmm=vmm, image={"name": "default"},
                          spec={"cpus": 2, "memory_mib": 256, "labels": {"team": "a"}}, network={"guest_ip": "10.47.0.2"})
        r.steps.entries.append(StepEntry(kind="cgroup", params={}, state="done", outputs={"dirs": [str(root / "none")]}))
        state.reserve(r)


@pytest.fixture(scope="module")
def click_baseline(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    cwd = tmp_path_factory.mktemp("baseline")
    mods, _ = importtime(["-c", "import click"], cwd, _env(cwd / "state"))
    assert "click" in mods and "sealbox" not in mods
    return mods


@pytest.mark.parametrize("args", [["ps"], ["ps", "--json"], ["ps", "-a", "--json"], ["ps", "--all", "--label", "team=a"]],
                         ids=" ".join)
@pytest.mark.parametrize("records", [False, True], ids=["empty state dir", "3 records"])
def test_ps_imports_only_its_allow_list(tmp_path: Path, click_baseline: set[str], args: list[str], records: bool) -> None:
    state = tmp_path / "state"
    if records:
        _records(state)
    else:
        state.mkdir(mode=0o700)
    mods, out = importtime(["-m", "sealbox", *args], tmp_path, _env(state))
    assert out.startswith(("NAME ", "[")), out[:200]
    if records:  # the records were read: the running one is listed
        assert re.search(r'^up |"name": "up"', out, re.M), out[:500]
    never = sorted(m for m in mods if m in NEVER or m.startswith(tuple(f"{n}." for n in NEVER)))
    assert not never, f"sealbox {' '.join(args)} imports {never}"
    extra = sorted(mods - click_baseline - PS_SEALBOX - PS_STDLIB)
    assert not extra, f"sealbox {' '.join(args)} imports modules outside its allow-list: {extra}"


def test_the_allow_list_is_not_stale(tmp_path: Path, click_baseline: set[str]) -> None:
    """Every sealbox module on the list is still loaded (a removed import is taken off the list too)."""
    state = tmp_path / "state"
    _records(state)
    mods, _ = importtime(["-m", "sealbox", "ps", "--all", "--json"], tmp_path, _env(state))
    listed_not_seen = PS_SEALBOX - mods - {"sealbox.__main__", "sealbox.cli.sandbox"}  # loaded by runpy / importlib
    assert not listed_not_seen, sorted(listed_not_seen)


def _eager_group() -> click.Group:
    """The `sealbox` group as plain click builds it: every command module imported, click's own help."""
    from sealbox.cli.main import COMMANDS, cli

    commands = {}
    for name in COMMANDS:
        cmd = cli.get_command(click.Context(cli), name)
        assert cmd is not None
        commands[name] = cmd
    return click.Group(name=cli.name, commands=commands, params=cli.params, help=cli.help,
                       context_settings=cli.context_settings)


def _help(group: click.Group) -> str:
    return group.get_help(click.Context(group, info_name="sealbox", **group.context_settings))


@pytest.mark.parametrize("columns", ["80", "200", "60"])
def test_help_lists_the_verbs_as_click_would(columns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sealbox --help` (a fresh interpreter: no command module imported) is what click prints for the same
    commands all imported: the same verbs, the same one-line help, at any terminal width."""
    monkeypatch.setenv("COLUMNS", columns)
    expected = _help(_eager_group())
    assert "\n  ps " in expected and "_proxy" not in expected and "-h, --help" in expected
    from sealbox.cli.main import cli

    assert _help(cli) == expected
    p = subprocess.run([sys.executable, "-m", "sealbox", "--help"], capture_output=True, text=True, timeout=60,
                       env=_env(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected + "\n"


@pytest.mark.parametrize(("argv", "level"), [(["ps"], None), (["-v", "ps"], "INFO"), (["-vv", "ps", "--json"], "DEBUG"),
                                             (["inspect", "nosuch"], "WARNING"), (["-v", "logs", "nosuch"], "INFO")],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_logging_is_set_up_unless_the_verb_never_logs(tmp_path: Path, argv: list[str], level: str | None) -> None:
    """Every verb gets the root logger set up as before (level from -v, one stderr handler), but `ps` without -v."""
    code = (f"import sys\nfrom sealbox.cli.main import main\nmain({argv!r})\n"
            "if 'logging' in sys.modules:\n    import logging\n    root = logging.getLogger()\n"
            "    print(logging.getLevelName(root.level) if root.handlers else None, len(root.handlers))\n"
            "else:\n    print(None, 0)")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(state), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == (f"{level} 1" if level else "None 0"), p.stdout
