"""The architecture DESIGN.md asks for, checked: plugins depend on kernel and schemas only,
schemas on nothing of ours, the kernel on no plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


PACKAGES = ("kernel", "plugins", "schemas", "tools")


def imported(path: Path) -> set[str]:
    """Project packages a module imports, without the ``tickbus.`` prefix
    (``from tickbus import schemas`` -> ``schemas``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tickbus":
                names.update(f"tickbus.{a.name}" for a in node.names)
            else:
                names.add(node.module)
    return {n.removeprefix("tickbus.") for n in names}


def sources() -> list[Path]:
    return [p for pkg in (*PACKAGES, "tests") for p in sorted((ROOT / pkg).rglob("*.py"))
            if "build" not in p.parts]


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
        assert value.startswith("tickbus."), value
        module = value.split(":")[0].removeprefix("tickbus.")
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), value


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_project_packages_are_imported_under_tickbus(path: Path) -> None:
    """``import kernel`` would work from the repository root by accident, and collide with
    any other distribution's ``kernel`` or ``tools`` once installed."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bare = [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            bare = [node.module] if node.module.split(".")[0] in PACKAGES else []
        else:
            continue
        assert not bare, f"{path}:{node.lineno}: import tickbus.{bare[0]}, not {bare[0]}"


def test_every_package_folder_is_installed() -> None:
    """Each folder with an __init__.py is in pyproject's explicit package list (the
    tickbus.* mapping): a folder missing there would be silently left out of a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ])
    for pkg in PACKAGES:
        for init in (ROOT / pkg).rglob("__init__.py"):
            dotted = ".".join(init.parent.relative_to(ROOT).parts)
            assert f"tickbus.{dotted}" in listed, f"{init.parent} is not in pyproject's packages"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_folder_is_a_regular_package(package: str) -> None:
    """setuptools' find() skips folders without __init__.py: a non-editable install would
    silently lose them."""
    for path in modules(package):
        folder = path.parent
        while folder != ROOT:
            assert (folder / "__init__.py").exists(), f"{folder} has no __init__.py"
            folder = folder.parent


def test_a_wheel_installs_one_top_level_package_beside_a_foreign_tools(tmp_path: Path) -> None:
    """A plain (non-editable) ``pip install .`` into an environment that already has a
    package named ``tools``: ours lands under ``tickbus/`` only, and both import."""
    import subprocess
    import sys
    import zipfile

    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("tickbus-*.whl")
    site = tmp_path / "site"
    (site / "tools").mkdir(parents=True)
    (site / "tools" / "__init__.py").write_text("FOREIGN = True\n")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"tickbus"}, tops
    for data in (
        "tickbus/plugins/binance/data/btcusdt_spot_20240808_sample.gz",
        "tickbus/plugins/signals/model/spot_lr.onnx",
        "tickbus/plugins/risk/data/exchangeinfo_spot.json",
    ):
        assert data in names, f"{data} is not in the wheel"
    probe = (
        "import tools, tickbus.tools.sniffer, tickbus.kernel.cli, tickbus.plugins.book.plugin;"
        "assert tools.FOREIGN; print(tickbus.kernel.cli.__file__)"
    )
    run = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(str(site)), run.stdout


def test_test_modules_have_unique_basenames() -> None:
    """Test folders are not packages: two test files of one name break collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py") if "build" not in p.parts]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
