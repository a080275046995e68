"""bob's modes on a booted guest (QEMU/TCG, --rootfs disk, a blank raw data disk labelled persistent): `initialize`
makes the encrypted /persistent, then `toggle` walks maintenance -> production -> stopped -> maintenance, the early
return refused until the dwell time (20 s here) has passed; the port table is probed from the host in each mode and
asserted against builder/bob_firewall.py's openings. Slow: under TCG argon2id, scrypt and mkfs take minutes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from bob_e2e_lib import DWELL, PASSPHRASE, Guest, booted, check_table, cmd, http_post, port_table

pytestmark = [pytest.mark.integration, pytest.mark.boot, pytest.mark.slow]


def _sequence(g: Guest) -> None:
    """The one pass through the modes: recorded step by step, never raising (each test asserts its own steps)."""
    st = g.steps
    try:
        st["status_before"] = cmd(g, "status")
        st["logs_before"] = cmd(g, "logs", "5")
        st["table_maintenance_locked"] = port_table(g)
        st["initialize_empty"] = cmd(g, "initialize", stdin="\n")
        st["initialize"] = cmd(g, "initialize", stdin=PASSPHRASE, timeout=900)
        st["initialize_again"] = cmd(g, "initialize", stdin=PASSPHRASE, timeout=300)
        st["register_after_initialize"] = http_post(g.netns, g.ip, 8080, (g.other_key.parent / "other.pub").read_bytes())
        st["status_maintenance"] = cmd(g, "status")
        st["logs_after"] = cmd(g, "logs", "5")
        st["toggle_production"] = cmd(g, "toggle")
        st["status_production"] = cmd(g, "status")
        st["table_production"] = port_table(g)
        st["toggle_stopped"] = cmd(g, "toggle")
        st["table_stopped"] = port_table(g)
        st["toggle_early"] = cmd(g, "toggle")
        t_stopped = time.monotonic() - st["toggle_early"]["s"]
        time.sleep(max(0.0, DWELL + 2 - (time.monotonic() - t_stopped)))
        st["toggle_maintenance"] = cmd(g, "toggle")
        st["status_end"] = cmd(g, "status")
        st["table_maintenance"] = port_table(g)
    except Exception as e:  # noqa: BLE001 - recorded: the tests that need the missing steps fail with it
        st["error"] = f"{type(e).__name__}: {e}"



@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    yield from booted(tmp_path_factory, "modes", with_disk=True, sequence=_sequence)


@pytest.mark.parametrize(("step", "mode"), [("table_maintenance_locked", "maintenance"), ("table_production", "production"),
                                            ("table_stopped", "stopped"), ("table_maintenance", "maintenance")])
def test_port_table_of_each_mode_as_seen_from_the_host(guest: Guest, step: str, mode: str) -> None:
    assert step in guest.steps, guest.steps.get("error")
    check_table(guest.steps[step], mode)


def test_initialize_makes_the_encrypted_disk_once(guest: Guest) -> None:
    st = guest.steps
    assert st.get("initialize_empty", {}).get("rc") == 1, st
    assert st.get("initialize", {}).get("rc") == 0, (st.get("initialize"), st.get("error"))
    again = st["initialize_again"]
    assert again["rc"] == 1 and "initialize" in again["err"], again
    assert st["register_after_initialize"][0] in (403, 409), st["register_after_initialize"]
    logs = st["logs_after"]  # no refusal now: /persistent is mounted (and no log line yet)
    assert logs["rc"] == 0, logs


def test_toggle_walks_the_modes_and_the_dwell_time_holds(guest: Guest) -> None:
    st = guest.steps
    assert "error" not in st, st["error"]
    assert st["status_maintenance"]["rc"] == 0 and st["status_maintenance"]["out"].startswith("mode maintenance"), st
    assert st["toggle_production"]["rc"] == 0 and st["toggle_production"]["out"].startswith("mode production"), st
    assert st["status_production"]["out"].startswith("mode production"), st
    assert st["toggle_stopped"]["rc"] == 0 and st["toggle_stopped"]["out"].startswith("mode stopped"), st
    early = st["toggle_early"]
    assert early["rc"] == 1 and "maintenance is refused for" in early["err"], early
    assert st["toggle_maintenance"]["rc"] == 0 and st["toggle_maintenance"]["out"].startswith("mode maintenance"), st
    assert st["status_end"]["out"].startswith("mode maintenance"), st
