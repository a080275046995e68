"""Hypothesis fuzzing of the spec loader: whatever the file holds, load_spec returns a spec or raises SpecError
(one line) — never another exception. Documents are built over the real setting keys (with plausible values, so
deep paths and the merged validation are reached) as well as random keys, random bytes and mutated built-in
modules. SEALBOX_FUZZ_EXAMPLES scales the budget (the default keeps the unit run fast)."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import tempfile
import tomllib
import typing
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sealbox.errors import SpecError
from sealbox.spec import load_spec
from sealbox.spec.load import modules_dir
from sealbox.spec.model import ImageBody

BUDGET = int(os.environ.get("SEALBOX_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=BUDGET, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Strings that are valid somewhere (so fragments often pass validation and reach merging), plus near misses.
POOL = [
    "", "web", "dev", "ops", "root", "main", "contrib", "bookworm", "trixie", "amd64", "/bin/sh", "/bin/bash", "bin/sh",
    "ssh.service", "a.timer", "sshd", "virtio_net", "tdx_guest", "a b", "vim", "vim=2:9.0", "Vim", "sudo",
    "http://mirror.example/debian", "http://snapshot.example/archive/debian/20250101T000000Z", "ftp://x",
    "files/motd", "files/tree", "files", ".", "../x", "/etc/passwd", "link-out", "s.toml", "inc.toml", "sub/inc.toml",
    "base", "devtools", "default", "nosuch", "/etc/motd", "/opt/x", "/a/../b", "etc/x", "ext4", "uki", "initrd", "iso",
    "console=ttyS0", "quiet", "/usr/share/doc/*", "usr/x",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFuzz dev@fuzz", "\x00", "é", "\u2028",
]
NAMES = st.sampled_from(["dev", "ops", "root", "Bad", "a-b", "x" * 40, ""])
INTS = st.one_of(st.sampled_from([0, 1, 3, 19, 20, 22, 999, 1000, 1500, 0o644, 0o7777, 65535, 65536, -1, 2**32, 1735689600]),
                 st.integers(-(2**63), 2**63 - 1))
TEXT = st.one_of(st.sampled_from(POOL), st.text(max_size=12))
SCALARS = st.one_of(
    st.booleans(), INTS, TEXT, st.floats(allow_nan=True, allow_infinity=True),
    st.dates(min_value=dt.date(1, 1, 1)), st.datetimes(min_value=dt.datetime(1, 1, 1)),
)
ANY = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3), max_leaves=12)


def _for(ann: Any) -> st.SearchStrategy[Any]:
    """A value strategy for a setting's annotation: usually the right type, sometimes anything."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is bool:
        right: st.SearchStrategy[Any] = st.booleans()
    elif ann is int or (origin in (typing.Union, __import__("types").UnionType) and int in args):
        right = INTS
    elif ann is str:
        right = TEXT
    elif origin is typing.Literal:
        right = st.sampled_from(args) | TEXT
    elif origin is list:
        right = st.lists(_for(args[0]), max_size=4)
    elif origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        right = st.dictionaries(NAMES, _section(args[1]), max_size=2)
    elif origin is dict:  # a table of scalars (oci.env)
        right = st.dictionaries(TEXT, _for(args[1]), max_size=3)
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        right = _section(ann)
    else:
        right = SCALARS
    return st.one_of(right, right, right, ANY)


