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


def test_fixed_uids_are_taken_before_any_user_gets_the_next_free_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # failed before: in name order, "admin" (no uid) got 1000 from useradd, and then searcher's fixed 1000 clashed
    # (bob fixes searcher 1000 and bob-node 1001; a spec adding its own user must still build)
    from sealbox.builder import configure

    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\n")
    order: list[str] = []

    def useradd(root: Path, *argv: str, **kw: object) -> None:  # what useradd does here: the next after the highest
        name = argv[-1]
        uids = [int(line.split(":")[2]) for line in (root / "etc/passwd").read_text().splitlines()]
        uid = int(argv[argv.index("--uid") + 1]) if "--uid" in argv else max([999, *[u for u in uids if u >= 1000]]) + 1
        order.append(name)
        with open(root / "etc/passwd", "a") as f:
            f.write(f"{name}:x:{uid}:{uid}::/home/{name}:/bin/sh\n")
        with open(root / "etc/group", "a") as f:
            f.write(f"{name}:x:{uid}:\n")

    monkeypatch.setattr(configure, "in_tree", useradd)
    spec = _spec(tmp_path, "[users.admin]\n[users.bob-node]\nuid = 1001\n[users.searcher]\nuid = 1000\n[users.zed]\n")
    create_users(tree, spec, 0)
    assert order == ["bob-node", "searcher", "admin", "zed"]
    uids = {line.split(":")[0]: int(line.split(":")[2]) for line in (tree / "etc/passwd").read_text().splitlines()}
    assert uids == {"root": 0, "bob-node": 1001, "searcher": 1000, "admin": 1002, "zed": 1003}
