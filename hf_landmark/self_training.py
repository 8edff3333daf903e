"""Self-training's parts: which images it may pseudo-label, the pseudo-labels a saved model
gives them and which of those to keep (the consistency test), and how good the kept ones
are where the truth is known (reported only), and the rounds themselves (:func:`self_train`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from .configuration_landmark import LandmarkConfig
from .data import load_tensors
from .errors import UserInputError
from .fileio import json_text, replace_directory, write_text_atomic
from .modeling_landmark import LandmarkDetector
from .training_loop import TRAINING_RECORD

logger = get_logger(__name__)


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


def pseudo_labels(  # noqa: PLR0913 (the images of each role, and how to label them)
    model_dir: str, pool, val, labeled, decoder: str, shares: tuple[float, float], device, corrections=None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The saved model's predictions on ``pool`` and which of them to keep. The model's
    low-confidence flag (its embedding test) is calibrated on ``labeled`` (what "like the
    training data" means) and ``val`` alone, never on the pool, so that a pool full of odd
    images cannot make itself look familiar; a flagged pool image gives no pseudo-label. With
    ``corrections`` (:class:`hf_landmark.calibration.Corrections`, those of the run), the
    predictions are corrected as the saved detector's will be: landmark offsets and shape fusion
    fitted on ``val`` (the pool's first-stage landmarks among the fusion's shapes). Of the
    others, :func:`choose_pseudo_labels` (its ratios from ``val``, under the same corrections,
    each validation image's fitted without it) keeps the ``keep`` share, and at least
    the ``keep_each`` share of each landmark (``shares``: ``(keep, keep_each)``). Returns
    ``(coords [M, N, 2] original px, keep mask [M, N], facts)``."""
    from .calibration import calibrate_offsets, calibrate_shape_model, correction_stage
    from .evaluation import predict_split
    from .image_processing_landmark import processor_for_model
    from .metrics import radial_errors

    keep, keep_each = shares
    model = LandmarkDetector.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    processor = processor_for_model(model)
    corrected = corrections is not None and corrections.any
    if corrected:  # a teacher's own corrections are fitted again on this run's terms
        processor.set_landmark_offsets(None)
        processor.set_shape_model(None)
    cal = predict_split(model, processor, val, decoder)
    reference = predict_split(model, processor, labeled, decoder, refine=False)["embeddings"]
    processor.calibrate_flag(
        reference, cal["embeddings"], processor.relative_spread(cal["first_stage_spread"], val.original_sizes.numpy())
    )
    stage = correction_stage(model, val)
    if corrected:
        offsets, cal["coords"] = calibrate_offsets(model, processor, val, cal, corrections.offset_images, stage)
    # Only the embedding test: how sure the model is of each landmark is the expected error's part.
    out = predict_split(model, processor, pool, decoder, spread_check=False)
    facts = {}
    if corrected:  # the fusion's shapes: the labeled images' truth and the pool's first-stage landmarks
        shapes = np.concatenate([labeled.original_landmarks.double().numpy(), out["first_stage_coords"]])
        fusion, cal["coords"] = calibrate_shape_model(
            model, processor, val, cal, shapes, corrections.shape_fusion, stage
        )
        if processor.fuses(stage):
            out["coords"] = processor.fuse(out["coords"], out["spread"], pool.original_sizes.numpy())
        facts["corrections"] = {
            "offsets": (offsets or {}).get("leave_one_out"),
            "shape_fusion": (fusion or {}).get("held_out"),
        }
    val_errors = radial_errors(cal["coords"], val.original_landmarks.double().numpy())
    usable = np.array([f == "ok" for f in out["flags"]])
    chosen, threshold = choose_pseudo_labels(
        out["spread"], pool.original_sizes.double().numpy(), cal["spread"], val_errors, keep, usable, keep_each
    )
    return out["coords"], chosen, {"flagged_images": int((~usable).sum()), "threshold_relative": threshold, **facts}


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


