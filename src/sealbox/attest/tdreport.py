"""The 1024-byte TDREPORT a TD gets from TDG.MR.REPORT (Linux: TDX_CMD_GET_REPORT0).

The quoting enclave turns a TDREPORT into a quote; the quote body repeats its TEE_TCB_INFO and
TDINFO fields. A TDREPORT is MAC'd with a platform key, so a remote verifier cannot authenticate it;
what can be checked offline is its internal consistency (the two SHA-384 hashes in REPORTMACSTRUCT
over TEE_TCB_INFO and TDINFO) and whether it describes the same TD as a quote.

Layout (TDX module ABI):  0 REPORTMACSTRUCT (256): REPORTTYPE 4 (type 0x81 = TDX), reserved 12,
CPUSVN 16, TEE_TCB_INFO_HASH 48, TEE_INFO_HASH 48, REPORTDATA 64, reserved 32, MAC 32;
256 TEE_TCB_INFO (239): VALID 8, TEE_TCB_SVN 16, MRSEAM 48, MRSIGNERSEAM 48, ATTRIBUTES 8, reserved;
495 reserved 17; 512 TDINFO (512): ATTRIBUTES 8, XFAM 8, MRTD 48, MRCONFIGID 48, MROWNER 48,
MROWNERCONFIG 48, RTMR 4×48, reserved.

go-tdx-guest's testing/testdata/report.dat (a mock device's GET_REPORT answer) is NOT a well-formed
TDREPORT: its first 48 bytes are missing (REPORTTYPE, CPUSVN and part of TEE_TCB_INFO_HASH) and it is
zero-filled at the end. Re-aligned by 48 bytes, its TEE_INFO_HASH and the surviving tail of its
TEE_TCB_INFO_HASH verify. Its MRTD differs from tdx_prod_quote_SPR_E4.dat, so it does not belong
to that quote; the unit tests pin these findings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sealbox.attest import AttestInputError
from sealbox.attest.quote import TdQuoteBody

TD_REPORT_SIZE = 1024
REPORT_TYPE_TDX = 0x81
TEE_TCB_INFO = slice(256, 256 + 239)
TD_INFO = slice(512, 1024)


@dataclass(frozen=True)
class TdReport:
    report_type: int
    cpusvn: bytes
    tee_tcb_info_hash: bytes
    tee_info_hash: bytes
    report_data: bytes
    mac: bytes
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    tee_tcb_info_raw: bytes
    td_info_raw: bytes

    def hash_problems(self) -> list[str]:
        """Which of the two REPORTMACSTRUCT hashes does not match the bytes it covers."""
        problems = []
        if hashlib.sha384(self.tee_tcb_info_raw).digest() != self.tee_tcb_info_hash:
            problems.append("TEE_TCB_INFO_HASH")
        if hashlib.sha384(self.td_info_raw).digest() != self.tee_info_hash:
            problems.append("TEE_INFO_HASH")
        return problems

    def differences(self, body: TdQuoteBody) -> list[str]:
        """Fields where this report and a quote body disagree (empty: same TD, same report)."""
        names = ["tee_tcb_svn", "mrseam", "mrsignerseam", "td_attributes", "xfam", "mrtd", "mrconfigid",
                 "mrowner", "mrownerconfig", "rtmrs", "report_data"]  # fmt: skip
        return [n for n in names if getattr(self, n) != getattr(body, n)]


def parse_td_report(data: bytes, what: str = "TD report") -> TdReport:
    if len(data) != TD_REPORT_SIZE:
        raise AttestInputError(f"{what}: a TDREPORT is {TD_REPORT_SIZE} bytes, got {len(data)}")
    if data[0] != REPORT_TYPE_TDX:
        raise AttestInputError(f"{what}: REPORTTYPE.TYPE is {data[0]:#04x}, not 0x81 (TDX); not a TDREPORT")

    def f(off: int, n: int) -> bytes:
        return data[off : off + n]

    return TdReport(
        report_type=data[0],
        cpusvn=f(16, 16),
        tee_tcb_info_hash=f(32, 48),
        tee_info_hash=f(80, 48),
        report_data=f(128, 64),
        mac=f(224, 32),
        tee_tcb_svn=f(264, 16),
        mrseam=f(280, 48),
        mrsignerseam=f(328, 48),
        td_attributes=f(512, 8),
        xfam=f(520, 8),
        mrtd=f(528, 48),
        mrconfigid=f(576, 48),
        mrowner=f(624, 48),
        mrownerconfig=f(672, 48),
        rtmrs=(f(720, 48), f(768, 48), f(816, 48), f(864, 48)),
        tee_tcb_info_raw=data[TEE_TCB_INFO],
        td_info_raw=data[TD_INFO],
    )
