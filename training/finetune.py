#!/usr/bin/env python
"""Few-shot fine-tuning of a (DDPM pre-trained) U-Net into a heatmap landmark detector.

    accelerate launch training/finetune.py --dataset PREPARED_DIR --output-dir OUT \\
        --num-labels 5 --init DDPM_OUT/checkpoint-8000

(or ``hf-landmark finetune ...``, or ``hf_landmark.finetune(FinetuneArguments(...))`` from
Python). ``--init`` takes a pre-trained DDPM (a ``checkpoint-<step>`` folder, which is a
diffusers ``DDPMPipeline``, a Hub repo, or an older ``unet_ema`` folder) or ``scratch``
(``--backbone``: the diffusers U-Net of ``--preset``, or ``smp_unet``, the baselines'
DenseNet161 U-Net). The paper's baselines, an ``smp_unet`` whose encoder starts from other
weights (``pip install 'hf-landmark[baselines]'``): ``imagenet`` (the encoder's ImageNet
weights in safetensors from the Hub; ``imagenet=FOLDER_OR_REPO`` for another copy) or an
``hf-landmark pretrain-ssl`` checkpoint (``mocov3=PATH``, ``simclrv2=PATH``, ``dino=PATH``, or
the bare PATH: its record names the method). ``ddpm=PATH`` is the same as ``PATH``.
The first ``--num-labels`` sorted training images are labeled (``--subset random`` for a
seeded sample); the whole validation split drives the learning-rate plateau schedule, early
stopping and the choice of the best checkpoint (lowest validation mean radial error, in the
original image frame, measured through the image processor exactly as users run the model).
The best model and its image processor are saved to ``OUT/model``.

Recipes: ``--recipe default`` (built on the paper's for 1-10 labels; its values differ below 5
labels) or ``paper``. Every value is a flag's default, held in one table,
:mod:`hf_landmark.recipes` (``hf-landmark finetune --show-recipe N [--recipe paper]`` prints
the values N labels get; ``docs/design.md`` shows the table). Both use ``ReduceLROnPlateau``
on the validation loss.

Then, by default, the refinement stage: a U-Net shared by all landmarks re-locates each one
on a crop (``--refine-crop`` px, default 64) of the image resized to ``--refine-size``
(default: the prepared images' side, down to at most 8x the model's; skipped below 4x), centred
on the first stage's estimate. It trains on the same labeled images, on crops centred at the
truth plus offsets drawn from the best first stage's validation errors, from scratch or from a
DDPM pre-trained on crops (``--refine-init``, ``hf-landmark pretrain --crop-from``), and
replaces the first-stage model only if the two stages are better on validation.
``--no-refine`` trains the first stage alone.

Then, with the default recipe, self-training (``--self-train ROUNDS``; 0: off): the best model
predicts the pool (the training split's unlabeled images and the ``unlabeled`` split; never
validation or test), keeps the ``--self-train-keep`` share of predicted landmarks with the
smallest expected error (heatmap spread times the landmark's median error-to-spread ratio on
validation) as pseudo-labels (and each landmark's own best ``--self-train-keep-each``
share), and trains both stages again from ``--init`` on the labeled
images (half of each batch) plus those (the rejected landmarks left out of the losses). A
round's model replaces the best only if it is better on validation, and the first round that
is not ends self-training (the next would pseudo-label with the same model); the training record
states each round's counts and, where the pool images have labels, the pseudo-labels' error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from hf_landmark import LandmarkConfig, LandmarkDetector, LandmarkImageProcessor
from hf_landmark.backbones import IMAGENET_PIXEL_RANGE, SSL_METHODS, read_pretraining_info, resolve_ddpm_folder
from hf_landmark.calibration import calibrate_saved_model
from hf_landmark.configuration_landmark import UNET_PRESETS
from hf_landmark.data import few_shot_indices, load_prepared, load_tensors, random_affine, random_gamma
from hf_landmark.data.prepared import UNLABELED, common_spacing, require_split
from hf_landmark.data.specs import get_spec, unit_config
from hf_landmark.errors import UserInputError, hub_load_error, require_folder_or_repo, resolve_folder_or_repo
from hf_landmark.evaluation import compute_metrics, mean_shape_prediction, predict_tensors
from hf_landmark.fileio import atomic_directory, json_text, write_json_atomic
from hf_landmark.heatmaps import DECODERS
from hf_landmark.losses import LOSSES
from hf_landmark.preprocessing import to_pixel_values
from hf_landmark.recipes import Recipe, describe_recipe, resolve_recipe
from hf_landmark.refinement import first_stage_offsets, refiner_batch
from hf_landmark.self_training import pseudo_label_quality, pseudo_labels, self_training_pool
from hf_landmark.training_utils import (
    MIXED_PRECISION_CHOICES,
    MIXED_PRECISION_HELP,
    argument_parser,
    check_choice,
    choose_mixed_precision,
    describe_cpu_threads,
    long_run_warning,
    make_accelerator,
    parse_arguments,
    parse_float_pair,
    tracker_config,
    training_step_probe,
)

logger = get_logger(__name__)

#: Written beside a fine-tuned detector: its data, labels and initialisation (for its card).
TRAINING_RECORD = "hf_landmark_training.json"


@dataclass
class FinetuneArguments:
    """Arguments of :func:`finetune`; ``None`` means the recipe's value."""

    dataset: str = field(metadata={"help": "prepared dataset folder (hf-landmark prepare) or Hub dataset id"})
    output_dir: str = field(metadata={"help": "where OUT/model, logs and training_summary.json go"})
    num_labels: int = field(metadata={"help": "labeled training images (the first N sorted ids)"})
    init: str = field(
        metadata={
            "aliases": ["--pretrained"],
            "help": "'scratch'; a pre-trained DDPM: a checkpoint-<step> folder (DDPMPipeline; the pre-training's --output-dir means its "
            "newest checkpoint), a Hub repo, or an older unet_ema folder; "
            "or a baseline encoder: 'imagenet[=FOLDER_OR_REPO]', 'mocov3=PATH', 'simclrv2=PATH', 'dino=PATH' (hf-landmark pretrain-ssl)",
        }
    )
    backbone: Literal["unet2d", "smp_unet"] = field(
        default="unet2d",
        metadata={
            "help": "network for --init scratch: unet2d (the DDPM's diffusers U-Net, --preset) or smp_unet (the baselines' encoder U-Net, --encoder)",
        },
    )
    encoder: str = field(
        default="densenet161",
        metadata={"help": "smp_unet encoder (scratch and imagenet; an SSL checkpoint names its own)"},
    )
    subset: Literal["first", "random", "coverage"] = field(
        default="first",
        metadata={
            "aliases": ["--selection"],
            "help": "which training images are labeled: first N sorted ids (the paper), a seeded random sample, or coverage: the N "
            "that best represent the training split by the --init network's features (hf-landmark select; needs a pre-trained --init)",
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the head initialisation, augmentation and batch sampling"})
    preset: str = field(
        default="base", metadata={"help": f"U-Net preset for --init scratch: {', '.join(sorted(UNET_PRESETS))}"}
    )
    recipe: Literal["default", "paper"] = field(default="default", metadata={"help": "see the description above"})
    loss: str | None = field(
        default=None,
        metadata={
            "help": f"heatmap loss: {', '.join(LOSSES)} (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    resolution: int | None = field(
        default=None, metadata={"help": "model input size (default: the checkpoint's, else 256)"}
    )
    sigma: float | None = field(
        default=None, metadata={"help": "target sigma in model pixels (default: the recipe's sigma at 256 px, scaled)"}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "AdamW learning rate (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    train_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "images per step (default: the recipe's; hf-landmark finetune --show-recipe N prints it; never more than the labels)"
        },
    )
    gradient_accumulation_steps: int | None = field(
        default=None,
        metadata={
            "help": "batches per optimiser step (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimiser steps (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"},
    )
    max_epochs: int | None = field(
        default=None,
        metadata={
            "help": "epochs over the labeled images (paper recipe) (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "validate every N optimiser steps (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "evaluations without improvement (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    plateau_patience: int | None = field(
        default=None,
        metadata={
            "help": "evaluations without improvement before the learning rate drops (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    plateau_factor: float = field(default=0.5, metadata={"help": "learning-rate factor at a plateau"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "validate and save an exponential moving average of each stage's weights with this decay (warmed up as "
            "(1 + step) / (10 + step)); 0: the raw weights (default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm clipping (0: none)"})
    decoder: str = field(default="centroid", metadata={"help": f"decoder for validation: {', '.join(DECODERS)}"})
    augment: str | None = field(
        default=None,
        metadata={
            "help": "training augmentation 'DEG,SCALE,SHIFT[,GAMMA]': rotation in ±DEG degrees, scale in 1 ± SCALE, shift in ± SHIFT "
            "x the side, and an intensity power in [1/(1+GAMMA), 1+GAMMA] (default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    no_augment: bool = field(default=False, metadata={"help": "no training augmentation (--augment 0,0,0)"})
    shape_check: float | None = field(
        default=None,
        metadata={
            "help": "the shape check's tolerance as a multiple of the 90th percentile of how far the validation images' true landmarks "
            "sit from the labeled images' mean shape mapped onto them by a similarity: a first-stage landmark farther than that from "
            "where the others put it is read again near there (0: off; default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    offset_correction: float | None = field(
        default=None,
        metadata={
            "help": "subtract from every prediction each landmark's mean error on the validation images, shrunk toward none as if "
            "this many more images had measured none (n validation images keep n/(n+K) of it): the detector's systematic "
            "displacement, e.g. toward where its first stage puts an ambiguous landmark (0: off; default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    mixed_precision: str = field(default="auto", metadata={"help": MIXED_PRECISION_HELP})
    report_to: str = field(default="tensorboard", metadata={"help": "any Accelerate tracker, 'all' or 'none'"})
    pixel_range: str | None = field(
        default=None,
        metadata={
            "help": "'lo,hi' model intensity range for --init scratch (default -1,1) and imagenet (default: ImageNet's normalisation)"
        },
    )
    no_refine: bool = field(default=False, metadata={"help": "train the first stage only (no refinement stage)"})
    refine_init: str = field(
        default="scratch",
        metadata={
            "help": "the refinement stage's U-Net: 'scratch', or a DDPM pre-trained on crops (hf-landmark pretrain --crop-from): a "
            "checkpoint-<step> folder, or the pre-training's --output-dir for its newest checkpoint",
        },
    )
    refine_size: int | None = field(
        default=None,
        metadata={
            "help": "side of the fine image the refiner crops (default: the prepared images' side divided down to at most 8x "
            "the model's; none when that is below 4x; prepare ISBI at 512 for ~0.4 mm pixels with a 64-px model)",
        },
    )
    refine_crop: int | None = field(
        default=None, metadata={"help": "crop side in fine pixels (default: the crop DDPM's resolution, else 64)"}
    )
    refine_preset: str | None = field(
        default=None, metadata={"help": "U-Net preset of a scratch refiner (default: --preset)"}
    )
    refine_sigma: float | None = field(
        default=None, metadata={"help": "refiner target sigma in fine pixels (default 2)"}
    )
    refine_prior: float | None = field(
        default=None,
        metadata={
            "help": "each refiner map is multiplied by a Gaussian around the first-stage estimate whose sigma is this factor x the "
            "first stage's root-mean-square validation error of that landmark (the errors the refiner trains to undo), so that "
            "the refiner moves a landmark far only where it is much surer there (0: off; default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    refine_max_steps: int = field(
        default=1200,
        metadata={
            "help": "refiner optimiser steps: the learning rate's cosine decay spans them, and early stopping (--early-stopping-patience "
            "evaluations without a better refiner) ended it at 350-650 on ISBI with a patience of 4",
        },
    )
    refine_batch_size: int = field(default=16, metadata={"help": "crops per refiner step"})
    refine_learning_rate: float = field(
        default=3e-4, metadata={"help": "refiner AdamW peak learning rate (cosine decay to 0)"}
    )
    self_train: int | None = field(
        default=None,
        metadata={
            "help": "rounds of self-training on the pool (the unlabeled rest of the training split and the unlabeled split; never "
            "validation or test): the best model predicts it, the landmarks whose expected error is smallest become pseudo-labels, "
            "and both stages are fine-tuned again on the labels plus them; a round's model is kept only if better on validation, and the first round that is not ends it (0: off; default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    self_train_keep: float = field(
        default=0.4,
        metadata={
            "help": "share of the pool's predicted landmarks kept as pseudo-labels each round: those with the smallest expected error "
            "(heatmap spread times the landmark's median error-to-spread ratio on validation, over the image diagonal)",
        },
    )
    self_train_keep_each: float | None = field(
        default=None,
        metadata={
            "help": "besides the shared threshold, each landmark keeps at least this share of its own pool predictions (those "
            "with the smallest expected error), so that the landmarks the model is least sure of get pseudo-labels too (0: off; "
            "default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    self_train_labeled_share: float = field(
        default=0.5, metadata={"help": "share of each batch drawn from the labeled images during self-training"}
    )
    self_train_pool: int = field(
        default=500, metadata={"help": "at most this many pool images are predicted each round (evenly spaced)"}
    )

    def __post_init__(self):
        check_choice("--preset", self.preset, UNET_PRESETS)
        check_choice("--decoder", self.decoder, DECODERS)
        check_choice("--mixed-precision", self.mixed_precision, MIXED_PRECISION_CHOICES)
        # Every argument left unset takes the recipe's value for this many labels (hf_landmark.recipes).
        recipe = self.resolved_recipe
        for key in (
            "loss",
            "train_batch_size",
            "gradient_accumulation_steps",
            "early_stopping_patience",
            "plateau_patience",
            "shape_check",
            "augment",
            "self_train",
            "self_train_keep_each",
            "refine_prior",
            "offset_correction",
            "ema_decay",
            "eval_steps",
        ):
            if getattr(self, key) is None:
                setattr(self, key, getattr(recipe, key))
        check_choice("--loss", self.loss, LOSSES)
        self.augmentation = parse_augment("0,0,0" if self.no_augment else self.augment)
        self.dataset = resolve_folder_or_repo(
            self.dataset, "--dataset", "prepared dataset", "create one with hf-landmark prepare"
        )
        self.init_kind, self.init_source = parse_init(self.init)
        if self.subset == "coverage" and self.init_kind == "scratch":
            raise UserInputError(
                "--selection: coverage chooses the images by a pre-trained network's features; give --init a DDPM or encoder"
            )
        if self.init_kind == "ddpm":  # a pretrain output folder means its newest checkpoint
            self.init_source = resolve_ddpm_folder(self.init_source, "--init")
        if self.refine_init != "scratch":
            self.refine_init = resolve_ddpm_folder(
                resolve_folder_or_repo(self.refine_init, "--refine-init", "pre-trained DDPM", REFINE_INIT_HINT),
                "--refine-init",
            )
        if self.learning_rate is None:
            self.learning_rate = recipe.scratch_learning_rate if self.init == "scratch" else recipe.learning_rate
        if self.max_steps is None and self.max_epochs is None:
            self.max_steps, self.max_epochs = recipe.max_steps, recipe.max_epochs
        if self.num_labels < 1:
            raise UserInputError(f"--num-labels: must be at least 1, got {self.num_labels}")
        if self.resolution is not None and self.resolution % 8:
            raise UserInputError(f"--resolution: must be a multiple of 8, got {self.resolution}")
        if self.refine_preset is not None:
            check_choice("--refine-preset", self.refine_preset, UNET_PRESETS)
        if not 0 <= self.ema_decay < 1:
            raise UserInputError(f"--ema-decay: a decay in [0, 1), got {self.ema_decay}")
        if self.self_train < 0:
            raise UserInputError(f"--self-train: rounds must be 0 (off) or more, got {self.self_train}")
        if not (math.isfinite(self.shape_check) and self.shape_check >= 0):
            raise UserInputError(f"--shape-check: a factor of 0 (off) or more, got {self.shape_check}")
        if not (math.isfinite(self.offset_correction) and self.offset_correction >= 0):
            raise UserInputError(
                f"--offset-correction: a number of images of 0 (off) or more, got {self.offset_correction}"
            )
        if not (math.isfinite(self.refine_prior) and self.refine_prior >= 0):
            raise UserInputError(f"--refine-prior: a factor of 0 (off) or more, got {self.refine_prior}")
        if not 0 < self.self_train_keep <= 1:
            raise UserInputError(f"--self-train-keep: a share in (0, 1], got {self.self_train_keep}")
        if not 0 <= self.self_train_keep_each <= 1:
            raise UserInputError(f"--self-train-keep-each: a share in [0, 1], got {self.self_train_keep_each}")
        if not 0 < self.self_train_labeled_share < 1:
            raise UserInputError(f"--self-train-labeled-share: a share in (0, 1), got {self.self_train_labeled_share}")
        if self.self_train_pool < 1:
            raise UserInputError(f"--self-train-pool: at least 1 image, got {self.self_train_pool}")
        if self.self_train and self.loss == "paper":
            raise UserInputError(
                "--self-train: the 'paper' loss (a softmax across landmark channels) cannot leave out the "
                "rejected pseudo-labels; use --loss contour (the default recipe's) or bce"
            )

    @property
    def resolved_recipe(self) -> Recipe:
        """The recipe's defaults for this many labels (:func:`hf_landmark.recipes.resolve_recipe`)."""
        return resolve_recipe(self.recipe, self.num_labels)

    @property
    def sigma_256(self) -> float:
        return self.resolved_recipe.sigma_256


def parse_augment(text: str) -> tuple[float, float, float, float]:
    """``--augment 'DEG,SCALE,SHIFT[,GAMMA]'`` → ``(deg, scale, shift, gamma)``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (3, 4) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise UserInputError(
            f"--augment: 'DEG,SCALE,SHIFT[,GAMMA]', three or four numbers >= 0 (e.g. 2,0.02,0.02), got {text!r}"
        )
    deg, scale, shift, gamma = values + [0.0] * (4 - len(values))
    if deg > 45 or scale >= 0.5 or shift >= 0.5:
        raise UserInputError(f"--augment: at most 45 degrees and a scale and shift below 0.5, got {text!r}")
    return deg, scale, shift, gamma


def augment(args: FinetuneArguments, images01: torch.Tensor, landmarks: torch.Tensor, generator=None):
    """The training augmentation of both stages (``args.augmentation``) on images in [0, 1].

    Below 5 labels the default recipe's is six times the paper's: the detector otherwise sees
    its one to four images in nearly one pose, and the pool it pseudo-labels varies more."""
    deg, scale, shift, gamma = args.augmentation
    if deg or scale or shift:
        images01, landmarks = random_affine(images01, landmarks, deg, scale, shift, generator=generator)
    return random_gamma(images01, gamma, generator=generator), landmarks


#: ``--help``'s sections: each argument of :class:`FinetuneArguments` by concern.
ARGUMENT_GROUPS = {
    "data and labels": ("dataset", "output_dir", "num_labels", "subset", "seed"),
    "initialisation and network": ("init", "backbone", "encoder", "preset", "resolution", "pixel_range"),
    "recipe and loss": ("recipe", "loss", "sigma", "decoder"),
    "first stage": (
        "learning_rate", "train_batch_size", "gradient_accumulation_steps", "max_steps", "max_epochs", "eval_steps",
        "early_stopping_patience", "plateau_patience", "plateau_factor", "weight_decay", "ema_decay", "max_grad_norm",
        "augment", "no_augment", "mixed_precision", "report_to",
    ),
    "refinement stage": (
        "no_refine", "refine_init", "refine_size", "refine_crop", "refine_preset", "refine_sigma", "refine_prior",
        "refine_max_steps", "refine_batch_size", "refine_learning_rate",
    ),
    "self-training": ("self_train", "self_train_keep", "self_train_keep_each", "self_train_labeled_share", "self_train_pool"),
    "calibration and checks": ("shape_check", "offset_correction"),
}  # fmt: skip


def parser():
    return argument_parser(FinetuneArguments, "hf-landmark finetune", __doc__, ARGUMENT_GROUPS)


INIT_HINT = "--init takes 'scratch', a checkpoint-<step> folder of hf-landmark pretrain (or pretrain-ssl), a Hub repo, or imagenet"
REFINE_INIT_HINT = "--refine-init takes 'scratch' or a checkpoint-<step> folder of hf-landmark pretrain --crop-from"


def parse_init(init: str) -> tuple[str, str | None]:
    """``--init`` → ``(kind, source)``: ``("scratch", None)``, ``("imagenet", None or
    FOLDER_OR_REPO)``, ``(method, PATH)`` for an SSL checkpoint, ``("ddpm", PATH)``. A bare
    PATH is an SSL checkpoint when its record names a method, else a DDPM (checked later)."""
    if init == "scratch":
        return "scratch", None
    if init == "imagenet":
        return "imagenet", None
    kind, sep, source = init.partition("=")
    if sep and kind in ("imagenet", "ddpm", *SSL_METHODS):
        if not source:
            raise UserInputError(f"--init: {kind}= needs a folder or Hub repo, got {init!r}")
        what = {"imagenet": "ImageNet weights", "ddpm": "pre-trained DDPM"}.get(kind, f"{kind} checkpoint")
        return kind, resolve_folder_or_repo(source, "--init", what, INIT_HINT)
    init = resolve_folder_or_repo(init, "--init", "pre-trained DDPM", INIT_HINT)
    method = read_pretraining_info(init).get("method") if os.path.isdir(init) else None
    return (method, init) if method in SSL_METHODS else ("ddpm", init)


def build_model(
    args: FinetuneArguments, num_landmarks: int, landmark_names, dataset_name: str, spacing
) -> LandmarkDetector:
    """A detector initialised from ``args.init``, its config carrying the dataset's facts. A
    Hub id that cannot be downloaded (offline, unknown) is one error naming ``--init``."""
    try:
        return _build_model(args, num_landmarks, landmark_names, dataset_name, spacing)
    except OSError as err:
        source = args.init_source or "imagenet"
        if args.init_kind == "scratch" or os.path.isdir(source):
            raise
        raise hub_load_error(source, "--init", "pre-trained weights", err) from err


def _build_model(
    args: FinetuneArguments, num_landmarks: int, landmark_names, dataset_name: str, spacing
) -> LandmarkDetector:
    common = {
        "landmark_names": landmark_names,
        "loss": args.loss,
        "dataset_name": dataset_name,
        **unit_config(dataset_name, spacing),
    }
    kind, source = args.init_kind, args.init_source

    def sigma(size: int) -> float:
        return args.sigma if args.sigma is not None else args.sigma_256 * size / 256

    pixel_range = parse_float_pair(args.pixel_range, "--pixel-range") if args.pixel_range else None
    if kind == "ddpm":
        size = args.resolution or read_pretraining_info_any(source).get("resolution") or 256
        return LandmarkDetector.from_ddpm(source, num_landmarks, image_size=size, sigma=sigma(size), **common)
    if kind == "imagenet":
        size = args.resolution or 256
        return LandmarkDetector.from_encoder(
            source or "imagenet",
            num_landmarks,
            image_size=size,
            encoder_name=args.encoder,
            sigma=sigma(size),
            pixel_range=pixel_range or IMAGENET_PIXEL_RANGE,
            **common,
        )
    if kind in SSL_METHODS:
        info = read_ssl_info(source, kind)
        size = args.resolution or info.get("resolution") or 256
        return LandmarkDetector.from_encoder(source, num_landmarks, image_size=size, sigma=sigma(size), **common)
    size = args.resolution or 256
    backbone_config = args.preset if args.backbone == "unet2d" else {"encoder_name": args.encoder}
    try:
        config = LandmarkConfig(
            backbone=args.backbone,
            backbone_config=backbone_config,
            num_landmarks=num_landmarks,
            image_size=size,
            sigma=sigma(size),
            pixel_range=pixel_range or (-1.0, 1.0),
            **common,
        )
    except ValueError as err:
        raise UserInputError(f"--resolution: {err}") from err
    return LandmarkDetector(config)


def read_pretraining_info_any(path: str) -> dict:
    """The pre-training record of a DDPM checkpoint in either layout (root or ``unet/``)."""
    require_folder_or_repo(path, "pre-trained DDPM", INIT_HINT, arg="--init")
    return read_pretraining_info(path) or read_pretraining_info(path, "unet")


def read_ssl_info(path: str, method: str) -> dict:
    """The record of an ``hf-landmark pretrain-ssl`` checkpoint, checked to be ``method``'s."""
    require_folder_or_repo(
        path,
        f"{method} checkpoint",
        f"--init {method}=PATH takes a checkpoint-<step> folder of hf-landmark pretrain-ssl",
        arg="--init",
    )
    info = read_pretraining_info(path)
    if info.get("method") != method:
        found = (
            f"a {info['method']} checkpoint"
            if info.get("method")
            else "not an hf-landmark pretrain-ssl checkpoint (no method in its record)"
        )
        raise UserInputError(f"{path}: --init {method}= expects a {method} checkpoint; this is {found}")
    return info


def save_model_atomic(model: LandmarkDetector, processor: LandmarkImageProcessor, path: str, record: dict) -> None:
    """The detector, its image processor and its training record (``TRAINING_RECORD``, what
    the model card states), written whole or not at all."""
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        with open(os.path.join(tmp, TRAINING_RECORD), "w", encoding="utf-8") as fh:
            fh.write(json_text(record))


def training_record(args: FinetuneArguments, dataset_name: str, train_ids, val_count: int) -> dict:
    """What a card must say about how a detector was trained: data, labels, initialisation."""
    kind, source = args.init_kind, args.init_source
    if kind == "scratch":
        init = {
            "kind": "scratch",
            "backbone": args.backbone,
            "preset": args.preset if args.backbone == "unet2d" else args.encoder,
        }
    elif kind == "imagenet":
        from hf_landmark.backbones import IMAGENET_WEIGHTS

        source = source or IMAGENET_WEIGHTS.get(args.encoder)
        init = {"kind": "imagenet", "encoder": args.encoder, "repo_id": None if os.path.exists(source) else source}
    else:
        info = read_ssl_info(source, kind) if kind in SSL_METHODS else read_pretraining_info_any(source)
        init = {
            "kind": "ssl" if kind in SSL_METHODS else "ddpm",
            "repo_id": None if os.path.exists(source) else source,
            "pretraining": {
                k: info.get(k)
                for k in (
                    "dataset_name",
                    "num_images",
                    "preset",
                    "num_parameters",
                    "resolution",
                    "step",
                    "effective_batch_size",
                    "method",
                    "encoder_name",
                )
            },
        }
    dataset_local = os.path.exists(args.dataset)
    return {
        "dataset": dataset_name,
        "dataset_repo_id": None if dataset_local else args.dataset,
        "num_labels": len(train_ids),
        "labeled_image_ids": list(train_ids),
        "validation_images": val_count,
        "subset": args.subset,
        "seed": args.seed,
        "recipe": args.recipe,
        "recipe_defaults": args.resolved_recipe.as_dict(),
        "loss": args.loss,
        "learning_rate": args.learning_rate,
        "ema_decay": args.ema_decay,
        "augment": ",".join(f"{v:g}" for v in args.augmentation),
        "init": init,
    }


def finetune(args: FinetuneArguments) -> dict:
    """Fine-tune one detector; returns the training summary (also ``OUT/training_summary.json``)."""
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    dataset = load_prepared(args.dataset)
    train_split = require_split(dataset, "train", args.dataset)
    val_split = require_split(dataset, "validation", args.dataset + " (fine-tuning selects its model on it)")
    first = train_split[0]
    # Only a spacing that every labeled image shares goes in the config (hand: the wrist
    # convention gives each image its own; custom data: the annotation file's, where it is one).
    spacing = (
        common_spacing(train_split, val_split) if get_spec(first["dataset"]).unit_convention == "spacing" else None
    )
    model = build_model(args, len(first["landmark_names"]), first["landmark_names"], first["dataset"], spacing)
    processor = LandmarkImageProcessor.from_model_config(model.config)
    size = model.config.image_size
    fine_size = refine_size_for(args, first["image"].size[0], size)
    train_all = load_tensors(train_split, size, processor.resample)
    if args.num_labels > len(train_all):
        raise UserInputError(
            f"--num-labels: {args.num_labels} labels asked, but {args.dataset} has {len(train_all)} training images"
        )
    # auto: a timed training step of this model at this size decides between bf16 and fp32 on a CPU.
    n = min(2, args.train_batch_size, len(train_all))  # two images: the probe costs six small training steps
    probe_inputs = {
        "pixel_values": to_pixel_values(train_all.images[:n], processor.pixel_range),
        "labels": train_all.landmarks[:n],
    }
    precision, probe = choose_mixed_precision(args.mixed_precision, training_step_probe(model, probe_inputs))
    accelerator, autocast, mixed_precision = make_accelerator(
        precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
    )
    if probe:
        logger.info(
            "mixed precision %s: a training step took %.3f s in fp32 and %.3f s in bf16",
            mixed_precision,
            probe["fp32_s"],
            probe["bf16_s"],
        )
    if args.subset == "coverage":
        from hf_landmark.selection import choose, pooled_features

        # The pre-trained network, before any fine-tuning, sees the training images as a pool (as hf-landmark select does).
        features = pooled_features(model, train_all.pixel_values(processor.pixel_range))
        labeled_idx = sorted(
            choose("coverage", train_all.image_ids, args.num_labels, features), key=lambda i: train_all.image_ids[i]
        )
    else:
        labeled_idx = few_shot_indices(train_all.image_ids, args.num_labels, args.subset, args.seed)
    # Only the labeled images (and the validation split) are also decoded at the fine size.
    train = (
        load_tensors(train_split.select(labeled_idx), size, processor.resample, fine_size)
        if fine_size
        else train_all.subset(labeled_idx)
    )
    val = load_tensors(val_split, size, processor.resample, fine_size)
    logger.info("labeled images: %s", ", ".join(train.image_ids))

    if accelerator.is_main_process:
        accelerator.init_trackers("finetune", config=tracker_config(args))
        if note := describe_cpu_threads(accelerator.device):
            logger.info(note)
    shape = shape_prior(args, train, val)
    model.config.set_shape_check(*shape)
    record = dict(
        training_record(args, first["dataset"], train.image_ids, len(val)),
        mixed_precision=mixed_precision,
        precision_probe=probe,
        shape_check={"factor": args.shape_check, "tolerance_px": shape[1], "image_size": size},
    )
    floor = compute_metrics(mean_shape_prediction(train, val), val, model.config)
    model_dir = os.path.join(args.output_dir, "model")
    start = time.perf_counter()
    stages = Stages(args, accelerator, autocast, processor, val, fine_size)
    result = train_two_stages(stages, model, train, model_dir, record)
    self_training = None
    labeled_set = set(labeled_idx)
    pool_idx = [i for i in range(len(train_all)) if i not in labeled_set]  # the training split's unlabeled images
    if args.self_train and result["wrote_model"]:
        pool = self_training_pool(
            train_split,
            pool_idx,
            dataset.get(UNLABELED) if UNLABELED in dataset else None,
            size,
            processor.resample,
            fine_size,
            args.self_train_pool,
        )
        if pool[0] is None:
            logger.info("no self-training: every training image is labeled and there is no unlabeled split")
        else:
            facts = DatasetFacts(first, spacing, shape)
            result, self_training = self_train(
                stages, facts, train, SelfTrainingPool(*pool), model_dir, record, result
            )
    accelerator.end_training()
    best = result["best"]
    calibration = None
    if accelerator.is_main_process and result["wrote_model"]:
        pool = [train_all.subset(pool_idx)]
        if UNLABELED in dataset and len(dataset[UNLABELED]):
            pool.append(load_tensors(dataset[UNLABELED], size, processor.resample))
        calibration = calibrate_saved_model(
            model_dir, val, train_all.subset(labeled_idx), args.decoder, pool, args.offset_correction
        )
        if calibration["offsets"]:
            loo = calibration["offsets"]["leave_one_out"]
            logger.info(
                "landmark offsets from %d validation images (shrunk by %g): validation MRE %.3f -> %.3f %s, each image "
                "corrected by the offsets of the others",
                len(val),
                args.offset_correction,
                loo["mre_without"],
                loo["mre_with"],
                loo["unit"],
            )
        logger.info(
            "calibrated the error radii on %d validation images (alpha %.2f, radii at %.1f %%) and the low-confidence flag "
            "on %d images (false alarms at most %.1f %%)",
            len(val),
            calibration["alpha"],
            100 * calibration["radius_coverage"],
            calibration["flag_calibration_images"],
            100 * calibration["flag_false_alarm_rate"],
        )
    summary = {
        "labeled_image_ids": train.image_ids,
        "num_labels": args.num_labels,
        "seed": args.seed,
        "init": args.init,
        "recipe": args.recipe,
        "recipe_defaults": args.resolved_recipe.as_dict(),
        "loss": args.loss,
        "learning_rate": args.learning_rate,
        "resolution": size,
        "steps": result["steps"],
        "mixed_precision": mixed_precision,
        "precision_probe": probe,
        "seconds": time.perf_counter() - start,
        "best": best,
        "first_stage": result["first_stage"],
        "refine": result["refine"],
        "self_training": self_training,
        "mean_shape_val_mre": floor["mre"],
        "history": result["history"],
        "calibration": calibration,
    }
    if accelerator.is_main_process:
        write_json_atomic(summary, os.path.join(args.output_dir, "training_summary.json"))
    return summary


def weight_average(args: FinetuneArguments, module: torch.nn.Module):
    """``--ema-decay``'s moving average of ``module``'s weights (diffusers' :class:`EMAModel`),
    or None when it is off."""
    if not args.ema_decay:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(module.parameters(), decay=args.ema_decay)


@contextmanager
def averaged(ema, module: torch.nn.Module):
    """``module`` holds the moving average's weights inside the block (to validate and save
    them) and its own again after it; without an average, nothing changes."""
    if ema is None:
        yield
        return
    params = list(module.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


@dataclass
class Stages:
    """What both stages and every self-training round share: the arguments, the Accelerator
    and its autocast context, the image processor, the validation images (every stage is
    selected on them) and the refiner's fine image size (0: no refinement stage)."""

    args: FinetuneArguments
    accelerator: Any
    autocast: Any
    processor: LandmarkImageProcessor
    val: Any
    fine_size: int


@dataclass
class DatasetFacts:
    """What a new model of a self-training round is built from: the first training row (the
    landmark names and the dataset), the spacing its config assumes, and the shape check's
    ``(reference shape, tolerance)``."""

    first: dict
    spacing: list | None
    shape: tuple


@dataclass
class SelfTrainingPool:
    """The images self-training may pseudo-label (their landmarks NaN) and their true landmarks
    where known (for reporting pseudo-label quality only)."""

    images: Any
    truth: torch.Tensor


def train_two_stages(
    ctx: Stages, model, train, model_dir: str, record: dict, weights: torch.Tensor | None = None, tag: str = ""
) -> dict:
    """The first stage on ``train`` (``weights``: each image's sampling weight; None: uniform),
    then the refinement stage on the best first stage, both selected on ``val``; the best model
    goes to ``model_dir``. ``tag`` prefixes the tracker's keys (a self-training round).
    Returns ``{"best", "first_stage", "refine", "steps", "history", "wrote_model"}``."""
    first = train_first_stage(ctx, model, train, model_dir, record, weights, tag)
    best, refine_summary = dict(first["best"]), None
    if ctx.fine_size and first["wrote_model"]:
        refine_summary, best = train_refiner(ctx, model_dir, train, record, first["best"], weights, tag)
    return {
        "best": best,
        "first_stage": first["best"],
        "refine": refine_summary,
        "steps": first["steps"],
        "history": first["history"],
        "wrote_model": first["wrote_model"],
    }


def train_first_stage(
    ctx: Stages, model, train, model_dir: str, record: dict, weights: torch.Tensor | None = None, tag: str = ""
) -> dict:
    """Stage 1: the heatmap detector on ``train``'s images at the model's size, validated every
    ``eval_steps`` on ``val``'s MRE (the best saved to ``model_dir``), with the plateau
    schedule and early stopping. Landmarks given as NaN (rejected pseudo-labels) are left out
    of the loss."""
    args, accelerator, autocast, processor, val = ctx.args, ctx.accelerator, ctx.autocast, ctx.processor, ctx.val
    max_steps, eval_steps = args.max_steps, args.eval_steps
    if max_steps is None:
        batches_per_epoch = math.ceil(len(train) / args.train_batch_size)
        max_steps = max(1, math.ceil(args.max_epochs * batches_per_epoch / args.gradient_accumulation_steps))
        eval_steps = eval_steps or max(1, math.ceil(batches_per_epoch / args.gradient_accumulation_steps))

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=args.plateau_factor, patience=args.plateau_patience
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    train_pixels, train_landmarks = train.images.to(device), train.landmarks.to(device)
    wrote_model = False

    def diverged(what: str):
        # A diverged run must not leave a "best" model behind: remove the one it wrote.
        if wrote_model and accelerator.is_main_process:
            shutil.rmtree(model_dir, ignore_errors=True)
        accelerator.end_training()
        raise UserInputError(
            f"{args.output_dir}: fine-tuning diverged: {what}; no model was kept from it. Lower --learning-rate "
            f"(now {args.learning_rate:g}) or check the labels"
        )

    unwrapped = accelerator.unwrap_model(model)
    ema = weight_average(args, unwrapped)
    best = {"val_mre": math.inf, "step": 0}
    history = []
    stale = 0
    batch = min(args.train_batch_size, len(train))
    what = f"fine-tuning ({args.num_labels} label{'s' if args.num_labels > 1 else ''}{', ' + tag if tag else ''})"
    progress = tqdm(total=max_steps, desc=what, disable=not accelerator.is_local_main_process)
    start = time.perf_counter()
    model.train()
    step = 0
    while step < max_steps:
        for _ in range(args.gradient_accumulation_steps):
            with accelerator.accumulate(model):
                if weights is None:
                    idx = torch.randint(0, len(train), (batch,), device=device)
                else:
                    idx = torch.multinomial(weights, batch, replacement=True).to(device)
                x, y = train_pixels[idx], train_landmarks[idx]
                x, y = augment(args, x, y)
                x = to_pixel_values(x, processor.pixel_range)
                with autocast():
                    loss = model(pixel_values=x, labels=y).loss
                if not torch.isfinite(loss):
                    diverged(f"the training loss became {loss.item()} at step {step + 1}")
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unwrapped.parameters())
        step += 1
        if step == 2 and accelerator.is_local_main_process:
            warning = long_run_warning((time.perf_counter() - start) / 2, max_steps - step, device, "fine-tuning")
            if warning:
                progress.write("warning: " + warning)
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if step % eval_steps == 0 or step == max_steps:
            with averaged(ema, unwrapped):
                pred, _, val_loss = predict_tensors(unwrapped, processor, val, args.decoder)
                if not (np.isfinite(pred).all() and np.isfinite(val_loss)):
                    diverged(f"the validation loss is {val_loss} at step {step}")
                metrics = compute_metrics(pred, val, unwrapped.config)
                improved = metrics["mre"] < best["val_mre"]
                if improved and accelerator.is_main_process:
                    save_model_atomic(
                        unwrapped,
                        processor,
                        model_dir,
                        dict(record, best_step=step, val_mre=metrics["mre"], unit=metrics["unit"]),
                    )
                    wrote_model = True
            plateau.step(val_loss)
            lr = optimizer.param_groups[0]["lr"]
            history.append(
                {"step": step, "train_loss": loss.item(), "val_loss": val_loss, "val_mre": metrics["mre"], "lr": lr}
            )
            prefix = f"{tag}/" if tag else ""
            accelerator.log({f"{prefix}{k}": v for k, v in history[-1].items() if k != "step"}, step=step)
            if improved:
                best = {
                    "val_mre": metrics["mre"],
                    "val_mre_std": metrics["mre_std"],
                    "val_sdr": metrics["sdr"],
                    "step": step,
                    "unit": metrics["unit"],
                }
                stale = 0
            else:
                stale += 1
            progress.set_postfix(
                loss=f"{loss.item():.4f}", val_mre=f"{metrics['mre']:.2f}", best=f"{best['val_mre']:.2f}"
            )
            if stale >= args.early_stopping_patience:
                logger.info(
                    "early stopping at step %d (best %.3f %s at step %d)",
                    step,
                    best["val_mre"],
                    best["unit"],
                    best["step"],
                )
                break
    progress.close()
    return {"best": best, "steps": step, "history": history, "wrote_model": wrote_model}


def self_train(
    ctx: Stages, facts: DatasetFacts, train, pool: SelfTrainingPool, model_dir: str, record: dict, result: dict
) -> tuple[dict, dict]:
    """``--self-train`` rounds: the best model so far pseudo-labels ``pool`` (:func:`pseudo_labels`),
    a fresh model from ``--init`` trains both stages on the labeled images (drawn with
    ``--self-train-labeled-share`` of each batch) plus the images with kept pseudo-labels
    (the rejected landmarks left out), and replaces the best model only if it is better on
    validation. Every round's counts and pseudo-label quality go into the training record
    beside the model. Returns ``(result of the best model, self-training summary)``."""
    from hf_landmark.fileio import replace_directory, write_text_atomic

    args, accelerator, val = ctx.args, ctx.accelerator, ctx.val
    pool, truth = pool.images, pool.truth
    first, spacing, shape = facts.first, facts.spacing, facts.shape
    rounds = []
    before = {
        "val_mre": result["best"]["val_mre"],
        "val_sdr": result["best"].get("val_sdr"),
        "first_stage_val_mre": result["first_stage"]["val_mre"],
    }
    for r in range(1, args.self_train + 1):
        t0 = time.perf_counter()
        coords, chosen, facts_r = pseudo_labels(
            model_dir,
            pool,
            val,
            train,
            args.decoder,
            args.self_train_keep,
            accelerator.device,
            args.self_train_keep_each,
        )
        images = np.flatnonzero(chosen.any(axis=1))
        report = {
            "round": r,
            "pool_images": len(pool),
            "pool_landmarks": int(chosen.size),
            "kept_landmarks": int(chosen.sum()),
            "images_with_pseudo_labels": len(images),
            **facts_r,
            "pseudo_label_error": pseudo_label_quality(
                coords, chosen, truth, pool, LandmarkConfig.from_pretrained(model_dir)
            ),
        }
        if not len(images):
            logger.warning(
                "self-train round %d: every pool image was flagged as unlike the training images; no pseudo-labels", r
            )
            rounds.append(dict(report, model_kept=False, seconds=time.perf_counter() - t0))
            break
        kept = np.where(chosen[..., None], coords, np.nan)[images]
        combined = train.concat(pool.subset(images).with_landmarks(kept))
        share = args.self_train_labeled_share
        weights = torch.cat(
            [
                torch.full((len(train),), share / len(train)),
                torch.full((len(images),), (1 - share) / max(1, len(images))),
            ]
        )
        set_seed(args.seed + r)
        model = build_model(args, len(first["landmark_names"]), first["landmark_names"], first["dataset"], spacing)
        model.config.set_shape_check(*shape)
        round_dir = os.path.join(args.output_dir, f"self-train-{r}")
        tag = f"self-train round {r}"
        try:
            outcome = train_two_stages(
                ctx,
                model,
                combined,
                os.path.join(round_dir, "model"),
                dict(record, self_training_round=r),
                weights,
                tag=f"self-train-{r}",
            )
        except UserInputError as err:
            # A round that diverges costs the round, not the model of the passes before it.
            logger.warning("%s: %s; the model before it is kept", tag, err)
            shutil.rmtree(round_dir, ignore_errors=True)
            rounds.append(dict(report, diverged=str(err), model_kept=False, seconds=time.perf_counter() - t0))
            break
        better = outcome["wrote_model"] and outcome["best"]["val_mre"] < result["best"]["val_mre"]
        report.update(
            val_mre=outcome["best"]["val_mre"],
            val_sdr=outcome["best"].get("val_sdr"),
            first_stage_val_mre=outcome["first_stage"]["val_mre"],
            previous_best_val_mre=result["best"]["val_mre"],
            model_kept=bool(better),
            seconds=time.perf_counter() - t0,
        )
        if better and accelerator.is_main_process:
            replace_directory(os.path.join(round_dir, "model"), model_dir)
        if better:
            result = outcome
        shutil.rmtree(round_dir, ignore_errors=True)
        rounds.append(report)
        quality = report["pseudo_label_error"]
        logger.info(
            "%s: kept %d of %d pool landmarks on %d images%s; validation MRE %.3f (best before %.3f)%s",
            tag,
            report["kept_landmarks"],
            report["pool_landmarks"],
            len(images),
            f" (their error {quality['kept_mre']:.2f} {quality['unit']}, all predictions {quality['all_mre']:.2f})"
            if "kept_mre" in quality
            else "",
            report["val_mre"],
            report["previous_best_val_mre"],
            ": kept" if better else ": not kept" + ("; self-training stops here" if r < args.self_train else ""),
        )
        if not better:
            # The next round would pseudo-label the pool with the same model: the same labels
            # again, and another draw of training noise picked by validation is not a gain.
            break
    summary = {
        "without": before,
        "rounds": rounds,
        "keep": args.self_train_keep,
        "keep_each": args.self_train_keep_each,
        "labeled_share": args.self_train_labeled_share,
        "model_from_round": max([0] + [x["round"] for x in rounds if x["model_kept"]]),
    }
    if accelerator.is_main_process:
        path = os.path.join(model_dir, TRAINING_RECORD)
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        saved.pop("self_training_round", None)
        write_text_atomic(json_text(dict(saved, self_training=summary)), path)
    return result, summary


def shape_prior(args: FinetuneArguments, train, val) -> tuple[list | None, float | None]:
    """The shape check's ``(reference shape, tolerance)`` in model pixels: the labeled images'
    mean landmarks, and ``--shape-check`` times the 90th percentile of the validation images'
    distances from it (:func:`hf_landmark.shape.shape_tolerance`); ``(None, None)`` when off."""
    from hf_landmark.shape import MIN_LANDMARKS, shape_tolerance

    if not args.shape_check or train.landmarks.shape[1] < MIN_LANDMARKS:
        return None, None
    reference = train.landmarks.double().mean(dim=0).numpy()
    # At least a pixel: true shapes that a similarity matches exactly (synthetic data) leave no spread to scale.
    tolerance = max(1.0, shape_tolerance(reference, val.landmarks.double().numpy(), args.shape_check))
    logger.info(
        "shape check: a first-stage landmark more than %.2f px (of %d) from where the others put it is read again there",
        tolerance,
        train.image_size,
    )
    return reference.tolist(), tolerance


def refine_size_for(args: FinetuneArguments, prepared: int, size: int) -> int:
    """The refinement stage's fine size: ``--refine-size``, else the prepared images' side
    divided down to at most 8x the model's (an exact area resize); 0 when refinement is off
    or the prepared images are not at least 4x the model's side (then it says so)."""
    if args.no_refine:
        return 0
    if args.refine_size:
        if args.refine_size % 8 or args.refine_size <= size:
            raise UserInputError(
                f"--refine-size: must be a multiple of 8 above the model's {size} px, got {args.refine_size}"
            )
        return args.refine_size
    divisor = next((k for k in range(1, prepared + 1) if prepared % k == 0 and prepared // k <= 8 * size), prepared)
    fine = prepared // divisor
    if fine < 4 * size or fine % 8:
        # Plain logging: this runs before the Accelerator exists (accelerate's logger needs one).
        logging.getLogger(__name__).warning(
            "no refinement stage: the dataset was prepared at %d px, less than 4x the model's %d px; "
            "prepare it at e.g. --image-size %d for one (or pass --no-refine)",
            prepared,
            size,
            8 * size,
        )
        return 0
    return fine


def train_refiner(
    ctx: Stages,
    model_dir: str,
    train,
    record: dict,
    first_best: dict,
    weights: torch.Tensor | None = None,
    tag: str = "",
):
    """Stage 2: a refiner for the saved best first stage, trained on crops of the same training
    images (centred at the truth plus offsets drawn from the first stage's validation errors,
    with the training augmentation (--augment) on the fine images; ``weights`` as the first stage's; NaN
    landmarks never cropped), selected on the validation split's final MRE. The two-stage
    detector replaces the first-stage one only if it is better on validation. Returns
    ``(summary, best)``."""
    from hf_landmark.evaluation import predict_split
    from hf_landmark.losses import get_loss
    from hf_landmark.modeling_landmark import own_channel, refine_prior_sigmas
    from hf_landmark.preprocessing import original_to_model

    args, accelerator, autocast, val, fine_size = ctx.args, ctx.accelerator, ctx.autocast, ctx.val, ctx.fine_size
    device = accelerator.device
    detector = LandmarkDetector.from_pretrained(model_dir, dtype=torch.float32)
    init = None if args.refine_init == "scratch" else args.refine_init
    preset = args.refine_preset or (args.preset if args.init == "scratch" else None)
    detector.add_refiner(
        fine_size, args.refine_crop, preset, args.refine_sigma if args.refine_sigma is not None else 2.0, ddpm=init
    )
    detector.to(device)
    cfg = detector.config
    processor = LandmarkImageProcessor.from_model_config(cfg)
    errors = first_stage_offsets(detector, processor, val, fine_size, args.decoder)  # the first stage alone
    radial = np.sqrt((errors**2).sum(-1))
    crop = cfg.refine_crop
    covered = float((np.abs(errors) < crop / 2 - 2).all(-1).mean())
    logger.info(
        "first-stage validation errors (fine px): median %.1f, 95%% %.1f, max %.1f; %.1f%% inside the %d-px crops",
        np.median(radial),
        np.quantile(radial, 0.95),
        radial.max(),
        100 * covered,
        crop,
    )
    # Validation, the saved model and every later prediction read the refiner's maps under the prior.
    cfg.set_refine_prior(refine_prior_sigmas(errors, args.refine_prior) if args.refine_prior else None)
    loss_fn = get_loss(cfg.refine_loss)
    optimizer = torch.optim.AdamW(
        detector.refiner.parameters(), lr=args.refine_learning_rate, weight_decay=args.weight_decay
    )
    # Cosine decay to zero over the run: the refiner settles instead of hopping between minima.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.refine_max_steps)
    ema = weight_average(args, detector.refiner)
    refiner, optimizer, schedule = accelerator.prepare(detector.refiner, optimizer, schedule)
    fine_images = train.fine_images.to(device)
    fine_truth = original_to_model(
        train.original_landmarks.float(), train.original_sizes[:, None, :].float(), fine_size
    ).to(device)
    valid = torch.isfinite(fine_truth).all(-1)
    masked = not bool(valid.all())
    offsets = torch.as_tensor(errors, dtype=torch.float32)
    generator = torch.Generator().manual_seed(args.seed)
    best = {"val_mre": first_best["val_mre"], "step": 0, "refined": False}
    summary = {
        "init": args.refine_init,
        "refine_size": fine_size,
        "crop": crop,
        "sigma": cfg.refine_sigma,
        "schedule": {
            "max_steps": args.refine_max_steps,
            "learning_rate": args.refine_learning_rate,
            "batch_size": args.refine_batch_size,
        },
        "prior": {"factor": args.refine_prior, "sigma_fine_px": cfg.refine_prior},
        "first_stage_val_errors_fine_px": {
            "median": float(np.median(radial)),
            "p95": float(np.quantile(radial, 0.95)),
            "max": float(radial.max()),
            "inside_crop": covered,
        },
        "history": [],
    }
    stale, own_best = 0, math.inf
    progress = tqdm(
        total=args.refine_max_steps,
        desc="refinement stage" + (f" ({tag})" if tag else ""),
        disable=not accelerator.is_local_main_process,
    )
    prefix = f"{tag}/" if tag else ""
    batch = min(args.train_batch_size, len(train))
    refiner.train()
    for step in range(1, args.refine_max_steps + 1):
        if weights is None:
            idx = torch.randint(0, len(train), (batch,), generator=generator).to(device)
        else:
            idx = torch.multinomial(weights, batch, replacement=True, generator=generator).to(device)
        x, y = fine_images[idx], fine_truth[idx]
        x, y = augment(args, x, y, generator=generator)
        crops, landmark, local = refiner_batch(
            x, y, offsets, cfg, args.refine_batch_size, generator, valid[idx] if masked else None
        )
        with autocast():
            logits = own_channel(refiner(crops)[0], landmark).float()
        loss = loss_fn(logits, local, cfg.refine_sigma)
        if not torch.isfinite(loss):
            raise UserInputError(
                f"{args.output_dir}: the refinement stage diverged (loss {loss.item()} at step {step}); "
                f"lower --refine-learning-rate (now {args.refine_learning_rate:g}); the first-stage model is kept"
            )
        accelerator.backward(loss)
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(refiner.parameters(), args.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(detector.refiner.parameters())
        progress.update(1)
        if step % args.eval_steps == 0 or step == args.refine_max_steps:
            with averaged(ema, detector.refiner):
                pred = predict_split(detector, processor, val, args.decoder)
                metrics = compute_metrics(pred["coords"], val, cfg)
                improved = metrics["mre"] < best["val_mre"]
                if improved and accelerator.is_main_process:
                    save_model_atomic(
                        detector,
                        processor,
                        model_dir,
                        dict(
                            record,
                            refine=summary | {"best_step": step},
                            val_mre=metrics["mre"],
                            best_step=first_best.get("step"),
                            first_stage_val_mre=first_best["val_mre"],
                            unit=metrics["unit"],
                        ),
                    )
            summary["history"].append({"step": step, "train_loss": loss.item(), "val_mre": metrics["mre"]})
            accelerator.log(
                {f"{prefix}refine/train_loss": loss.item(), f"{prefix}refine/val_mre": metrics["mre"]}, step=step
            )
            # Patience counts against the refiner's own best; the saved model changes only when
            # the two stages beat everything before them, the first stage alone included.
            stale = 0 if metrics["mre"] < own_best else stale + 1
            own_best = min(own_best, metrics["mre"])
            if improved:
                best = {
                    "val_mre": metrics["mre"],
                    "val_mre_std": metrics["mre_std"],
                    "val_sdr": metrics["sdr"],
                    "step": step,
                    "unit": metrics["unit"],
                    "refined": True,
                }
            progress.set_postfix(
                loss=f"{loss.item():.3f}", val_mre=f"{metrics['mre']:.2f}", best=f"{best['val_mre']:.2f}"
            )
            if stale >= args.early_stopping_patience:
                break
            refiner.train()
    progress.close()
    if not best["refined"]:
        logger.warning(
            "the refinement stage did not beat the first stage on validation (%.3f); the first-stage model is kept",
            first_best["val_mre"],
        )
        return summary, dict(first_best, refined=False)
    logger.info("refinement: validation MRE %.3f -> %.3f %s", first_best["val_mre"], best["val_mre"], best["unit"])
    return summary, best


def main(argv=None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--show-recipe" in argv:  # the defaults a label count gets, without training
        return show_recipe(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return finetune(parse_arguments(parser(), FinetuneArguments, argv))


def show_recipe(argv: list[str]) -> None:
    """``hf-landmark finetune --show-recipe N [--recipe paper]``: print the resolved recipe."""
    import argparse

    p = argparse.ArgumentParser(prog="hf-landmark finetune --show-recipe", allow_abbrev=False)
    p.add_argument("--show-recipe", type=int, required=True, metavar="NUM_LABELS")
    p.add_argument("--recipe", default="default", choices=["default", "paper"])
    args, _ = p.parse_known_args(argv)
    print(describe_recipe(resolve_recipe(args.recipe, args.show_recipe)), end="")


if __name__ == "__main__":
    main()