@dataclass(frozen=True)
class SelfTrainingPlan:
    """How the rounds run: at most ``rounds``; the ``keep`` share of pool landmarks (and each
    landmark's ``keep_each`` share) kept as pseudo-labels; ``labeled_share`` of each batch from
    the labeled images; round ``r`` seeded ``seed + r``; at most ``pool_limit`` pool images;
    ``new_model()`` the fresh model a round trains (from the same initialisation as the first);
    ``teacher``: a saved detector (or ensemble) on the same labels whose predictions are the first
    round's pseudo-labels instead of the model's (:func:`check_teacher`)."""

    rounds: int
    keep: float
    keep_each: float
    labeled_share: float
    seed: int
    pool_limit: int
    new_model: Callable[[], Any]
    teacher: str | None = None
    #: the run's :class:`hf_landmark.calibration.Corrections`, applied to the pseudo-labels (None: none)
    corrections: Any = None


def check_teacher(teacher: str, record: dict) -> dict:
    """What the training record says of ``teacher``: ``{"path", "seed", "val_mre", "members"}``. A
    teacher fine-tuned on other data, other labels or another validation split is a
    :class:`UserInputError`: its pseudo-labels would carry labels (or validation images) that
    this run's record does not name."""
    from .ensembles import SHARED_RECORD_KEYS, differing_record_key, read_training_record

    theirs = read_training_record(teacher)
    if key := differing_record_key(theirs, record, SHARED_RECORD_KEYS):
        raise UserInputError(
            f"--teacher {teacher}: fine-tuned on other {SHARED_RECORD_KEYS[key]} ({key}: {theirs.get(key)} against this run's "
            f"{record.get(key)}); a teacher shares the labels of the detector it teaches"
        )
    return {
        "path": os.path.abspath(teacher),
        "seed": theirs.get("seed"),
        "val_mre": theirs.get("val_mre"),
        "members": (theirs.get("ensemble") or {}).get("members", 1),
    }


@dataclass
class SelfTrainingPool:
    """The images self-training may pseudo-label (their landmarks NaN) and their true landmarks
    where known (for reporting pseudo-label quality only)."""

    images: Any
    truth: torch.Tensor


def self_train(
    ctx, plan: SelfTrainingPlan, train, pool: SelfTrainingPool, model_dir: str, record: dict, result: dict
) -> tuple[dict, dict]:
    """Self-training rounds: the best model so far pseudo-labels ``pool`` (:func:`pseudo_labels`),
    a fresh model trains both stages on the labeled images (drawn with ``labeled_share`` of each
    batch) plus the images with kept pseudo-labels (the rejected landmarks left out), and
    replaces the best model only if it is better on validation. Every round's counts and
    pseudo-label quality go into the training record beside the model. ``ctx`` is a
    :class:`hf_landmark.stages.Stages`. Returns ``(result of the best model, self-training summary)``."""
    rounds = []
    before = {
        "val_mre": result["best"]["val_mre"],
        "val_sdr": result["best"].get("val_sdr"),
        "first_stage_val_mre": result["first_stage"]["val_mre"],
    }
    for r in range(1, plan.rounds + 1):
        t0 = time.perf_counter()
        source = plan.teacher if r == 1 and plan.teacher else model_dir
        report, combined, weights = _pseudo_label_round(ctx, plan, train, pool, source, model_dir, r)
        if combined is None:
            rounds.append(dict(report, model_kept=False, seconds=time.perf_counter() - t0))
            break
        outcome, error = _train_round(ctx, plan, combined, weights, record, r)
        if error is not None:
            rounds.append(dict(report, diverged=error, model_kept=False, seconds=time.perf_counter() - t0))
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
        round_dir = os.path.join(ctx.settings.output_dir, f"self-train-{r}")
        if better and ctx.accelerator.is_main_process:
            replace_directory(os.path.join(round_dir, "model"), model_dir)
        if better:
            result = outcome
        shutil.rmtree(round_dir, ignore_errors=True)
        rounds.append(report)
        _log_round(report, r, better, plan.rounds)
        if not better:
            # The next round would pseudo-label the pool with the same model: the same labels
            # again, and another draw of training noise picked by validation is not a gain.
            break
    summary = {
        "without": before,
        "rounds": rounds,
        "keep": plan.keep,
        "keep_each": plan.keep_each,
        "labeled_share": plan.labeled_share,
        "model_from_round": max([0] + [x["round"] for x in rounds if x["model_kept"]]),
    }
    if plan.teacher:
        summary["teacher"] = os.path.abspath(plan.teacher)
    if ctx.accelerator.is_main_process:
        path = os.path.join(model_dir, TRAINING_RECORD)
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        saved.pop("self_training_round", None)
        write_text_atomic(json_text(dict(saved, self_training=summary)), path)
    return result, summary


