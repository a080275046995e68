"""Layers import only downward (README, Layout): every `sealbox.X` import, lazy ones included, goes to a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

import sealbox

# errors < util < spec/formats/guest/modules < builder < measure/attest/sandbox < doctor < sdk < fleet < cli
RANK = {"errors": 0, "util": 1, "spec": 2, "formats": 2, "guest": 2, "modules": 2, "builder": 3, "measure": 4,
        "attest": 4, "sandbox": 4, "doctor": 5, "sdk": 6, "fleet": 7, "cli": 8, "__main__": 9}
ROOT = Path(sealbox.__file__).parent


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sealbox"):
            out += [f"sealbox.{a.name}" for a in node.names] if node.module == "sealbox" else [node.module]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("sealbox.")]
    return out


def test_every_package_has_a_layer() -> None:
    tops = {p.name.removesuffix(".py") for p in ROOT.iterdir() if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert tops - {"__init__"} <= set(RANK), sorted(tops - set(RANK) - {"__init__"})


def test_imports_go_only_downward() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        me = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if me == "__init__":
            continue
        for mod in _imports(path):
            other = mod.split(".")[1]
            if other != me and not other.startswith("__") and RANK[other] >= RANK[me]:
                wrong.append(f"{path.relative_to(ROOT)} ({me}) imports {mod} ({other})")
    assert not wrong, "\n".join(wrong)
