#!/usr/bin/env python
"""The whole method end to end on synthetic data, sized for a 2-core CPU (under 10 minutes):

synthetic cephalograms whose shape, pose, scale and exposure vary widely → prepared dataset →
DDPM pre-training of a ``tiny`` U-Net on the unlabeled training and validation images →
fine-tuning with 1, 3 and 5 labels, from the DDPM checkpoint and from scratch, two seeds each →
evaluation on the held-out test images beside the mean-shape floor → a table, an overlay and a
cumulative-error plot.

    hf-landmark demo --output-dir outputs/demo
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import torch

from hf_landmark import LandmarkDetector
from hf_landmark.data import few_shot_indices, load_prepared, load_tensors, prepare, write_synthetic_isbi
from hf_landmark.evaluation import compute_metrics, mean_shape_prediction, predict_split, save_cumulative_error_plot
from hf_landmark.fileio import write_json_atomic, write_text_atomic
from hf_landmark.image_processing_landmark import processor_for_model
from hf_landmark.preprocessing import read_image
from hf_landmark.training_utils import parse_int_list
from hf_landmark.visualization import draw_landmarks, legend_lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="hf-landmark demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--output-dir", default="outputs/demo", help="everything the demo writes goes here")
    p.add_argument(
        "--num-images", type=int, default=100, help="synthetic cephalograms (80 %% unlabeled pool, 20 %% test)"
    )
    p.add_argument("--variability", type=float, default=2.5, help="spread of shape, pose and exposure (1: mild)")
    p.add_argument("--resolution", type=int, default=64, help="model input size")
    p.add_argument("--preset", default="tiny", help="U-Net preset")
    p.add_argument("--pretrain-steps", type=int, default=1200, help="DDPM pre-training steps")
    p.add_argument("--finetune-steps", type=int, default=200, help="fine-tuning steps per run")
    p.add_argument("--labels", default="1,3,5", help="label counts, comma-separated")
    p.add_argument("--seeds", default="0,1", help="fine-tuning seeds, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the pre-training")
    p.add_argument("--verbose", action="store_true", help="show the libraries' INFO logs")
    return p.parse_args(argv)


def _quiet(verbose: bool) -> None:
    """Progress bars and the results only, unless --verbose."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    for name in ("accelerate", "hf_landmark", "transformers", "diffusers", "datasets"):
        logging.getLogger(name).setLevel(level)


def main(argv=None) -> dict:
    args = parse_args(argv)
    _quiet(args.verbose)
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    timings = {}

    raw, prepared = os.path.join(out, "raw"), os.path.join(out, "prepared")
    checkpoint = prepare_and_pretrain(args, raw, prepared, timings)
    dataset = load_prepared(prepared)
    test = load_tensors(dataset["test"], args.resolution)
    train = load_tensors(dataset["train"], args.resolution)
    inits = {"DDPM pre-trained": checkpoint, "from scratch": "scratch"}
    runs: dict[tuple[str, int], list[dict]] = {}
    curves, example = {}, None
    t = time.perf_counter()
    for labels in parse_int_list(args.labels, "--labels"):
        for seed in parse_int_list(args.seeds, "--seeds"):
            for name, init in inits.items():
                run_dir = os.path.join(
                    out, "finetune", f"{'ddpm' if init != 'scratch' else 'scratch'}-n{labels}-s{seed}"
                )
                finetune_run(args, prepared, run_dir, (labels, seed, init))
                model = LandmarkDetector.from_pretrained(os.path.join(run_dir, "model"), dtype=torch.float32).eval()
                processor = processor_for_model(model)
                result = predict_split(model, processor, test)
                pred = result["coords"]
                metrics = compute_metrics(pred, test, model.config)
                runs.setdefault((name, labels), []).append(metrics)
                curves.setdefault(f"{name}, {labels} label{'s' if labels > 1 else ''}", []).append(
                    metrics.pop("errors")
                )
                if init != "scratch":
                    radii = processor.radii(result["spread"])
                    example = (pred[0], None if radii is None else radii[0])
            labeled = train.subset(few_shot_indices(train.image_ids, labels))
            floor = compute_metrics(mean_shape_prediction(labeled, test), test, model.config)
            runs.setdefault(("mean shape (no model)", labels), []).append(floor)
    timings["finetune (all runs)"] = time.perf_counter() - t

    table, gaps = results_table(runs, len(test))
    write_results(args, (raw, out, checkpoint), (runs, curves, example, test), table, (gaps, timings, t0))
    return {"runs": runs, "ddpm_gain_percent": gaps}


