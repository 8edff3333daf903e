"""A golden record of fine-tuning: on synthetic data, with a fixed seed, fp32 and one thread, a
small two-stage detector with self-training, the shape check, the refinement prior, landmark
offsets and the shape fusion is fine-tuned and run on held-out images; its predictions (to 1e-5 px), radii, flags and
training record (timestamps, durations and paths aside) must be what ``tests/golden/`` holds.
A change that moves any of them is a change of the method, not a refactor: regenerate the
record on purpose (``python tests/test_golden.py``) and say why in the commit.

The run is a subprocess with ``OMP_NUM_THREADS=1``, so that no reduction depends on the number
of cores."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "finetune_5_labels.json"
ROOT = Path(__file__).resolve().parents[1]
#: Keys whose values are the run's circumstances, not its result.
VOLATILE = re.compile(
    r"(seconds|time|date|duration|version|threads|elapsed|started|finished|_at$|^host|^cpu|probe)", re.I
)

pytestmark = pytest.mark.slow


def _cli(*args, env):
    subprocess.run(
        [sys.executable, "-m", "hf_landmark_cli", *map(str, args)], check=True, env=env, capture_output=True, cwd=ROOT
    )


def _normalise(value, tmp: str):
    if isinstance(value, dict):
        return {k: _normalise(v, tmp) for k, v in sorted(value.items()) if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [_normalise(v, tmp) for v in value]
    if isinstance(value, str):
        return value.replace(tmp, "<tmp>")
    return value


def run(tmp: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    _cli("synth", "--out", tmp / "raw", "--num-images", 30, "--seed", 3, env=env)
    _cli(
        "prepare",
        "ceph",
        "--root",
        tmp / "raw",
        "--out",
        tmp / "prep",
        "--image-size",
        128,
        "--split-counts",
        "20,5,5",
        env=env,
    )
    _cli(
        "finetune",
        "--dataset",
        tmp / "prep",
        "--output-dir",
        tmp / "ft",
        "--num-labels",
        5,
        "--init",
        "scratch",
        "--preset",
        "tiny",
        "--resolution",
        32,
        "--refine-preset",
        "tiny",
        "--max-steps",
        12,
        "--eval-steps",
        4,
        "--refine-max-steps",
        8,
        "--refine-batch-size",
        8,
        "--self-train",
        1,
        "--mixed-precision",
        "no",
        "--seed",
        0,
        "--report-to",
        "none",
        env=env,
    )
    test = sorted((tmp / "raw" / "RawImage" / "TrainingData").glob("*.bmp"))[25:]
    _cli("predict", *test, "--model", tmp / "ft" / "model", "--output", tmp / "p.json", env=env)
    predictions = json.loads((tmp / "p.json").read_text())["predictions"]
    record = json.loads((tmp / "ft" / "model" / "hf_landmark_training.json").read_text())
    summary = json.loads((tmp / "ft" / "training_summary.json").read_text())
    return _normalise(
        {"predictions": {Path(k).name: v for k, v in predictions.items()}, "record": record, "summary": summary},
        str(tmp),
    )


def _compare(got, want, where="", tol=1e-5):
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(set(got) ^ set(want))}"
        for k in want:
            _compare(got[k], want[k], f"{where}.{k}", tol)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, f"{where}[{i}]", tol)
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)) and (
            (math.isnan(want) and math.isnan(got)) or abs(got - want) <= tol * max(1.0, abs(want))
        ), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_fine_tuning_gives_the_golden_record(tmp_path):
    want = json.loads(GOLDEN.read_text())
    _compare(run(tmp_path), want)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        record = run(Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
