"""Calibrating a saved detector after fine-tuning: its landmark offsets, its shape fusion, its
error radii and its low-confidence flag, written into its image processor config in place."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .data.tensors import LandmarkTensors
from .evaluation import compute_metrics, predict_split
from .metrics import radial_errors
from .modeling_landmark import LandmarkDetector
from .preprocessing import original_to_model
from .shape_model import fit_shape_model, fuse_shapes, noise_factors

#: At most this many pool images calibrate the flag (a forward pass each, at the end of fine-tuning).
FLAG_POOL_LIMIT = 2000


@dataclass(frozen=True)
class Corrections:
    """What calibration fits to the predictions themselves: ``offset_images`` > 0, the landmark
    offsets shrunk by that many images (:func:`mean_offsets`); ``shape_fusion`` > 0, the shape
    fusion with that weight (:func:`calibrate_shape_model`). 0: off."""

    offset_images: float = 0.0
    shape_fusion: float = 0.0

    @property
    def any(self) -> bool:
        """Whether any correction is on."""
        return self.offset_images > 0 or self.shape_fusion > 0


#: No offsets, no shape fusion.
NO_CORRECTIONS = Corrections()


def calibrate_saved_model(
    model_dir: str, calibration, reference, decoder: str, pool=(), corrections: Corrections = NO_CORRECTIONS
) -> dict:
    """Calibrate the saved best model's ``corrections`` (landmark offsets, shape fusion) on
    ``calibration``, its error radii (split conformal on ``calibration``, the
    validation split, which the weights never trained on) and its low-confidence flag
    (``reference``: the labeled training images; ``pool``: images it never trained on, the
    unlabeled rest of the training split and the unlabeled split, at most
    :data:`FLAG_POOL_LIMIT`, evenly spaced); rewrite its processor config in place."""
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
        model,
        processor,
        calibration,
        reference,
        decoder,
        pool=list(pool),
        corrections=corrections,
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


def calibrate_on_dataset(model_dir: str, dataset: str, labeled_ids, decoder: str, corrections: Corrections):
    """Calibrate the detector saved at ``model_dir`` on ``dataset`` as fine-tuning does
    (:func:`calibration_sets`, :func:`calibrate_saved_model`). Returns ``(what was measured,
    the validation metrics of its landmarks before the offsets)``."""
    from .image_processing_landmark import processor_for_model

    model = LandmarkDetector.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = processor_for_model(model)
    val, labeled, pool = calibration_sets(
        dataset, labeled_ids, processor.size, processor.resample, processor.refine_size
    )
    processor.set_landmark_offsets(None)
    processor.set_shape_model(None)
    metrics = compute_metrics(predict_split(model, processor, val, decoder)["coords"], val, model.config)
    return calibrate_saved_model(model_dir, val, labeled, decoder, pool, corrections), metrics


def calibrate_processor(
    model,
    processor,
    calibration: LandmarkTensors,
    reference: LandmarkTensors,
    decoder: str | None = None,
    pool: list[LandmarkTensors] | None = None,
    corrections: Corrections = NO_CORRECTIONS,
) -> dict:
    """Calibrate ``processor``: first its ``corrections``, the landmark offsets (each
    landmark's mean error on ``calibration``, shrunk toward none by ``offset_images`` images' worth:
    :func:`mean_offsets`; 0 removes them), then the shape fusion
    (:func:`calibrate_shape_model`; 0 removes it); then the radii by split conformal prediction on
    held-out labeled images (``calibration``, the validation split), on each image's errors
    under the offsets and the shape model measured without it; the low-confidence flag on those and on
    ``pool`` (images the model never trained on, labeled or not: the unlabeled split, the
    unlabeled rest of the training split; never test), whose every other image joins
    ``reference`` (the training images) in defining "like the training data" and the rest
    set the thresholds, so that no image does both. Returns what was measured."""
    stage = correction_stage(model, calibration)
    processor.set_landmark_offsets(None, stage)
    processor.set_shape_model(None)
    cal = predict_split(model, processor, calibration, decoder)
    truth = calibration.original_landmarks.double().numpy()
    offsets_report, cal["coords"] = calibrate_offsets(
        model, processor, calibration, cal, corrections.offset_images, stage
    )
    first_stage = [
        (part, predict_split(model, processor, part, decoder, refine=False))
        for part in [reference, *(p for p in pool or [] if len(p))]
    ]
    shapes = [reference.original_landmarks.double().numpy()]
    shapes += [out["first_stage_coords"] for _, out in first_stage[1:]]
    fusion_report, cal["coords"] = calibrate_shape_model(
        model, processor, calibration, cal, np.concatenate(shapes), corrections.shape_fusion, stage
    )
    errors = radial_errors(cal["coords"], truth)
    processor.calibrate(cal["spread"], errors)
    _calibrate_flag(processor, (calibration, cal), first_stage)
    radii = processor.radii(cal["spread"])
    return {
        "calibration_images": len(calibration),
        "offsets": offsets_report,
        "shape_fusion": fusion_report,
        "alpha": processor.alpha,
        "ood_threshold": processor.ood_threshold,
        "spread_threshold": processor.spread_threshold,
        "shape_threshold": processor.shape_threshold,
        "finite_radii": bool(np.isfinite(radii).all()),
        "radius_coverage": 1.0 - processor.radius_alpha,
        "flag_calibration_images": processor.flag_calibration_images,
        "flag_false_alarm_rate": processor.flag_false_alarm_rate,
    }


def correction_stage(model, calibration: LandmarkTensors) -> str:
    """The stage whose landmarks the corrections move: the refined ones where ``model`` refines
    and ``calibration`` has its fine images, else the first stage's."""
    refines = getattr(model, "has_refinement_stage", False) and calibration.fine_images is not None
    return "refined" if refines else "first"


