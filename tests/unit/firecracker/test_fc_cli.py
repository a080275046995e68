"""`sealbox pause|resume|snapshot` end to end through the CLI, against the stand-in Firecracker API server."""

from __future__ import annotations

from pathlib import Path

from fc_testlib import StandInFirecrackerApi, running_record, spec_path
from test_fc_snapshot import vmm_file

from sealbox.cli.main import main
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.vmm.firecracker.schema import load_spec


def test_pause_resume_snapshot_via_cli(tmp_path: Path, monkeypatch, capsys) -> None:
    with StandInFirecrackerApi(tmp_path / "api.sock", load_spec(str(spec_path()))) as srv:
        _, record, lay = running_record(tmp_path, srv.sock, name="cli1", staged={"/instance.img": "copy"})
        monkeypatch.setenv("SEALBOX_FIRECRACKER", str(tmp_path / "absent-fc"))
        sd = StateDir(tmp_path / "state")
        sd.reserve(record)
        lay.host("/snapshot").mkdir(parents=True)
        vmm_file(lay.host("/instance.img"), b"i" * 4096)
        srv.hooks["PUT /snapshot/create"] = lambda body: [vmm_file(lay.host(body[k]), b"x") for k in ("snapshot_path", "mem_file_path")]
        assert main(["pause", "cli1", "--state-dir", str(sd.root)]) == 0
        assert srv.state == "Paused"
        assert main(["resume", "cli1", "--state-dir", str(sd.root)]) == 0
        assert srv.state == "Running"
        assert main(["snapshot", "cli1", "--dest", str(tmp_path / "s"), "--state-dir", str(sd.root)]) == 0
        out = capsys.readouterr()
        assert f"snapshot of cli1 written to {tmp_path / 's'}" in out.out and "duplicates the guest's keys" in out.err
        assert (tmp_path / "s" / "manifest.json").is_file()
        srv.fail_next["PATCH /vm"] = (400, "Vm is not running")
        assert main(["pause", "cli1", "--state-dir", str(sd.root)]) == 1
        err = capsys.readouterr().err
        assert err == "sealbox: error: Firecracker API PATCH /vm failed (400): Vm is not running\n"
        assert srv.violations == []
