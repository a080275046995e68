"""A unit the spec enables may not order itself before the ready marker: every spec-enabled unit starts after it
(guest_files.ready_order), and systemd breaks the cycle at boot by dropping a job (it dropped the gui module's
key unit, so xrdp never got its certificate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealbox.builder.configure import _refuse_pre_ready_units
from sealbox.builder.intree import Tree
from sealbox.errors import BuildError
from sealbox.guest import files as guest_files


def _unit(tree: Path, where: str, name: str, body: str) -> None:
    path = tree / where.lstrip("/") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


def test_a_spec_unit_before_the_ready_marker_fails_the_build(tmp_path: Path) -> None:
    _unit(tmp_path, "/usr/lib/systemd/system", "keys.service", "[Unit]\nBefore=xrdp.service sealbox-ready.service\n")
    _unit(tmp_path, "/etc/systemd/system", "app.service", "[Unit]\nAfter=network.target\n")
    with Tree(tmp_path) as t:
        with pytest.raises(BuildError, match=r"services.enable: keys.service orders itself Before=sealbox-ready.service"):
            _refuse_pre_ready_units(t, ["app.service", "keys.service"])
        _refuse_pre_ready_units(t, ["app.service", "missing.service"])  # fine: after the marker, or not in the image


def test_the_guest_protocol_units_may_precede_it(tmp_path: Path) -> None:
    for unit in (*guest_files.UNITS, *guest_files.FEATURE_UNITS):
        _unit(tmp_path, "/usr/lib/systemd/system", unit, "[Unit]\nBefore=sealbox-ready.service\n")
    with Tree(tmp_path) as t:
        _refuse_pre_ready_units(t, [*guest_files.UNITS, *guest_files.FEATURE_UNITS])


def test_the_gui_module_does_not_make_the_cycle() -> None:
    import sealbox

    text = (Path(sealbox.__file__).parent / "modules/gui/sealbox-xrdp-keys.service").read_text()
    before = [line for line in text.splitlines() if line.startswith("Before=")]
    assert before and all("sealbox-ready" not in line for line in before)