#: The calibration images' held-out fusion: each fused by a shape model fitted without its fold, of at most this many.
FUSION_FOLDS = 10


def calibrate_shape_model(model, processor, calibration, cal: dict, other_shapes, weight: float, stage: str):
    """Set ``processor``'s shape fusion (:mod:`hf_landmark.shape_model`): the point distribution
    model of ``other_shapes`` (original pixels: the labeled images' true landmarks and the first
    stage's on the pool) and ``calibration``'s true landmarks, each landmark's noise ``weight``
    times its median error per unit of spread on ``calibration`` (``cal``: its predictions,
    under the offsets). Returns ``(report, each calibration image's landmarks fused by a model
    fitted without its fold)``: honest errors for the radii; ``(None, unchanged)`` when
    ``weight`` is 0 (off) or there are too few shapes."""
    if weight <= 0:
        return None, cal["coords"]
    truth = calibration.original_landmarks.double().numpy()
    coords, spread = cal["coords"], cal["spread"]
    errors = radial_errors(coords, truth)

    def fitted(keep):
        shape_model = fit_shape_model(np.concatenate([other_shapes, truth[keep]]))
        noise = noise_factors(errors[keep], spread[keep], weight)
        return None if shape_model is None or noise is None else (shape_model, noise)

    whole = fitted(np.ones(len(truth), bool))
    if whole is None:
        return None, coords
    processor.set_shape_model(*whole, stage)
    folds = np.arange(len(truth)) % min(FUSION_FOLDS, len(truth))
    held_out = coords.copy()
    high = calibration.original_sizes.double().numpy()[:, None, :] - 1.0
    for fold in np.unique(folds):
        part = folds == fold
        without = fitted(~part)
        if without is not None:
            (mean, covariance), noise = without
            fused = fuse_shapes(coords[part], spread[part] * noise, mean, covariance)
            held_out[part] = np.clip(fused, 0.0, high[part])
    before, after = (
        compute_metrics(coords, calibration, model.config),
        compute_metrics(held_out, calibration, model.config),
    )
    report = {
        "weight": weight,
        "stage": stage,
        "shapes": int(np.isfinite(np.concatenate([other_shapes, truth])).all(axis=(1, 2)).sum()),
        "held_out": {
            "folds": int(folds.max() + 1),
            "unit": after["unit"],
            "mre_without": before["mre"],
            "mre_with": after["mre"],
            "sdr_without": before["sdr"],
            "sdr_with": after["sdr"],
        },
    }
    return report, held_out


