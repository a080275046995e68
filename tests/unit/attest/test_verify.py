from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from attest_vectors import AT, QUOTES, read
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from quotegen import T0, Pki, build_quote, pems

from sealbox.attest import pck_root
from sealbox.attest.quote import parse_quote
from sealbox.attest.verify import verify_quote


def failing(raw: bytes, at: datetime = AT, **kw) -> set[str]:
    return {c.name for c in verify_quote(parse_quote(raw), at, **kw).checks if not c.ok}


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_all_vector_quotes_verify(name: str) -> None:
    result = verify_quote(parse_quote(read(QUOTES[name])), AT)
    assert result.ok, result.failures
    assert [c.name for c in result.checks] == ["quote_signature", "qe_report_data", "qe_report_signature", "pck_chain", "td_attributes"]
    assert result.chain[-1]["sha256"] == pck_root.SHA256_FINGERPRINT


def test_pinned_root_facts_are_consistent_with_the_vector_root() -> None:
    pem = parse_quote(read(QUOTES["cos"])).pck_chain_pem[-1]
    root = x509.load_pem_x509_certificate(pem)
    point = root.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    spki = root.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    assert root.fingerprint(hashes.SHA256()).hex() == pck_root.SHA256_FINGERPRINT
    assert point.hex() == pck_root.PUBLIC_KEY_POINT
    assert digest.finalize().hex() == pck_root.SPKI_SHA256
    assert root.subject.rfc4514_string() == pck_root.SUBJECT
    assert (root.not_valid_before_utc, root.not_valid_after_utc) == (pck_root.NOT_BEFORE, pck_root.NOT_AFTER)


@pytest.mark.parametrize("name", sorted(QUOTES))
@pytest.mark.parametrize("offset", [0x28, 0xB8, 0x200, 0x270])  # header user data, MRTD, RTMR, REPORTDATA
def test_one_flipped_byte_in_header_or_body_fails_the_quote_signature(name: str, offset: int) -> None:
    raw = bytearray(read(QUOTES[name]))
    raw[offset] ^= 0x01
    assert failing(bytes(raw)) == {"quote_signature"}


def _sig_offsets(raw: bytes) -> dict[str, int]:
    q = parse_quote(raw)
    sig = len(q.signed) + 4  # after the signature data length
    qe = sig + 128 + 6
    return {"signature": sig, "attestation_key": sig + 64, "qe_report": qe, "qe_signature": qe + 384, "auth": qe + 384 + 64 + 2}


@pytest.mark.parametrize(
    ("field", "delta", "expected"),
    [
        ("signature", 5, {"quote_signature"}),
        ("attestation_key", 0, {"quote_signature", "qe_report_data"}),  # key no longer matches the binding either
        ("qe_report", 16, {"qe_report_signature"}),  # misc_select: outside report_data
        ("qe_report", 320, {"qe_report_signature", "qe_report_data"}),  # report_data
        ("qe_signature", 40, {"qe_report_signature"}),
        ("auth", 3, {"qe_report_data"}),
    ],
)
def test_each_signature_field_is_checked(field: str, delta: int, expected: set[str]) -> None:
    raw = bytearray(read(QUOTES["dcap"]))
    raw[_sig_offsets(bytes(raw))[field] + delta] ^= 0x80
    assert failing(bytes(raw)) == expected


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_chain_validity_is_checked_at_the_given_time(name: str) -> None:
    assert failing(read(QUOTES[name]), datetime(2040, 1, 1, tzinfo=UTC)) == {"pck_chain"}
    assert failing(read(QUOTES[name]), datetime(2017, 1, 1, tzinfo=UTC)) == {"pck_chain"}


def test_synthetic_quote_verifies_only_under_its_own_root() -> None:
    pki = Pki()
    raw = build_quote(pki)
    at = T0 + timedelta(days=10)
    assert failing(raw, at, root=pki.anchor()) == set()
    # the real Intel pin must reject a chain made by anyone else
    result = verify_quote(parse_quote(raw), at)
    assert not result.ok and "does not end at the pinned Intel SGX Root CA" in result.failures[0]


def test_synthetic_v5_quote_verifies() -> None:
    pki = Pki()
    assert failing(build_quote(pki, version=5, body_type=3), T0 + timedelta(days=1), root=pki.anchor()) == set()


