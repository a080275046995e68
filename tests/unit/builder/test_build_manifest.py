"""The manifest carries no host facts: the same spec built from two directories, or named by two different
paths, records the same inputs (paths are relative to the spec)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sealbox.builder import manifest as mf
from sealbox.spec import load_spec


def _project(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "sub/common.toml").write_text('[packages]\ninclude = ["curl"]\n')
    (root / "files").mkdir()
    (root / "files/app").write_text("app\n")
    spec = root / "my.toml"
    spec.write_text('include = ["base", "sub/common.toml"]\nname = "my"\n[[files]]\nsource = "files/app"\ndest = "/opt/app"\n'
                    '[profiles.extra]\npackages.include = ["less"]\n')
    return spec


def test_same_spec_from_two_directories_records_the_same_inputs(tmp_path: Path, monkeypatch) -> None:
    a = _project(tmp_path / "one")
    b = tmp_path / "elsewhere/two"
    shutil.copytree(a.parent, b)
    records = []
    monkeypatch.chdir(tmp_path)
    for typed in (str(a), "one/./sub/../my.toml", os.path.relpath(b / "my.toml"), str(b / "my.toml")):
        loaded = load_spec(typed, ["extra"])
        records.append(json.dumps(mf.spec_record(loaded, loaded.digest()), sort_keys=True))
    assert len(set(records)) == 1, records
    rec = json.loads(records[0])
    assert str(tmp_path) not in records[0] and "one/" not in records[0] and "elsewhere" not in records[0]
    assert rec["fragments"] == ["built-in module base", "sub/common.toml", "my.toml", "my.toml (profile extra)"]


def test_built_in_default_spec_records_module_names(tmp_path: Path) -> None:
    loaded = load_spec(None)
    rec = mf.spec_record(loaded, loaded.digest())
    assert rec["fragments"] == ["built-in module base", "built-in default spec"]
