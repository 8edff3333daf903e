"""What fine-tuning's two stages share: the schedule (:class:`StageSettings`), the context of a
run (:class:`Stages`), the training augmentation, the weights' moving average, the saved model
with its training record, and the validate / keep the best / stop early loop (:class:`Selection`).
The stages themselves: :mod:`hf_landmark.stages` (first stage, both in order) and
:func:`hf_landmark.refinement.train_refiner`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger

from .data import random_affine, random_gamma
from .fileio import atomic_directory, json_text
from .image_processing_landmark import LandmarkImageProcessor
from .modeling_landmark import LandmarkDetector

logger = get_logger(__name__)

#: Written beside a fine-tuned detector: its data, labels and initialisation (for its card).
TRAINING_RECORD = "hf_landmark_training.json"


@dataclass(frozen=True)
class StageSettings:
    """The schedule of both stages, resolved (no value left to a recipe): what
    ``hf-landmark finetune``'s first-stage and refinement-stage flags say."""

    output_dir: str
    num_labels: int
    seed: int
    decoder: str
    augmentation: tuple[float, float, float, float]
    learning_rate: float
    weight_decay: float
    plateau_factor: float
    plateau_patience: int
    train_batch_size: int
    gradient_accumulation_steps: int
    max_steps: int | None
    max_epochs: float | None
    eval_steps: int | None
    early_stopping_patience: int
    ema_decay: float
    max_grad_norm: float
    refine_init: str
    refine_preset: str | None
    refine_crop: int
    refine_sigma: float
    refine_prior: float
    refine_max_steps: int
    refine_batch_size: int
    refine_learning_rate: float


@dataclass
class Stages:
    """What both stages and every self-training round share: the settings, the Accelerator
    and its autocast context, the image processor, the validation images (every stage is
    selected on them) and the refiner's fine image size (0: no refinement stage)."""

    settings: StageSettings
    accelerator: Any
    autocast: Any
    processor: LandmarkImageProcessor
    val: Any
    fine_size: int


def augment(augmentation, images01: torch.Tensor, landmarks: torch.Tensor, generator=None):
    """The training augmentation of both stages, ``(deg, scale, shift, gamma)``, on images in [0, 1]."""
    deg, scale, shift, gamma = augmentation
    if deg or scale or shift:
        images01, landmarks = random_affine(images01, landmarks, deg, scale, shift, generator=generator)
    return random_gamma(images01, gamma, generator=generator), landmarks


def weight_average(settings, module: torch.nn.Module):
    """``ema_decay``'s moving average of ``module``'s weights (diffusers' :class:`EMAModel`),
    or None when it is off."""
    if not settings.ema_decay:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(module.parameters(), decay=settings.ema_decay)


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


def save_model_atomic(model: LandmarkDetector, processor: LandmarkImageProcessor, path: str, record: dict) -> None:
    """The detector, its image processor and its training record (``TRAINING_RECORD``, what
    the model card states), written whole or not at all."""
    with atomic_directory(path) as tmp:
        write_model_files(model, processor, tmp, record)


def write_model_files(model: LandmarkDetector, processor: LandmarkImageProcessor, folder: str, record: dict) -> None:
    """The detector's weights and config, its image processor and its training record, into ``folder``."""
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    with open(os.path.join(folder, TRAINING_RECORD), "w", encoding="utf-8") as fh:
        fh.write(json_text(record))


@dataclass
class Selection:
    """The loop both stages share at each validation: the moving average's weights are
    validated; the model is saved when it beats ``best`` (everything before it, an earlier
    stage included); patience counts against the stage's own best (``own_best``)."""

    best: dict
    patience: int
    stale: int = 0
    own_best: float = math.inf
    wrote_model: bool = False

    def validate(self, step: int, ema, module, evaluate: Callable[[], dict], save=None, **extra) -> tuple[dict, bool]:
        """``evaluate()`` → metrics (``mre``, ``mre_std``, ``sdr``, ``unit``); ``save(step, metrics)``
        (None: not this process's to save) runs inside the average when they are the best."""
        with averaged(ema, module):
            metrics = evaluate()
            improved = metrics["mre"] < self.best["val_mre"]
            if improved and save is not None:
                save(step, metrics)
                self.wrote_model = True
        self.stale = 0 if metrics["mre"] < self.own_best else self.stale + 1
        self.own_best = min(self.own_best, metrics["mre"])
        if improved:
            self.best = {
                "val_mre": metrics["mre"],
                "val_mre_std": metrics["mre_std"],
                "val_sdr": metrics["sdr"],
                "step": step,
                "unit": metrics["unit"],
                **extra,
            }
        return metrics, improved

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience
