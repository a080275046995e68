"""Human-readable and JSON renderings of quote and event log reports (hex strings throughout)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sealbox.attest.eventlog import KNOWN_ALGS
from sealbox.attest.report import EventLogReport, QuoteReport
from sealbox.attest.verify import Check


def _ts(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%SZ}"


def _alg(alg: int) -> str:
    return KNOWN_ALGS.get(alg, (f"alg_{alg:#06x}", 0))[0]


def quote_json(rep: QuoteReport) -> dict[str, Any]:
    q, b, v = rep.quote, rep.quote.body, rep.verification
    body: dict[str, Any] = {
        k: getattr(b, k).hex()
        for k in ("tee_tcb_svn", "mrseam", "mrsignerseam", "seam_attributes", "td_attributes", "xfam",
                  "mrtd", "mrconfigid", "mrowner", "mrownerconfig", "report_data")
    }
    body["rtmrs"] = [r.hex() for r in b.rtmrs]
    if b.tee_tcb_svn2 is not None and b.mrservicetd is not None:
        body["tee_tcb_svn2"], body["mrservicetd"] = b.tee_tcb_svn2.hex(), b.mrservicetd.hex()
    h, qe = q.header, q.qe_report
    out: dict[str, Any] = {
        "file": rep.path,
        "ok": rep.ok,
        "verdict": rep.verdict(),
        "failures": rep.failures,
        "not_checked": rep.not_checked,
        "at": _ts(v.at),
        "header": {
            "version": h.version, "attestation_key_type": h.attestation_key_type, "tee_type": h.tee_type,
            "qe_svn": h.qe_svn, "pce_svn": h.pce_svn, "qe_vendor_id": h.qe_vendor_id.hex(), "user_data": h.user_data.hex(),
        },
        "body_type": q.body_type,
        "body_kind": b.kind,
        "body": body,
        "debug_td": b.debug,
        "attestation_key": q.attestation_key.hex(),
        "qe_report": {
            "cpu_svn": qe.cpu_svn.hex(), "misc_select": qe.misc_select, "attributes": qe.attributes.hex(),
            "mr_enclave": qe.mr_enclave.hex(), "mr_signer": qe.mr_signer.hex(), "isv_prod_id": qe.isv_prod_id,
            "isv_svn": qe.isv_svn, "report_data": qe.report_data.hex(),
        },
        "qe_auth_data": q.qe_auth_data.hex(),
        "pck_chain": v.chain,
        "checks": [asdict(c) for c in rep.checks],
        "warnings": v.warnings,
        "length": q.length,
    }
    if rep.collateral is not None:
        c = rep.collateral
        out["collateral"] = {
            "ok": c.ok, "tcb_status": c.status, "detail": c.detail, "advisory_ids": c.advisory_ids,
            "platform_status": c.platform_status, "qe_status": c.qe_status,
            "valid_from": _ts(c.valid_from), "valid_until": _ts(c.valid_until),
            "window_reasons": list(c.window_reasons), "parser_disagreements": c.cross_check,
        }
    return out


def quote_text(rep: QuoteReport) -> list[str]:
    q, b, v = rep.quote, rep.quote.body, rep.verification
    lines = [
        f"quote {rep.path}: TDX v{q.header.version}, body {b.kind}, {q.length} bytes, checked at {_ts(v.at)}",
        f"  MRTD        {b.mrtd.hex()}",
        *(f"  RTMR{i}       {r.hex()}" for i, r in enumerate(b.rtmrs)),
        f"  REPORTDATA  {b.report_data.hex()}",
        f"  TD attributes {b.td_attributes.hex()}{' (DEBUG)' if b.debug else ''}, XFAM {b.xfam.hex()}, TEE_TCB_SVN {b.tee_tcb_svn.hex()}",
    ]
    if v.chain:
        lines.append(f"  PCK leaf    {v.chain[0]['subject']} (valid {v.chain[0]['not_before']} .. {v.chain[0]['not_after']})")
    for check in rep.checks:
        lines.append(check_line(check))
        if check.name == "collateral" and rep.collateral is not None:
            c = rep.collateral
            lines.append(f"        window {_ts(c.valid_from)} ({c.window_reasons[0]}) .. {_ts(c.valid_until)} ({c.window_reasons[1]})")
    lines += [f"  warning: {w}" for w in v.warnings]
    lines.append(f"result: {rep.verdict()}")
    return lines


def check_line(c: Check) -> str:
    if c.skipped:
        return f"  [--] {c.name}: NOT checked: {c.detail}"
    return f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}"


def eventlog_json(rep: EventLogReport) -> dict[str, Any]:
    log = rep.log
    out: dict[str, Any] = {
        "file": rep.path,
        "ok": rep.ok,
        "verdict": rep.verdict(),
        "failures": rep.failures,
        "spec_id": {
            "spec_version": log.spec_id.spec_version,
            "platform_class": log.spec_id.platform_class,
            "algorithms": {_alg(a): s for a, s in log.spec_id.algorithms.items()},
        },
        "length": log.length,
        "events": [
            {
                "index": e.index, "offset": e.offset, "mr_index": e.mr_index, "rtmr": e.rtmr,
                "event_type": e.event_type, "event_type_name": e.type_name,
                "digests": {_alg(a): d.hex() for a, d in e.digests.items()},
                "description": e.describe(), "data": e.data.hex(),
            }
            for e in log.events
        ],
        "replayed": {f"RTMR{i}": r.hex() for i, r in enumerate(rep.replayed)},
    }
    if rep.table is not None:
        out["ccel_table"] = asdict(rep.table)
    if rep.quote is not None:
        out["quote"] = quote_json(rep.quote)
        out["quote_rtmr_match"] = {f"RTMR{i}": i not in rep.rtmr_mismatches for i in range(4)}
    if rep.policy is not None:
        p = rep.policy
        out["policy"] = {"ok": p.ok, "checked": p.checked, "not_checked": p.not_checked, "mismatches": [asdict(m) for m in p.mismatches]}
    return out


def eventlog_text(rep: EventLogReport) -> list[str]:
    log = rep.log
    algs = ", ".join(_alg(a) for a in log.spec_id.algorithms)
    lines = []
    if rep.table is not None:
        t = rep.table
        lines.append(f"CCEL table: {t.oem_id}/{t.oem_table_id} rev {t.revision}, CC type {t.cc_type}, log area {t.laml} bytes at {t.lasa:#x}")
    lines.append(f"event log {rep.path}: TCG {log.spec_id.spec_version}, digests {algs}, {len(log.events)} events, {log.length} bytes")
    for e in log.events:
        where = f"RTMR{e.rtmr}" if e.rtmr is not None else "  -  "
        digest = next(iter(e.digests.values()), b"").hex()[:16]
        lines.append(f"  {e.index:4d} {where} {e.type_name:34s} {digest}  {e.describe()}")
    lines += [f"  replayed RTMR{i} {r.hex()}" for i, r in enumerate(rep.replayed)]
    if rep.quote is not None:
        lines += [f"  quote: {check_line(c).strip()}" for c in rep.quote.checks]
        for i in range(4):
            bad = i in rep.rtmr_mismatches
            lines.append(f"  [{'FAIL' if bad else 'ok'}] replay of RTMR{i} {'differs from' if bad else 'matches'} the quote")
    if rep.policy is not None:
        p = rep.policy
        lines.append(f"  prediction: checked {', '.join(p.checked) or 'nothing'}")
        lines += [f"  not checked: {name}: {why}" for name, why in p.not_checked.items()]
        lines += [f"  [FAIL] {m.line()}" for m in p.mismatches]
    lines.append(f"result: {rep.verdict()}")
    return lines
