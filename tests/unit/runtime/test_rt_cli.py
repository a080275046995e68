"""The sandbox CLI without root or boots: --dry-run output, and one-line errors that create nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sealbox.cli.main import main
from sealbox.sandbox import planning
from sealbox.sandbox.host.kvm import KvmStatus
from sealbox.sandbox.host.registry import Registry
from sealbox.sandbox.state import SandboxRecord, StateDir
from strict import skip_allowed


@pytest.fixture(autouse=True)
def broken_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planning, "_kvm", lambda root, dry_run: KvmStatus(present=True, functional=False, detail="vCPUs never run"))


def sealbox(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def created(state: Path) -> list[str]:
    """Everything under the state dir except the (empty) skeleton a lock creates."""
    return sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file() and p.parent.name != "locks")


def test_dry_run_json_qemu(capsys, image_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sd = tmp_path / "state"
    rc, out, err = sealbox(capsys, "run", str(image_dir), "--name", "dry1", "--memory", "256", "--cpus", "2",
                           "--dry-run", "--json", "--state-dir", str(sd))
    assert rc == 0, err
    d = json.loads(out)
    kinds = [s["kind"] for s in d["steps"]]
    assert kinds == ["host.lease", "net.netns", "net.firewall", "net.tap", "console-fs", "instance-files", "cgroup", "qemu-rundir", "qemu-start"]
    assert all(s["describe"] and isinstance(s["params"], dict) for s in d["steps"])
    assert (d["vmm"], d["accel"]) == ("qemu", "tcg")
    assert "KVM not functional" in err and "TCG" in err  # the warning is shown on stderr
    q = d["qemu_argv"]
    assert q[q.index("-m") + 1] == "256M" and q[q.index("-smp") + 1] == "2"
    append = q[q.index("-append") + 1]
    assert append.startswith("console=ttyS0 quiet ip=" + d["network"]["guest_ip"] + "::")
    assert d["argv"][0] == "/usr/bin/setpriv" and "--clear-groups" in d["argv"]
    assert d["network"]["netns"] == "sealbox-dry1"
    assert created(sd) == []  # no record, no keys
    assert not (Path(os.environ["SEALBOX_RUN_DIR"]) / Registry().host / "leases" / "dry1.json").exists()  # no lease
    assert not Path("/var/run/netns/sealbox-dry1").exists()


def test_dry_run_text_lists_steps_and_command(capsys, image_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = sealbox(capsys, "run", str(image_dir), "--name", "dry2", "--accel", "tcg", "--dry-run",
                         "--state-dir", str(tmp_path / "s"))
    assert rc == 0
    assert "host steps:" in out and "VMM command line:" in out and "qemu-system-x86_64" in out
    assert " 1. lease name 'dry2'" in out and "start QEMU jailed" in out


def test_dry_run_firecracker_shape(capsys, image_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = sealbox(capsys, "run", str(image_dir), "--name", "fc1", "--vmm", "firecracker", "--dry-run", "--json",
                           "--state-dir", str(tmp_path / "s"))
    assert rc == 0, err
    d = json.loads(out)
    assert {"jailer_argv", "config", "steps"} <= set(d)
    assert d["config"]["boot-source"]["kernel_image_path"] == "/vmlinux"
    assert "ip=" in d["config"]["boot-source"]["boot_args"]
    assert [s["kind"] for s in d["steps"]][-2:] == ["firecracker-stage", "firecracker-jailer"]
    assert "cgroup" not in [s["kind"] for s in d["steps"]]  # the jailer makes its own cgroups
    assert "--id" in d["jailer_argv"] and "fc1" in d["jailer_argv"]
    assert "would fail" in err


@pytest.mark.parametrize(("args", "msg"), [
    (["/nonexistent/image", "--name", "e1"], "image directory /nonexistent/image does not exist"),
    (["IMG", "--name", "bad_name!"], "invalid sandbox name 'bad_name!'"),
    (["IMG", "--name", "e2", "--disk", "/nonexistent/disk.img"], "--disk /nonexistent/disk.img: no such file"),
    (["IMG", "--name", "e3", "--allow-egress", "10.0.0.0/8"], "--allow-egress only applies to --net nat"),
    (["IMG", "--name", "e4", "--rootfs", "disk", "--vmm", "qemu", "--firmware", "ovmf", "--dry-run"], None),
])
def test_run_errors_are_one_line_and_create_nothing(capsys, image_dir: Path, tmp_path: Path, args: list[str], msg: str | None) -> None:  # type: ignore[no-untyped-def]
    sd = tmp_path / "state"
    args = [str(image_dir) if a == "IMG" else a for a in args]
    rc, out, err = sealbox(capsys, "run", *args, "--accel", "tcg", "--state-dir", str(sd))
    if msg is None:  # a valid combination, as a control
        assert rc == 0, err
        return
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sealbox: error: ") and msg in lines[0], err
    assert "Traceback" not in err
    assert created(sd) == []


def test_taken_name_is_refused_and_the_old_record_untouched(capsys, image_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = StateDir(tmp_path / "state")
    state.reserve(SandboxRecord(name="taken", status="stopped", created_at=time.time()))
    before = state.record_path("taken").read_bytes()
    rc, _, err = sealbox(capsys, "run", str(image_dir), "--name", "taken", "--accel", "tcg", "--state-dir", str(state.root))
    assert rc != 0 and err.strip() == ("sealbox: error: a sandbox named 'taken' already exists "
                                       "(choose another --name, or remove it with 'sealbox rm taken')")
    assert state.record_path("taken").read_bytes() == before and state.names() == ["taken"]


def test_run_without_root_says_so(capsys, image_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() == 0:
        skip_allowed("not-root", "running as root, the non-root message cannot be shown")
    rc, _, err = sealbox(capsys, "run", str(image_dir), "--name", "nr", "--accel", "tcg", "--state-dir", str(tmp_path / "s"))
    assert rc != 0 and "must be started as root" in err


def test_verbs_on_a_missing_sandbox(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for verb in (["inspect", "ghost"], ["logs", "ghost"], ["stop", "ghost"], ["rm", "ghost"], ["exec", "ghost", "--", "true"],
                 ["ssh-config", "ghost"]):
        rc, _, err = sealbox(capsys, *verb, "--state-dir", str(tmp_path / "s"))
        assert rc != 0 and err.strip() == "sealbox: error: no such sandbox: 'ghost' (see 'sealbox ps --all')", (verb, err)


def test_ps_empty_and_json(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = StateDir(tmp_path / "s")
    state.reserve(SandboxRecord(name="old", status="running", created_at=time.time(), vmm={"backend": "qemu", "pid": 99999999}))
    rc, out, _ = sealbox(capsys, "ps", "--state-dir", str(state.root))
    assert rc == 0 and out.strip().splitlines()[0].startswith("NAME") and len(out.strip().splitlines()) == 1
    rc, out, _ = sealbox(capsys, "ps", "--all", "--json", "--state-dir", str(state.root))
    assert [(r["name"], r["status"]) for r in json.loads(out)] == [("old", "exited")]


def test_exec_and_rm_refuse_by_status(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = StateDir(tmp_path / "s")
    me = os.getpid()
    from sealbox.sandbox.state import process_start_time

    state.reserve(SandboxRecord(name="live", status="running", created_at=time.time(),
                                vmm={"backend": "qemu", "pid": me, "start_time": process_start_time(me)}))
    state.reserve(SandboxRecord(name="dead", status="running", created_at=time.time(), vmm={"backend": "qemu", "pid": 99999999}))
    rc, _, err = sealbox(capsys, "rm", "live", "--state-dir", str(state.root))
    assert rc != 0 and "is running" in err and "--force" in err and state.exists("live")
    rc, _, err = sealbox(capsys, "exec", "dead", "--state-dir", str(state.root), "--", "true")
    assert rc != 0 and "is exited, not running" in err
    rc, out, err = sealbox(capsys, "rm", "dead", "--state-dir", str(state.root))
    assert rc == 0 and not state.exists("dead")


def test_inspect_never_shows_a_private_key(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = StateDir(tmp_path / "s")
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    # an older record kept the key in guest{}; any other field might carry it too (an error message, a step)
    state.reserve(SandboxRecord(name="sec", status="stopped", created_at=time.time(), vmm={"backend": "qemu"},
                                guest={"client_key_openssh": key, "client_key": "/x/id_ed25519"}, error=f"ssh said: {key}"))
    rc, out, err = sealbox(capsys, "inspect", "sec", "--state-dir", str(state.root))
    assert rc == 0, err
    assert "PRIVATE KEY" not in out and "b3BlbnNzaC1rZXktdjEAAAAA" not in out
    assert json.loads(out)["guest"]["client_key"] == "/x/id_ed25519"


def test_ps_all_rm_and_inspect_on_a_corrupt_record(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = StateDir(tmp_path / "s")
    state.reserve(SandboxRecord(name="good", status="stopped", created_at=time.time()))
    state.reserve(SandboxRecord(name="bad", status="stopped", created_at=time.time()))
    state.record_path("bad").write_text('{"version": 1, "name": "bad", "status": ')  # cut off mid-write
    rc, out, err = sealbox(capsys, "ps", "--all", "--state-dir", str(state.root))
    assert rc == 0 and err == ""
    rows = {line.split()[0]: line.split()[1] for line in out.strip().splitlines()[1:]}
    assert rows == {"bad": "corrupt", "good": "stopped"}
    rc, out, _ = sealbox(capsys, "ps", "--all", "--json", "--state-dir", str(state.root))
    bad = next(r for r in json.loads(out) if r["name"] == "bad")
    assert bad["status"] == "corrupt" and "record.json is corrupt" in bad["error"]
    rc, _, err = sealbox(capsys, "inspect", "bad", "--state-dir", str(state.root))
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "is corrupt" in err and "rm --force" in err
    rc, _, err = sealbox(capsys, "rm", "bad", "--state-dir", str(state.root))
    assert rc != 0 and state.exists("bad")  # not without --force
    rc, _, err = sealbox(capsys, "rm", "--force", "bad", "--state-dir", str(state.root))
    assert rc == 0, err
    assert state.names() == ["good"]


ROOT_VERBS = (["ps"], ["ps", "--all"], ["inspect", "x"], ["logs", "x"], ["stop", "x"], ["rm", "x"], ["gc"],
              ["exec", "x", "--", "true"], ["ssh", "x"], ["ssh-config", "x"], ["pause", "x"], ["resume", "x"],
              ["snapshot", "x"], ["run", "/nonexistent-image", "--name", "x"])


def _as_nobody(argv: list[str], state: Path) -> tuple[int, str]:
    """main(argv) in a forked child that dropped to uid/gid 65534 first (forked, not exec'd: the
    interpreter may live where that uid cannot read). Returns (exit code, stderr)."""
    import importlib

    for mod in ("sealbox.cli.sandbox", "sealbox.cli.ssh", "sealbox.cli.firecracker", "sealbox.cli.proxy",
                "sealbox.sandbox.control", "sealbox.sandbox.manager", "sealbox.sandbox.gc"):
        importlib.import_module(mod)  # what a verb imports lazily, loaded before the uid changes
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        rc = 99
        try:
            import sys

            os.close(r)
            os.dup2(w, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stdout, sys.stderr = os.fdopen(1, "w"), os.fdopen(2, "w")
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.environ["SEALBOX_STATE_DIR"] = str(state)
            rc = main(argv)
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - reported to the parent through the pipe
            import traceback

            os.write(2, ("child failed: " + traceback.format_exc()).encode())
        finally:
            os._exit(rc)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


def test_every_sandbox_verb_without_root_says_it_needs_root(tmp_path: Path) -> None:
    """As an unprivileged uid against a root-owned state dir: one line naming the need for root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)
    for verb in ROOT_VERBS:
        rc, err = _as_nobody(verb, state)
        lines = err.strip().splitlines()
        assert rc != 0 and len(lines) == 1, (verb, err)
        assert "needs root" in lines[0] and "internal error" not in lines[0], (verb, lines[0])


def test_ctrl_c_is_one_line_and_no_blank_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Click answers Ctrl-C inside its own main() by printing an empty line first; sealbox's is one line only."""
    from sealbox.cli import main as main_mod

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(main_mod.cli, "invoke", interrupted)
    assert main_mod.main(["ps"]) == 130
    assert capsys.readouterr().err == "sealbox: aborted\n"


def test_bare_sealbox_shows_the_help_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    from sealbox.cli.main import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: sealbox") and "\nCommands:\n" in err and "sealbox: error" not in err
