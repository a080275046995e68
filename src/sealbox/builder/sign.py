"""`sealbox sign IMAGE_DIR --key K --cert C`: Secure Boot signing after the reproducible build.

The UKI is signed with `sbsign` (the user's db key) and every disk image that carries it is rewritten
around the signed UKI with the unsigned image's identity (same GUIDs, same layout: builder/disk.py).
A signature carries a signing time, so signing is not reproducible: `verify-reproducible` compares the
unsigned artifacts, and signing never changes what Authenticode covers (checked here: the signed UKI's
Authenticode equals the unsigned one's, so PCR 4 and RTMR predictions stay valid).

The directory is replaced as a whole (a staging copy swapped in on success), so a failed signing leaves
the unsigned image as it was. The key never reaches the image, the manifest or any log; the manifest
gains a `signature` section with the certificate's SHA-256 fingerprint and the unsigned artifacts'
digests. measurements.json is dropped (its artifact digests describe the unsigned files): run
`sealbox measure` again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sealbox.builder import disk
from sealbox.builder.manifest import MANIFEST, SCHEMA
from sealbox.errors import SealboxError, UsageError
from sealbox.formats.authenticode import authenticode
from sealbox.formats.pe import parse_pe
from sealbox.util import atomic
from sealbox.util.digest import sha256_file
from sealbox.util.run import output, run

DROPPED = ("measurements.json",)  # derived from the unsigned files; stale once signed


class SignError(SealboxError):
    """Signing failed; the image directory is unchanged."""


def certificate_facts(cert: Path) -> dict[str, str]:
    """SHA-256 fingerprint (of the DER certificate), subject and validity of a PEM or DER X.509 file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        raw = cert.read_bytes()
    except OSError as e:
        raise UsageError(f"--cert {cert}: {e.strerror}") from None
    try:
        c = x509.load_pem_x509_certificate(raw) if b"-----BEGIN" in raw else x509.load_der_x509_certificate(raw)
    except ValueError:
        raise UsageError(f"--cert {cert} is not an X.509 certificate (PEM or DER)", hint="pass the db certificate that matches --key") from None
    return {"sha256": c.fingerprint(hashes.SHA256()).hex(), "subject": c.subject.rfc4514_string(),
            "not_after": c.not_valid_after_utc.isoformat()}


def _manifest(image_dir: Path) -> dict[str, Any]:
    path = image_dir / MANIFEST
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{image_dir} is not a sealbox image: {path} is missing", hint="pass the directory 'sealbox build' wrote") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA or not isinstance(m.get("boot"), dict) or not isinstance(m.get("artifacts"), dict):
        raise UsageError(f"{path} is not a {SCHEMA} manifest", hint="rebuild the image with this sealbox version")
    return m


def _checked(image_dir: Path, m: dict[str, Any], name: str) -> Path:
    """An artifact named by the manifest: a plain file in the directory whose digest matches."""
    if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
        raise UsageError(f"{image_dir}/{MANIFEST}: {name!r} is not a plain file name", hint="rebuild the image")
    path = image_dir / name
    rec = m["artifacts"].get(name)
    if not path.is_file() or not isinstance(rec, dict):
        raise UsageError(f"image file {path} is missing or not recorded in the manifest", hint="rebuild the image")
    if sha256_file(path) != rec.get("sha256"):
        raise SignError(f"{path} does not match its manifest digest: refusing to sign a changed file", hint="rebuild the image")
    return path


