"""Spec users that clash with accounts the packages created fail before useradd runs, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealbox.builder.configure import create_users
from sealbox.errors import BuildError
from sealbox.spec import load_spec


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
                                   "svc:x:1000:1000::/nonexistent:/usr/sbin/nologin\n")
    (tree / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\nadm:x:4:\n")
    return tree


def _spec(tmp_path: Path, users: str):
    f = tmp_path / "s.toml"
    f.write_text('name = "t"\ninclude = ["base"]\n' + users)
    return load_spec(f).spec


@pytest.mark.parametrize("users, fragment", [
    ('[users.sshd]\n', "users.sshd: 'sshd' is already an account in the image (uid 100"),
    ('[users.adm]\n', "users.adm: a group named 'adm' already exists"),
    ('[users.dev]\nuid = 1000\n', "users.dev.uid: 1000 is already used by 'svc'"),
])
def test_clashing_user_is_a_clear_error(tmp_path: Path, users: str, fragment: str) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(BuildError) as e:
        create_users(tree, _spec(tmp_path, users), 0)
    assert fragment in str(e.value)
    assert "sshd:x:100" in (tree / "etc/passwd").read_text()  # nothing rewritten
