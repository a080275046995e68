"""The guest units sealbox bakes into every image: what orders the ready marker before the spec's own units."""

from __future__ import annotations

import configparser

from sealbox.guest import files as guest_files


def test_ready_comes_before_every_unit_the_spec_enables_but_its_own_dependencies() -> None:
    enabled = [*guest_files.UNITS, "ssh.service", "nftables.service", "console-getty.service", "app.service", "web.socket"]
    text = guest_files.ready_order(enabled)
    assert text is not None
    cfg = configparser.ConfigParser()
    cfg.read_string(text.decode())
    assert cfg["Unit"]["Before"].split() == ["app.service", "console-getty.service", "web.socket"]
    ready = guest_files.read("sealbox-ready.service").decode()
    for dep in guest_files.READY_AFTER:  # ordering ready before what it waits for would be a cycle
        assert dep in ready
    assert guest_files.ready_order([*guest_files.UNITS, "ssh.service"]) is None


def test_every_guest_unit_and_script_is_installed() -> None:
    for name in [*guest_files.UNITS, *guest_files.SCRIPTS]:
        assert guest_files.read(name)
    unit = guest_files.read("sealbox-powerbutton.service").decode()
    assert "ExecStart=/usr/lib/sealbox/powerbutton" in unit and guest_files.SCRIPTS["powerbutton.sh"] == "powerbutton"
