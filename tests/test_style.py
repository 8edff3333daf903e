"""The code is formatted and linted as the ecosystem's is (ruff, line length 119, at most 7
parameters a function), and its parts stay a size a reader can hold: no module of the package or
the training scripts over 500 lines, no function over 80. A change that is not fails here."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["hf_landmark", "training", "tests", "hf_landmark_cli.py", "space"]


def _ruff() -> list[str]:
    local = Path(sys.executable).with_name("ruff")
    found = str(local) if local.exists() else shutil.which("ruff")
    if not found:
        pytest.fail("ruff is not installed (it is in the [test] extra: pip install -e .[test])")
    return [found]


def test_ruff_format():
    done = subprocess.run([*_ruff(), "format", "--check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_check():
    done = subprocess.run([*_ruff(), "check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_fmt_skip_only_on_tables():
    files = [f for p in PATHS for f in ([ROOT / p] if p.endswith(".py") else sorted((ROOT / p).rglob("*.py")))]
    skips = [
        f"{f}:{i}"
        for f in files
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if line.rstrip().endswith("# fmt: skip")
    ]
    assert len(skips) <= 5, skips


def _code_files():
    return sorted((ROOT / "hf_landmark").rglob("*.py")) + sorted((ROOT / "training").glob("*.py"))


def test_no_module_over_500_lines():
    long = {str(f.relative_to(ROOT)): n for f in _code_files() if (n := len(f.read_text().splitlines())) > 500}
    assert long == {}


def test_no_function_over_80_lines():
    long = []
    for f in _code_files():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_the_limits_are_checked(tmp_path):
    """The two walks above and ruff's parameter count see what they must."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def many(a, b, c, d, e, f, g, h):\n    return a\n\n\ndef long():\n" + "    x = 1\n" * 80 + "    return x\n"
    )
    tree = ast.parse(sample.read_text())
    sizes = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert sizes == {"many": 2, "long": 82}
    done = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(sample)],
        capture_output=True,
        text=True,
    )
    assert "PLR0913" in done.stdout and "many" in done.stdout