def sign_image(image_dir: Path, key: Path, cert: Path, work_base: Path | None = None) -> dict[str, Any]:
    image_dir = Path(image_dir).absolute()
    m = _manifest(image_dir)
    if "signature" in m:
        raise UsageError(f"{image_dir} is already signed (certificate {m['signature'].get('certificate', {}).get('sha256', '?')[:16]}…)",
                         hint="sign the unsigned build output (rebuild it, then sign once)")
    uki_name = m["boot"].get("uki")
    if not uki_name:
        raise UsageError(f"{image_dir} has no UKI to sign", hint="build with output.formats including \"uki\"")
    uki = _checked(image_dir, m, uki_name)
    formats = disk.wanted(k for k in m["boot"] if m["boot"].get(k))
    for f in formats:
        _checked(image_dir, m, m["boot"][f])
    disk_uki_name = m["boot"].get("disk_uki")  # a verity root's disk boots its own UKI (builder/verity.py)
    ukis = [uki_name] + ([disk_uki_name] if disk_uki_name else [])
    verity = _verity_root(image_dir, m, _checked(image_dir, m, disk_uki_name)) if disk_uki_name else None
    if not os.access(key, os.R_OK) or not Path(key).is_file():
        raise UsageError(f"--key {key} is not a readable file", hint="pass the PEM private key of the db certificate")
    facts = certificate_facts(Path(cert))
    for name in ukis:
        if parse_pe((image_dir / name).read_bytes(), name).cert_table_size:
            raise UsageError(f"{image_dir / name} already carries a signature", hint="sign the unsigned build output")
    changed = {*ukis, *(m["boot"][f] for f in formats)}
    work = Path(tempfile.mkdtemp(prefix="sealbox-sign-", dir=work_base or os.environ.get("SEALBOX_WORK_DIR") or None))
    try:
        with atomic.staged_dir(image_dir) as stage:
            for name in sorted(os.listdir(image_dir)):
                if name in changed or name in DROPPED or name == MANIFEST or not (image_dir / name).is_file():
                    continue
                _link_or_copy(image_dir / name, stage / name)
            for name in ukis:
                run(["sbsign", "--key", key, "--cert", cert, "--output", stage / name, image_dir / name], what="sbsign")
                _check_signed((image_dir / name).read_bytes(), (stage / name).read_bytes(), image_dir / name)
            on_disk = disk_uki_name or uki_name
            disk.write_disks(stage, work, stage / on_disk, formats, int(m["epoch"]), identity=disk.DiskIdentity.of(image_dir / on_disk),
                             verity=verity)
            new = {**m, "artifacts": {**m["artifacts"]}}
            for name in sorted(changed):
                new["artifacts"][name] = {"sha256": sha256_file(stage / name), "size": (stage / name).stat().st_size}
            new["signature"] = {
                "tool": f"sbsign {_sbsign_version()}", "certificate": facts, "signed": sorted(changed),
                "unsigned": {n: m["artifacts"][n] for n in sorted(changed)},
                "uki_authenticode_sha256": authenticode(uki.read_bytes(), "sha256", what=str(uki)),
            }
            atomic.write_json(stage / MANIFEST, new)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"image": str(image_dir), "certificate": facts, "signed": new["signature"]["signed"],
            "uki_authenticode_sha256": new["signature"]["uki_authenticode_sha256"],
            "artifacts": {n: new["artifacts"][n] for n in sorted(changed)}}


def _verity_root(image_dir: Path, m: dict[str, Any], disk_uki: Path) -> disk.VerityRoot:
    """The verity partitions as built: rootfs.ext4 + its hash tree, parameters from the disk UKI's command line."""
    from sealbox.formats.ukiinfo import read_uki

    args = read_uki(disk_uki.read_bytes(), str(disk_uki)).sections.get(".cmdline", b"").split(b"\0", 1)[0].decode().split()
    roothash = next((a.removeprefix("roothash=") for a in args if a.startswith("roothash=")), "")
    params = next((a.removeprefix("sealbox.verity=") for a in args if a.startswith("sealbox.verity=")), "")
    blocks, _, salt = params.partition(":")
    if len(roothash) != 64 or not blocks.isdigit() or not salt:
        raise SignError(f"{disk_uki.name} has no roothash=/sealbox.verity= on its command line", hint="rebuild the image")
    data = _checked(image_dir, m, m["boot"].get("rootfs", ""))
    tree = _checked(image_dir, m, m["boot"].get("verity", ""))
    return disk.VerityRoot(data, tree, roothash, salt, int(blocks))


def _check_signed(unsigned: bytes, signed: bytes, where: Path) -> None:
    if not parse_pe(signed, f"signed {where.name}").cert_table_size:
        raise SignError(f"sbsign produced {where.name} without a certificate table")
    if authenticode(signed, "sha256", what="signed UKI") != authenticode(unsigned, "sha256", what="UKI"):
        raise SignError(f"signing changed the Authenticode hash of {where.name}: sbsign modified more than the certificate table")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # unchanged artifacts are shared, never written to
    except OSError:
        shutil.copy2(src, dst)


def _sbsign_version() -> str:
    try:
        return output(["sbsign", "--version"]).split()[-1]
    except SealboxError:
        return "unknown"
