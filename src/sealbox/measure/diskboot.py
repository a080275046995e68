"""Registers for booting a sealbox disk image from UEFI firmware (`sealbox run --boot disk-image`, clouds).

The firmware (edk2/OVMF, checked against swtpm boots in tests/integration/disk) finds the UKI as the
removable-media path \\EFI\\BOOT\\BOOTX64.EFI of the disk's ESP and starts it as a boot option:

- PCR 4: "Calling EFI Application from Boot Option", separator, the UKI (Authenticode), then the kernel
  that systemd-stub 252 loads from .linux. With Secure Boot enforcing, 252 installs a security override
  for that LoadImage and the firmware does not measure the kernel: the event is absent.
- PCR 5: separator, EV_EFI_GPT_EVENT (the disk's primary GPT header and used entries, measured when
  the firmware first loads an image from a GPT disk), "Exit Boot Services Invocation" and
  "... Returned with Success". The GCP tarball's disk.raw is 1 GiB, so its GPT header differs.
- PCR 7: EV_EFI_VARIABLE_DRIVER_CONFIG for SecureBoot (1 byte), PK, KEK, db, dbx (data as in the
  variable store, empty when absent), dbt when present, a separator, then with Secure Boot enforcing
  one EV_EFI_VARIABLE_AUTHORITY: the db entry (owner GUID + certificate) that verified the UKI.
  SecureBoot is 1 when the firmware enforces Secure Boot (the secboot build), PK is enrolled and
  SecureBootEnable is not off.
- A verity root (output.disk_root = "verity") puts <name>.disk.efi on the ESP: PCR 4, 7 and RTMR 1 are
  then about that UKI, and its PCR 9/11 are register_variants "PCR9@disk-image" / "PCR11@disk-image".
- RTMR 1 (TDX, SHA-384): the same firmware events as PCR 4 and 5 in the order the firmware measures
  them, one separator (TDVF measures one per RTMR). Predicted by this model, not verified on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealbox.errors import MeasureError
from sealbox.formats import efivars, gpt, targz
from sealbox.formats.pe import parse_pe
from sealbox.formats.ukiinfo import UkiInfo, read_uki
from sealbox.measure.events import (
    CALLING_EFI_APPLICATION,
    EXIT_BOOT_SERVICES_INVOCATION,
    EXIT_BOOT_SERVICES_SUCCESS,
    SEPARATOR_DATA,
    Register,
)
from sealbox.measure.tpm import pe_load_events, predict_pcr9, predict_pcr11
from sealbox.util.digest import sha256_file

SCENARIO = "disk-image"
DISK_KEYS = ("disk", "qcow2", "vhd")  # one virtual disk in three containers: one GPT
PCR7_VARIABLES = ((efivars.GLOBAL, "PK"), (efivars.GLOBAL, "KEK"), (efivars.IMAGE_SECURITY, "db"), (efivars.IMAGE_SECURITY, "dbx"))
WIN_CERT_PKCS_SIGNED_DATA = 0x0002


@dataclass
class DiskPredictions:
    registers: dict[str, Register] = field(default_factory=dict)
    variants: dict[str, Register] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)


def gpt_of(build: Path, boot: dict[str, Any], key: str) -> gpt.Parsed:
    """The primary GPT of the image's disk `key` (qcow2 and vhd carry the raw disk's bytes)."""
    name = boot.get(key)
    path = build / name if isinstance(name, str) else None
    if path is None or "/" in str(name) or not path.is_file():
        raise MeasureError(f"{build}: manifest names no {key} disk image file", hint="rebuild the image")
    try:
        if key == "gcp":
            with targz.first_member(path) as (member, size, reader):
                if member != "disk.raw":
                    raise MeasureError(f"{path}: first member is {member!r}, not disk.raw")
                return gpt.read_gpt_stream(reader, size, f"{path}:disk.raw")
        return gpt.read_gpt(path)
    except (gpt.GptError, ValueError, OSError, EOFError) as e:
        raise MeasureError(f"cannot read the GPT of {path}: {e}", hint="rebuild the image") from None


def pcr4(info: UkiInfo, secure_boot: bool) -> Register:
    reg = Register("PCR4", "sha256", SCENARIO + (" secure-boot" if secure_boot else ""))
    uki, kernel = pe_load_events(info, "sha256")
    reg.add_data("EV_EFI_ACTION", CALLING_EFI_APPLICATION.decode(), CALLING_EFI_APPLICATION)
    reg.add_data("EV_SEPARATOR", "separator (00000000) between pre-boot and OS-present", SEPARATOR_DATA)
    reg.add(*uki)
    if secure_boot:
        reg.notes.append("Secure Boot: systemd-stub 252's security override starts .linux unmeasured (no kernel event)")
    else:
        reg.add(*kernel)
    return reg


def pcr5(table: gpt.Parsed, which: str, bank: str = "sha256", name: str = "PCR5") -> Register:
    reg = Register(name, bank, f"{SCENARIO}: {which}")
    reg.add_data("EV_SEPARATOR", "separator (00000000)", SEPARATOR_DATA)
    reg.add_data("EV_EFI_GPT_EVENT", f"GPT of {which}: header + {len(table.partitions)} used entries", gpt.gpt_event(table))
    reg.add_data("EV_EFI_ACTION", EXIT_BOOT_SERVICES_INVOCATION.decode(), EXIT_BOOT_SERVICES_INVOCATION)
    reg.add_data("EV_EFI_ACTION", EXIT_BOOT_SERVICES_SUCCESS.decode(), EXIT_BOOT_SERVICES_SUCCESS)
    return reg


def secure_boot_state(variables: dict[tuple[Any, str], efivars.Variable], enforcing_firmware: bool) -> bool:
    pk = variables.get((efivars.GLOBAL, "PK"))
    enable = next((v for (_, n), v in variables.items() if n == "SecureBootEnable"), None)
    return enforcing_firmware and pk is not None and bool(pk.data) and (enable is None or enable.data[:1] != b"\x00")


def pcr7(variables: dict[tuple[Any, str], efivars.Variable], enforcing_firmware: bool, uki: bytes, vars_name: str) -> Register:
    on = secure_boot_state(variables, enforcing_firmware)
    reg = Register("PCR7", "sha256", SCENARIO + (" secure-boot" if on else ""))
    reg.add_data("EV_EFI_VARIABLE_DRIVER_CONFIG", f"SecureBoot = {int(on)}",
                 efivars.variable_data_event(efivars.GLOBAL, "SecureBoot", bytes([int(on)])))
    for guid, name in PCR7_VARIABLES:
        var = variables.get((guid, name))
        data = var.data if var is not None else b""
        reg.add_data("EV_EFI_VARIABLE_DRIVER_CONFIG", f"{name} ({len(data)} bytes from {vars_name})",
                     efivars.variable_data_event(guid, name, data))
    dbt = variables.get((efivars.IMAGE_SECURITY, "dbt"))
    if dbt is not None and dbt.data:
        reg.add_data("EV_EFI_VARIABLE_DRIVER_CONFIG", "dbt", efivars.variable_data_event(efivars.IMAGE_SECURITY, "dbt", dbt.data))
        reg.notes.append("dbt is present: measured after dbx as edk2 does (not covered by a test here)")
    reg.add_data("EV_SEPARATOR", "separator (00000000)", SEPARATOR_DATA)
    if on:
        entry = authority(variables, uki)
        reg.add_data("EV_EFI_VARIABLE_AUTHORITY", f"db entry of owner {entry.owner} that verified the UKI",
                     efivars.variable_data_event(efivars.IMAGE_SECURITY, "db", entry.raw()))
    return reg


def _signature_certs(uki: bytes) -> list[Any]:
    """X.509 certificates in the UKI's Authenticode signatures (WIN_CERTIFICATE PKCS#7 SignedData)."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    pe = parse_pe(uki, "UKI")
    table = uki[pe.cert_table_offset:pe.cert_table_offset + pe.cert_table_size]
    certs, off = [], 0
    while off + 8 <= len(table):
        length = int.from_bytes(table[off:off + 4], "little")
        ctype = int.from_bytes(table[off + 6:off + 8], "little")
        if length < 8 or off + length > len(table):
            raise MeasureError("the UKI's certificate table is malformed")
        if ctype == WIN_CERT_PKCS_SIGNED_DATA:
            try:
                certs += pkcs7.load_der_pkcs7_certificates(table[off + 8:off + length])
            except ValueError:
                raise MeasureError("the UKI's signature is not a PKCS#7 SignedData structure") from None
        off += (length + 7) & ~7
    return certs


