#!/usr/bin/env python
"""The paper's few-shot experiment for one dataset: fine-tuning + evaluation over label
counts × seeds × initialisations, with the mean-shape floor and the paper's numbers.

    python training/fewshot_benchmark.py --dataset PREPARED_DIR --output-dir OUT \\
        --init ddpm=DDPM_OUT/checkpoint-8000/unet_ema --init scratch --labels 1,5,10,25,50 --seeds 0,1,2

Each cell (init, labels, seed) lives in ``OUT/cells/<init>-n<labels>-s<seed>/`` and is
skipped when its ``metrics.json`` exists, so an interrupted benchmark resumes where it
stopped. Writes ``OUT/results.md``, ``OUT/results.csv`` (mean ± std per cell, MRE and SDR)
and ``OUT/results.png`` (bar chart). Every table carries a **mean-shape** row: the mean
landmark positions of the labeled images, in normalised coordinates, predicted for every
test image with no model at all. A model that does not clearly beat it has learned nothing.

Other experiments are the same commands with other arguments: the pre-training sweep
(paper Fig. 2) is several ``--init`` entries, one per saved step; cross-dataset transfer
(paper Table 5) is ``--init`` pointing at a checkpoint pre-trained on another dataset.
Arguments after ``--`` go to ``training/finetune.py`` unchanged.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from importlib import resources

import numpy as np
import torch

from hf_landmark import LandmarkDetector
from hf_landmark.data import few_shot_indices, load_prepared, load_tensors
from hf_landmark.evaluation import compute_metrics, format_mean_std, mean_shape_prediction, predict_tensors
from hf_landmark.fileio import atomic_file, write_json_atomic, write_text_atomic
from hf_landmark.training_utils import parse_int_list

PAPER_METHOD = "DDPM (paper)"


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--init", action="append", required=True, help="NAME=DDPM_UNET_PATH_OR_REPO, or 'scratch' (repeatable)")
    p.add_argument("--labels", default="1,5,10,25,50")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--subset", default="first", choices=["first", "random"])
    p.add_argument("--eval-split", default="test", help="split to report (the CPU protocol uses validation)")
    p.add_argument("--mode", default="physical", choices=["physical", "paper"])
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--preset", default="base", help="U-Net preset of scratch models")
    p.add_argument("--decoder", default="centroid")
    p.add_argument("--reference", default=None, help="paper dataset name for the reference row (default: the dataset's)")
    args = p.parse_args(argv)
    args.finetune_args = extra
    args.labels = parse_int_list(args.labels)
    args.seeds = parse_int_list(args.seeds)
    inits = []
    for item in args.init:
        name, _, path = item.partition("=")
        inits.append((name, path or None) if name != "scratch" or path else ("scratch", None))
    args.inits = inits
    return args


def paper_reference(dataset: str) -> dict[int, dict[str, float]]:
    """The paper's DDPM results per label count: ``{labels: {metric: mean}}``."""
    text = resources.files("hf_landmark").joinpath("reference", "paper_tables_1_3.csv").read_text(encoding="utf-8")
    out: dict[int, dict[str, float]] = {}
    for row in csv.DictReader(text.splitlines()):
        if row["dataset"] == dataset and row["method"] == PAPER_METHOD:
            out.setdefault(int(row["labels"]), {})[row["metric"]] = float(row["mean"])
    return out