def calibrate_offsets(model, processor, calibration, cal: dict, offset_images: float, stage: str):
    """Set ``processor``'s landmark offsets from ``calibration``'s errors (``cal``: its
    predictions without them), shrunk by ``offset_images``; returns ``(report, each image's
    coordinates corrected by the offsets of the others)``; ``(None, unchanged)`` when
    ``offset_images`` is 0 (off)."""
    if offset_images <= 0:
        return None, cal["coords"]
    truth = calibration.original_landmarks.double().numpy()
    scale = calibration.original_sizes.double().numpy()[:, None, :] / processor.size  # original px per model px
    offsets, held_out = mean_offsets((cal["coords"] - truth) / scale, offset_images)
    processor.set_landmark_offsets(offsets, stage)
    # As the processor applies them: clamped to the centres of the model's edge pixels.
    low, high = 0.5 * scale - 0.5, (processor.size - 0.5) * scale - 0.5
    shifted = cal["coords"] - held_out * scale
    corrected = np.clip(shifted, low, high)
    clamped = int(np.sum(np.any((shifted < low) | (shifted > high), axis=-1)))
    before, after = (
        compute_metrics(cal["coords"], calibration, model.config),
        compute_metrics(corrected, calibration, model.config),
    )
    offsets_report = {
        "images": offset_images,
        "stage": stage,
        "model_px": offsets.tolist(),
        "clamped_landmarks": clamped,
        "leave_one_out": {
            "unit": after["unit"],
            "mre_without": before["mre"],
            "mre_with": after["mre"],
            "sdr_without": before["sdr"],
            "sdr_with": after["sdr"],
        },
    }
    return offsets_report, corrected


def _calibrate_flag(processor, held_out, first_stage: list) -> None:
    """The low-confidence flag, on the first stage only (embeddings, first-stage spreads and
    landmarks): ``held_out`` ``(calibration images, their predictions)`` and every other pool
    image set the thresholds; ``first_stage``: ``(images, first-stage predictions)`` of the
    reference (the labeled training images) then of each pool part. The reference and the
    pool's other images define "like the training data" (the shape test's reference shape is
    the reference's mean landmarks)."""
    calibration, cal = held_out

    def model_px(coords, part):  # first-stage landmarks, original -> model pixels
        return original_to_model(coords, part.original_sizes.double().numpy()[:, None, :], processor.size)

    (reference, ref), pool = first_stage[0], first_stage[1:]
    ref_emb, ref_shapes = [ref["embeddings"]], [model_px(ref["first_stage_coords"], reference)]
    flag_emb, flag_shapes = [cal["embeddings"]], [model_px(cal["first_stage_coords"], calibration)]
    flag_spread = [processor.relative_spread(cal["first_stage_spread"], calibration.original_sizes.numpy())]
    for part, out in pool:
        rel = processor.relative_spread(out["first_stage_spread"], part.original_sizes.numpy())
        shapes = model_px(out["first_stage_coords"], part)
        ref_emb.append(out["embeddings"][0::2])
        ref_shapes.append(shapes[0::2])
        flag_emb.append(out["embeddings"][1::2])
        flag_shapes.append(shapes[1::2])
        flag_spread.append(rel[1::2])
    mean_shape = None
    if len(reference):
        with warnings.catch_warnings():  # a landmark no labeled image has stays NaN: the test leaves it out
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_shape = np.nanmean(reference.landmarks.double().numpy(), axis=0)
    processor.calibrate_flag(
        np.concatenate(ref_emb),
        np.concatenate(flag_emb),
        np.concatenate(flag_spread),
        None if mean_shape is None else (mean_shape, np.concatenate(ref_shapes), np.concatenate(flag_shapes)),
    )


def mean_offsets(errors, pseudo_images: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-landmark offsets from signed errors ``[M, N, 2]`` (prediction minus truth; NaN
    where a landmark is missing): each landmark's mean error shrunk toward zero as if
    ``pseudo_images`` more images had measured none (a landmark seen on ``n`` images keeps
    ``n / (n + pseudo_images)`` of its mean, so 2-6 validation images move little). Returns
    ``(offsets [N, 2], held_out [M, N, 2])``: ``held_out[i]`` the offsets measured without
    image ``i``, to score the correction on images it did not see."""
    errors = np.asarray(errors, dtype=np.float64)
    seen = np.isfinite(errors).all(-1)  # [M, N]
    values = np.where(seen[..., None], errors, 0.0)
    total, count = values.sum(0), seen.sum(0)[:, None].astype(np.float64)  # [N, 2], [N, 1]
    offsets = total / (count + pseudo_images)
    held_out = (total[None] - values) / (count[None] - seen[..., None] + pseudo_images)
    return offsets, held_out