def prepare_and_pretrain(args, raw: str, prepared: str, timings: dict) -> str:
    """The synthetic cephalograms written and prepared, and the DDPM pre-trained on them;
    returns its checkpoint."""
    from hf_landmark.training.pretrain import PretrainArguments, pretrain

    t0 = time.perf_counter()
    write_synthetic_isbi(raw, num_images=args.num_images, seed=args.seed, variability=args.variability)
    n_test = args.num_images // 5
    n_val = max(2, args.num_images // 10)
    prepare(
        "ceph",
        raw,
        prepared,
        image_size=args.resolution * 2,
        split_counts=(args.num_images - n_val - n_test, n_val, None),
    )
    timings["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    checkpoint = pretrain(
        PretrainArguments(
            dataset=prepared,
            output_dir=os.path.join(os.path.dirname(prepared), "ddpm"),
            preset=args.preset,
            resolution=args.resolution,
            max_steps=args.pretrain_steps,
            save_steps=str(args.pretrain_steps),
            train_batch_size=8,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            num_samples=16,
            sample_inference_steps=50,
            seed=args.seed,
            report_to="tensorboard",
        )
    )
    timings["pretrain"] = time.perf_counter() - t

    return checkpoint


def finetune_run(args, prepared: str, run_dir: str, cell: tuple) -> None:
    """One fine-tuning of the demo, ``(labels, seed, init)``: the first stage alone."""
    from hf_landmark.training.finetune import FinetuneArguments, finetune

    labels, seed, init = cell
    finetune(
        FinetuneArguments(
            dataset=prepared,
            output_dir=run_dir,
            num_labels=labels,
            seed=seed,
            init=init,
            preset=args.preset,
            resolution=args.resolution,
            max_steps=args.finetune_steps,
            eval_steps=25,
            early_stopping_patience=100,
            learning_rate=1e-3,
            report_to="none",
            no_refine=True,
        )
    )


def write_results(args, places: tuple, measured: tuple, table: str, facts: tuple) -> None:
    """The overlay, the cumulative error plot, results.json / results.md, and the summary printed."""
    raw, out, checkpoint = places
    runs, curves, example, test = measured
    gaps, timings, t0 = facts
    # The first test image's original file, the last DDPM model's predictions against the truth.
    original = read_image(os.path.join(raw, "RawImage", "TrainingData", f"{test.image_ids[0]}.bmp"))
    draw_landmarks(original, example[0], test.original_landmarks[0].numpy(), radii=example[1], min_side=900).save(
        os.path.join(out, "overlay.png")
    )
    write_text_atomic("\n".join(legend_lines(test.landmark_names)) + "\n", os.path.join(out, "overlay_legend.txt"))
    unit = next(iter(runs.values()))[0]["unit"]
    save_cumulative_error_plot(
        {k: np.concatenate(v) for k, v in curves.items()}, unit, os.path.join(out, "cumulative_error.png")
    )
    timings["total"] = time.perf_counter() - t0
    write_json_atomic(
        {"runs": {f"{k[0]} | {k[1]}": v for k, v in runs.items()}, "ddpm_gain_percent": gaps, "timings_s": timings},
        os.path.join(out, "results.json"),
    )
    write_text_atomic(table + "\n", os.path.join(out, "results.md"))
    print("\n" + table + "\n")
    print(f"samples: {os.path.join(checkpoint, 'samples.png')}")
    print(
        f"overlay: {os.path.join(out, 'overlay.png')} (red: predicted, numbered as in overlay_legend.txt, circles: "
        "90 % error radii; green: true)"
    )
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def results_table(runs: dict[tuple[str, int], list[dict]], num_test: int) -> tuple[str, dict[int, float]]:
    """The Markdown table (mean ± std over seeds) and DDPM's MRE gain over scratch per label count (%)."""
    first = next(iter(runs.values()))[0]
    unit, thr = first["unit"], list(first["sdr"])
    lines = [
        f"| method ({num_test} test images) | labels | runs | MRE ({unit}) | "
        + " | ".join(f"SDR {t} {unit}" for t in thr)
        + " |",
        "|---|---|---|---|" + "---|" * len(thr),
    ]
    gaps = {}
    for (name, labels), cell in runs.items():
        mre = np.array([m["mre"] for m in cell])
        sdr = [np.mean([m["sdr"][t] for m in cell]) for t in thr]
        lines.append(
            f"| {name} | {labels} | {len(cell)} | {mre.mean():.2f} ± {mre.std():.2f} | "
            + " | ".join(f"{v:.1f}%" for v in sdr)
            + " |"
        )
    for labels in sorted({k[1] for k in runs}):
        ddpm = np.mean([m["mre"] for m in runs[("DDPM pre-trained", labels)]])
        scratch = np.mean([m["mre"] for m in runs[("from scratch", labels)]])
        gaps[labels] = float(100.0 * (scratch - ddpm) / scratch)
        lines.append(
            f"\nWith {labels} label{'s' if labels > 1 else ''}, DDPM pre-training changes the MRE by "
            f"{-gaps[labels]:+.1f} % against training from scratch."
        )
    return "\n".join(lines), gaps


if __name__ == "__main__":
    main()
