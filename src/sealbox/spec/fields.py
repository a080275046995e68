"""Declaring a setting once: its type, default, merge rule and doc line.

Every spec setting is a pydantic field created with `setting()`. The merge rule lives in the field's
metadata and drives `merge.py`; the doc line drives `sealbox settings` and docs/spec.md. Rules:
  - "override": a later fragment's value replaces the earlier one (scalars; some lists, e.g. formats)
  - "append":   lists concatenate in fragment order, duplicates dropped (packages, modules, ...)
  - "merge":    tables merge key by key, recursively (sections, users by name)
Fragment order: included modules (depth first, in `include` order), then the file itself, then the
selected profiles in the order given on the command line. Later wins.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

Merge = Literal["override", "append", "merge"]


def setting(default: Any, doc: str, *, merge: Merge | None = None, **kw: Any) -> Any:
    extra: dict[str, Any] = {"doc": doc}
    if merge:
        extra["merge"] = merge
    if isinstance(default, (list, dict)):
        factory = (lambda d=default: type(d)(d))  # fresh copy per instance
        return Field(default_factory=factory, description=doc, json_schema_extra=extra, **kw)
    return Field(default=default, description=doc, json_schema_extra=extra, **kw)


class Section(BaseModel):
    """A spec table: unknown keys are errors, values are validated strictly (no silent coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


def merge_rule(model: type[BaseModel], key: str) -> Merge:
    """The declared merge rule of `model.key`, or the default for its type."""
    field = model.model_fields[key]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "merge" in extra:
        return cast(Merge, extra["merge"])  # JSON-typed in pydantic; only setting() writes it, from a Merge
    origin = getattr(field.annotation, "__origin__", None)
    if origin is list:
        return "append"
    if origin is dict or (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
        return "merge"
    return "override"
