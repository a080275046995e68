"""bob's encrypted disk on a booted guest (QEMU/TCG, --rootfs disk, a blank raw data disk labelled persistent):
`initialize` refuses an empty passphrase, makes the encrypted /persistent once and refuses a second time, the key
registration is closed after it, `status` then answers, and `toggle` into production is refused while the
searcher's container is not running (this image's workload prints one line and exits, so bob-netguard cannot verify
its drop rules); the port table is probed from the host before and after `initialize` and asserted against
builder/bob_firewall.py's openings. Slow: under TCG argon2id, scrypt and mkfs take minutes (~5 min here).
The modes with a running container, both directions of the port table, the dwell time and later boots of the same
disk: test_bob_workload_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bob_e2e_lib import PASSPHRASE, Guest, booted, check_table, cmd, http_post, port_table

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
        # the workload has exited (it prints one line): production must be refused
        st["toggle_production"] = cmd(g, "toggle")
        st["status_end"] = cmd(g, "status")
        st["table_maintenance"] = port_table(g)
    except Exception as e:  # noqa: BLE001 - recorded: the tests that need the missing steps fail with it
        st["error"] = f"{type(e).__name__}: {e}"



@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    yield from booted(tmp_path_factory, "modes", with_disk=True, sequence=_sequence)


@pytest.mark.parametrize("step", ["table_maintenance_locked", "table_maintenance"])
def test_maintenance_port_table_before_and_after_initialize(guest: Guest, step: str) -> None:
    assert step in guest.steps, guest.steps.get("error")
    check_table(guest.steps[step], "maintenance")


def test_initialize_makes_the_encrypted_disk_once(guest: Guest) -> None:
    st = guest.steps
    empty = st.get("initialize_empty", {})
    assert empty.get("rc") == 2 and "no passphrase" in empty.get("err", ""), st  # refused by the shell, before anything
    assert st.get("initialize", {}).get("rc") == 0, (st.get("initialize"), st.get("error"))
    again = st["initialize_again"]
    assert again["rc"] == 1 and "initialize" in again["err"], again
    assert st["register_after_initialize"][0] in (403, 409), st["register_after_initialize"]
    logs = st["logs_after"]  # no refusal now: /persistent is mounted (and no log line yet)
    assert logs["rc"] == 0, logs


def test_status_answers_after_initialize_and_production_needs_the_container(guest: Guest) -> None:
    st = guest.steps
    assert "error" not in st, st["error"]
    assert st["status_maintenance"]["rc"] == 0 and st["status_maintenance"]["out"].startswith("mode maintenance"), st
    refused = st["toggle_production"]
    assert refused["rc"] == 1 and "production is refused" in refused["err"] and "drop rules" in refused["err"], refused
    assert st["status_end"]["rc"] == 0 and st["status_end"]["out"].startswith("mode maintenance"), st
