"""The settings reference is derived from the model and docs/spec.md is exactly its output."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from sealbox.spec.docs import settings_markdown, settings_rows
from sealbox.spec.model import ImageBody

DOC = Path(__file__).resolve().parents[3] / "docs" / "spec.md"


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _leaf_keys(ann, f"{prefix}{key}.")
        elif getattr(ann, "__origin__", None) is dict and issubclass(ann.__args__[1], BaseModel):
            out |= {f"{prefix}{key}.<name>"} | _leaf_keys(ann.__args__[1], f"{prefix}{key}.<name>.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_every_setting_has_one_row_with_a_doc_line() -> None:
    rows = settings_rows()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    fragment_keys = {"include", "profiles.<name>"}  # choose fragments rather than set anything: no merge rule
    assert set(keys) == _leaf_keys(ImageBody) | fragment_keys
    assert all(r["doc"] and r["merge"] in ("override", "append", "merge") for r in rows if r["key"] not in fragment_keys)
    assert all(r["merge"] == "-" for r in rows if r["key"] in fragment_keys)


def test_markdown_table_rows_have_exactly_five_cells() -> None:
    lines = [line for line in settings_markdown().splitlines() if line.startswith("| `")]
    assert len(lines) == len(settings_rows())
    for line in lines:
        cells = [c for c in line.replace("\\|", "").split("|")[1:-1]]
        assert len(cells) == 5, line


def test_docs_spec_md_is_the_generated_reference() -> None:
    assert DOC.read_text() == settings_markdown(), "regenerate with: sealbox settings --markdown > docs/spec.md"


def test_prose_cells_have_no_raw_angle_brackets() -> None:
    """Outside code spans Markdown renderers drop "<suite>" as an unknown HTML tag."""
    for line in settings_markdown().splitlines():
        if line.startswith("| `"):
            prose = "".join(part for i, part in enumerate(line.split("`")) if i % 2 == 0)
            assert "<" not in prose and ">" not in prose, line
