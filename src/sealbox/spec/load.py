"""Load a spec: read TOML, resolve includes and profiles, validate each fragment, merge, validate the result.

Errors always name the file (or built-in module), the dotted key, the bad value and what is allowed.
Paths (includes, files[].source) must stay inside the directory of the spec file that names them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sealbox.errors import SpecError
from sealbox.spec.merge import merge_into
from sealbox.spec.model import FRAGMENT_KEYS, ImageBody, ImageSpec
from sealbox.util.digest import sha256_file

BUILTIN_PREFIX = "builtin:"
MAX_INCLUDE_DEPTH = 16
MAX_SPEC_BYTES = 1 << 20
MAX_NESTING = 32  # the deepest setting is profiles.P.users.NAME.authorized_keys[i]
PROFILE_MARK = "profile"  # `profile = true` in a built-in module: it is also a built-in profile


def modules_dir() -> Path:
    return Path(str(resources.files("sealbox") / "modules"))


def builtin_modules() -> list[str]:
    return sorted(p.stem for p in modules_dir().glob("*.toml"))


def builtin_profiles() -> list[str]:
    """Built-in modules marked `profile = true`: selectable with --profile from any spec."""
    out = []
    for name in builtin_modules():
        try:
            marked = tomllib.loads((modules_dir() / f"{name}.toml").read_text()).get(PROFILE_MARK) is True
        except (OSError, tomllib.TOMLDecodeError):
            marked = False  # a broken module is reported when it is loaded, not here
        if marked:
            out.append(name)
    return out


@dataclass
class Fragment:
    origin: str  # shown in errors: "bob.toml", "profile devtools in bob.toml", "built-in module base"
    data: dict[str, Any]


@dataclass
class LoadedSpec:
    spec: ImageSpec
    spec_path: Path | None  # None = the built-in default spec
    root: Path  # directory that relative file sources are resolved against
    profiles: list[str]
    fragments: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each, for the CLI to show
    origin: str = ""  # the spec as the user named it (errors show it; the manifest records its file name instead)

    def resolve_source(self, label: str) -> Path:
        """Map a files[].source label back to a host path."""
        if label.startswith(BUILTIN_PREFIX):
            return modules_dir() / label[len(BUILTIN_PREFIX):]
        return self.root / label

    def canonical(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json")

    def digest(self, omit: tuple[str, ...] = ()) -> str:
        """sha256 over the merged spec and everything its files[] entries copy in.

        Every record is length-framed (so bytes cannot shift between a name and a content) and typed
        (a symlink never hashes like a file holding its target), and directories count, since even an
        empty one is copied into the image. `omit`: dotted keys left out (the builder's tree layer is keyed
        by the spec without the settings only its writers read).
        """
        doc = self.canonical()
        for dotted in omit:
            *parents, last = dotted.split(".")
            where = doc
            for part in parents:
                where = where.get(part, {})
            where.pop(last, None)
        h = hashlib.sha256()
        _frame(h, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        for i, entry in enumerate(self.spec.files):
            src = self.resolve_source(entry.source)
            _frame(h, entry.source.encode())
            try:  # the tree may have changed since loading, or hold files this user cannot read
                for rel, kind, st in source_items(src):
                    path = src / rel if rel != "." else src
                    body = os.fsencode(os.readlink(path)) if kind == "l" else path.read_bytes() if kind == "f" else b""
                    _frame(h, kind.encode(), os.fsencode(rel), b"%o" % (st.st_mode & 0o7777), body)
            except (OSError, ValueError) as e:
                what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) else str(e)
                raise SpecError(f"files[{i}].source {entry.source!r}: cannot read: {what}") from None
        if self.spec.bob.workload:  # its bytes go into the image: a changed archive is another image
            try:
                body = sha256_file(self.resolve_source(self.spec.bob.workload)).encode()
            except OSError as e:
                raise SpecError(f"bob.workload {self.spec.bob.workload!r}: cannot read: {e.strerror}") from None
            _frame(h, b"bob.workload", self.spec.bob.workload.encode(), body)
        return h.hexdigest()


def _frame(h: Any, *parts: bytes) -> None:
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)


def source_items(src: Path) -> list[tuple[str, str, os.stat_result]]:
    """(relative path, kind f/d/l, lstat) of a files[] source and everything below it, sorted.

    Raises ValueError naming a path that cannot be copied into an image (fifo, socket, device).
    """
    out = []
    for path in [src, *sorted(src.rglob("*"))] if src.is_dir() and not src.is_symlink() else [src]:
        st = path.lstat()
        kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f" if stat.S_ISREG(st.st_mode) else ""
        rel = "." if path == src else str(path.relative_to(src))
        if not kind:
            raise ValueError(f"{rel!r} is not a regular file, directory or symlink")
        out.append((rel, kind, st))
    return out


def _format_validation(origin: str, e: ValidationError, prefix: str = "") -> SpecError:
    err = e.errors()[0]
    loc = prefix + ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent = _model_at(ImageBody, err["loc"][:-1])
        keys = set(parent.model_fields) if parent else set()
        if parent is ImageBody:  # a fragment's top level also takes include (and, outside profiles, profiles)
            keys |= {"include"} if prefix else FRAGMENT_KEYS
        allowed = ", ".join(sorted(keys)) if keys else "see 'sealbox settings'"
        return SpecError(f"{origin}: unknown key '{loc}'", hint=f"allowed here: {allowed}")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or "is not a" in msg else f" (got {got!r})"
    return SpecError(f"{origin}: {loc + ': ' if loc else ''}{msg}{shown}")


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model at `loc` (list indexes and table-of-sections keys such as user names skipped)."""
    by_name = False  # the previous part was a table of sections (users): this part is an entry's name
    for part in loc:
        if isinstance(part, int) or by_name:
            by_name = False
            continue
        if part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif args:
            model = args[-1]
            by_name = getattr(ann, "__origin__", None) is dict
        else:
            return None
    return model


