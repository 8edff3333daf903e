#!/usr/bin/env python
"""End-to-end inference time per image: decode + preprocess + model + decode + rescale to the
original frame, on a 1935×2400 cephalogram-sized image, per preset, batch size and precision.

    python training/benchmark_inference.py [--image path/to/001.bmp] --presets tiny,small,base --sizes 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from hf_landmark import LandmarkConfig, LandmarkDetector
from hf_landmark.preprocessing import model_to_original, prepare_pixel_values, read_image
from hf_landmark.training_utils import parse_int_list


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", help="default: a synthetic 1935×2400 8-bit BMP")
    p.add_argument("--presets", default="tiny,small,base")
    p.add_argument("--sizes", default="256")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--precisions", default=None, help="default: fp32,bf16 on CPU; fp32,fp16 on CUDA")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    image_path = args.image
    if image_path is None:
        image_path = os.path.join(tempfile.mkdtemp(), "ceph.bmp")
        Image.fromarray((np.random.default_rng(0).random((2400, 1935)) * 255).astype(np.uint8)).save(image_path)
    precisions = (args.precisions or ("fp32,fp16" if device == "cuda" else "fp32,bf16")).split(",")
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'}; image {image_path}")
    print("| preset | size | batch | precision | s/image | decode+preprocess s/image |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        for size in parse_int_list(args.sizes):
            model = LandmarkDetector(LandmarkConfig(unet=preset, num_landmarks=19, image_size=size)).to(device).eval()
            for batch in parse_int_list(args.batches):
                for precision in precisions:
                    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
                    times, prep = [], []
                    for _ in range(args.repeats + 1):
                        start = time.perf_counter()
                        images = [read_image(image_path) for _ in range(batch)]
                        x = prepare_pixel_values(images, size, model.config.pixel_range).to(device)
                        t_prep = time.perf_counter() - start
                        with torch.no_grad(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                            heatmaps = model(x).heatmaps
                        coords, _ = model.decode_heatmaps(heatmaps.float())
                        model_to_original(coords.cpu().double(), (images[0].shape[1], images[0].shape[0]), size)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        times.append((time.perf_counter() - start) / batch)
                        prep.append(t_prep / batch)
                    print(f"| {preset} | {size} | {batch} | {precision} | {np.median(times[1:]):.3f} | {np.median(prep[1:]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