def run_cell(args, name, path, labels, seed, cell_dir, eval_data) -> dict:
    from hf_landmark.training.finetune import main as finetune

    ft = ["--dataset", args.dataset, "--output-dir", cell_dir, "--num-labels", str(labels), "--seed", str(seed),
          "--subset", args.subset, "--decoder", args.decoder, "--report-to", "none"]  # fmt: skip
    ft += ["--init", "scratch", "--preset", args.preset] if path is None else ["--pretrained", path]
    if args.resolution:
        ft += ["--resolution", str(args.resolution)]
    summary = finetune(ft + args.finetune_args)
    model = LandmarkDetector.from_pretrained(os.path.join(cell_dir, "model"), dtype=torch.float32).eval()
    data = eval_data(model.config.image_size)
    pred, _, _ = predict_tensors(model, data, args.decoder)
    metrics = compute_metrics(pred, data, args.mode)
    metrics.update(init=name, labels=labels, seed=seed, training=summary)
    metrics.pop("errors")
    write_json_atomic(metrics, os.path.join(cell_dir, "metrics.json"))
    return metrics


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    dataset = load_prepared(args.dataset)
    cache: dict[int, object] = {}

    def eval_data(size):
        if size not in cache:
            cache[size] = load_tensors(dataset[args.eval_split], size)
        return cache[size]

    train = load_tensors(dataset["train"], 64)  # only landmarks and sizes are used, for the floor
    results: dict[tuple[str, int], list[dict]] = {}
    for labels in args.labels:
        for seed in args.seeds:
            for name, path in args.inits:
                cell_dir = os.path.join(args.output_dir, "cells", f"{name}-n{labels}-s{seed}")
                done = os.path.join(cell_dir, "metrics.json")
                if os.path.isfile(done):
                    with open(done, encoding="utf-8") as fh:
                        metrics = json.load(fh)
                    print(f"[skip] {name} {labels} labels seed {seed}: {metrics['mre']:.3f} {metrics['unit']}")
                else:
                    metrics = run_cell(args, name, path, labels, seed, cell_dir, eval_data)
                    print(f"[done] {name} {labels} labels seed {seed}: {metrics['mre']:.3f} {metrics['unit']}")
                results.setdefault((name, labels), []).append(metrics)
            # The floor: the labeled set depends on the seed only for random subsets.
            labeled = train.subset(few_shot_indices(train.image_ids, labels, args.subset, seed))
            target = eval_data(64)
            floor = compute_metrics(mean_shape_prediction(labeled, target), target, args.mode)
            floor.pop("errors")
            results.setdefault(("mean shape", labels), []).append(floor)
    write_tables(args, results, dataset["train"][0]["dataset"])


def write_tables(args, results, dataset_name):
    names = [n for n, _ in args.inits] + ["mean shape"]
    any_metrics = next(iter(results.values()))[0]
    unit, thresholds = any_metrics["unit"], list(any_metrics["sdr"])
    reference = paper_reference(args.reference or dataset_name)
    header = ["method", "labels", "runs", f"MRE ({unit})"] + [f"SDR {t} {unit} (%)" for t in thresholds]
    rows = []
    for labels in args.labels:
        for name in names:
            cell = results.get((name, labels), [])
            mre = [m["mre"] for m in cell]
            rows.append([name, labels, len(cell), format_mean_std(mre)] + [format_mean_std([m["sdr"][t] for m in cell]) for t in thresholds])
        if labels in reference:
            ref = reference[labels]
            mre_key = next((k for k in ref if k.startswith("mre")), None)
            sdr = [next((v for k, v in ref.items() if k.startswith("sdr_") and k[4:].rstrip("mpx") == t), None) for t in thresholds]
            rows.append([PAPER_METHOD + " [test, 256 px, paper's evaluation]", labels, 3, f"{ref[mre_key]:.2f}" if mre_key else "–"]
                        + [f"{v:.2f}" if v is not None else "–" for v in sdr])
    with atomic_file(os.path.join(args.output_dir, "results.csv")) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header] + rows)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    note = (f"\nEvaluated on the `{args.eval_split}` split ({args.mode} metrics). Mean ± std over seeds {args.seeds}. "
            "The paper's row is its own test-set number, set beside ours for orientation only.\n")
    write_text_atomic("\n".join(md) + "\n" + note, os.path.join(args.output_dir, "results.md"))
    print("\n".join(md))
    bar_chart(args, results, names, unit)


def bar_chart(args, results, names, unit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    width = 0.8 / len(names)
    x = np.arange(len(args.labels))
    for i, name in enumerate(names):
        vals = [[m["mre"] for m in results.get((name, n), [])] for n in args.labels]
        ax.bar(x + i * width, [np.mean(v) if v else np.nan for v in vals], width, yerr=[np.std(v) if v else 0 for v in vals], label=name, capsize=2)
    ax.set_xticks(x + width * (len(names) - 1) / 2, [str(n) for n in args.labels])
    ax.set_xlabel("labeled images")
    ax.set_ylabel(f"MRE ({unit})")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(os.path.join(args.output_dir, "results.png")) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


if __name__ == "__main__":
    main()
