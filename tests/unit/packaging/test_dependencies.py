"""The declared Python dependencies match what the code imports, and optional extras fail in one clear line."""

from __future__ import annotations

import ast
import importlib
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from sealbox.errors import ToolError

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return req.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower().replace("_", "-")


def _imported_top_level(tree: Path) -> set[str]:
    mods: set[str] = set()
    for f in tree.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    mods.add(arg.value.split(".")[0])
    return mods


def _dists_of(modules: set[str]) -> set[str]:
    by_module = packages_distributions()
    return {_name(d) for m in modules for d in by_module.get(m, [])}


def test_every_runtime_dependency_is_imported_by_the_package() -> None:
    used = _dists_of(_imported_top_level(ROOT / "src" / "sealbox"))
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert declared - used == set(), "declared but never imported by src/sealbox: drop them"


def test_test_only_and_single_command_packages_are_not_runtime_dependencies() -> None:
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"pefile", "dcap-qvl", "pyyaml", "jsonschema", "rich"} & declared == set()
    assert "pefile" in {_name(r) for r in extras["test"]}
    assert {_name(r) for r in extras["collateral"]} == {"dcap-qvl"}
    assert {_name(r) for r in extras["firecracker-schema"]} == {"pyyaml", "jsonschema"}
    src_imports = _dists_of(_imported_top_level(ROOT / "src" / "sealbox"))
    assert "pefile" not in src_imports, "pefile is a test oracle only"


def test_every_requirement_is_pinned_exactly() -> None:
    project = PYPROJECT["project"]
    reqs = [*project["dependencies"], *(r for rs in project["optional-dependencies"].values() for r in rs)]
    loose = [r for r in reqs if not r.startswith("sealbox[") and "==" not in r]
    assert loose == []


def test_the_lock_pins_every_declared_package_with_hashes() -> None:
    lock = (ROOT / "requirements.lock").read_text()
    pinned: dict[str, str] = {}
    for line in lock.splitlines():
        if line and not line.startswith((" ", "#", "-")) and "==" in line:
            name, version = line.split(" ")[0].split("==")
            pinned[_name(name)] = version
    assert "--hash=sha256:" in lock
    entries = [ln for ln in lock.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert all(ln.rstrip().endswith("\\") for ln in entries), "every pinned line carries hashes"
    project = PYPROJECT["project"]
    reqs = [*project["dependencies"], *(r for rs in project["optional-dependencies"].values() for r in rs)]
    for req in reqs:
        if req.startswith("sealbox["):
            continue
        name, version = _name(req), req.split("==")[1]
        assert pinned.get(name) == version, f"{req} is not pinned to the same version in requirements.lock (run scripts/lock.sh)"
    assert {"setuptools", "wheel"} <= pinned.keys(), "the build backend is locked too (setup installs with --no-build-isolation)"


def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for m in modules:
        for loaded in [k for k in sys.modules if k == m or k.startswith(m + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, m, None)  # import raises ImportError


def test_firecracker_schema_without_pyyaml_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _block(monkeypatch, "yaml", "jsonschema")
    monkeypatch.delitem(sys.modules, "sealbox.sandbox.vmm.firecracker.schema", raising=False)
    schema = importlib.import_module("sealbox.sandbox.vmm.firecracker.schema")  # importing costs nothing optional
    spec = tmp_path / "firecracker.yaml"
    spec.write_text("swagger: '2.0'\n")
    with pytest.raises(ToolError) as e:
        schema.load_spec(str(spec))
    assert "'yaml'" in str(e.value) and "sealbox[firecracker-schema]" in str(e.value) and "\n" not in str(e.value)


def test_collateral_without_dcap_qvl_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from sealbox.attest import collateral

    _block(monkeypatch, "dcap_qvl")
    with pytest.raises(ToolError) as e:
        collateral.check_collateral(b"", None, {}, datetime.now(UTC))  # type: ignore[arg-type]  # fails before reading them
    assert "'dcap_qvl'" in str(e.value) and "sealbox[collateral]" in str(e.value) and "--collateral" in str(e.value)
