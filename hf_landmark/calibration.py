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


def calibration_sets(dataset: str, labeled_ids, size: int, resample: str, fine_size: int):
    """What fine-tuning calibrates a detector on, from a prepared ``dataset`` whose
    ``labeled_ids`` training images it was fine-tuned on: ``(validation at the model's and
    the fine size, the labeled images, the pool: the rest of the training split and the
    unlabeled split)``."""
    from .data import load_prepared, load_tensors
    from .data.prepared import UNLABELED, require_split
    from .errors import UserInputError

    prepared = load_prepared(dataset)
    train_all = load_tensors(require_split(prepared, "train", dataset), size, resample)
    val = load_tensors(require_split(prepared, "validation", dataset), size, resample, fine_size)
    labeled_set = set(labeled_ids)
    labeled = [i for i, image_id in enumerate(train_all.image_ids) if image_id in labeled_set]
    missing = sorted(labeled_set - {train_all.image_ids[i] for i in labeled})
    if missing:
        raise UserInputError(
            f"{dataset}: the detector's labeled images {', '.join(missing)} are not in its train split"
        )
    labeled_idx = set(labeled)
    pool = [train_all.subset([i for i in range(len(train_all)) if i not in labeled_idx])]
    if UNLABELED in prepared and len(prepared[UNLABELED]):
        pool.append(load_tensors(prepared[UNLABELED], size, resample))
    return val, train_all.subset(labeled), [p for p in pool if len(p)]


def calibrate_on_dataset(model_dir: str, dataset: str, labeled_ids, decoder: str, offset_images: float):
    """Calibrate the detector saved at ``model_dir`` on ``dataset`` as fine-tuning does
    (:func:`calibration_sets`, :func:`calibrate_saved_model`). Returns ``(what was measured,
    the validation metrics of its landmarks before the offsets)``."""
    from .evaluation import compute_metrics, predict_split
    from .image_processing_landmark import processor_for_model

    model = LandmarkDetector.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = processor_for_model(model)
    val, labeled, pool = calibration_sets(
        dataset, labeled_ids, processor.size, processor.resample, processor.refine_size
    )
    processor.set_landmark_offsets(None)
    metrics = compute_metrics(predict_split(model, processor, val, decoder)["coords"], val, model.config)
    return calibrate_saved_model(model_dir, val, labeled, decoder, pool, offset_images), metrics
