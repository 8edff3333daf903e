"""The code is formatted and linted as the ecosystem's is (ruff, line length 119): a change that
is not fails here, with ruff's own report."""

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
