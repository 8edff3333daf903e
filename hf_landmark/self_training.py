"""Self-training's parts: which images it may pseudo-label, the pseudo-labels a saved model
gives them and which of those to keep (the consistency test), and how good the kept ones
are where the truth is known (reported only). ``training/finetune.py`` runs the rounds."""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import load_tensors
from .modeling_landmark import LandmarkDetector


def self_training_pool(
    train_split, pool_idx: list[int], unlabeled, size: int, resample: str, fine_size: int, limit: int
):
    """The images self-training may pseudo-label: the training split's unlabeled rows
    (``pool_idx``) and the unlabeled split, at most ``limit`` evenly spaced, decoded at the
    model's and the fine size. Returns ``(pool with NaN landmarks, their true landmarks [M, N, 2]
    where known, NaN elsewhere: for reporting pseudo-label quality only)``."""
    sources = [(train_split, i) for i in pool_idx] + (
        [(unlabeled, i) for i in range(len(unlabeled))] if unlabeled is not None else []
    )
    if not sources:
        return None, None
    if len(sources) > limit:
        sources = [sources[i] for i in np.linspace(0, len(sources) - 1, limit).round().astype(int)]
    parts = []
    for split in (train_split, unlabeled):
        rows = [i for s, i in sources if s is split]
        if rows:
            parts.append(load_tensors(split.select(rows), size, resample, fine_size))
    pool = parts[0] if len(parts) == 1 else parts[0].concat(parts[1])
    truth = pool.original_landmarks.clone()
    return pool.with_landmarks(torch.full_like(truth, math.nan)), truth


def pseudo_labels(
    model_dir: str, pool, val, labeled, decoder: str, keep: float, device, keep_each: float = 0.0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The saved model's predictions on ``pool`` and which of them to keep. The model's
    low-confidence flag (its embedding test) is calibrated on ``labeled`` (what "like the
    training data" means) and ``val`` alone, never on the pool, so that a pool full of odd
    images cannot make itself look familiar; a flagged pool image gives no pseudo-label. Of the others,
    :func:`choose_pseudo_labels` (its ratios from ``val``) keeps the ``keep`` share, and at least
    the ``keep_each`` share of each landmark. Returns
    ``(coords [M, N, 2] original px, keep mask [M, N], facts)``."""
    from .evaluation import predict_split
    from .image_processing_landmark import processor_for_model
    from .metrics import radial_errors

    model = LandmarkDetector.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    processor = processor_for_model(model)
    cal = predict_split(model, processor, val, decoder)
    reference = predict_split(model, processor, labeled, decoder, refine=False)["embeddings"]
    processor.calibrate_flag(
        reference, cal["embeddings"], processor.relative_spread(cal["first_stage_spread"], val.original_sizes.numpy())
    )
    # Only the embedding test: how sure the model is of each landmark is the expected error's part.
    processor.spread_threshold = None
    val_errors = radial_errors(cal["coords"], val.original_landmarks.double().numpy())
    out = predict_split(model, processor, pool, decoder)
    usable = np.array([f == "ok" for f in out["flags"]])
    chosen, threshold = choose_pseudo_labels(
        out["spread"], pool.original_sizes.double().numpy(), cal["spread"], val_errors, keep, usable, keep_each
    )
    return out["coords"], chosen, {"flagged_images": int((~usable).sum()), "threshold_relative": threshold}


def choose_pseudo_labels(
    spread: np.ndarray,
    sizes: np.ndarray,
    val_spread: np.ndarray,
    val_errors: np.ndarray,
    keep: float,
    usable: np.ndarray | None = None,
    keep_each: float = 0.0,
):
    """The consistency test: each pool prediction's expected error is its heatmap spread
    (``[M, N]`` original px) times its landmark's median error-to-spread ratio on the
    validation images (``val_errors`` / ``val_spread``, ``[V, N]``), over the image's diagonal
    (``sizes`` ``[M, 2]`` (W, H)); of the ``usable`` images (``[M]`` bool; default all) the
    ``keep`` share of predictions with the smallest is kept (a landmark the model is unsure of,
    or one it tends to miss, is left out). With ``keep_each`` > 0, each landmark also keeps the
    ``keep_each`` share of its own usable predictions with the smallest expected error, so that
    the landmarks the shared threshold leaves out still get their best ones. Returns
    ``(mask [M, N], threshold)``: the threshold is the shared one."""
    ratio = np.median(np.asarray(val_errors, np.float64) / np.asarray(val_spread, np.float64), axis=0)
    expected = (
        np.asarray(spread, np.float64)
        * ratio[None, :]
        / np.sqrt((np.asarray(sizes, np.float64) ** 2).sum(axis=1))[:, None]
    )
    usable = np.ones(len(expected), bool) if usable is None else np.asarray(usable, bool)
    if not usable.any():
        return np.zeros(expected.shape, bool), None
    threshold = float(np.quantile(expected[usable], keep))
    chosen = expected <= threshold
    if keep_each > 0:
        chosen |= expected <= np.quantile(expected[usable], keep_each, axis=0)[None, :]
    return chosen & usable[:, None], threshold


def pseudo_label_quality(coords: np.ndarray, chosen: np.ndarray, truth: torch.Tensor, pool, config) -> dict:
    """Pseudo-labels' error against the truth where the pool has it (labeled training images
    left out of the labeled set): kept ones and all predictions, in the model's unit. Only
    reported, never used to choose."""
    from .evaluation import physical_errors

    known = torch.isfinite(truth).all(-1).all(-1).numpy()
    if not known.any():
        return {}
    errors, unit = physical_errors(
        coords[known], pool.subset(np.flatnonzero(known)).with_landmarks(truth[known]), config
    )
    kept = errors[chosen[known]]
    facts = {
        "images_with_truth": int(known.sum()),
        "unit": unit,
        "all_mre": float(errors.mean()),
        "all_median": float(np.median(errors)),
    }
    if kept.size:
        facts.update(
            kept_mre=float(kept.mean()), kept_median=float(np.median(kept)), kept_p90=float(np.quantile(kept, 0.9))
        )
    if unit == "mm":
        facts.update(
            all_over_4mm=float((errors > 4).mean()), kept_over_4mm=float((kept > 4).mean()) if kept.size else None
        )
    return facts
