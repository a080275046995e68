"""`sealbox measure`: digests and predicted measurement registers for a PE file or a build directory.

The build-directory result is written to <dir>/measurements.json (schema sealbox.measurements/v1,
documented in docs/measurements.md). Everything a user can get wrong (missing files, a manifest
that does not match the files, a file that is not a PE, a firmware without TDX metadata) raises
MeasureError with one line.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sealbox.errors import MeasureError
from sealbox.formats.authenticode import authenticode_all
from sealbox.formats.pe import parse_pe
from sealbox.formats.ukiinfo import read_uki, section_digests
from sealbox.measure import diskboot, tdx, tpm
from sealbox.util import atomic

SCHEMA = "sealbox.measurements/v1"
LAYOUT = ("vmlinuz", "vmlinux", "initrd.cpio.zst", "rootfs.ext4")
OUTPUT = "measurements.json"
MAX_PE_BYTES = 1 << 30  # a UKI is tens of MB; refuse to slurp anything absurd into memory


def file_digests(path: Path) -> dict[str, Any]:
    sha256, sha384 = hashlib.sha256(), hashlib.sha384()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha256.update(chunk)
                sha384.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise MeasureError(f"cannot read {path}: {e.strerror}") from None
    return {"size": size, "sha256": sha256.hexdigest(), "sha384": sha384.hexdigest()}


def _read_small(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_PE_BYTES:
            raise MeasureError(f"{what} {path} is {size} bytes, larger than any EFI image", hint="pass a UKI or PE file")
        return path.read_bytes()
    except OSError as e:
        raise MeasureError(f"cannot read {what} {path}: {e.strerror}") from None


def measure_pe(path: Path) -> dict[str, Any]:
    """Authenticode and per-section digests of one PE/COFF file."""
    data = _read_small(path, "PE file")
    pe = parse_pe(data, str(path))
    sections: dict[str, Any] = {}
    for s in pe.sections:
        content = pe.content(data, s)
        sections.setdefault(s.name, {
            "virtual_address": s.virtual_address,
            "virtual_size": s.virtual_size,
            "raw_size": s.size_of_raw_data,
            "sha256": hashlib.sha256(content).hexdigest(),
            "sha384": hashlib.sha384(content).hexdigest(),
        })
    return {
        "file": str(path),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "PE32+" if pe.is_pe32_plus else "PE32",
        "signed": bool(pe.cert_table_size),
        "authenticode": authenticode_all(data, what=str(path)),
        "sections": sections,
    }


def _load_manifest(build: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    path = build / "manifest.json"
    if not path.is_file():
        raise MeasureError(f"{build} is not a sealbox build directory: {path.name} is missing",
                           hint="run `sealbox build` first or pass a PE file")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeasureError(f"{path}: not valid JSON ({e})", hint="rebuild the image") from None
    if not isinstance(manifest, dict):
        raise MeasureError(f"{path}: expected a JSON object", hint="rebuild the image")
    name = manifest.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        raise MeasureError(f"{path}: key 'name' must be an image name, got {name!r}", hint="rebuild the image")
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict) or not all(isinstance(v, dict) for v in artifacts.values()):
        raise MeasureError(f"{path}: key 'artifacts' must map file names to {{sha256, size}}", hint="rebuild the image")
    return name, manifest, artifacts


def _artifact_digests(build: Path, name: str, artifacts: dict[str, Any]) -> dict[str, Any]:
    wanted = sorted(set(artifacts) | set(LAYOUT) | {f"{name}.efi"})
    out = {}
    for fname in wanted:
        if "/" in fname or fname in ("", ".", ".."):
            raise MeasureError(f"manifest.json: artifact name {fname!r} is not a plain file name", hint="rebuild the image")
        path = build / fname
        if not path.is_file():
            raise MeasureError(f"build directory {build} is missing {fname}", hint="rebuild the image with `sealbox build`")
        facts = file_digests(path)
        recorded = artifacts.get(fname)
        changed = recorded is not None and (recorded.get("sha256") not in (None, facts["sha256"])
                                            or recorded.get("size") not in (None, facts["size"]))
        if changed:
            raise MeasureError(
                f"{path} does not match manifest.json (sha256/size changed since the build)",
                hint="rebuild the image; measurements must describe the files the build produced",
            )
        out[fname] = facts
    return out


def _qemu_version() -> str | None:
    exe = shutil.which("qemu-system-x86_64")
    if not exe:
        return None
    try:
        first = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version (\S+)", first[0]) if first else None
    return m.group(1) if m else None


def _stub_version(manifest: dict[str, Any], sdmagic: bytes | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    magic = (sdmagic or b"").split(b"\0", 1)[0].decode("ascii", errors="replace")
    m = re.search(r"systemd-stub (\S+)", magic)
    out["embedded"] = m.group(1) if m else None
    for key in ("tools", "uki"):
        section = manifest.get(key)
        if isinstance(section, dict):
            for k in ("stub_version", "systemd-boot-efi", "stub"):
                if isinstance(section.get(k), str):
                    out["declared"], out["source"] = section[k], f"manifest.{key}.{k}"
                    return out
    if shutil.which("dpkg-query"):
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "systemd-boot-efi"],
                               capture_output=True, text=True, timeout=20)
            if r.returncode == 0 and r.stdout.strip():
                out["declared"], out["source"] = r.stdout.strip(), "dpkg systemd-boot-efi"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return out


def measure_build(build: Path, *, firmware: Path | None = None, memory: int = 1024, cpus: int = 1,
                  page_order: str = "single-pass", write: bool = True, vars_path: Path | None = None,
                  secure_boot: bool = False) -> dict[str, Any]:
    build = Path(build)
    if not build.is_dir():
        raise MeasureError(f"{build} is neither a PE file nor a build directory", hint="pass <build>/<name>.efi or <build>")
    if memory <= 0 or cpus <= 0:
        raise MeasureError(f"--memory {memory} / --cpus {cpus} must be positive")
    name, manifest, artifacts = _load_manifest(build)
    oci = manifest.get("oci")
    if isinstance(oci, dict) and not manifest.get("boot"):
        raise MeasureError(f"{build} is an OCI-only build: no kernel, initrd or UKI, so no boot measurements exist; "
                           f"its identity is the OCI manifest digest {str(oci.get('manifest_digest'))[:80]} "
                           f"(manifest.json, key oci)", hint="add a boot format to output.formats to measure a VM image")
    digests = _artifact_digests(build, name, artifacts)
    uki_path = build / f"{name}.efi"
    info = read_uki(_read_small(uki_path, "UKI"), str(uki_path))
    stub = _stub_version(manifest, info.sections.get(".sdmagic"))
    registers: dict[str, Any] = {n: r.to_json() for n, r in tpm.predict_pcrs(info).items()}
    registers["RTMR1"] = tdx.predict_rtmr1(info).to_json()
    registers["RTMR2"] = tdx.predict_rtmr2(info).to_json()
    fw_facts = None
    if firmware is not None:
        fw = _read_small(Path(firmware), "firmware")
        registers["MRTD"] = tdx.mrtd_register(fw, str(firmware), page_order)
        fw_facts = {"path": str(firmware), "size": len(fw), "sha256": hashlib.sha256(fw).hexdigest(),
                    "sha384": hashlib.sha384(fw).hexdigest()}
    if stub.get("embedded") and not str(stub["embedded"]).startswith("252"):
        for reg in ("PCR11", "RTMR2"):
            registers[reg].setdefault("notes", []).append(
                f"predictions model systemd-stub 252 but this UKI embeds systemd-stub {stub['embedded']}")
    # booting the image's GPT disk from UEFI (measure/diskboot.py): PCR 5, PCR 7, Secure Boot's PCR 4
    boot = manifest.get("boot")
    disk = diskboot.predict(build, boot if isinstance(boot, dict) else {}, info, vars_path, secure_boot)
    registers.update({n: r.to_json() for n, r in disk.registers.items()})
    embedded = {".linux == vmlinuz": _same(info.kernel, digests.get("vmlinuz")),
                ".initrd == initrd.cpio.zst": _same(info.initrd or b"", digests.get("initrd.cpio.zst"))}
    doc = {
        "schema": SCHEMA,
        "name": name,
        "artifacts": digests,
        "uki": {
            "file": uki_path.name,
            "authenticode": authenticode_all(info.data, what=str(uki_path)),
            "sections": section_digests(info),
            "matches_artifact": embedded,
            "kernel_authenticode": authenticode_all(info.kernel, what="UKI .linux"),
        },
        "registers": registers,
        "register_variants": {
            "PCR4@qemu-direct-kernel": tpm.predict_pcr4(info, tpm.QEMU_DIRECT).to_json(),
            **{n: r.to_json() for n, r in disk.variants.items()},
        },
        "inputs": {
            "firmware": fw_facts,
            "qemu_version": _qemu_version(),
            "memory_mib": memory,
            "cpus": cpus,
            "mrtd_page_order": page_order if firmware is not None else None,
            "stub": stub,
            "secure_boot": disk.inputs.get("secure_boot", False),
            "vars": disk.inputs.get("vars"),
        },
    }
    if write:
        atomic.write_json(build / OUTPUT, doc)
    return doc


def _same(content: bytes, facts: dict[str, Any] | None) -> bool:
    """Whether a UKI section is byte-identical to a build artifact (a cheap consistency check)."""
    return facts is not None and bool(facts) and hashlib.sha256(content).hexdigest() == facts["sha256"]


def measure(target: Path, **kw: Any) -> dict[str, Any]:
    target = Path(target)
    if target.is_dir():
        return measure_build(target, **kw)
    if not target.exists():
        raise MeasureError(f"{target} does not exist", hint="pass a PE file (e.g. a UKI) or a build directory")
    return measure_pe(target)
