"""The .deb cache under concurrent builds: unique temp files, a locked index, no lost or torn entries; and the
build key covers every module the build imports."""

from __future__ import annotations

import ast
import hashlib
import json
import multiprocessing
import os
from pathlib import Path

from sealbox.builder import manifest as mf
from sealbox.builder.cache import DebCache

SRC = Path(__file__).resolve().parents[3] / "src"


def _ingest(root: str, src: str, rounds: int) -> None:
    cache = DebCache(Path(root))
    for _ in range(rounds):
        cache.ingest(Path(src))


def test_concurrent_ingests_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    srcs = []
    for w in range(4):
        d = tmp_path / f"debs{w}"
        d.mkdir()
        for i in range(15):  # each worker its own packages, and one big file every worker shares
            (d / f"pkg{w}-{i}_1.0_amd64.deb").write_bytes(os.urandom(2048) + bytes([w, i]))
        (d / "shared_1.0_amd64.deb").write_bytes(b"S" * (4 << 20))
        srcs.append(d)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ingest, args=(str(root), str(d), 5)) for d in srcs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    index = json.loads((root / "debs/index.json").read_text())
    assert len(index) == 4 * 15 + 1, "an ingest lost another one's index entries"
    for name, digest in index.items():
        blob = root / "debs" / f"{digest}.deb"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest, f"torn blob for {name}"
    assert not [p.name for p in (root / "debs").iterdir() if p.name.endswith(".tmp")]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "sealbox" or m.startswith("sealbox.")}


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def test_build_key_covers_every_module_the_build_imports() -> None:
    """Every sealbox module reachable from the builder (imports inside functions included) is in the code digest."""
    todo, seen = ["sealbox.builder.builder", "sealbox.builder.reproducible"], set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        f = _module_file(name)
        if f is None:
            continue  # an attribute imported from a module, not a module
        files.add(f)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a/__init__ and a/b/__init__
        todo += sorted(_imports(f))
    covered = {p.resolve() for p in mf.code_files()}
    missing = sorted(str(f.relative_to(SRC)) for f in files if f.resolve() not in covered)
    assert not missing, f"modules the build imports but the build key ignores: {missing}"