def test_chain_without_root_is_anchored_by_the_pinned_key() -> None:
    pki = Pki()
    raw = build_quote(pki, chain=pems(pki)[:2])
    result = verify_quote(parse_quote(raw), T0 + timedelta(days=1), root=pki.anchor())
    assert result.ok and "root certificate not included" in next(c.detail for c in result.checks if c.name == "pck_chain")
    # ...but the pinned root's own validity still applies
    early = verify_quote(parse_quote(raw), T0 - timedelta(days=1), root=pki.anchor())
    assert "pinned root is not valid at" in early.failures[0]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("expired_leaf", "cert 0 (CN=Test PCK Certificate) expired"),
        ("non_ca_issuer", "cert 1 issues certificates but is not a CA"),
        ("wrong_order", "names issuer"),
        ("foreign_intermediate", "signature does not verify under cert 1's key"),
    ],
)
def test_chain_failures_are_named(case: str, message: str) -> None:
    pki = Pki(leaf_not_after=T0 + timedelta(days=5)) if case == "expired_leaf" else Pki(inter_is_ca=case != "non_ca_issuer")
    chain = pems(pki)
    if case == "wrong_order":
        chain = [chain[1], chain[0], chain[2]]
    if case == "foreign_intermediate":
        other = Pki(root_key=pki.root_key)  # same names and root, different intermediate key
        chain = [chain[0], pems(other)[1], chain[2]]
    raw = build_quote(pki, chain=chain)
    result = verify_quote(parse_quote(raw), T0 + timedelta(days=10), root=pki.anchor())
    assert {c.name for c in result.checks if not c.ok} >= {"pck_chain"}
    assert message in " ".join(result.failures)


def test_broken_qe_binding_and_wrong_qe_signer() -> None:
    pki = Pki()
    at, root = T0 + timedelta(days=1), pki.anchor()
    assert failing(build_quote(pki, break_binding=True), at, root=root) == {"qe_report_data"}
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert failing(build_quote(pki, qe_signer=stranger), at, root=root) == {"qe_report_signature"}


def test_invalid_attestation_key_point_is_a_failed_check_not_a_crash() -> None:
    raw = bytearray(read(QUOTES["dcap"]))
    off = _sig_offsets(bytes(raw))["attestation_key"]
    raw[off : off + 64] = b"\x01" * 64  # (x, y) not on P-256
    result = verify_quote(parse_quote(bytes(raw)), AT)
    assert "quote_signature: attestation key is not a valid P-256 point" in result.failures


def test_debug_td_fails_unless_allowed() -> None:
    pki = Pki()
    raw = build_quote(pki, td_attributes=((1 << 28) | 1).to_bytes(8, "little"))
    at, root = T0 + timedelta(days=1), pki.anchor()
    assert failing(raw, at, root=root) == {"td_attributes"}
    allowed = verify_quote(parse_quote(raw), at, root, allow_debug=True)
    assert allowed.ok and any("DEBUG" in w for w in allowed.warnings)
    assert failing(build_quote(pki), at, root=root) == set()


def test_corrupt_certificate_field_is_a_failed_check_not_a_crash() -> None:
    """Regression (found by the fuzzer): cryptography decodes lazily, so a bad subject used to raise."""
    raw = read(QUOTES["v5"])
    good = b"CzAJBgNVBAYT\nAlVTMFkw"  # inside the root certificate's subject (countryName)
    assert raw.count(good) == 1
    result = verify_quote(parse_quote(raw.replace(good, b"CzAJBgNVBAXT\nAlVTMFkw")), AT)
    assert [c.name for c in result.checks if not c.ok] == ["pck_chain"]
    assert "certificate 2 of the PCK chain is not valid X.509" in result.failures[0]


def test_duplicate_certificate_extension_is_a_failed_check_not_a_crash() -> None:
    """Regression (found by the fuzzer): a second BasicConstraints raised DuplicateExtension."""
    raw = read(QUOTES["spr_e4"])
    akid = b"uzCBuDAfBgNVHSMEGDAW"  # an AuthorityKeyIdentifier (2.5.29.35) header; the last is the root's...
    at = raw.rindex(akid)
    bad = raw[:at] + b"uzCBuDAfBgNVHRMEGDAW" + raw[at + len(akid) :]  # ...relabelled BasicConstraints (2.5.29.19)
    result = verify_quote(parse_quote(bad), AT)
    assert [c.name for c in result.checks if not c.ok] == ["pck_chain"]
    assert "Duplicate 2.5.29.19 extension" in result.failures[0]


