"""measurements.json for a build directory, the PE-file mode, and the CLI's one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pebuild import build_pe
from test_tdx_mrtd import make_fw

from sealbox.cli.main import main
from sealbox.errors import MeasureError
from sealbox.formats.uki import build_uki
from sealbox.measure.events import replay
from sealbox.measure.measurements import measure

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
pytestmark = pytest.mark.skipif(not STUB.exists(), reason="systemd-boot-efi is not installed")


def write_manifest(build: Path, name: str = "demo", extra: dict | None = None) -> None:
    arts = {}
    for f in sorted(build.iterdir()):
        if f.name != "manifest.json":
            b = f.read_bytes()
            arts[f.name] = {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
    (build / "manifest.json").write_text(json.dumps({"name": name, "artifacts": arts, **(extra or {})}))


@pytest.fixture
def build(tmp_path: Path) -> Path:
    d = tmp_path / "build"
    d.mkdir()
    (d / "vmlinuz").write_bytes(build_pe([(".text", b"\xcc" * 3000)]).data)
    (d / "initrd.cpio.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    (d / "vmlinux").write_bytes(b"\x7fELF" + bytes(64))
    (d / "rootfs.ext4").write_bytes(bytes(4096))
    build_uki(STUB, d / "vmlinuz", d / "initrd.cpio.zst", "console=ttyS0", b"ID=x\n", "6.12.1", d / "demo.efi")
    write_manifest(d)
    return d


def test_build_dir_document(build: Path) -> None:
    doc = measure(build)
    on_disk = json.loads((build / "measurements.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert doc["schema"] == "sealbox.measurements/v1"
    assert set(doc["registers"]) == {"PCR4", "PCR9", "PCR11", "RTMR1", "RTMR2"}
    for name, reg in doc["registers"].items():
        # the verifier's contract: expected is the replay of events[*].digest in the named bank
        assert reg["expected"] == replay(reg["bank"], [e["digest"] for e in reg["events"]]), name
        assert reg["bank"] == ("sha384" if name.startswith("RTMR") else "sha256")
        assert all(set(e) >= {"description", "digest", "event_type"} for e in reg["events"])
    assert doc["artifacts"]["rootfs.ext4"]["sha256"] == hashlib.sha256(bytes(4096)).hexdigest()
    assert set(doc["artifacts"]) == {"vmlinuz", "vmlinux", "initrd.cpio.zst", "rootfs.ext4", "demo.efi"}
    assert doc["uki"]["matches_artifact"] == {".linux == vmlinuz": True, ".initrd == initrd.cpio.zst": True}
    assert doc["uki"]["sections"][".cmdline"]["sha256"] == hashlib.sha256(b"console=ttyS0").hexdigest()
    assert doc["inputs"]["memory_mib"] == 1024 and doc["inputs"]["firmware"] is None
    assert "MRTD" not in doc["registers"]


def test_firmware_adds_mrtd(build: Path, tmp_path: Path) -> None:
    fw = tmp_path / "tdvf.fd"
    fw.write_bytes(make_fw())
    doc = measure(build, firmware=fw, memory=2048, cpus=2)
    assert len(doc["registers"]["MRTD"]["expected"]) == 96
    assert doc["inputs"]["firmware"]["sha256"] == hashlib.sha256(fw.read_bytes()).hexdigest()
    assert doc["inputs"]["cpus"] == 2


def test_stub_version_from_manifest(build: Path) -> None:
    write_manifest(build, extra={"tools": {"systemd-boot-efi": "252.99-test"}})
    doc = measure(build)
    assert doc["inputs"]["stub"]["declared"] == "252.99-test"
    assert doc["inputs"]["stub"]["embedded"].startswith("252")


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda d: (d / "rootfs.ext4").unlink(), "missing rootfs.ext4"),
        (lambda d: (d / "vmlinux").write_bytes(b"changed"), "does not match manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "manifest.json").write_text('{"name": "../x", "artifacts": {}}'), "key 'name'"),
        (lambda d: (d / "manifest.json").write_text('{"name": "demo", "artifacts": []}'), "key 'artifacts'"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    ],
)
def test_bad_build_dirs(build: Path, damage, needle: str) -> None:
    damage(build)
    with pytest.raises(MeasureError) as e:
        measure(build)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (build / "measurements.json").exists()


def test_uki_that_is_not_a_uki(build: Path) -> None:
    (build / "demo.efi").write_bytes(build_pe([(".text", b"x" * 10)]).data)
    write_manifest(build)
    with pytest.raises(MeasureError, match="no .linux section"):
        measure(build)


def test_pe_file_mode(build: Path) -> None:
    doc = measure(build / "demo.efi")
    assert doc["format"] == "PE32+" and not doc["signed"]
    assert set(doc["authenticode"]) == {"sha256", "sha384"}
    assert ".sbat" in doc["sections"] and ".linux" in doc["sections"]
    assert not (build / "measurements.json").exists()


def test_cli_json_and_errors(build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(build), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["registers"]["PCR11"]["expected"]
    assert main(["measure", str(build / "demo.efi")]) == 0
    assert "authenticode sha256" in capsys.readouterr().out
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 10)
    for argv in (["measure", str(junk)], ["measure", str(tmp_path / "nope")],
                 ["measure", str(build), "--firmware", "/usr/share/OVMF/OVMF_VARS_4M.fd"],
                 ["measure", str(build / "demo.efi"), "--firmware", str(junk)]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc != 0 and err.startswith("sealbox: error:") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err


def test_text_output_says_why_a_register_is_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 6.1 kernel's EFI stub measures nothing into RTMR2: the all-zero value comes with its reason."""
    d = tmp_path / "build"
    d.mkdir()
    (d / "vmlinuz").write_bytes(build_pe([(".text", b"\xcc" * 3000)]).data)
    (d / "initrd.cpio.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    (d / "vmlinux").write_bytes(b"\x7fELF" + bytes(64))
    (d / "rootfs.ext4").write_bytes(bytes(4096))
    build_uki(STUB, d / "vmlinuz", d / "initrd.cpio.zst", "console=ttyS0", b"ID=x\n", "6.1.0-28-cloud-amd64", d / "demo.efi")
    write_manifest(d)
    assert main(["measure", str(d)]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.split()[:1] == ["RTMR2"])
    assert lines[i].split()[1] == "0" * 96
    notes = lines[i + 1 : i + 3]
    assert all(n.startswith("         note: ") for n in notes), notes
    assert "kernel 6.1 predates CC measurement in the Linux EFI stub (6.9): RTMR2 stays zero" in notes[1]


def test_an_oci_only_build_is_named_as_such(tmp_path: Path) -> None:
    """`formats = ["oci"]` builds no boot chain: measure says so and where the image's identity is, rather than
    claiming the build is broken."""
    import json as _json

    from sealbox.errors import MeasureError
    from sealbox.measure.measurements import measure_build

    (tmp_path / "app.oci.tar").write_bytes(b"x")
    (tmp_path / "manifest.json").write_text(_json.dumps({
        "name": "app", "boot": {}, "artifacts": {"app.oci.tar": {"sha256": "0" * 64, "size": 1}},
        "oci": {"file": "app.oci.tar", "manifest_digest": "sha256:" + "1" * 64}}))
    with pytest.raises(MeasureError) as e:
        measure_build(tmp_path, write=False)
    text = str(e.value)
    assert "OCI-only build" in text and "sha256:" + "1" * 64 in text and "missing" not in text
