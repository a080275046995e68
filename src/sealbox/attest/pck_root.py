"""Pinned public facts of Intel's SGX Root CA, the trust anchor of every TDX/SGX PCK chain.

Only facts are pinned, not the certificate: its SHA-256 fingerprint (DER), its P-256 public key and
its validity. They were taken from the root certificate that google/go-tdx-guest ships as
verify/trusted_root.pem and cross-checked against the root at the end of the PCK chains of all four
quote vectors in shared/vectors/tdx (identical fingerprint). Intel publishes the same certificate at
https://certificates.trustedservices.intel.com/IntelSGXRootCA.der.

Trust rests on the public key: a chain is anchored when its top certificate is the root with this
key (self-signature verified) or is directly signed by this key.
"""

from __future__ import annotations

from datetime import UTC, datetime

SUBJECT = "C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA"
SHA256_FINGERPRINT = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
# SHA-256 of the DER SubjectPublicKeyInfo (the form most other pinning tools print).
SPKI_SHA256 = "a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e"
# Uncompressed SEC1 point (04 | x | y) on NIST P-256.
PUBLIC_KEY_POINT = (
    "040ba9c4c0c0c86193a3fe23d6b02cda10a8bbd4e88e48b4458561a36e705525f5"
    "67918e2edc88e40d860bd0cc4ee26aacc988e505a953558c453f6b0904ae7394"
)
NOT_BEFORE = datetime(2018, 5, 21, 10, 45, 10, tzinfo=UTC)
NOT_AFTER = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
# basicConstraints pathLenConstraint: at most one CA (the PCK Platform/Processor CA) below the root.
PATH_LENGTH = 1
