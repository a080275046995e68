"""`sealbox disk create|inspect`: sparse, never overwriting, blank until written; content named by blkid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sealbox.cli.main import main
from sealbox.errors import UsageError
from sealbox.sandbox import datadisk

PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
pytestmark = pytest.mark.skipif(not all(shutil.which(t, path=PATH) for t in ("qemu-img", "blkid", "mkfs.ext4")),
                                reason="needs qemu-utils, util-linux (blkid) and e2fsprogs")


@pytest.mark.parametrize(("text", "size"), [("2048G", 2048 << 30), ("10GiB", 10 << 30), ("512M", 512 << 20), ("1t", 1 << 40),
                                            ("1048576", 1 << 20), (" 64 M ", 64 << 20)])
def test_sizes(text: str, size: int) -> None:
    assert datadisk.parse_size(text) == size


@pytest.mark.parametrize(("text", "msg"), [("10Q", "not a size"), ("", "not a size"), ("-1G", "not a size"), ("1.5G", "not a size"),
                                           ("512K", "out of range"), ("65T", "out of range"), ("1048577", "whole number of MiB"),
                                           ("10B", "not a size")])
def test_bad_sizes(text: str, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        datadisk.parse_size(text)


def test_raw_is_sparse_private_and_blank(tmp_path: Path) -> None:
    r = datadisk.create(tmp_path / "d.raw", 2048 << 30, "raw")
    st = (tmp_path / "d.raw").stat()
    assert st.st_size == 2048 << 30 and st.st_blocks == 0 and st.st_mode & 0o777 == 0o600
    assert r["blank"] and r["format"] == "raw" and r["virtual_size"] == 2048 << 30 and r["content"] == {}
    assert not [p for p in tmp_path.iterdir() if p.name != "d.raw"]  # no temporary file left


def test_qcow2_is_small_and_qemu_reads_it(tmp_path: Path) -> None:
    r = datadisk.create(tmp_path / "d.qcow2", 2048 << 30, "qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / "d.qcow2")], capture_output=True,
                                     text=True, check=True, timeout=60).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 2048 << 30
    assert (tmp_path / "d.qcow2").stat().st_size < 1 << 20 and r["blank"] and r["mode"] == "0o600"


def test_an_existing_file_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "d.raw"
    f.write_bytes(b"precious")
    with pytest.raises(UsageError, match="never overwritten"):
        datadisk.create(f, 1 << 30, "qcow2")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="already exists"):
        datadisk.create(tmp_path / "link", 1 << 30, "raw")
    # the file appears after the check: the final link fails instead of replacing it
    monkeypatch.setattr(datadisk.os.path, "lexists", lambda p: False)
    with pytest.raises(UsageError, match="never overwritten"):
        datadisk.create(f, 1 << 30, "raw")
    assert f.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.raw", "link"]


def test_inspect_names_what_the_disk_holds(tmp_path: Path) -> None:
    raw = tmp_path / "fs.raw"
    datadisk.create(raw, 64 << 20, "raw")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "state", str(raw)], check=True, timeout=60, env={**os.environ, "PATH": PATH})
    r = datadisk.inspect(raw)
    assert not r["blank"] and r["data_bytes"] > 0 and r["content"]["type"] == "ext4" and r["content"]["label"] == "state"
    q = tmp_path / "fs.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(q)], check=True, timeout=60)
    assert datadisk.inspect(q)["content"]["type"] == "ext4"


def test_missing_file_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["disk", "inspect", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["disk", "create", str(tmp_path / "d.qcow2"), "--size", "10G", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["virtual_size"] == 10 << 30
    assert main(["disk", "create", str(tmp_path / "d.qcow2"), "--size", "10G"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never overwritten" in err[0]