def authority(variables: dict[tuple[Any, str], efivars.Variable], uki: bytes) -> efivars.SignatureData:
    """The first db X.509 entry that is a signing certificate of the UKI or issued one (edk2 tries db in order)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    db = variables.get((efivars.IMAGE_SECURITY, "db"))
    certs = _signature_certs(uki)
    if not certs:
        raise MeasureError("Secure Boot is enforced by this variable store but the UKI is not signed",
                           hint="sign it with `sealbox sign IMAGE_DIR --key K --cert C`, or predict without --secure-boot")
    ders = {c.public_bytes(_der()) for c in certs}
    for entry in efivars.parse_signature_lists(db.data if db else b"", "db"):
        if entry.type_guid != efivars.X509:
            continue
        if entry.data in ders:
            return entry
        try:
            ca = x509.load_der_x509_certificate(entry.data)
        except ValueError:
            continue
        for c in certs:
            try:
                c.verify_directly_issued_by(ca)
                return entry
            except (ValueError, TypeError, InvalidSignature):  # not this issuer
                continue
    raise MeasureError("no db certificate of the variable store verifies the UKI's signature: the firmware would refuse it",
                       hint="enroll the signing certificate in db, or sign with a key db trusts")


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def rtmr1(info: UkiInfo, table: gpt.Parsed, secure_boot: bool) -> Register:
    reg = Register("RTMR1", "sha384", SCENARIO)
    uki, kernel = pe_load_events(info, "sha384")
    reg.add_data("EV_EFI_ACTION", CALLING_EFI_APPLICATION.decode(), CALLING_EFI_APPLICATION)
    reg.add_data("EV_SEPARATOR", "separator (00000000), once per RTMR", SEPARATOR_DATA)
    reg.add_data("EV_EFI_GPT_EVENT", "GPT of disk.raw (PCR 5)", gpt.gpt_event(table))
    reg.add(*uki)
    if not secure_boot:
        reg.add(*kernel)
    reg.add_data("EV_EFI_ACTION", EXIT_BOOT_SERVICES_INVOCATION.decode(), EXIT_BOOT_SERVICES_INVOCATION)
    reg.add_data("EV_EFI_ACTION", EXIT_BOOT_SERVICES_SUCCESS.decode(), EXIT_BOOT_SERVICES_SUCCESS)
    reg.notes.append("predicted by the PCR 4/5 event model of OVMF for TDVF booting the disk; not verified on TDX hardware")
    return reg


def _disk_uki(build: Path, name: str) -> UkiInfo:
    path = build / name
    if "/" in name or not path.is_file():
        raise MeasureError(f"{build}: manifest names disk UKI {name!r}, which is missing", hint="rebuild the image")
    return read_uki(path.read_bytes(), str(path))


def predict(build: Path, boot: dict[str, Any], info: UkiInfo, vars_path: Path | None, enforcing_firmware: bool) -> DiskPredictions:
    """Registers for the image's disk boot; empty when the image has no disk output."""
    out = DiskPredictions()
    keys = [k for k in DISK_KEYS if boot.get(k)]
    if not keys and not boot.get("gcp"):
        if vars_path is not None or enforcing_firmware:
            raise MeasureError(f"{build} has no disk image: --vars/--secure-boot predict a disk-image boot",
                               hint="build with output.formats including \"disk\"")
        return out
    variables: dict[tuple[Any, str], efivars.Variable] = {}
    vars_name = "no variable store (empty)"
    if vars_path is not None:
        try:
            variables = efivars.read_varstore(vars_path)
        except efivars.VarStoreError as e:
            raise MeasureError(str(e), hint="pass the OVMF VARS file the VM starts with") from None
        vars_name = vars_path.name
        out.inputs["vars"] = {"path": str(vars_path), "sha256": sha256_file(vars_path)}
    on = secure_boot_state(variables, enforcing_firmware)
    out.inputs["secure_boot"] = on
    if isinstance(boot.get("disk_uki"), str):  # a verity root: the ESP holds its own UKI, with other PCR 9/11
        info = _disk_uki(build, boot["disk_uki"])
        out.variants["PCR9@disk-image"] = predict_pcr9(info)
        out.variants["PCR11@disk-image"] = predict_pcr11(info)
    out.registers["PCR7"] = pcr7(variables, enforcing_firmware, info.data, vars_name)
    out.variants["PCR4@disk-image"] = pcr4(info, on)
    if keys:
        table = gpt_of(build, boot, keys[0])
        which = ", ".join(boot[k] for k in keys)
        out.registers["PCR5"] = pcr5(table, which)
        out.variants["RTMR1@disk-image"] = rtmr1(info, table, on)
    if boot.get("gcp"):
        out.variants["PCR5@gcp"] = pcr5(gpt_of(build, boot, "gcp"), f"{boot['gcp']}:disk.raw")
    if on:
        out.registers["PCR4"] = out.variants["PCR4@disk-image"]
    return out
