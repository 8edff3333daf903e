"""Calibrating a saved detector after fine-tuning: its landmark offsets, its error radii and
its low-confidence flag, written into its image processor config in place."""

from __future__ import annotations

import os

import numpy as np
import torch

from .modeling_landmark import LandmarkDetector

#: At most this many pool images calibrate the flag (a forward pass each, at the end of fine-tuning).
FLAG_POOL_LIMIT = 2000


def calibrate_saved_model(
    model_dir: str, calibration, reference, decoder: str, pool=(), offset_images: float = 0.0
) -> dict:
    """Calibrate the saved best model's landmark offsets (``offset_images`` > 0: each
    landmark's shrunk mean error on ``calibration``), its error radii (split conformal on ``calibration``, the
    validation split, which the weights never trained on) and its low-confidence flag
    (``reference``: the labeled training images; ``pool``: images it never trained on, the
    unlabeled rest of the training split and the unlabeled split, at most
    :data:`FLAG_POOL_LIMIT`, evenly spaced); rewrite its processor config in place."""
    from .evaluation import calibrate_processor
    from .fileio import atomic_file
    from .image_processing_landmark import PROCESSOR_FILE, processor_for_model

    model = LandmarkDetector.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = processor_for_model(model)
    total = sum(len(p) for p in pool)
    if total > FLAG_POOL_LIMIT:
        pool = [
            p.subset(np.linspace(0, len(p) - 1, max(1, len(p) * FLAG_POOL_LIMIT // total)).round().astype(int))
            for p in pool
        ]
    measured = calibrate_processor(
        model, processor, calibration, reference, decoder, pool=list(pool), offset_images=offset_images
    )
    with atomic_file(os.path.join(model_dir, PROCESSOR_FILE)) as tmp:
        processor.to_json_file(tmp)
    return measured
