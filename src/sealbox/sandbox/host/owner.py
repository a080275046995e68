"""Ownership marks: every host object sealbox creates says which state dir and sandbox made it.

Names like `sealbox-<name>` are host-global: another state dir, an older sealbox or any other tool
may own an object of that name. So undo and gc never act on a name alone; they act only on an
object that carries *their* mark, and every object gets its mark as it comes into existence (never
in a second step a crash could skip):

    network namespace   its `lo` alias, set before the namespace is bound to its name; the name
                        file holds the mark while the namespace is not bound yet (host/netns.py)
    root veth end       its alias, set while it still lives in the sandbox's own namespace, then
                        moved to the host in one netlink request (host/netlink.py)
    root nft table      a rule comment in chain `sealbox-owner`, created in the same transaction
                        as the table itself (`create` fails if the name exists)
    cgroup              its path `sealbox/<state id>/<name>`: no other state dir can make it
    registry lease      the `owner` field of the lease (host/registry.py)
    ip_forward user     the mark is the user key (host/forward.py)
    Firecracker jail    the `sealbox-owner` file written before the jail dir gets its name

The mark is `sealbox/<state id>/<sandbox name>`; the state id is a digest of the state dir's
absolute path, so gc of one state dir recognises its own leftovers (even without records) and
leaves every other state dir's objects alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sealbox.util.names import NAME_RE

PREFIX = "sealbox/"
STATE_ID_LEN = 16
OWNER_CHAIN = "sealbox-owner"  # nft: a regular chain nothing jumps to; its one rule's comment is the mark


def state_id(state_root: str | os.PathLike[str]) -> str:
    """Short, stable id of a state dir (its absolute, symlink-free path)."""
    return hashlib.sha256(str(Path(state_root).resolve()).encode()).hexdigest()[:STATE_ID_LEN]


def mark(state_root: str | os.PathLike[str], name: str) -> str:
    return f"{PREFIX}{state_id(state_root)}/{name}"


def is_state_id(text: str) -> bool:
    return len(text) == STATE_ID_LEN and all(c in "0123456789abcdef" for c in text)


def parse(text: str | None) -> tuple[str, str] | None:
    """(state id, sandbox name) of a mark, or None if `text` is not one."""
    if not text or not text.startswith(PREFIX):
        return None
    sid, _, name = text[len(PREFIX):].partition("/")
    if not is_state_id(sid) or not NAME_RE.fullmatch(name):
        return None
    return sid, name


def name_if_ours(text: str | None, sid: str) -> str | None:
    """The sandbox name a mark names, if the mark belongs to state id `sid`."""
    parsed = parse(text)
    return parsed[1] if parsed and parsed[0] == sid else None


# --- nft tables ------------------------------------------------------------------------------------
def nft_create_marked(doc: dict[str, Any], table: str, owner: str, family: str = "inet") -> dict[str, Any]:
    """Turn a ruleset document that (re)creates `table` into one that *creates* it, marked.

    The document's own add/delete commands for the table are dropped and replaced by `create`
    (which fails if a table of that name exists, so a foreign table is never replaced) plus the
    owner chain and rule — one transaction, so the table never exists without its mark."""
    ref = {"family": family, "name": table}
    cmds = doc.get("nftables", [])
    meta = [c for c in cmds if "metainfo" in c]
    rest = [c for c in cmds if "metainfo" not in c and not _is_table_cmd(c, ref)]
    marker = [
        {"create": {"table": dict(ref)}},
        {"add": {"chain": {"family": family, "table": table, "name": OWNER_CHAIN}}},
        {"add": {"rule": {"family": family, "table": table, "chain": OWNER_CHAIN, "expr": [{"counter": None}], "comment": owner}}},
    ]
    return {"nftables": [*meta, *marker, *rest]}


def _is_table_cmd(cmd: dict[str, Any], ref: dict[str, str]) -> bool:
    for verb in ("add", "delete", "create", "flush"):
        body = cmd.get(verb)
        if isinstance(body, dict) and set(body) == {"table"}:
            t = body["table"]
            if t.get("family") == ref["family"] and t.get("name") == ref["name"]:
                return True
    return False


def nft_marks(ruleset: list[dict[str, Any]], family: str = "inet") -> dict[str, str]:
    """table name -> owner mark, from the `nftables` array of `nft -j list ruleset`."""
    found: dict[str, str] = {}
    for item in ruleset:
        rule = item.get("rule")
        if rule and rule.get("family") == family and rule.get("chain") == OWNER_CHAIN and "comment" in rule:
            found.setdefault(str(rule["table"]), str(rule["comment"]))
    return found


def nft_table_marks(netns: str | None = None) -> dict[str, str | None]:
    """Every inet table of a namespace -> its owner mark (None: a table without sealbox's mark)."""
    from sealbox.sandbox.host import nft

    ruleset = nft.list_ruleset(netns)
    marks = nft_marks(ruleset)
    tables = [i["table"]["name"] for i in ruleset if "table" in i and i["table"].get("family") == "inet"]
    return {t: marks.get(t) for t in tables}
