"""The plugin API is documented and typed - tested, not hoped for."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from tickbus.kernel import hookspecs

ROOT = Path(__file__).resolve().parents[2]
SPECS = [
    (name, fn)
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "tickbus_spec")
]


def test_there_are_hooks() -> None:
    assert {n for n, _ in SPECS} >= {
        "tickbus_config_type",
        "tickbus_setup",
        "tickbus_start",
        "tickbus_stop",
        "tickbus_shutdown",
        "tickbus_message_types",
    }


@pytest.mark.parametrize("name,fn", SPECS, ids=[n for n, _ in SPECS])
def test_hook_is_prefixed_typed_and_documented(name: str, fn) -> None:
    assert name.startswith("tickbus_")
    doc = inspect.getdoc(fn) or ""
    assert len(doc.split()) >= 15, f"{name}: the docstring is the contract; say when/args/return"
    sig = inspect.signature(fn)
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: return type"
    for p in sig.parameters.values():
        assert p.annotation is not inspect.Parameter.empty, f"{name}({p.name}): type"


@pytest.mark.parametrize("name", [n for n, _ in SPECS])
def test_hook_is_in_the_readme(name: str) -> None:
    assert name in (ROOT / "README.md").read_text(), f"README.md does not document {name}"
