"""The architecture DESIGN.md asks for, checked: plugins depend on kernel and schemas only,
schemas on nothing of ours, the kernel on no plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported(path: Path) -> set[str]:
    """Top-level project packages (and sub-packages of plugins) a module imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("plugins"), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_plugin_imports_kernel_and_schemas_only(path: Path) -> None:
    own = path.relative_to(ROOT / "plugins").parts[0]
    for name in imported(path):
        top = name.split(".")[0]
        assert top != "tools", f"{path}: imports {name}"
        if top == "plugins":
            assert name.split(".")[1:2] == [own], f"{path}: imports another plugin ({name})"


@pytest.mark.parametrize("package", ["kernel", "schemas"])
def test_kernel_and_schemas_do_not_import_plugins(package: str) -> None:
    for path in modules(package):
        for name in imported(path):
            assert name.split(".")[0] not in ("plugins", "tools"), f"{path}: imports {name}"
            if package == "schemas":
                assert name.split(".")[0] != "kernel", f"{path}: imports {name}"


def test_every_builtin_plugin_is_an_entry_point() -> None:
    import tomllib

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    for value in eps["tickbus"].values():
        assert (ROOT / (value.replace(".", "/") + ".py")).exists(), value


@pytest.mark.parametrize("package", ["kernel", "plugins", "schemas", "tools"])
def test_every_folder_is_a_regular_package(package: str) -> None:
    """setuptools' find() skips folders without __init__.py: a non-editable install would
    silently lose them."""
    for path in modules(package):
        folder = path.parent
        while folder != ROOT:
            assert (folder / "__init__.py").exists(), f"{folder} has no __init__.py"
            folder = folder.parent
