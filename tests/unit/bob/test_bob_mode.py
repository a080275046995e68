"""bob-mode, the guest's root-side mode switch: transitions, the dwell rule, rules then conntrack flush, failures."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from bobguest import guest_root, load, mount

bm = load("bob_mode")
T0 = 1_800_000_000.0


class Guest:
    """A fake root, a settable clock and a recorder of the tools the switch runs (nft, conntrack)."""

    def __init__(self, base: Path, **kw: Any) -> None:
        self.root = guest_root(base, **kw)
        self.now = T0
        self.calls: list[list[str]] = []
        self.fail: set[str] = set()  # programs that exit 1

    def run(self, argv: list[str]) -> int:
        self.calls.append(argv)
        return 1 if argv[0] in self.fail else 0

    def guard(self) -> str:
        return str(self.root / "usr/lib/sealbox/bob/bob-netguard")

    def modes(self) -> Any:
        return bm.Modes(self.root, clock=lambda: self.now, run=self.run)

    def switch_calls(self, mode: str) -> list[list[str]]:
        verify = [[self.guard(), "verify"]] if mode == "production" else []
        return [*verify, ["nft", "-j", "-f", str(self.root / f"usr/lib/sealbox/bob/nft-{mode}.json")],
                ["conntrack", "-F", "-f", "ipv4"], ["conntrack", "-F", "-f", "ipv6"]]


@pytest.fixture
def g(tmp_path: Path) -> Guest:
    return Guest(tmp_path)


def test_the_cycle_loads_each_mode_then_flushes_conntrack(g: Guest) -> None:
    m = g.modes()
    assert m.status().startswith("mode maintenance")
    for want in ("production", "stopped"):
        g.calls.clear()
        g.now += 10
        assert m.toggle().startswith(f"mode {want}")
        assert g.calls == g.switch_calls(want)  # (production: the container's rules checked) the new rules, then the flush
    g.now += 300
    g.calls.clear()
    assert m.toggle().startswith("mode maintenance")
    assert g.calls == g.switch_calls("maintenance")


def test_maintenance_waits_the_dwell_time_after_production_ends(g: Guest) -> None:
    m = g.modes()
    m.toggle()
    g.now += 10_000  # a long production does not count: the dwell starts when production ends
    m.toggle()
    g.now += 299
    g.calls.clear()
    with pytest.raises(bm.Refused, match=r"refused for 1 more s .*300 s before; it ended 299 s ago"):
        m.toggle()
    assert g.calls == []  # nothing loaded, nothing flushed
    assert "maintenance possible in 1 s" in m.status()
    g.now += 1
    assert "maintenance possible now" in m.status()
    assert m.toggle().startswith("mode maintenance")


def test_a_clock_set_back_does_not_shorten_the_dwell(g: Guest) -> None:
    m = g.modes()
    m.toggle()
    m.toggle()
    g.now -= 3600
    with pytest.raises(bm.Refused, match="refused for 300 more s"):
        m.toggle()


def test_dwell_zero_allows_an_immediate_return(tmp_path: Path) -> None:
    g = Guest(tmp_path, dwell=0)
    m = g.modes()
    assert [m.toggle().split()[1] for _ in range(3)] == ["production", "stopped", "maintenance"]


@pytest.mark.parametrize("req", ["status", "toggle"])
def test_refused_until_persistent_is_mounted(tmp_path: Path, req: str) -> None:
    g = Guest(tmp_path, mounted=False)
    rc, out = g.modes().request(req + "\n")
    assert rc == 1 and out == f"{req}: refused until /persistent is mounted: run initialize first"
    assert g.calls == [] and not (g.root / "persistent/.bob").exists()
    mount(g.root)
    assert g.modes().request(req + "\n")[0] == 0


def test_the_state_survives_a_new_process_and_is_root_only(g: Guest) -> None:
    g.modes().toggle()
    path = g.root / "persistent/.bob/state.json"
    assert json.loads(path.read_text())["mode"] == "production"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert g.modes().status().startswith("mode production")


def test_resume_after_a_reboot_in_production_comes_back_stopped_with_a_fresh_dwell(g: Guest) -> None:
    g.modes().toggle()
    g.now += 86400  # whenever the guest comes back, production's end is unknown: counted from the resume
    g.calls.clear()
    assert g.modes().resume() == "mode stopped"
    assert g.calls[:3] == g.switch_calls("stopped") and g.calls[3][0] == "systemctl"
    with pytest.raises(bm.Refused, match="refused for 300 more s"):
        g.modes().toggle()


def test_resume_keeps_maintenance(g: Guest) -> None:
    assert g.modes().resume() == "mode maintenance"


def test_resume_starts_the_workload_after_the_rules(g: Guest) -> None:
    assert g.modes().resume() == "mode maintenance"
    start = ["systemctl", "start", "--no-block", "sealbox-bob-node.service", "sealbox-bob-logs.service", "sealbox-bob-workload.service"]
    assert g.calls == [*g.switch_calls("maintenance"), start]
    g.calls.clear()
    g.fail.add("systemctl")
    assert g.modes().resume() == "mode maintenance (but starting the workload failed)"


@pytest.mark.parametrize("text", ["not json", '{"mode": "debug", "since": 1}', '{"mode": "maintenance"}', "\xff"])
def test_a_broken_state_reads_as_production_just_ended(g: Guest, text: str) -> None:
    (g.root / "persistent/.bob").mkdir(mode=0o700)
    (g.root / "persistent/.bob/state.json").write_text(text, errors="surrogateescape")
    m = g.modes()
    assert m.status().startswith("mode stopped")
    with pytest.raises(bm.Refused, match="refused for 300 more s"):
        m.toggle()


@pytest.mark.parametrize("tool", ["nft", "conntrack"])
def test_a_failed_switch_falls_back_to_stopped(g: Guest, tool: str) -> None:
    m = g.modes()
    g.fail.add(tool)
    with pytest.raises(bm.Refused, match="switching to production failed: the guest fell back to stopped"):
        m.toggle()
    assert ["nft", "-j", "-f", str(g.root / "usr/lib/sealbox/bob/nft-stopped.json")] in g.calls
    g.fail.clear()
    assert m.status().startswith("mode stopped")
    with pytest.raises(bm.Refused, match="refused for 300 more s"):
        m.toggle()


@pytest.mark.parametrize("start", ["maintenance", "production", "stopped"])
def test_a_mode_that_cannot_be_recorded_is_not_entered(g: Guest, start: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # /persistent full (the searcher's /data and the node share it): were the rules loaded first and the record then
    # failed, a guest in production would be recorded as maintenance and come back in maintenance at the next boot,
    # skipping the dwell time
    m = g.modes()
    for _ in range(["maintenance", "production", "stopped"].index(start)):
        m.toggle()
    g.now += 1000  # past any dwell
    g.calls.clear()

    def full(state: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(m, "save", full)
    with pytest.raises(bm.Refused, match="cannot record the mode .*No space left on device.*nothing changed"):
        m.toggle()
    assert not [c for c in g.calls if c[0] in ("nft", "conntrack")]  # no rule set loaded, nothing flushed
    monkeypatch.undo()
    assert m.status().startswith(f"mode {start}")


def test_production_is_refused_unless_the_container_drop_rules_are_verified(g: Guest) -> None:
    m = g.modes()
    g.fail.add(g.guard())  # bob-netguard verify: the rules are missing (or no container runs)
    with pytest.raises(bm.Refused, match="production is refused: the container-side drop rules"):
        m.toggle()
    assert g.calls == [[g.guard(), "verify"]]  # no rule set loaded, nothing flushed
    assert m.status().startswith("mode maintenance")
    g.fail.clear()
    g.calls.clear()
    assert m.toggle().startswith("mode production")
    assert g.calls == g.switch_calls("production")


def test_boot_loads_maintenance_without_persistent(tmp_path: Path) -> None:
    g = Guest(tmp_path, mounted=False)
    assert g.modes().boot() == "mode maintenance (boot)"
    assert g.calls == g.switch_calls("maintenance")


@pytest.mark.parametrize("config", ["", "{}", '{"dwell_seconds": -1}', '{"dwell_seconds": "300"}'])
def test_a_broken_config_changes_no_mode(g: Guest, config: str) -> None:
    (g.root / "usr/lib/sealbox/bob/config.json").write_text(config)
    with pytest.raises(bm.Refused, match="config.json"):
        g.modes().toggle()
    assert g.calls == []


@pytest.mark.parametrize("raw, rc, has", [
    (b"status\n", 0, "mode maintenance"),
    (b"toggle\n", 0, "mode production"),
    (b"initialize\n", 2, "unknown request 'initialize'"),
    (b"status", 2, "not one line"),
    (b"status" + b" " * 64 + b"\n", 2, "too long"),
    (b"st\xe4tus\n", 2, "not ASCII"),
    (b"\n", 2, "unknown request ''"),
])
def test_serve_answers_one_json_line(g: Guest, raw: bytes, rc: int, has: str) -> None:
    out = io.StringIO()
    assert bm.serve(g.modes(), io.BytesIO(raw), out) == 0
    answer = json.loads(out.getvalue())
    assert out.getvalue().count("\n") == 1 and answer["rc"] == rc and has in answer["out"]
