"""IPAM: /30 allocation files under <state>/ipam, release, exhaustion, concurrency between processes."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
from pathlib import Path

import pytest

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.host import ipam
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import step_from_record

POOL = ipaddress.IPv4Network("10.99.0.0/24")


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    st = StateDir(tmp_path / "state")
    st.ensure()
    return st


def test_isolated_gets_one_30_and_file_is_visible(state: StateDir) -> None:
    a = ipam.allocate(state, "a", nat=False, pool=POOL)
    assert a.link == ipaddress.IPv4Network("10.99.0.0/30") and a.uplink is None
    on_disk = ipam.read_allocations(state.root)
    assert on_disk == {"a": a}
    assert (state.root / "ipam" / "a.json").stat().st_mode & 0o777 == 0o600


def test_nat_gets_two_distinct_30s_and_next_sandbox_continues(state: StateDir) -> None:
    a = ipam.allocate(state, "a", nat=True, pool=POOL)
    b = ipam.allocate(state, "b", nat=False, pool=POOL)
    assert [str(n) for n in a.subnets()] == ["10.99.0.0/30", "10.99.0.4/30"]
    assert str(b.link) == "10.99.0.8/30"


def test_release_frees_lowest_slot_for_reuse_and_is_idempotent(state: StateDir) -> None:
    a = ipam.allocate(state, "a", nat=False, pool=POOL)
    ipam.allocate(state, "b", nat=False, pool=POOL)
    assert ipam.release(state.root, "a", a.link) is True
    assert ipam.release(state.root, "a", a.link) is False
    c = ipam.allocate(state, "c", nat=False, pool=POOL)
    assert c.link == a.link


def test_release_refuses_other_addresses_of_same_name(state: StateDir) -> None:
    ipam.allocate(state, "a", nat=False, pool=POOL)
    assert ipam.release(state.root, "a", ipaddress.IPv4Network("10.99.0.200/30")) is False
    assert "a" in ipam.read_allocations(state.root)


def test_dry_run_writes_nothing(state: StateDir) -> None:
    a = ipam.allocate(state, "a", nat=True, pool=POOL, dry_run=True)
    assert a.uplink is not None
    assert ipam.read_allocations(state.root) == {}


def test_same_name_twice_is_an_error(state: StateDir) -> None:
    ipam.allocate(state, "a", nat=False, pool=POOL)
    with pytest.raises(SandboxError, match="already holds addresses"):
        ipam.allocate(state, "a", nat=False, pool=POOL)


def test_exhaustion_names_pool_and_fix(state: StateDir) -> None:
    small = ipaddress.IPv4Network("10.99.1.0/29")  # two /30s
    ipam.allocate(state, "a", nat=False, pool=small)
    with pytest.raises(SandboxError, match=r"10\.99\.1\.0/29 is exhausted") as e:
        ipam.allocate(state, "b", nat=True, pool=small)  # needs two, one left
    assert "SEALBOX_SUBNET_POOL" in str(e.value)
    ipam.allocate(state, "c", nat=False, pool=small)
    with pytest.raises(SandboxError, match="exhausted"):
        ipam.allocate(state, "d", nat=False, pool=small)


def test_corrupt_file_is_a_clear_error(state: StateDir) -> None:
    (state.root / "ipam").mkdir()
    (state.root / "ipam" / "x.json").write_text("{not json")
    with pytest.raises(SandboxError, match=r"x\.json is unreadable"):
        ipam.allocate(state, "a", nat=False, pool=POOL)


@pytest.mark.parametrize("text", ["10.0.0.1/24", "banana", "10.0.0.0/30", "fd00::/64"])
def test_bad_pool_is_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        ipam.parse_pool(text)


def test_pool_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALBOX_SUBNET_POOL", "10.50.0.0/20")
    assert str(ipam.parse_pool()) == "10.50.0.0/20"
    monkeypatch.delenv("SEALBOX_SUBNET_POOL")
    assert str(ipam.parse_pool()) == "10.213.0.0/16"
    monkeypatch.setenv("SEALBOX_SUBNET_POOL", "x")
    with pytest.raises(UsageError, match="SEALBOX_SUBNET_POOL"):
        ipam.parse_pool()


def test_step_do_reasserts_and_undo_releases(state: StateDir) -> None:
    a = ipam.allocate(state, "a", nat=True, pool=POOL)
    step = ipam.IpamAllocation(state_root=str(state.root), name="a", link=a.link, uplink=a.uplink, pool=POOL)
    rebuilt = step_from_record(step.kind, step.model_dump(mode="json"))
    assert rebuilt == step
    rebuilt.do()  # already there: no error, unchanged
    assert ipam.read_allocations(state.root)["a"] == a
    rebuilt.undo({})
    rebuilt.undo({})
    assert ipam.read_allocations(state.root) == {}
    rebuilt.do()  # file missing (e.g. removed): re-created when nobody else took the slots
    assert ipam.read_allocations(state.root)["a"] == a


def test_step_do_detects_clash(state: StateDir) -> None:
    planned = ipam.allocate(state, "a", nat=False, pool=POOL, dry_run=True)
    ipam.allocate(state, "b", nat=False, pool=POOL)  # takes the same slot first
    step = ipam.IpamAllocation(state_root=str(state.root), name="a", link=planned.link, pool=POOL)
    with pytest.raises(SandboxError, match="taken by another sandbox"):
        step.do()


def _worker(root: str, prefix: str, count: int, out: multiprocessing.Queue[list[str]]) -> None:
    st = StateDir(Path(root))
    got = []
    for i in range(count):
        a = ipam.allocate(st, f"{prefix}{i}", nat=i % 2 == 0, pool=ipaddress.IPv4Network("10.98.0.0/20"))
        got += [str(n) for n in a.subnets()]
    out.put(got)


def test_two_processes_never_share_a_subnet(state: StateDir) -> None:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(state.root), p, 40, q)) for p in ("p", "q")]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    every = results[0] + results[1]
    assert len(every) == 2 * (20 * 2 + 20)  # 20 nat (2 each) + 20 isolated per process
    assert len(set(every)) == len(every)
    on_disk = [str(n) for a in ipam.read_allocations(state.root).values() for n in a.subnets()]
    assert sorted(on_disk) == sorted(every)
    assert not [f for f in os.listdir(state.root / "ipam") if f.startswith(".")]  # no temp files left
