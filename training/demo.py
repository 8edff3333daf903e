#!/usr/bin/env python
"""The whole method end to end on synthetic data, sized for a 2-core CPU (a few minutes):

synthetic cephalograms → prepared dataset → DDPM pre-training of a ``tiny`` U-Net →
5-label fine-tuning from the DDPM checkpoint and from scratch → evaluation on the held-out
test images beside the mean-shape floor → a table and an overlay picture.

    hf-landmark demo --output-dir outputs/demo
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from hf_landmark import LandmarkDetector
from hf_landmark.data import few_shot_indices, load_prepared, load_tensors, prepare, write_synthetic_isbi
from hf_landmark.evaluation import (
    compute_metrics,
    mean_shape_prediction,
    predict_tensors,
    save_cumulative_error_plot,
)
from hf_landmark.fileio import write_json_atomic, write_text_atomic
from hf_landmark.image_processing_landmark import processor_for_model
from hf_landmark.preprocessing import read_image
from hf_landmark.visualization import draw_landmarks, legend_lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="outputs/demo")
    p.add_argument("--num-images", type=int, default=80)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--pretrain-steps", type=int, default=800)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--num-labels", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from hf_landmark.training.finetune import FinetuneArguments, finetune
    from hf_landmark.training.pretrain import PretrainArguments, pretrain

    args = parse_args(argv)
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    timings = {}

    raw, prepared = os.path.join(out, "raw"), os.path.join(out, "prepared")
    write_synthetic_isbi(raw, num_images=args.num_images, seed=args.seed)
    n_val = n_test = args.num_images // 4
    prepare("ceph", raw, prepared, image_size=args.resolution * 2, split_counts=(args.num_images - n_val - n_test, n_val, None))
    timings["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    checkpoint = pretrain(PretrainArguments(
        dataset=prepared, output_dir=os.path.join(out, "ddpm"), preset=args.preset, resolution=args.resolution,
        max_steps=args.pretrain_steps, save_steps=str(args.pretrain_steps), train_batch_size=8, gradient_accumulation_steps=1,
        learning_rate=1e-3, num_samples=16, sample_inference_steps=50, seed=args.seed, report_to="tensorboard",
    ))  # fmt: skip
    timings["pretrain"] = time.perf_counter() - t

    models = {}
    for name, init, folder in (("DDPM pre-trained", checkpoint, "finetune-ddpm"), ("from scratch", "scratch", "finetune-scratch")):
        t = time.perf_counter()
        run_dir = os.path.join(out, folder)
        finetune(FinetuneArguments(
            dataset=prepared, output_dir=run_dir, num_labels=args.num_labels, seed=args.seed, init=init, preset=args.preset,
            resolution=args.resolution, max_steps=args.finetune_steps, eval_steps=25, early_stopping_patience=100, learning_rate=1e-3,
        ))  # fmt: skip
        timings[f"finetune {name}"] = time.perf_counter() - t
        models[name] = os.path.join(run_dir, "model")

    dataset = load_prepared(prepared)
    test = load_tensors(dataset["test"], args.resolution)
    train = load_tensors(dataset["train"], args.resolution)
    rows, curves, preds = {}, {}, {}
    for name, path in models.items():
        model = LandmarkDetector.from_pretrained(path, dtype=torch.float32).eval()
        pred, _, _ = predict_tensors(model, processor_for_model(model), test)
        preds[name] = pred
        rows[name] = compute_metrics(pred, test, model.config)
    labeled = train.subset(few_shot_indices(train.image_ids, args.num_labels))
    rows["mean shape (no model)"] = compute_metrics(mean_shape_prediction(labeled, test), test, model.config)
    for name, m in rows.items():
        curves[name] = m.pop("errors")

    unit = rows["DDPM pre-trained"]["unit"]
    thr = list(rows["DDPM pre-trained"]["sdr"])
    lines = [f"| {args.num_labels} labels, {len(test)} test images | MRE ({unit}) | " + " | ".join(f"SDR {t} {unit}" for t in thr) + " |",
             "|---|---|" + "---|" * len(thr)]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['mre']:.2f} ± {m['mre_std']:.2f} | " + " | ".join(f"{m['sdr'][t]:.1f}%" for t in thr) + " |")
    table = "\n".join(lines)

    # The first test image, its original file, predictions against the truth.
    original = read_image(os.path.join(raw, "RawImage", "TrainingData", f"{test.image_ids[0]}.bmp"))
    overlay = draw_landmarks(original, preds["DDPM pre-trained"][0], test.original_landmarks[0].numpy(), min_side=900)
    overlay.save(os.path.join(out, "overlay.png"))
    write_text_atomic("\n".join(legend_lines(test.landmark_names)) + "\n", os.path.join(out, "overlay_legend.txt"))
    save_cumulative_error_plot(curves, unit, os.path.join(out, "cumulative_error.png"))
    timings["total"] = time.perf_counter() - t0
    write_json_atomic({"table": rows, "timings_s": timings}, os.path.join(out, "results.json"))
    write_text_atomic(table + "\n", os.path.join(out, "results.md"))
    print("\n" + table + "\n")
    print(f"samples: {os.path.join(checkpoint, 'samples.png')}")
    print(f"overlay: {os.path.join(out, 'overlay.png')} (red: predicted, numbered as in overlay_legend.txt; green: true)")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return rows


if __name__ == "__main__":
    main()
