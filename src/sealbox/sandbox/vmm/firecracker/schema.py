"""Firecracker's swagger 2.0 API description turned into JSON Schema, and validation against it.

Swagger 2.0 "definitions" are almost JSON Schema draft 4/7, but not quite:
- `$ref` siblings (usually `description`) are ignored by swagger; we drop them.
- `x-*` vendor keys, `example`, `discriminator`, `xml`, `externalDocs` are not validation keywords.
- `format: int32/int64` are swagger integer widths; we turn them into minimum/maximum bounds.
- Firecracker puts a regular expression into `format` (MmdsConfig.ipv4_address); a format that is not
  a known JSON Schema format becomes an anchored `pattern`.
- Firecracker deserialises almost every body with serde's `deny_unknown_fields`, so in `strict` mode
  an object that lists `properties` and says nothing about `additionalProperties` forbids extra keys
  (a misspelt key is a hard error in Firecracker, and must be one here too).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealbox.errors import SandboxError
from sealbox.util.optional import require

if TYPE_CHECKING:
    import jsonschema

_DROP_KEYS = {"example", "discriminator", "xml", "externalDocs", "readOnly"}
# Formats jsonschema knows (or that are plain annotations); anything else in `format` is a regex.
_KNOWN_FORMATS = {
    "date-time", "date", "time", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference", "uuid",
    "regex", "byte", "binary", "password", "float", "double", "int32", "int64",
}
_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_DEF_PREFIX = "#/definitions/"
_EXTRA = "firecracker-schema"  # pyyaml + jsonschema: only this validation needs them


def _jsonschema() -> Any:
    return require("jsonschema", _EXTRA, "validating against the Firecracker API spec")


class SchemaError(SandboxError):
    """The swagger document itself cannot be converted (bad $ref, unreadable file)."""


def _convert(node: Any, definitions: dict[str, Any], strict: bool, where: str) -> Any:
    if isinstance(node, list):
        return [_convert(item, definitions, strict, f"{where}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith(_DEF_PREFIX) or ref[len(_DEF_PREFIX):] not in definitions:
            raise SchemaError(f"swagger $ref {ref!r} at {where} does not name a definition")
        return {"$ref": ref}  # siblings of $ref carry no meaning in swagger 2.0
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-") or key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {k: _convert(v, definitions, strict, f"{where}.{k}") for k, v in value.items()}
        elif key == "format":
            continue  # handled below
        else:
            out[key] = _convert(value, definitions, strict, f"{where}.{key}")
    fmt = node.get("format")
    if isinstance(fmt, str):
        if fmt in _INT_BOUNDS and node.get("type") == "integer":
            lo, hi = _INT_BOUNDS[fmt]
            out["minimum"] = max(out.get("minimum", lo), lo)
            out["maximum"] = min(out.get("maximum", hi), hi)
        elif fmt not in _KNOWN_FORMATS:
            re.compile(fmt)  # a broken regex is a broken spec: fail loudly
            out["pattern"] = f"^(?:{fmt})$"
        elif fmt not in _INT_BOUNDS:
            out["format"] = fmt
    if strict and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def swagger_to_jsonschema(swagger: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """A draft-07 root schema holding every swagger definition under `definitions`."""
    definitions = swagger.get("definitions")
    if not isinstance(definitions, dict) or not definitions:
        raise SchemaError("the swagger document has no 'definitions'")
    converted = {name: _convert(d, definitions, strict, name) for name, d in definitions.items()}
    return {"$schema": "http://json-schema.org/draft-07/schema#", "definitions": converted}


@dataclass(frozen=True)
class Operation:
    method: str  # lower case, as in the swagger document
    template: str  # e.g. /drives/{drive_id}
    operation_id: str
    body_definition: dict[str, Any] | None  # converted schema of the `in: body` parameter
    body_required: bool
    responses: tuple[str, ...]  # "204", "400", "default", ...


def _path_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    rx = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{rx}$")


class FirecrackerSpec:
    """A loaded swagger file: definitions as JSON Schema, plus the operations table."""

    def __init__(self, swagger: dict[str, Any], *, strict: bool = True) -> None:
        self.version = str(swagger.get("info", {}).get("version", ""))
        self.root = swagger_to_jsonschema(swagger, strict=strict)
        _jsonschema().Draft7Validator.check_schema(self.root)
        self.operations: list[tuple[re.Pattern[str], Operation]] = []
        for template, methods in (swagger.get("paths") or {}).items():
            for method, op in methods.items():
                if method.startswith("x-") or method == "parameters":
                    continue
                body = next((p for p in op.get("parameters", []) if p.get("in") == "body"), None)
                schema = _convert(body["schema"], swagger["definitions"], strict, template) if body else None
                self.operations.append((
                    _path_regex(template),
                    Operation(method, template, op.get("operationId", ""), schema,
                              bool(body and body.get("required")), tuple(str(c) for c in op.get("responses", {}))),
                ))

    @property
    def definitions(self) -> dict[str, Any]:
        definitions: dict[str, Any] = self.root["definitions"]  # swagger_to_jsonschema put the converted dict there
        return definitions

    def _validator(self, schema: dict[str, Any]) -> jsonschema.Draft7Validator:
        validator: jsonschema.Draft7Validator = _jsonschema().Draft7Validator({**schema, "definitions": self.definitions})
        return validator

    def errors(self, definition: str, instance: Any) -> list[str]:
        """Every violation of `definitions/<definition>` as 'path: message' lines (empty = valid)."""
        if definition not in self.definitions:
            raise SchemaError(f"the Firecracker API spec has no definition {definition!r}")
        return self.errors_for({"$ref": _DEF_PREFIX + definition}, instance)

    def errors_for(self, schema: dict[str, Any], instance: Any) -> list[str]:
        found = sorted(self._validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
        return [f"{_json_path(e.absolute_path)}: {e.message}" for e in found]

    def validate(self, definition: str, instance: Any, what: str = "Firecracker request") -> None:
        """Raise one clear SandboxError line naming the first offending key."""
        problems = self.errors(definition, instance)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise SandboxError(f"{what} does not match Firecracker {self.version} {definition}: {problems[0]}{more}")

    def find_operation(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for rx, op in self.operations:
            m = rx.match(path)
            if m and op.method == method.lower():
                return op, m.groupdict()
        return None

    def paths(self) -> Iterator[str]:
        return iter(sorted({op.template for _, op in self.operations}))


def _json_path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


@functools.lru_cache(maxsize=4)
def load_spec(path: str, strict: bool = True) -> FirecrackerSpec:
    """Load (and cache) a Firecracker swagger file."""
    yaml = require("yaml", _EXTRA, "validating against the Firecracker API spec")
    try:
        swagger = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SchemaError(f"cannot read the Firecracker API spec {path}: {e}") from None
    if not isinstance(swagger, dict) or str(swagger.get("swagger")) != "2.0":
        raise SchemaError(f"{path} is not a swagger 2.0 document")
    return FirecrackerSpec(swagger, strict=strict)
