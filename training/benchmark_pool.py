#!/usr/bin/env python
"""Pre-training on a pool of any size: peak memory and speed at growing pool sizes.

    python training/benchmark_pool.py --sizes 2000,20000 --out runs/pool_bench

For each size it writes that many random 64-px radiograph-like PNGs, prepares them
(``prepare images``, streamed), and pre-trains for ``--steps`` steps in a fresh process,
once with the pool decoded in memory (when it fits ``--pool-memory-mb``) and once read from
its Arrow files batch by batch (``--pool-memory-mb 0``). It prints, per run, the peak RSS of
the pre-training process, the seconds per step after the first, and the wall time with start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_pool(folder: Path, n: int, size: int = 64, seed: int = 0) -> None:
    """``n`` smooth random grayscale images (a few blurred blobs each), fast to write."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.zeros((size, size))
        for cx, cy, r in rng.uniform(0.1, 0.9, (4, 3)):
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.05 * r))
        Image.fromarray((255 * img / img.max()).astype(np.uint8)).save(folder / f"{i:06d}.png")


def run_pretrain(dataset: Path, out: Path, steps: int, memory_mb: float) -> dict:
    """One pre-training process: its peak RSS and wall time (start-up included)."""
    cmd = [
        sys.executable,
        "-m",
        "hf_landmark.training.pretrain",
        "--dataset",
        str(dataset),
        "--output-dir",
        str(out),
        "--preset",
        "small",
        "--resolution",
        "64",
        "--max-steps",
        str(steps),
        "--save-steps",
        str(steps),
        "--train-batch-size",
        "8",
        "--gradient-accumulation-steps",
        "1",
        "--num-samples",
        "0",
        "--report-to",
        "none",
        "--mixed-precision",
        "no",
        "--pool-memory-mb",
        str(memory_mb),
    ]
    # A fresh parent per run, so that its children's peak RSS is this run's alone.
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); subprocess.run(sys.argv[1:], check=True, "
        "capture_output=True); print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    wall, rss_kb = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True
    ).stdout.split()
    info = json.loads((out / f"checkpoint-{steps}" / "hf_landmark_pretraining.json").read_text())
    return {
        "wall_s": float(wall),
        "peak_rss_mb": int(rss_kb) / 1024,
        "num_images": info["num_images"],
        "s_per_step": info["seconds_per_step"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,20000")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default="runs/pool_bench")
    args = p.parse_args(argv)
    out = Path(args.out)
    for n in [int(v) for v in args.sizes.split(",")]:
        images, prepared = out / f"images{n}", out / f"prepared{n}"
        if not prepared.exists():
            write_pool(images, n)
            t = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hf_landmark_cli",
                    "prepare",
                    "images",
                    "--root",
                    str(images),
                    "--out",
                    str(prepared),
                    "--image-size",
                    "64",
                ],
                check=True,
                capture_output=True,
                env=dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1"),
            )
            print(f"{n} images: prepared in {time.perf_counter() - t:.0f} s", flush=True)
        for label, memory_mb in (("in memory", 1024), ("streamed", 0)):
            res = run_pretrain(prepared, out / f"ddpm{n}-{label.replace(' ', '')}", args.steps, memory_mb)
            print(
                f"{n:>6} images, {label:>9}: peak RSS {res['peak_rss_mb']:.0f} MB, {res['s_per_step']:.3f} s per step after the "
                f"first, {res['wall_s']:.1f} s in all for {args.steps} steps with start-up",
                flush=True,
            )


if __name__ == "__main__":
    main()
