"""Merging spec fragments by each setting's declared rule (see fields.py)."""

from __future__ import annotations

import copy
import typing
from typing import Any

from pydantic import BaseModel

from sealbox.spec.fields import merge_rule


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    ann = model.model_fields[key].annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    args: tuple[Any, ...] = typing.get_args(ann)
    value = args[1] if typing.get_origin(ann) is dict and len(args) == 2 else None
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value
    return None


def _dedupe(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def merge_into(model: type[BaseModel], base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Return base ∪ new for `model`'s settings; `new` wins for overrides. Inputs are not modified."""
    out = copy.deepcopy(base)
    for key, value in new.items():
        if key not in model.model_fields or key not in out:
            out[key] = copy.deepcopy(value)
            continue
        rule = merge_rule(model, key)
        sub = _submodel(model, key)
        if rule == "append" and isinstance(out[key], list) and isinstance(value, list):
            out[key] = _dedupe(out[key] + copy.deepcopy(value))
        elif rule == "merge" and isinstance(out[key], dict) and isinstance(value, dict) and sub is not None:
            is_section = model.model_fields[key].annotation == sub  # `==`: `is` would narrow `sub` to the annotation's type
            if is_section:  # a section: merge its settings
                out[key] = merge_into(sub, out[key], value)
            else:  # a table of sections by name (users): merge entry by entry
                merged = dict(out[key])
                for name, entry in value.items():
                    both = isinstance(merged.get(name), dict) and isinstance(entry, dict)
                    merged[name] = merge_into(sub, merged[name], entry) if both else copy.deepcopy(entry)
                out[key] = merged
        elif rule == "merge" and isinstance(out[key], dict) and isinstance(value, dict):  # a table of scalars (oci.env)
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out
