"""Strict mode and the shuffled order (tests/strict.py), run on a small throwaway suite in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

SUITE = {
    "conftest.py": "from strict import *  # noqa: F403\n",
    "test_a.py": """
import pytest
from strict import skip_allowed

def test_tool_missing():
    pytest.skip("cpio is not installed")

@pytest.mark.skipif(True, reason="ovmf is not installed")
def test_marker():
    pass

def test_kvm():
    skip_allowed("kvm", "vCPUs do not run here")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False

def test_passes():
    pass
""",
    "test_b.py": """
import pytest
pytest.skip("no vectors here", allow_module_level=True)

def test_never():
    pass
""",
}


def run(tmp_path: Path, *args: str, strict: bool) -> subprocess.CompletedProcess[str]:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SEALBOX_STRICT")}
    env["PYTHONPATH"] = str(TESTS)
    if strict:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "--rootdir", str(tmp_path), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_strict_mode_fails_skips_not_on_the_allow_list(tmp_path: Path) -> None:
    p = run(tmp_path, "test_a.py", strict=True)
    assert p.returncode == 1, p.stdout
    assert "sealbox strict mode (CI=true)" in p.stdout
    assert re.search(r"FAILED test_a.py::test_tool_missing .*cpio is not installed", p.stdout), p.stdout
    assert re.search(r"ERROR test_a.py::test_marker .*ovmf is not installed", p.stdout), p.stdout  # a skip in setup
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in p.stdout, p.stdout
    assert section(p.stdout, "allow-listed skips") == ["test_a.py::test_kvm: KVM not functional: vCPUs do not run here"]


def test_strict_mode_fails_a_module_level_skip(tmp_path: Path) -> None:
    p = run(tmp_path, "test_b.py", strict=True)
    assert p.returncode != 0 and "no vectors here" in p.stdout and "error" in p.stdout.lower(), p.stdout


def test_outside_strict_mode_skips_are_listed_as_failing_in_ci(tmp_path: Path) -> None:
    p = run(tmp_path, strict=False)
    assert p.returncode == 0, p.stdout
    assert "sealbox strict mode" not in p.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in p.stdout, p.stdout
    assert sorted(section(p.stdout, "skips that fail in strict mode")) == [
        "test_a.py::test_marker: ovmf is not installed", "test_a.py::test_tool_missing: cpio is not installed", "test_b.py: no vectors here"]
    assert len(section(p.stdout, "allow-listed skips")) == 1


def section(out: str, title: str) -> list[str]:
    """The lines of one terminal-summary section."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("=") and title in ln)
    body = []
    for ln in lines[start + 1:]:
        if ln.startswith("="):
            break
        body.append(ln)
    return body


def test_shuffle_seed_is_printed_reproducible_and_keeps_modules_together(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"test_m{i}.py").write_text("".join(f"def test_{j}():\n    pass\n" for j in range(6)))

    def order(*args: str) -> list[str]:
        out = run(tmp_path, "--collect-only", "-q", "-k", "test_m", *args, strict=False).stdout
        return [ln for ln in out.splitlines() if ln.startswith("test_m")]

    first = order("--shuffle-seed", "7")
    assert len(first) == 18 and first == order("--shuffle-seed", "7")
    assert first != order("--shuffle-seed", "8") and sorted(first) == sorted(order())
    assert first != order()
    modules = [o.split("::")[0] for o in first]
    assert sum(1 for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m) == 3, "each module's tests stay together"
    assert "--shuffle-seed 7" in run(tmp_path, "-k", "test_m", "--shuffle-seed", "7", strict=False).stdout


@pytest.mark.parametrize("key", ["firecracker", "kvm", "tdx", "not-root"])
def test_allow_list_is_the_four_reasons_of_the_issue(key: str) -> None:
    from strict import ALLOWED

    assert set(ALLOWED) == {"firecracker", "kvm", "tdx", "not-root"} and ALLOWED[key]


def test_dishonest_markers_stop_the_run(tmp_path: Path) -> None:
    (tmp_path / "integration").mkdir()
    (tmp_path / "integration" / "test_x.py").write_text("def test_unmarked():\n    pass\n")
    (tmp_path / "unit").mkdir()
    (tmp_path / "unit" / "test_y.py").write_text("import pytest\n\n@pytest.mark.boot\ndef test_claims_boot():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    integration: x\n    boot: x\n")
    p = run(tmp_path, "integration", "unit", strict=False)
    assert p.returncode == 4, p.stdout + p.stderr
    assert "integration/test_x.py::test_unmarked: under integration/ but not marked integration" in p.stderr
    assert "unit/test_y.py::test_claims_boot: a unit test marked ['boot']" in p.stderr


def test_a_module_marked_in_order_keeps_its_order_under_shuffle(tmp_path: Path) -> None:
    (tmp_path / "test_m0.py").write_text("import pytest\n\npytestmark = pytest.mark.in_order\n\n"
                                         + "".join(f"def test_{j}():\n    pass\n" for j in range(8)))
    (tmp_path / "test_m1.py").write_text("".join(f"def test_{j}():\n    pass\n" for j in range(8)))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    in_order: x\n")
    out = run(tmp_path, "--collect-only", "-q", "-k", "test_m", "--shuffle-seed", "7", strict=False).stdout
    ids = [ln for ln in out.splitlines() if ln.startswith("test_m")]
    kept = [i for i in ids if i.startswith("test_m0")]
    mixed = [i for i in ids if i.startswith("test_m1")]
    assert kept == [f"test_m0.py::test_{j}" for j in range(8)]
    assert len(mixed) == 8 and mixed != sorted(mixed, key=lambda i: int(i.rsplit("_", 1)[1]))  # the other one is shuffled