def _pseudo_label_round(
    ctx, plan: SelfTrainingPlan, train, pool: SelfTrainingPool, source: str, model_dir: str, r: int
):
    """Round ``r``'s pseudo-labels, ``source``'s predictions (the best model so far at
    ``model_dir``, or the teacher): ``(report, labeled + pseudo-labeled images, their sampling
    weights)``, or ``(report, None, None)`` when every pool image is flagged."""
    settings = ctx.settings
    coords, chosen, facts = pseudo_labels(
        source,
        pool.images,
        ctx.val,
        train,
        settings.decoder,
        (plan.keep, plan.keep_each),
        ctx.accelerator.device,
        plan.corrections,
    )
    images = np.flatnonzero(chosen.any(axis=1))
    report = {
        "round": r,
        **({"pseudo_labels_from": "teacher"} if source != model_dir else {}),
        "pool_images": len(pool.images),
        "pool_landmarks": int(chosen.size),
        "kept_landmarks": int(chosen.sum()),
        "images_with_pseudo_labels": len(images),
        **facts,
        "pseudo_label_error": pseudo_label_quality(
            coords, chosen, pool.truth, pool.images, LandmarkConfig.from_pretrained(model_dir)
        ),
    }
    fitted = {k: v for k, v in facts.get("corrections", {}).items() if v}
    if fitted:
        first, last = list(fitted.values())[0], list(fitted.values())[-1]
        logger.info(
            "self-train round %d: pseudo-labels under the run's %s: validation MRE %.3f -> %.3f %s (each image's fitted without it)",
            r,
            " and ".join(k.replace("_", " ") for k in fitted),
            first["mre_without"],
            last["mre_with"],
            last["unit"],
        )
    if not len(images):
        logger.warning(
            "self-train round %d: every pool image was flagged as unlike the training images; no pseudo-labels", r
        )
        return report, None, None
    kept = np.where(chosen[..., None], coords, np.nan)[images]
    combined = train.concat(pool.images.subset(images).with_landmarks(kept))
    share = plan.labeled_share
    weights = torch.cat(
        [
            torch.full((len(train),), share / len(train)),
            torch.full((len(images),), (1 - share) / max(1, len(images))),
        ]
    )
    return report, combined, weights


def _train_round(
    ctx, plan: SelfTrainingPlan, combined, weights, record: dict, r: int
) -> tuple[dict | None, str | None]:
    """``(outcome, None)``: a fresh model trained on ``combined`` into ``OUT/self-train-r/model``;
    ``(None, error)`` (the round's folder removed) when it diverges: a round that diverges costs
    the round, not the model of the passes before it."""
    from .stages import train_two_stages

    set_seed(plan.seed + r)
    model = plan.new_model()
    round_dir = os.path.join(ctx.settings.output_dir, f"self-train-{r}")
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
        logger.warning("self-train round %s: %s; the model before it is kept", r, err)
        shutil.rmtree(round_dir, ignore_errors=True)
        return None, str(err)
    return outcome, None


def _log_round(report: dict, r: int, better: bool, rounds: int) -> None:
    quality = report["pseudo_label_error"]
    logger.info(
        "self-train round %d: kept %d of %d %spool landmarks on %d images%s; validation MRE %.3f (best before %.3f)%s",
        r,
        report["kept_landmarks"],
        report["pool_landmarks"],
        "teacher's " if report.get("pseudo_labels_from") == "teacher" else "",
        report["images_with_pseudo_labels"],
        f" (their error {quality['kept_mre']:.2f} {quality['unit']}, all predictions {quality['all_mre']:.2f})"
        if "kept_mre" in quality
        else "",
        report["val_mre"],
        report["previous_best_val_mre"],
        ": kept" if better else ": not kept" + ("; self-training stops here" if r < rounds else ""),
    )