def _ca(name: str, key, issuer: str, issuer_key, path_length: int | None):  # type: ignore[no-untyped-def]
    from quotegen import _cert, key_usage

    return _cert(name, key, issuer, issuer_key, True, T0, T0 + timedelta(days=900), path_length=path_length,
                 extensions=((key_usage("key_cert_sign", "crl_sign"), True),))  # fmt: skip


def test_path_length_violation_fails_the_chain() -> None:
    """Root → CA 1 (pathLen 0) → CA 2 → leaf: CA 1 may not have a CA below it."""
    from quotegen import _cert, _pem

    pki = Pki()
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = pki.certs()[2]
    ca1 = _ca("Test CA 1", k1, "Test Root CA", pki.root_key, path_length=0)
    ca2 = _ca("Test CA 2", k2, "Test CA 1", k1, path_length=None)
    leaf = _cert("Test PCK Certificate", pki.pck_key, "Test CA 2", k2, False, T0, T0 + timedelta(days=365))
    at, anchor = T0 + timedelta(days=1), pki.anchor()
    result = verify_quote(parse_quote(build_quote(pki, chain=[_pem(c) for c in (leaf, ca2, ca1, root)])), at, root=anchor)
    assert result.failures == ["pck_chain: cert 2 allows a path length of 0 but 1 CA certificate(s) follow it"]
    # without the root certificate, the pinned root's own pathLen (1 for Intel's) applies: 2 CAs are one too many
    ca1_free = _ca("Test CA 1", k1, "Test Root CA", pki.root_key, path_length=None)
    raw = build_quote(pki, chain=[_pem(c) for c in (leaf, ca2, ca1_free)])
    result = verify_quote(parse_quote(raw), at, root=anchor)
    assert result.failures == ["pck_chain: the pinned root allows a path length of 1 but 2 CA certificate(s) follow it"]


def test_key_usage_is_checked_at_each_level() -> None:
    from quotegen import _cert, _pem, key_usage

    pki = Pki()
    at, anchor = T0 + timedelta(days=1), pki.anchor()
    root, inter = pki.certs()[2], pki.certs()[1]
    no_sign = _cert("Test PCK Certificate", pki.pck_key, "Test PCK CA", pki.inter_key, False, T0, T0 + timedelta(days=365),
                    extensions=((key_usage("key_agreement"), True),))  # fmt: skip
    result = verify_quote(parse_quote(build_quote(pki, chain=[_pem(c) for c in (no_sign, inter, root)])), at, root=anchor)
    assert result.failures == ["pck_chain: cert 0 (CN=Test PCK Certificate) keyUsage does not allow digital signature"]
    crl_only = _cert("Test PCK CA", pki.inter_key, "Test Root CA", pki.root_key, True, T0, T0 + timedelta(days=900),
                     extensions=((key_usage("crl_sign"), True),))  # fmt: skip
    result = verify_quote(parse_quote(build_quote(pki, chain=[_pem(c) for c in (pki.certs()[0], crl_only, root)])), at, root=anchor)
    assert result.failures == ["pck_chain: cert 1 keyUsage does not allow key cert sign"]


def test_unknown_critical_extension_fails_known_noncritical_passes() -> None:
    from quotegen import _cert, _pem

    pki = Pki()
    at, anchor = T0 + timedelta(days=1), pki.anchor()
    root, inter = pki.certs()[2], pki.certs()[1]
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x05\x00")
    for critical, expected in ((True, ["pck_chain: cert 0 (CN=Test PCK Certificate) has an unknown critical extension 1.3.6.1.4.1.99999.7"]),
                               (False, [])):  # fmt: skip
        leaf = _cert("Test PCK Certificate", pki.pck_key, "Test PCK CA", pki.inter_key, False, T0, T0 + timedelta(days=365),
                     extensions=((odd, critical),))  # fmt: skip
        result = verify_quote(parse_quote(build_quote(pki, chain=[_pem(c) for c in (leaf, inter, root)])), at, root=anchor)
        assert result.failures == expected