def _section(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    fields = {k: _for(f.annotation) for k, f in model.model_fields.items()}
    known = st.dictionaries(st.sampled_from(sorted(fields)), st.just(None), max_size=4).flatmap(
        lambda picked: st.fixed_dictionaries({k: fields[k] for k in picked})
    )
    stray = st.dictionaries(TEXT, ANY, max_size=1)  # an unknown key now and then, at this depth
    return st.tuples(known, st.one_of(st.just({}), st.just({}), stray)).map(lambda kv: {**kv[1], **kv[0]})


BODY = st.deferred(lambda: _section(ImageBody))
INCLUDES = st.lists(st.sampled_from(["base", "devtools", "default", "inc.toml", "sub/inc.toml", "nosuch", "s.toml", "../x.toml"]),
                    max_size=3) | ANY


def _with_include(body: dict[str, Any], include: Any) -> dict[str, Any]:
    return body if include is None else {**body, "include": include}


FRAGMENT = st.builds(_with_include, BODY, st.none() | INCLUDES)
PROFILES = st.none() | st.dictionaries(NAMES, FRAGMENT, max_size=2) | ANY
DOCS = st.builds(lambda frag, profiles: frag if profiles is None else {**frag, "profiles": profiles}, FRAGMENT, PROFILES)


# --- a small TOML writer (the standard library only reads TOML) ---------------------------------------

def _str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _str(k)


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_val(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    return "".join(f"{_key(k)} = {_val(v)}\n" for k, v in doc.items())


# --- the property -----------------------------------------------------------------------------------

def _project(base: Path) -> Path:
    (base / "files/tree/sub").mkdir(parents=True)
    (base / "files/motd").write_text("hi\n")
    (base / "files/tree/sub/a").write_text("a\n")
    (base / "inc.toml").write_text('packages.include = ["curl"]\n[profiles.dev]\nname = "inc-dev"\n')
    (base / "sub").mkdir()
    (base / "sub/inc.toml").write_text('[[files]]\nsource = "../files/motd"\ndest = "/x"\n')
    (base / "link-out").symlink_to("/etc/hostname")
    return base / "s.toml"


def _check(write: Any, profiles: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = _project(Path(tmp))
        write(spec)
        try:
            loaded = load_spec(spec, profiles)
        except SpecError as e:
            assert len(str(e).splitlines()) == 1, str(e)
            assert str(e).strip()
            return
        loaded.canonical()
        assert len(loaded.digest()) == 64


@SETTINGS
@given(doc=DOCS, profiles=st.lists(NAMES, max_size=2))
def test_structured_documents_load_or_raise_spec_error(doc: dict[str, Any], profiles: list[str]) -> None:
    text = to_toml(doc)
    tomllib.loads(text)  # the writer itself must produce TOML, or the fuzzing would stay at the parser
    if isinstance(doc.get("profiles"), dict) and doc["profiles"] and not profiles:
        profiles = sorted(doc["profiles"])[:1]
    _check(lambda p: p.write_text(text), profiles)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=512), st.text(alphabet='[]{}=."\',\n #\\abkeu0123-_\t', max_size=200).map(str.encode)))
def test_random_bytes_load_or_raise_spec_error(data: bytes) -> None:
    _check(lambda p: p.write_bytes(data), [])


MODULES = {p.name: p.read_text() for p in sorted(modules_dir().glob("*.toml"))}
TOKENS = ["[", "]", "{", "}", "=", '"', "'", ",", "\n", "[profiles.x]\n", 'include = ["base"]\n', "[[files]]\n",
          "users.root = {}\n", "0", "-1", "true", "1e999", "[kernel]\nload = [", "\\u0000", "[users.dev]\n"]


@st.composite
def mutated_module(draw: st.DrawFn) -> str:
    lines = MODULES[draw(st.sampled_from(sorted(MODULES)))].splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "cut"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        j = draw(st.integers(0, max(len(lines) - 1, 0)))
        if not lines:
            lines = [draw(st.sampled_from(TOKENS))]
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(j, lines[i])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.sampled_from(TOKENS) | st.text(max_size=4)) + lines[i][pos:]
        else:
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + lines[i][pos + draw(st.integers(1, 6)):]
    return "".join(lines)


@SETTINGS
@given(text=mutated_module(), profiles=st.lists(st.sampled_from(["devtools", "tdx", "x"]), max_size=2))
def test_mutated_builtin_modules_load_or_raise_spec_error(text: str, profiles: list[str]) -> None:
    _check(lambda p: p.write_text(text), profiles)


def test_the_writer_round_trips_the_builtin_modules() -> None:
    """Guard for the fuzz writer: a parsed module written back parses to the same data."""
    for text in MODULES.values():
        data = tomllib.loads(text)
        assert tomllib.loads(to_toml(data)) == data
