"""A Space folder that brings hf-landmark with it: the web page with *Detect* and *Annotate*
(a visitor's own uploads, downloaded when done), from ``space/`` plus this package built as a
wheel that the Space's ``requirements.txt`` installs. A visitor needs nothing but a browser.

``hf-landmark space --out DIR [--model REPO]`` writes it; ``hf-landmark push DIR --repo-id
org/name --space`` uploads it. In a Space (``SPACE_ID`` set) the page runs only the models its
owner names (``HF_LANDMARK_MODEL``, ``HF_LANDMARK_TRUSTED_MODELS``), even with the package
installed, and never opens a path a visitor types."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import UserInputError
from .fileio import atomic_directory

SPACE_SOURCE = Path(__file__).resolve().parents[1] / "space"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def build_space(out: str | os.PathLike, model: str | None = None) -> list[str]:
    """Write the Space folder ``out`` (replaced whole); returns the files written."""
    if not (SPACE_SOURCE / "app.py").is_file() or not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise UserInputError(
            "hf-landmark space builds from a source checkout of hf-landmark (its space/ and pyproject.toml)"
        )
    try:
        return _write_space(out, model)
    except OSError as err:
        raise UserInputError(f"--out {out}: cannot write the Space there ({err.strerror or err})") from err


def _write_space(out, model: str | None) -> list[str]:
    with atomic_directory(out) as tmp:
        tmp = Path(tmp)
        for name in ("app.py", "README.md"):
            shutil.copyfile(SPACE_SOURCE / name, tmp / name)
        shutil.copyfile(SPACE_SOURCE / "landmark_app.py", tmp / "landmark_app.py")  # the link's target, as a file
        shutil.copytree(SPACE_SOURCE / "examples", tmp / "examples")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                str(tmp),
                str(PROJECT_ROOT),
            ],
            capture_output=True,
            text=True,
        )
        wheels = sorted(tmp.glob("hf_landmark-*.whl"))
        if done.returncode or not wheels:
            raise UserInputError(
                f"{PROJECT_ROOT}: could not build the package's wheel for the Space: {done.stderr.strip()[-500:]}"
            )
        requirements = (SPACE_SOURCE / "requirements.txt").read_text().rstrip("\n").splitlines()
        # The package, from the wheel beside the app, with its own dependencies from PyPI.
        requirements.append(f"./{wheels[-1].name}")
        (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
        if model:
            readme = (tmp / "README.md").read_text()
            (tmp / "README.md").write_text(
                readme + f"\nThe default model: `{model}` (set `HF_LANDMARK_MODEL` to it in the Space's settings).\n"
            )
        written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return written