def _open_nonblocking(path: str, flags: int) -> int:
    # O_NONBLOCK: opening a fifo must not wait for a writer; the type check after opening refuses it
    return os.open(path, flags | os.O_NONBLOCK)


def _check_nesting(data: dict[str, Any], origin: str) -> None:
    """Refuse values nested deeper than any setting needs, before validation or merging recurse into them."""
    todo: list[tuple[Any, int, str]] = [(v, 1, k) for k, v in data.items()]
    while todo:
        value, depth, top = todo.pop()
        if depth > MAX_NESTING:
            raise SpecError(f"{origin}: {top}: tables or arrays nested deeper than {MAX_NESTING} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        todo.extend((c, depth + 1, top) for c in children)


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read_toml(self, path: Path, origin: str) -> dict[str, Any]:
        try:
            with open(path, "rb", opener=_open_nonblocking) as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise SpecError(f"{origin}: not a regular file", hint="give the path of a .toml spec file")
                raw = f.read(MAX_SPEC_BYTES + 1)  # bounded: never read a huge file whole
        except FileNotFoundError:
            raise SpecError(f"{origin}: file not found", hint="check the path") from None
        except OSError as e:
            raise SpecError(f"{origin}: cannot read: {e.strerror}") from None
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError(f"{origin}: spec file is larger than 1 MiB")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise SpecError(f"{origin}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{origin}: invalid TOML: {e}") from None
        except RecursionError:  # tomllib parses nested arrays and inline tables recursively
            raise SpecError(f"{origin}: arrays or inline tables nested deeper than {MAX_NESTING} levels") from None
        _check_nesting(data, origin)
        return data

    def label(self, path: Path) -> str:
        mods = modules_dir().resolve()
        if path.is_relative_to(mods):
            return BUILTIN_PREFIX + str(path.relative_to(mods))
        return str(path.relative_to(self.root))

    def inside(self, base: Path, rel: str, origin: str, key: str) -> Path:
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise SpecError(f"{origin}: {key}: expected a relative path string (got {rel!r})")
        target = (base / rel).resolve()
        if os.path.isabs(rel) or not target.is_relative_to(base.resolve()):
            raise SpecError(f"{origin}: {key}: path {rel!r} escapes the spec's directory {base}", hint="keep files beside the spec")
        return target

    def resolve_include(self, name: Any, base: Path, origin: str, key: str) -> tuple[Path, str]:
        if not isinstance(name, str):
            raise SpecError(f"{origin}: {key}: expected a module name or a relative .toml path (got {name!r})")
        if "/" not in name and not name.endswith(".toml"):
            path = modules_dir() / f"{name}.toml"
            if not path.is_file():
                raise SpecError(f"{origin}: {key}: no built-in module {name!r}", hint=f"built-in modules: {', '.join(builtin_modules())}")
            return path.resolve(), f"built-in module {name}"
        path = self.inside(base, name, origin, key)
        if not path.exists():
            raise SpecError(f"{origin}: {key}: included file {name!r} not found")
        if not path.is_file():
            raise SpecError(f"{origin}: {key}: included path {name!r} is not a regular file")
        return path, str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def fragments(self, path: Path, origin: str, stack: tuple[Path, ...]) -> tuple[list[Fragment], dict[str, list[Fragment]]]:
        """Fragments of `path` (its includes first, depth first) and the profiles it defines."""
        data = self.read_toml(path, origin)
        base = path.parent
        out, profiles = self.body_fragments(data, base, origin, (*stack, path), "")
        raw_profiles = data.get("profiles", {})
        if not isinstance(raw_profiles, dict):
            raise SpecError(f"{origin}: profiles: expected a table of [profiles.NAME] tables")
        for pname, pdata in raw_profiles.items():
            if not isinstance(pdata, dict):
                raise SpecError(f"{origin}: profiles.{pname}: expected a table")
            if "profiles" in pdata:
                raise SpecError(f"{origin}: profiles.{pname}.profiles: profiles cannot be nested")
            pfrags, _ = self.body_fragments(pdata, base, f"{origin} (profile {pname})", (*stack, path), f"profiles.{pname}.")
            profiles.setdefault(pname, []).extend(pfrags)
        return out, profiles

    def body_fragments(self, data: dict[str, Any], base: Path, origin: str, stack: tuple[Path, ...],
                       prefix: str) -> tuple[list[Fragment], dict[str, list[Fragment]]]:
        includes = data.get("include", [])
        if not isinstance(includes, list):
            raise SpecError(f"{origin}: {prefix}include: expected a list of module names or paths (got {includes!r})")
        out: list[Fragment] = []
        profiles: dict[str, list[Fragment]] = {}
        for i, name in enumerate(includes):
            key = f"{prefix}include[{i}]"
            path, inc_origin = self.resolve_include(name, base, origin, key)
            if path in stack:  # checked here, where the file and key that close the cycle are known
                chain = " -> ".join(p.name for p in (*stack, path))
                raise SpecError(f"{origin}: {key}: including {name!r} makes an include cycle: {chain}")
            if len(stack) >= MAX_INCLUDE_DEPTH:
                raise SpecError(f"{origin}: {key}: including {name!r} nests includes deeper than {MAX_INCLUDE_DEPTH} files")
            frags, inc_profiles = self.fragments(path, inc_origin, stack)
            out.extend(frags)
            for pname, pfrags in inc_profiles.items():
                profiles.setdefault(pname, []).extend(pfrags)
        if PROFILE_MARK in data and (prefix or base.resolve() != modules_dir().resolve()):
            raise SpecError(f"{origin}: {prefix}{PROFILE_MARK}: only built-in modules can be marked as profiles",
                            hint="define the profile as a [profiles.NAME] table instead")
        body = {k: v for k, v in data.items() if k not in FRAGMENT_KEYS and k != PROFILE_MARK}
        try:
            ImageBody.model_validate(body)
        except ValidationError as e:
            raise _format_validation(origin, e, prefix) from None
        for i, entry in enumerate(body.get("files", [])):
            src = self.inside(base, entry["source"], origin, f"{prefix}files[{i}].source")
            if not src.exists():
                raise SpecError(f"{origin}: {prefix}files[{i}].source: {entry['source']!r} does not exist")
            try:
                source_items(src)
            except ValueError as e:  # a fifo, socket or device cannot be copied into an image
                raise SpecError(f"{origin}: {prefix}files[{i}].source: {entry['source']!r}: {e}") from None
            entry["source"] = self.label(src)
        self._resolve_workload(body, base, origin, prefix)
        out.append(Fragment(origin, body))
        return out, profiles

    def _resolve_workload(self, body: dict[str, Any], base: Path, origin: str, prefix: str) -> None:
        """bob.workload names a file beside the spec, like files[].source: resolved here, kept as a label."""
        bob = body.get("bob")
        if not isinstance(bob, dict) or not bob.get("workload"):
            return
        key = f"{prefix}bob.workload"
        src = self.inside(base, bob["workload"], origin, key)
        if not src.is_file():
            what = "does not exist" if not src.exists() else "is not a regular file"
            raise SpecError(f"{origin}: {key}: {bob['workload']!r} {what}",
                            hint="build the workload from its own spec (output.formats = [\"oci\"]) and name its .tar here")
        bob["workload"] = self.label(src)


def load_spec(path: str | os.PathLike[str] | None, profiles: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Load, merge and validate a spec file (or the built-in default when `path` is None)."""
    if path is None:
        spec_path = None
        file = modules_dir() / "default.toml"
        root = modules_dir().resolve()
        origin = "built-in default spec"
    else:
        spec_path = Path(path)
        if spec_path.is_dir():
            raise SpecError(f"{spec_path}: is a directory, expected a .toml spec file")
        file = spec_path.resolve()
        root = file.parent
        origin = str(path)
    loader = _Loader(root)
    frags, defined = loader.fragments(file.resolve(), origin, ())
    warnings = []
    builtin = builtin_profiles()
    for name in profiles:
        if name in defined:  # the spec's own (or its includes') profile comes first
            if name in builtin:
                where = ", ".join(dict.fromkeys(f.origin.removesuffix(f" (profile {name})") for f in defined[name]))
                warnings.append(f"profile {name!r} of {where} shadows the built-in profile {name!r}, which is not applied")
            frags.extend(defined[name])
        elif name in builtin:
            path = modules_dir() / f"{name}.toml"
            pfrags, _ = loader.fragments(path.resolve(), f"built-in module {name}", ())
            pfrags[-1].origin = f"built-in profile {name}"
            frags.extend(pfrags)
        else:
            known = ", ".join(sorted(defined)) or "none"
            raise SpecError(f"{origin}: unknown profile {name!r}", hint=f"profiles defined: {known}; built-in profiles: {', '.join(builtin)}")
    merged: dict[str, Any] = {}
    for frag in frags:
        merged = merge_into(ImageBody, merged, frag.data)
    try:
        spec = ImageSpec.model_validate(merged)
    except ValidationError as e:
        raise _format_validation(f"{origin} (merged)", e) from None
    return LoadedSpec(spec=spec, spec_path=spec_path, root=root, profiles=list(profiles), fragments=[f.origin for f in frags],
                      warnings=warnings, origin=origin)
