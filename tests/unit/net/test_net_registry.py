"""The host registry: leases of names, /30s and uids shared by every state dir of a host.

Runs against a private registry dir (never /run/sealbox) and a private uid range."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.host import ipam, owner, users
from sealbox.sandbox.host.registry import HostLeaseStep, Registry
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import step_from_record

POOL = ipaddress.IPv4Network("10.99.0.0/24")
RANGE = "1879100000-1879100999"


@pytest.fixture(autouse=True)
def uid_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALBOX_UID_RANGE", RANGE)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "run", host="net-1")


def take(reg: Registry, state: str, name: str, nat: bool = False, pool: ipaddress.IPv4Network = POOL, **kw: object):  # type: ignore[no-untyped-def]
    return reg.allocate(name, owner.mark(state, name), state, nat=nat, pool=pool, **kw)  # type: ignore[arg-type]


def test_isolated_lease_gets_one_30_and_a_uid_of_its_own(reg: Registry) -> None:
    a = take(reg, "/s1", "a")
    assert a.link == ipaddress.IPv4Network("10.99.0.0/30") and a.uplink is None
    assert a.uid == a.gid == 1879100000 and a.owner == owner.mark("/s1", "a")
    assert reg.leases() == {"a": a} and set(reg.uid_holds()) == {a.uid}
    assert reg.lease_path("a").stat().st_mode & 0o777 == 0o600
    assert reg.root.stat().st_mode & 0o777 == 0o700


def test_nat_gets_two_distinct_30s_and_next_sandbox_continues(reg: Registry) -> None:
    a = take(reg, "/s1", "a", nat=True)
    b = take(reg, "/s1", "b")
    assert [str(n) for n in a.subnets()] == ["10.99.0.0/30", "10.99.0.4/30"]
    assert str(b.link) == "10.99.0.8/30" and b.uid == a.uid + 1


def test_two_state_dirs_share_one_table(reg: Registry) -> None:
    """The defect: IPAM per state dir gave two state dirs the same /30s (the same routes on the host)."""
    a = take(reg, "/state-a", "x1", nat=True)
    b = take(reg, "/state-b", "x2", nat=True)
    assert not set(a.subnets()) & set(b.subnets()) and a.uid != b.uid
    with pytest.raises(SandboxError, match=r"'x1' is in use on this host by the state dir /state-a"):
        take(reg, "/state-b", "x1")
    with pytest.raises(SandboxError, match="already holds a lease"):
        take(reg, "/state-a", "x1")


def test_release_only_by_owner_frees_for_reuse_and_is_idempotent(reg: Registry) -> None:
    a = take(reg, "/s1", "a")
    take(reg, "/s1", "b")
    assert reg.release("a", owner.mark("/s2", "a")) is False  # another state dir's sandbox of that name
    assert "a" in reg.leases() and a.uid in reg.uid_holds()
    assert reg.release("a", a.owner, a.uid) is True
    assert reg.release("a", a.owner, a.uid) is False
    assert a.uid not in reg.uid_holds()
    c = take(reg, "/s1", "c")
    assert (c.link, c.uid) == (a.link, a.uid)  # reused once free


def test_dry_run_writes_nothing(reg: Registry) -> None:
    a = take(reg, "/s1", "a", nat=True, dry_run=True)
    assert a.uplink is not None
    assert reg.leases() == {} and not reg.root.exists()


def test_exhaustion_names_pool_and_fix(reg: Registry) -> None:
    small = ipaddress.IPv4Network("10.99.1.0/29")  # two /30s
    take(reg, "/s1", "a", pool=small)
    with pytest.raises(SandboxError, match=r"10\.99\.1\.0/29 is exhausted") as e:
        take(reg, "/s1", "b", nat=True, pool=small)  # needs two, one left
    assert "SEALBOX_SUBNET_POOL" in str(e.value)


def test_fixed_link(reg: Registry) -> None:
    pool = ipaddress.IPv4Network("10.213.0.0/16")
    other = take(reg, "/s1", "other", pool=pool)
    want = ipaddress.IPv4Network("10.213.7.4/30")
    a = take(reg, "/s1", "restored", nat=True, pool=pool, link=want)
    assert a.link == want and a.uplink not in (want, other.link)
    with pytest.raises(SandboxError, match="held by sandbox 'restored'"):
        take(reg, "/s2", "again", pool=pool, link=want)
    with pytest.raises(SandboxError, match="not a /30 inside"):
        take(reg, "/s1", "outside", pool=pool, link=ipaddress.IPv4Network("192.168.0.0/30"))


def test_corrupt_file_is_a_clear_error(reg: Registry) -> None:
    (reg.host_dir / "leases").mkdir(parents=True)
    (reg.host_dir / "leases" / "x.json").write_text("{not json")
    with pytest.raises(SandboxError, match=r"x\.json is unreadable"):
        take(reg, "/s1", "a")


def test_hosts_are_apart_but_uids_are_per_machine(tmp_path: Path) -> None:
    """Simulated hosts (network namespaces of one machine) each lease names and addresses; a uid is
    never handed out twice on the machine."""
    h1, h2 = Registry(tmp_path / "run", host="net-1"), Registry(tmp_path / "run", host="net-2")
    a = take(h1, "/s1", "same")
    b = take(h2, "/s2", "same")
    assert a.link == b.link and a.uid != b.uid
    assert Registry(tmp_path / "run").host.startswith("net-") and Registry(tmp_path / "run").host == Registry(tmp_path / "run").host


def test_step_reasserts_undo_releases_and_refuses_clash(reg: Registry) -> None:
    a = take(reg, "/s1", "a", nat=True)
    step = HostLeaseStep(run_dir=str(reg.root), host=reg.host, lease=a)
    rebuilt = step_from_record(step.kind, step.model_dump(mode="json"))
    assert rebuilt == step and rebuilt.uid == a.uid  # type: ignore[attr-defined]
    rebuilt.do()  # already there: no error, unchanged
    assert reg.leases()["a"] == a
    rebuilt.undo({})
    rebuilt.undo({})
    assert reg.leases() == {} and reg.uid_holds() == {}
    rebuilt.do()  # file missing: re-created when nobody else took any part of it
    assert reg.leases()["a"] == a
    rebuilt.undo({})
    b = take(reg, "/s2", "b", nat=False)  # takes a's first /30 and uid meanwhile
    with pytest.raises(SandboxError, match="taken by another sandbox"):
        rebuilt.do()
    assert reg.leases() == {"b": b}


def _worker(root: str, prefix: str, count: int, out: multiprocessing.Queue[list[str]]) -> None:
    os.environ["SEALBOX_UID_RANGE"] = RANGE
    reg = Registry(root, host="net-1")
    got = []
    for i in range(count):
        a = take(reg, f"/state-{prefix}", f"{prefix}{i}", nat=i % 2 == 0, pool=ipaddress.IPv4Network("10.98.0.0/20"))
        got += [str(n) for n in a.subnets()] + [f"uid {a.uid}"]
    out.put(got)


def test_two_processes_of_two_state_dirs_never_share_a_subnet_or_uid(reg: Registry) -> None:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(reg.root), p, 30, q)) for p in ("p", "q")]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    every = results[0] + results[1]
    assert len(every) == 2 * (15 * 2 + 15 + 30)  # per process: 15 nat (2 each) + 15 isolated /30s, 30 uids
    assert len(set(every)) == len(every)
    on_disk = [str(n) for a in reg.leases().values() for n in a.subnets()] + [f"uid {u}" for u in reg.uid_holds()]
    assert sorted(on_disk) == sorted(every)
    assert not [f for f in os.listdir(reg.host_dir / "leases") if f.startswith(".")]  # no temp files left


# --- the uid range ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "why"), [
    ("61000-62000", "DynamicUser"), ("65534-65540", "nobody"), ("500-2000", "system accounts"),
    ("2147483000-2147483700", "negative"), ("x-3", "FIRST-LAST"), ("5-", "FIRST-LAST"), ("9000-8000", "FIRST-LAST"),
])
def test_bad_uid_range_is_a_usage_error(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        users.uid_range(text)


def test_default_range_clears_systemd_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEALBOX_UID_RANGE")
    lo, hi = users.uid_range()
    assert lo > 1879048191 and hi < 2147352576  # above the container range, below the foreign range


def test_free_uid_skips_delegated_named_and_running(tmp_path: Path) -> None:
    sub = tmp_path / "subuid"
    sub.write_text("alice:1879100000:5\nmalformed line\nbob:1879100007:0\n")
    subids = users.subid_ranges([sub, tmp_path / "missing"])
    assert subids == [(1879100000, 1879100004)]
    assert users.free_uid(rng=(1879100000, 1879100010), subids=subids) == 1879100005
    assert users.free_uid(taken={1879100005}, rng=(1879100000, 1879100010), subids=subids) == 1879100006
    nobody = 65534  # has a passwd entry: never handed out
    with pytest.raises(SandboxError, match="no free sandbox uid"):
        users.free_uid(rng=(nobody, nobody), subids=[])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another uid")
def test_free_uid_skips_a_uid_a_process_runs_as() -> None:
    busy = 1879100008
    p = subprocess.Popen(["setpriv", "--reuid", str(busy), "--regid", str(busy), "--clear-groups", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while busy not in users.process_uids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert users.free_uid(rng=(busy, busy + 1), subids=[]) == busy + 1
    finally:
        p.kill()
        p.wait()


def test_pool_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("10.0.0.1/24", "banana", "10.0.0.0/30", "fd00::/64"):
        with pytest.raises(UsageError):
            ipam.parse_pool(text)
    monkeypatch.setenv("SEALBOX_SUBNET_POOL", "10.50.0.0/20")
    assert str(ipam.parse_pool()) == "10.50.0.0/20"
    monkeypatch.delenv("SEALBOX_SUBNET_POOL")
    assert str(ipam.parse_pool()) == "10.213.0.0/16"


def test_marks_round_trip(tmp_path: Path) -> None:
    st = StateDir(tmp_path / "state")
    m = st.mark("web-1")
    assert owner.parse(m) == (st.id, "web-1") and owner.name_if_ours(m, st.id) == "web-1"
    assert owner.name_if_ours(m, StateDir(tmp_path / "other").id) is None
    assert StateDir(tmp_path / "state" / ".." / "state").id == st.id  # the path, not its spelling
    for bad in (None, "", "sealbox/zz/web", "sealbox/0123456789abcdef/bad name", "other/0123456789abcdef/x"):
        assert owner.parse(bad) is None
