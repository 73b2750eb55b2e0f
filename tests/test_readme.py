"""The README's strategy tutorial, done as a user would: its code blocks become a package,
pip installs it, a real ``tickbus run`` discovers it from its entry point and it trades on the
bundled sample. A README that drifts from the API fails here."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import ROOT, tickbus_cmd, tickbus_env


def tutorial_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Writing a strategy")
    end = text.index("\n## ", start)
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end], flags=re.S)


def dedent(block: str) -> str:
    lines = block.splitlines()
    pad = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
    return "\n".join(x[pad:] for x in lines) + "\n"


def test_the_readme_strategy_tutorial_builds_installs_and_trades(tmp_path: Path, rt: Path) -> None:
    blocks = [(lang, dedent(code)) for lang, code in tutorial_blocks()]
    (_, module), (_, project), (_, enable) = [b for b in blocks if b[0] in ("python", "toml")][:3]
    path = module.splitlines()[0].removeprefix("# ").strip()  # my_flow/src/my_flow/strategy.py
    src = tmp_path / path
    src.parent.mkdir(parents=True)
    src.write_text(module)
    (src.parent / "__init__.py").write_text("")
    pkg = tmp_path / path.split("/")[0]
    (pkg / "pyproject.toml").write_text(project)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(pkg)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr

    # "copy configs/imbalance.toml and replace the [plugins.imbalance] table"
    raw = tomllib.loads((ROOT / "configs" / "imbalance.toml").read_text())
    name, table = next(iter(tomllib.loads(enable)["plugins"].items()))
    del raw["plugins"]["imbalance"]
    raw["plugins"][name] = table
    raw["kernel"]["runtime_dir"] = str(rt)
    cfg = tmp_path / "my.toml"
    cfg.write_text(_to_toml(raw))

    listed = subprocess.run(
        tickbus_cmd("plugins", "--config", str(cfg)), env=tickbus_env(site),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert re.search(rf"^{name}\s+my_flow\.strategy:plugin", listed.stdout, re.M), listed.stdout
    run = subprocess.run(
        tickbus_cmd("run", str(cfg)), env=tickbus_env(site),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    fills = re.findall(r"filled (buy|sell) \d+ @ \d+", run.stderr)
    assert "buy" in fills and "sell" in fills, run.stderr[-3000:]


def _to_toml(raw: dict) -> str:
    """Just enough TOML for a config: tables of scalars and lists."""
    out: list[str] = []

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    def table(prefix: str, d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix:
            out.append(f"[{prefix}]")
        out.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", raw)
    return "\n".join(out) + "\n"
