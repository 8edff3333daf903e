#!/usr/bin/env python
"""The paper's few-shot experiment for one dataset: fine-tuning + evaluation over label
counts × seeds × initialisations, with the mean-shape floor and the paper's numbers.

    python training/fewshot_benchmark.py --dataset PREPARED_DIR --output-dir OUT \\
        --init ddpm=DDPM_OUT/checkpoint-8000 --init scratch --labels 1,5,10,25,50 --seeds 0,1,2

Each cell (init, labels, seed) lives in ``OUT/cells/<init>-n<labels>-s<seed>/`` and is
skipped when its ``metrics.json`` exists, so an interrupted benchmark resumes where it
stopped. Writes ``OUT/results.md``, ``OUT/results.csv`` (mean ± std per cell, MRE and SDR)
and ``OUT/results.png`` (bar chart). Every table carries a **mean-shape** row: the mean
landmark positions of the labeled images, in normalised coordinates, predicted for every
test image with no model at all. A model that does not clearly beat it has learned nothing.

Detectors have a refinement stage by default (see ``hf-landmark finetune --help``): the
tables report each initialisation's final landmarks and, beside them, its first stage's
(``NAME (first stage)``). ``--refine-init NAME=CROP_CHECKPOINT`` gives the ``--init NAME``
cells a refiner pre-trained on crops (``hf-landmark pretrain --crop-from``); the others
train theirs from scratch.

The paper's baselines (``pip install 'hf-landmark[baselines]'``) are more ``--init`` entries:
``--init imagenet`` (or ``imagenet=FOLDER_OR_REPO``), ``--init mocov3=SSL_CHECKPOINT`` (likewise
``simclrv2=``, ``dino=``; ``hf-landmark pretrain-ssl``), and a DenseNet U-Net from scratch as
``--init densenet-scratch=scratch --backbone densenet-scratch=smp_unet``. Any ``NAME=INIT``
passes INIT to ``hf-landmark finetune --init``.

Other experiments are the same commands with other arguments: the pre-training sweep
(paper Fig. 2) is several ``--init`` entries, one per saved step; cross-dataset transfer
(paper Table 5) is ``--init`` pointing at a checkpoint pre-trained on another dataset.
Arguments after ``--`` are fine-tuning flags (``hf-landmark finetune --help``) applied to
every cell. From Python: ``hf_landmark.benchmark(BenchmarkArguments(...), {"max_steps": 200})``.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch

from hf_landmark import LandmarkDetector
from hf_landmark.backbones import SSL_METHODS
from hf_landmark.data import load_prepared, load_tensors
from hf_landmark.data.prepared import require_split
from hf_landmark.data.specs import get_spec, unit_config
from hf_landmark.errors import UserInputError, resolve_folder_or_repo
from hf_landmark.evaluation import compute_metrics, format_mean_std, mean_shape_prediction, predict_split
from hf_landmark.fileio import atomic_file, write_json_atomic, write_text_atomic
from hf_landmark.image_processing_landmark import processor_for_model
from hf_landmark.training.finetune import FinetuneArguments, finetune
from hf_landmark.training.finetune import parser as finetune_parser
from hf_landmark.training_utils import argument_parser, check_choice, parse_arguments, parse_int_list

PAPER_METHOD = "DDPM (paper)"


@dataclass
class BenchmarkArguments:
    """Arguments of :func:`benchmark`."""

    dataset: str = field(metadata={"help": "prepared dataset folder or Hub dataset id"})
    output_dir: str = field(metadata={"help": "cells/, results.md, results.csv and results.png go here"})
    init: list[str] = field(
        metadata={
            "help": "NAME=INIT (INIT: what hf-landmark finetune --init takes), 'scratch' or 'imagenet'; "
            "imagenet=, mocov3=, simclrv2=, dino= name a baseline (repeatable)",
            "action": "append",
        }
    )
    backbone: list[str] | None = field(
        default=None,
        metadata={
            "help": "NAME=unet2d|smp_unet: the network of the --init NAME scratch cells (repeatable; default unet2d)",
            "action": "append",
        },
    )
    encoder: str = field(default="densenet161", metadata={"help": "smp_unet encoder of scratch and imagenet cells"})
    refine_init: list[str] | None = field(
        default=None,
        metadata={
            "help": "NAME=CROP_DDPM_CHECKPOINT: the refiner of the --init NAME cells (repeatable; default: scratch)",
            "action": "append",
        },
    )
    labels: str = field(default="1,5,10,25,50", metadata={"help": "label counts, comma-separated"})
    seeds: str = field(default="0,1,2", metadata={"help": "seeds, comma-separated"})
    subset: Literal["first", "random", "coverage"] = field(
        default="first",
        metadata={
            "aliases": ["--selection"],
            "help": "labeled images: the first N sorted ids (the paper), a seeded sample, or coverage (finetune --selection)",
        },
    )
    eval_split: str = field(default="test", metadata={"help": "split to report (the CPU protocol uses validation)"})
    mode: Literal["physical", "paper"] = field(
        default="physical", metadata={"help": "metrics: physical (original frame) or the paper code's"}
    )
    resolution: int | None = field(
        default=None, metadata={"help": "model input size (default: the checkpoint's, else 256)"}
    )
    preset: str = field(default="base", metadata={"help": "U-Net preset of scratch models"})
    decoder: str = field(default="centroid", metadata={"help": "centroid, argmax or soft_argmax"})
    reference: str | None = field(
        default=None, metadata={"help": "paper dataset name for the reference row (default: the dataset's)"}
    )

    def __post_init__(self):
        self.dataset = resolve_folder_or_repo(
            self.dataset, "--dataset", "prepared dataset", "create one with hf-landmark prepare"
        )

    @property
    def label_counts(self) -> list[int]:
        return parse_int_list(self.labels, "--labels")

    @property
    def seed_list(self) -> list[int]:
        return parse_int_list(self.seeds, "--seeds")

    @property
    def inits(self) -> list[tuple[str, str]]:
        """``(name, finetune --init)`` pairs."""
        out = []
        for item in _flat(self.init):
            name, _, path = item.partition("=")
            if not name or (name not in ("scratch", "imagenet") and not path):
                raise UserInputError(f"--init: expected NAME=INIT, 'scratch' or 'imagenet', got {item!r}")
            # A baseline's name says what its path is; any other name passes INIT on as it is.
            out.append((name, f"{name}={path}" if path and name in ("imagenet", *SSL_METHODS) else path or name))
        return out

    @property
    def refine_inits(self) -> dict[str, str]:
        """``{init name: refiner checkpoint}`` (names not listed: a scratch refiner)."""
        return self._per_init(self.refine_init, "--refine-init", "CHECKPOINT")

    @property
    def backbones(self) -> dict[str, str]:
        """``{init name: backbone}`` of scratch cells (names not listed: unet2d)."""
        out = self._per_init(self.backbone, "--backbone", "BACKBONE")
        for value in out.values():
            check_choice("--backbone", value, ("unet2d", "smp_unet"))
        return out

    def _per_init(self, items, flag: str, what: str) -> dict[str, str]:
        out = {}
        for item in _flat(items):
            name, _, value = item.partition("=")
            if name not in dict(self.inits) or not value:
                raise UserInputError(f"{flag}: expected NAME={what} with NAME one of the --init names, got {item!r}")
            out[name] = value
        return out


def _flat(items) -> list[str]:
    # Repeated flags arrive as lists of lists; a Python caller may pass plain strings.
    return [i for x in (items or []) for i in (x if isinstance(x, list) else [x])]


def parser():
    return argument_parser(BenchmarkArguments, "hf-landmark benchmark", __doc__)


def finetune_overrides(argv: list[str]) -> dict:
    """Fine-tuning flags given after ``--`` → the fields they set (checked by finetune's parser)."""
    fixed = ["--dataset", "-", "--output-dir", "-", "--num-labels", "1", "--init", "scratch"]
    ft = finetune_parser()
    given, defaults = vars(ft.parse_args(fixed + list(argv))), vars(ft.parse_args(fixed))
    owned = {
        "dataset",
        "output_dir",
        "num_labels",
        "init",
        "seed",
        "subset",
        "decoder",
        "preset",
        "resolution",
        "refine_init",
    }
    clash = sorted(k for k in owned if given[k] != defaults[k])
    if clash:
        raise UserInputError(
            f"after --: {', '.join('--' + k.replace('_', '-') for k in clash)} are set by the benchmark itself"
        )
    return {k: v for k, v in given.items() if v != defaults[k]}


def paper_reference(dataset: str) -> dict[int, dict[str, float]]:
    """The paper's DDPM results per label count: ``{labels: {metric: mean}}``."""
    text = resources.files("hf_landmark").joinpath("reference", "paper_tables_1_3.csv").read_text(encoding="utf-8")
    out: dict[int, dict[str, float]] = {}
    for row in csv.DictReader(text.splitlines()):
        if row["dataset"] == dataset and row["method"] == PAPER_METHOD:
            out.setdefault(int(row["labels"]), {})[row["metric"]] = float(row["mean"])
    return out


def evaluate_model(model_dir: str, eval_data, mode: str, decoder: str) -> dict:
    """Metrics of a saved detector on the evaluation split, through its image processor; with
    a refinement stage, the first stage's metrics too (``first_stage``)."""
    model = LandmarkDetector.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = processor_for_model(model)
    data = eval_data(model.config.image_size, processor.resample, processor.refine_size)
    pred = predict_split(model, processor, data, decoder)
    metrics = compute_metrics(pred["coords"], data, model.config, mode)
    if processor.refine_size:
        first = compute_metrics(pred["first_stage_coords"], data, model.config, mode)
        first.pop("errors")
        metrics["first_stage"] = first
    return metrics


def run_cell(args: BenchmarkArguments, overrides: dict, cell: tuple, cell_dir: str, eval_data) -> dict:
    """Fine-tune and evaluate one cell, ``(init name, init, labels, seed)``."""
    name, init, labels, seed = cell
    ft = FinetuneArguments(
        dataset=args.dataset,
        output_dir=cell_dir,
        num_labels=labels,
        seed=seed,
        init=init,
        subset=args.subset,
        decoder=args.decoder,
        preset=args.preset,
        resolution=args.resolution,
        backbone=args.backbones.get(name, "unet2d"),
        encoder=args.encoder,
        refine_init=args.refine_inits.get(name, "scratch"),
        **{"report_to": "none", **overrides},
    )
    summary = finetune(ft)
    metrics = evaluate_model(os.path.join(cell_dir, "model"), eval_data, args.mode, args.decoder)
    metrics.update(init=name, labels=labels, seed=seed, training=summary)
    metrics.pop("errors")
    write_json_atomic(metrics, os.path.join(cell_dir, "metrics.json"))
    return metrics


def benchmark(args: BenchmarkArguments, finetune_overrides: dict | None = None) -> dict:
    """Run (or resume) every cell; returns ``{(init name, labels): [metrics per seed]}``."""
    overrides = dict(finetune_overrides or {})
    os.makedirs(args.output_dir, exist_ok=True)
    dataset = load_prepared(args.dataset)
    eval_split = require_split(dataset, args.eval_split, args.dataset)
    inits = args.inits
    cache: dict[tuple[int, str], object] = {}

    def eval_data(size, resample="area", fine_size=0):
        if (size, resample, fine_size) not in cache:
            cache[size, resample, fine_size] = load_tensors(eval_split, size, resample, fine_size)
        return cache[size, resample, fine_size]

    # Only landmarks and sizes are used for the floor; a small size decodes fast.
    train = load_tensors(require_split(dataset, "train", args.dataset), 8)
    floor_config = SimpleNamespace(**unit_config(train.dataset))
    results: dict[tuple[str, int], list[dict]] = {}
    for labels in args.label_counts:
        for seed in args.seed_list:
            for name, init in inits:
                cell_dir = os.path.join(args.output_dir, "cells", f"{name}-n{labels}-s{seed}")
                done = os.path.join(cell_dir, "metrics.json")
                if os.path.isfile(done):
                    with open(done, encoding="utf-8") as fh:
                        metrics = json.load(fh)
                    print(f"[skip] {name} {labels} labels seed {seed}: {metrics['mre']:.3f} {metrics['unit']}")
                else:
                    metrics = run_cell(args, overrides, (name, init, labels, seed), cell_dir, eval_data)
                    print(f"[done] {name} {labels} labels seed {seed}: {metrics['mre']:.3f} {metrics['unit']}")
                results.setdefault((name, labels), []).append(metrics)
            # The floor, on the labeled images of the last cell (they depend on the seed only for random subsets).
            ids = set(metrics["training"]["labeled_image_ids"])
            labeled = train.subset([i for i, image_id in enumerate(train.image_ids) if image_id in ids])
            target = eval_data(8)
            floor = compute_metrics(mean_shape_prediction(labeled, target), target, floor_config, args.mode)
            floor.pop("errors")
            results.setdefault(("mean shape", labels), []).append(floor)
    write_tables(args, results, train.dataset)
    return results


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    return benchmark(parse_arguments(parser(), BenchmarkArguments, argv), finetune_overrides(extra))


def write_tables(args, results, dataset_name):
    names = [n for n, _ in args.inits] + ["mean shape"]
    any_metrics = next(iter(results.values()))[0]
    unit, thresholds = any_metrics["unit"], list(any_metrics["sdr"])
    reference = paper_reference(args.reference or get_spec(dataset_name).paper_key or dataset_name)
    header = ["method", "labels", "runs", f"MRE ({unit})"] + [f"SDR {t} {unit} (%)" for t in thresholds]
    rows = []
    for labels in args.label_counts:
        for name in names:
            cell = results.get((name, labels), [])
            if any("first_stage" in m for m in cell):
                # A cell whose refiner did not beat its first stage on validation kept the first stage alone.
                first = [m.get("first_stage", m) for m in cell]
                rows.append(
                    [f"{name} (first stage)", labels, len(first), format_mean_std([m["mre"] for m in first])]
                    + [format_mean_std([m["sdr"][t] for m in first]) for t in thresholds]
                )
            mre = [m["mre"] for m in cell]
            rows.append(
                [name, labels, len(cell), format_mean_std(mre)]
                + [format_mean_std([m["sdr"][t] for m in cell]) for t in thresholds]
            )
        if labels in reference:
            ref = reference[labels]
            mre_key = next((k for k in ref if k.startswith("mre")), None)
            sdr = [
                next((v for k, v in ref.items() if k.startswith("sdr_") and k[4:].rstrip("mpx") == t), None)
                for t in thresholds
            ]
            rows.append(
                [
                    PAPER_METHOD + " [test, 256 px, paper's evaluation]",
                    labels,
                    3,
                    f"{ref[mre_key]:.2f}" if mre_key else "–",
                ]
                + [f"{v:.2f}" if v is not None else "–" for v in sdr]
            )
    with (
        atomic_file(os.path.join(args.output_dir, "results.csv")) as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as fh,
    ):
        csv.writer(fh).writerows([header] + rows)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]
    note = (
        f"\nEvaluated on the `{args.eval_split}` split ({args.mode} metrics). Mean ± std over seeds {args.seed_list}. "
        "The paper's row is its own test-set number, set beside ours for orientation only.\n"
    )
    write_text_atomic("\n".join(md) + "\n" + note, os.path.join(args.output_dir, "results.md"))
    print("\n".join(md))
    bar_chart(args, results, names, unit)


def bar_chart(args, results, names, unit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    width = 0.8 / len(names)
    x = np.arange(len(args.label_counts))
    for i, name in enumerate(names):
        vals = [[m["mre"] for m in results.get((name, n), [])] for n in args.label_counts]
        ax.bar(
            x + i * width,
            [np.mean(v) if v else np.nan for v in vals],
            width,
            yerr=[np.std(v) if v else 0 for v in vals],
            label=name,
            capsize=2,
        )
    ax.set_xticks(x + width * (len(names) - 1) / 2, [str(n) for n in args.label_counts])
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
