#!/usr/bin/env python
"""End-to-end inference time per image through the image processor: read + preprocess
(``LandmarkImageProcessor.preprocess``) + model (both stages of a two-stage detector) +
``post_process_landmark_detection`` (decode, original frame), on a 1935×2400
cephalogram-sized image, per preset, batch size and precision.

    python training/benchmark_inference.py [--image path/to/001.bmp] --presets tiny,small,base --sizes 256
    python training/benchmark_inference.py --model OUT/model [--model OUT2/model] --batches 1

With ``--model`` the saved detectors are timed (e.g. the CPU protocol's two-stage models);
``--refine-size/--refine-crop/--refine-preset`` give the preset models a random-weight
refinement stage.
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
from hf_landmark.image_processing_landmark import processor_for_model
from hf_landmark.training_utils import parse_int_list


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", help="default: a synthetic 1935×2400 8-bit BMP")
    p.add_argument("--presets", default="tiny,small,base")
    p.add_argument("--sizes", default="256")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--precisions", default=None, help="default: fp32,bf16 on CPU; fp32,fp16 on CUDA")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--model", action="append", help="a saved detector folder to time instead of the presets (repeatable)"
    )
    p.add_argument(
        "--refine-size", type=int, default=0, help="presets: add a refinement stage at this fine size (0: none)"
    )
    p.add_argument("--refine-crop", type=int, default=64)
    p.add_argument("--refine-preset", default="tiny")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    image_path = args.image
    if image_path is None:
        image_path = os.path.join(tempfile.mkdtemp(), "ceph.bmp")
        Image.fromarray((np.random.default_rng(0).random((2400, 1935)) * 255).astype(np.uint8)).save(image_path)
    precisions = (args.precisions or ("fp32,fp16" if device == "cuda" else "fp32,bf16")).split(",")
    print(
        f"device: {torch.cuda.get_device_name() if device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'}; image {image_path}"
    )
    print("| model | size | refine | batch | precision | s/image | decode+preprocess s/image |")
    print("|---|---|---|---|---|---|---|")
    for name, model in models(args, device):
        processor = processor_for_model(model)
        refine = (
            f"{model.config.refine_size} px, crop {model.config.refine_crop}" if model.config.refine_size else "no"
        )
        for batch in parse_int_list(args.batches):
            for precision in precisions:
                dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
                times, prep = [], []
                for _ in range(args.repeats + 1):
                    start = time.perf_counter()
                    inputs = processor([image_path] * batch)
                    t_prep = time.perf_counter() - start
                    fine = inputs.get("fine_pixel_values")
                    with (
                        torch.no_grad(),
                        torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None),
                    ):
                        outputs = model(
                            pixel_values=inputs["pixel_values"].to(device),
                            fine_pixel_values=None if fine is None else fine.to(device),
                        )
                    processor.post_process_landmark_detection(outputs, inputs["original_sizes"], inputs["spacings"])
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times.append((time.perf_counter() - start) / batch)
                    prep.append(t_prep / batch)
                print(
                    f"| {name} | {model.config.image_size} | {refine} | {batch} | {precision} | {np.median(times[1:]):.3f} | {np.median(prep[1:]):.3f} |",
                    flush=True,
                )


def models(args, device):
    """``(name, detector)`` pairs: the saved ``--model`` folders, else one per preset and size."""
    if args.model:
        for path in args.model:
            yield path, LandmarkDetector.from_pretrained(path, dtype=torch.float32).to(device).eval()
        return
    for preset in args.presets.split(","):
        for size in parse_int_list(args.sizes):
            config = LandmarkConfig(
                backbone_config=preset,
                num_landmarks=19,
                image_size=size,
                refine_size=args.refine_size,
                refine_crop=args.refine_crop,
                refine_backbone_config=args.refine_preset,
            )
            yield preset, LandmarkDetector(config).to(device).eval()


if __name__ == "__main__":
    main()
