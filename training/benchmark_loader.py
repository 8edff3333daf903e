#!/usr/bin/env python
"""Images per second: reading the prepared dataset (pre-resized PNGs in Arrow) versus decoding
and resizing the raw benchmark files, both through the package's one preprocessing path.

    python training/benchmark_loader.py --prepared PREPARED_DIR --raw-root RAW_ROOT --kind ceph --size 256
"""

from __future__ import annotations

import argparse
import time

from hf_landmark.data import READERS, load_prepared
from hf_landmark.preprocessing import read_image, resize_image, to_grayscale01


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--prepared", required=True)
    p.add_argument("--raw-root", required=True)
    p.add_argument("--kind", default="ceph")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--limit", type=int, default=40)
    args = p.parse_args(argv)
    split = load_prepared(args.prepared)["train"]
    n = min(args.limit, len(split))
    start = time.perf_counter()
    for i in range(n):
        resize_image(to_grayscale01(split[i]["image"]), args.size)
    prepared_rate = n / (time.perf_counter() - start)
    records = READERS[args.kind](args.raw_root)[0][:n]
    start = time.perf_counter()
    for rec in records:
        resize_image(read_image(rec.image_path), args.size)
    raw_rate = len(records) / (time.perf_counter() - start)
    print(
        f"prepared dataset: {prepared_rate:.1f} images/s; raw files: {raw_rate:.1f} images/s; speed-up {prepared_rate / raw_rate:.0f}x"
    )


if __name__ == "__main__":
    main()
