"""Strict mode and test order, shared by tests/conftest.py and the tests that may legitimately skip.

Strict mode (`CI=true` or `SEALBOX_STRICT=1`): a skip is a failure unless its reason starts with one of the
ALLOWED texts below. Everything scripts/setup.sh installs, every vendored vector, OVMF, the Debian archive
and a global IPv4 address are expected on a CI machine; a test that cannot find them must not pass silently.
A test that may skip for an allowed reason calls `skip_allowed(KEY, detail)` so the reason is spelled once.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Generator
from typing import NoReturn

import pytest

# The whole allow-list: things no setup script can provide on a CI machine.
ALLOWED = {
    "firecracker": "real Firecracker binaries absent",  # not packaged for Debian; given by SEALBOX_FIRECRACKER/JAILER
    "kvm": "KVM not functional",  # the host's /dev/kvm is missing or its vCPUs do not run (TCG is used instead)
    "tdx": "TDX hardware absent",  # also its inverse: a test of the "no TDX here" message on a TDX host
    "not-root": "not-root message test",  # checks the message a non-root user gets: meaningless as root
}


def strict_mode() -> str | None:
    """Why strict mode is on (the variable that set it), or None."""
    if os.environ.get("CI", "").lower() == "true":
        return "CI=true"
    if os.environ.get("SEALBOX_STRICT") == "1":
        return "SEALBOX_STRICT=1"
    return None


def skip_allowed(key: str, detail: str) -> NoReturn:
    """Skip for an allow-listed reason (KeyError for any other key: add to ALLOWED only with a good reason)."""
    pytest.skip(f"{ALLOWED[key]}: {detail}")


def is_allowed(reason: str) -> bool:
    return any(reason.startswith(text) for text in ALLOWED.values())


def skip_reason(longrepr: object) -> str:
    """The reason of a skipped report: pytest stores (path, line, 'Skipped: reason')."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def shuffle(items: list[pytest.Item], seed: int) -> list[pytest.Item]:
    """A random order that keeps each module's tests together (module fixtures are set up once), shuffling
    the modules and the tests inside each module with one seeded generator. A module marked `in_order` (its tests are
    one story told in steps, e.g. a disk that outlives the sandbox that wrote it) keeps its file order."""
    rng = random.Random(seed)
    by_module: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        by_module[item.nodeid.split("::", 1)[0]].append(item)
    modules = sorted(by_module)
    rng.shuffle(modules)
    out: list[pytest.Item] = []
    for m in modules:
        tests = by_module[m]
        if not tests[0].get_closest_marker("in_order"):
            rng.shuffle(tests)
        out.extend(tests)
    return out


# ---- the hooks (re-exported by tests/conftest.py) ----

_skips: dict[str, list[tuple[str, str]]] = {"allowed": [], "other": []}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shuffle-seed", type=int, default=None, metavar="N",
                     help="run the tests in a random order derived from N (modules kept together); printed in the header")


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    why = strict_mode()
    if why:
        lines.append(f"sealbox strict mode ({why}): a skip fails unless its reason starts with one of: "
                     + "; ".join(ALLOWED.values()))
    seed = config.getoption("--shuffle-seed")
    if seed is not None:
        lines.append(f"sealbox test order: shuffled with --shuffle-seed {seed} (rerun with the same seed to reproduce)")
    return lines


def marker_problems(items: list[pytest.Item]) -> list[str]:
    """Markers must say where a test runs: every test under an `integration` folder is marked `integration`, and
    no unit test claims `integration`, `boot` or `slow` (unit tests need neither root nor a guest)."""
    problems = []
    for item in items:
        parts = item.nodeid.split("::", 1)[0].split("/")
        marks = {m.name for m in item.iter_markers()}
        if "integration" in parts and "integration" not in marks:
            problems.append(f"{item.nodeid}: under integration/ but not marked integration")
        if "unit" in parts and marks & {"integration", "boot", "slow"}:
            problems.append(f"{item.nodeid}: a unit test marked {sorted(marks & {'integration', 'boot', 'slow'})}")
    return problems


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = marker_problems(items)
    if problems:
        raise pytest.UsageError("dishonest test markers: " + "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    seed = config.getoption("--shuffle-seed")
    if seed is not None:
        items[:] = shuffle(items, seed)


def _judge(nodeid: str, longrepr: object) -> str | None:
    """Record a skip; in strict mode return the failure text for one that is not allow-listed."""
    reason = skip_reason(longrepr)
    if is_allowed(reason):
        _skips["allowed"].append((nodeid, reason))
        return None
    if strict_mode():
        return (f"strict mode ({strict_mode()}): this skip is a failure, its reason is not on the allow-list in "
                f"tests/strict.py: {reason}")
    _skips["other"].append((nodeid, reason))
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.skipped and not hasattr(rep, "wasxfail"):
        failure = _judge(rep.nodeid, rep.longrepr)
        if failure:
            rep.outcome, rep.longrepr = "failed", failure
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    rep = yield
    if rep.skipped:
        failure = _judge(rep.nodeid, rep.longrepr)
        if failure:
            rep.outcome, rep.longrepr = "failed", failure
    return rep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skips["allowed"]:
        terminalreporter.section("allow-listed skips (tests/strict.py)")
        for nodeid, reason in _skips["allowed"]:
            terminalreporter.line(f"{nodeid}: {reason}")
    if _skips["other"]:
        terminalreporter.section("skips that fail in strict mode (CI=true or SEALBOX_STRICT=1)")
        for nodeid, reason in _skips["other"]:
            terminalreporter.line(f"{nodeid}: {reason}")
