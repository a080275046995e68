"""Expressions of nftables' JSON (libnftables-json(5)) shared by the host's sandbox tables (sandbox/host/nft.py)
and the guest's rule sets (builder/bob_firewall.py): rules are built as data, never as nft command text."""

from __future__ import annotations

from typing import Any

Expr = dict[str, Any]


def match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}
