"""Evaluation of a landmark detector on a prepared split: predictions, metrics (physical or
paper-compatible), the mean-shape floor, tables, overlays and cumulative-error plots."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .data.specs import sdr_thresholds
from .data.tensors import LandmarkTensors
from .fileio import atomic_file, write_text_atomic
from .metrics import paper_compatible_errors, radial_errors, summarize_errors, wrist_spacing
from .preprocessing import original_to_model, spacing_pair

PAPER_GRID = 256


@torch.no_grad()
def predict_split(
    model,
    processor,
    data: LandmarkTensors,
    decoder: str | None = None,
    batch_size: int = 16,
    refine: bool | None = None,
    spread_check: bool = True,
) -> dict:
    """Predict every image of ``data`` through the image processor's path: its intensity
    mapping, the model (both stages when it has a refinement stage and ``data`` its fine
    images, unless ``refine`` is False), and its post-processing into each image's
    **original** frame.

    Returns a dict of arrays: ``coords`` ``[M, N, 2]`` original pixels (final stage),
    ``first_stage_coords`` (the same array when there is one stage), ``scores`` ``[M, N]``,
    ``spread`` ``[M, N]`` (final heatmap spread, original pixels) and ``first_stage_spread``,
    ``embeddings`` ``[M, C]``, ``shape_moved`` ``[M, N]`` (the landmarks the shape check read
    again; all False without one), ``flags`` (per image) and ``loss`` (the first stage's
    training loss against ``data.landmarks``, mean over images). ``spread_check=False``: the
    flags from the embedding test alone (:meth:`LandmarkImageProcessor.flags`)."""
    device = next(model.parameters()).device
    decoder = decoder or processor.decoder
    was_training = model.training
    model.eval()
    keys = ("coords", "first_stage_coords", "scores", "spread", "first_stage_spread", "embeddings", "shape_moved")
    parts: dict[str, list] = {k: [] for k in keys}
    parts["flags"] = []
    losses = []
    pixel_values = data.pixel_values(processor.pixel_range)
    # Fine images only for a model that has a refinement stage to run on them.
    refines = refine is not False and getattr(model, "has_refinement_stage", False)
    fine = data.fine_pixel_values(processor.pixel_range) if refines else None
    labels = data.landmarks
    labeled = bool(torch.isfinite(labels).all())  # an unlabeled pool has no loss
    for start in range(0, len(data), batch_size):
        part = slice(start, start + batch_size)
        x = pixel_values[part].to(device)
        out = model(
            pixel_values=x,
            fine_pixel_values=None if fine is None else fine[part].to(device),
            labels=labels[part].to(device) if labeled else None,
            refine=refine,
            decoder=decoder,
        )
        sizes = data.original_sizes[part]
        c, sc = processor.post_process_coordinates(out, target_sizes=sizes, decoder=decoder)
        parts["coords"].append(c)
        parts["scores"].append(sc)
        parts["first_stage_coords"].append(processor.post_process_coordinates(out, sizes, decoder, stage="first")[0])
        parts["spread"].append(processor.spread(out, sizes))
        first_spread = processor.spread(out, sizes, stage="first")
        parts["first_stage_spread"].append(first_spread)
        parts["embeddings"].append(out.embeddings.double().cpu().numpy())
        moved = out.get("shape_moved")
        parts["shape_moved"].append(np.zeros(c.shape[:2], bool) if moved is None else moved.cpu().numpy())
        parts["flags"] += processor.flags(out, sizes, first_spread, spread_check=spread_check, decoder=decoder)
        losses.append(out.loss.item() * x.shape[0] if labeled else float("nan"))
    model.train(was_training)
    result = {k: (v if k == "flags" else np.concatenate(v)) for k, v in parts.items()}
    result["loss"] = float(sum(losses) / len(data))
    return result


def predict_tensors(model, processor, data: LandmarkTensors, decoder: str | None = None, batch_size: int = 16):
    """``(coordinates [M, N, 2] original pixels, scores [M, N], mean loss)``; see :func:`predict_split`."""
    out = predict_split(model, processor, data, decoder, batch_size)
    return out["coords"], out["scores"], out["loss"]


def prediction_errors(pred: dict, data: LandmarkTensors, config) -> dict:
    """The radial errors of ``pred`` (:func:`predict_split`) against ``data``'s landmarks:
    ``errors_px`` ``[M, N]`` in original pixels (what radii are compared with), ``errors`` in the
    unit of the model's convention, ``px_to_unit`` ``[M, 1]`` (the larger axis spacing, as
    radii convert) and ``unit``."""
    truth = data.original_landmarks.double().numpy()
    spacing, unit = physical_spacing(data, config)
    return {
        "errors_px": radial_errors(pred["coords"], truth),
        "errors": radial_errors(pred["coords"], truth, spacing),
        "px_to_unit": np.ones((len(data), 1)) if spacing is None else spacing.max(axis=1, keepdims=True),
        "unit": unit,
    }


def uncertainty_metrics(pred: dict, data: LandmarkTensors, processor, config) -> dict:
    """How good the uncertainty is on an evaluated split: per landmark and overall, the
    empirical coverage of the calibrated radii and their mean size (in the unit of the model's
    convention; radii convert with the larger axis spacing, as predictions do); how well the
    score and the spread rank the errors (Spearman); the MRE of the 80 % most confident
    landmarks; the images flagged; and coverage at several nominal levels (reliability)."""
    from scipy.stats import spearmanr

    measured = prediction_errors(pred, data, config)
    errors_px, errors, px_to_unit, unit = (measured[k] for k in ("errors_px", "errors", "px_to_unit", "unit"))
    scores = pred["scores"]
    confident = scores.ravel() >= np.quantile(scores.ravel(), 0.2)
    out: dict = {
        "unit": unit,
        "flagged_images": int(sum(f != "ok" for f in pred["flags"])),
        "num_images": len(data),
        **(
            {
                "flag_calibration_images": processor.flag_calibration_images,
                "flag_false_alarm_rate": processor.flag_false_alarm_rate,
            }
            if processor.flag_calibration_images
            else {}
        ),
        "spearman_score_error": float(spearmanr(scores.ravel(), errors.ravel()).statistic),
        "spearman_spread_error": float(spearmanr(pred["spread"].ravel(), errors.ravel()).statistic),
        "mre_all": float(errors.mean()),
        "mre_most_confident_80": float(errors.ravel()[confident].mean()),
    }
    radii = processor.radii(pred["spread"])
    if radii is None:
        return out
    # Only landmarks with a finite radius count towards coverage and size: an infinite
    # radius "covers" everything and would report a false 100 %.
    has = np.isfinite(radii).all(axis=0)
    covered = errors_px <= radii
    n_cal = processor.calibration_size
    out.update(
        alpha=processor.alpha,
        radius_alpha=processor.radius_alpha,
        radius_coverage=1.0 - processor.radius_alpha,
        calibration_images=n_cal,
        landmarks_with_radius=int(has.sum()),
        coverage=float(covered[:, has].mean()) if has.any() else None,
        mean_radius=float(np.mean((radii * px_to_unit)[:, has])) if has.any() else None,
    )
    out["per_landmark"] = [
        {
            "name": n,
            "coverage": float(covered[:, j].mean()) if has[j] else None,
            "mean_radius": float(np.mean(radii[:, j] * px_to_unit[:, 0])) if has[j] else None,
        }
        for j, n in enumerate(data.landmark_names)
    ]
    # Levels the calibration images cannot reach (1 - a > n / (n + 1)) have no radii: left out.
    out["reliability"] = [
        {"nominal": 1.0 - a, "empirical": float((errors_px <= processor.radii(pred["spread"], a)).mean())}
        for a in (0.5, 0.4, 0.3, 0.2, 0.1, 0.05)
        if a >= 1.0 / (n_cal + 1)
    ]
    return out


def save_reliability_plot(reliability: list[dict], path: str | os.PathLike, title: str | None = None) -> str:
    """Nominal vs empirical coverage of the calibrated radii (on the diagonal or above: honest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    nominal = [r["nominal"] for r in reliability]
    ax.plot([0.4, 1], [0.4, 1], color="grey", lw=1, ls="--", label="ideal")
    ax.plot(nominal, [r["empirical"] for r in reliability], "o-", label="calibrated radii")
    ax.set_xlabel("nominal coverage (1 − α)")
    ax.set_ylabel("empirical coverage")
    ax.set_xlim(0.45, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return os.fspath(path)


def physical_spacing(data: LandmarkTensors, config) -> tuple[np.ndarray | None, str]:
    """The per-image spacing ``[M, 2]`` (mm per original pixel) that the model's
    ``config.unit_convention`` defines for ``data``, and the unit: ``spacing`` (each image's
    spacing, else ``config.spacing``; pixels when neither is known), ``wrist``
    (``config.wrist_distance_mm`` over the distance between ``config.wrist_indices`` of the
    ground truth) or ``pixels`` (``None``)."""
    convention = getattr(config, "unit_convention", "spacing")
    m = len(data)
    if convention == "wrist":
        truth = data.original_landmarks.double().numpy()
        s = wrist_spacing(truth, config.wrist_indices, getattr(config, "wrist_distance_mm", 50.0))
        return np.repeat(s[:, None], 2, axis=1), "mm"
    if convention == "pixels":
        return None, "px"
    if data.has_spacing:
        return data.spacing.double().numpy(), "mm"
    if getattr(config, "spacing", None) is not None:
        return np.tile(spacing_pair(config.spacing), (m, 1)), "mm"
    return None, "px"


def physical_errors(pred: np.ndarray, data: LandmarkTensors, config) -> tuple[np.ndarray, str]:
    """Errors ``[M, N]`` in the original frame, in the unit of the model's unit convention
    (see :func:`physical_spacing`). ``pred``: ``[M, N, 2]`` original pixels."""
    spacing, unit = physical_spacing(data, config)
    return radial_errors(pred, data.original_landmarks.double().numpy(), spacing), unit


def paper_errors(pred: np.ndarray, data: LandmarkTensors, wrist_indices=(0, 4)) -> tuple[np.ndarray, str]:
    """Errors as the paper's code computes them, on the 256 grid (see metrics)."""
    sizes = data.original_sizes[:, None, :].double()
    pred_grid = original_to_model(torch.as_tensor(pred, dtype=torch.float64), sizes, PAPER_GRID)
    true_grid = original_to_model(data.original_landmarks.double(), sizes, PAPER_GRID)
    errors = paper_compatible_errors(
        pred_grid, true_grid, data.dataset, PAPER_GRID, data.original_sizes, wrist_indices=wrist_indices
    )
    return errors, ("mm" if data.dataset in ("ceph", "hand") else "px")


def compute_metrics(
    pred: np.ndarray,
    data: LandmarkTensors,
    config,
    mode: str = "physical",
    thresholds: Sequence[float] | None = None,
) -> dict:
    """Metrics dict (see :func:`hf_landmark.metrics.summarize_errors`) plus ``mode``.

    ``pred``: ``[M, N, 2]`` original pixels; ``config``: the model's (its unit convention
    and wrist indices define the physical units)."""
    if mode == "physical":
        errors, unit = physical_errors(pred, data, config)
    elif mode == "paper":
        errors, unit = paper_errors(pred, data, tuple(getattr(config, "wrist_indices", (0, 4))))
    else:
        raise ValueError(f"mode must be 'physical' or 'paper', got {mode!r}")
    thresholds = tuple(thresholds) if thresholds else sdr_thresholds(data.dataset, unit)
    out = summarize_errors(errors, thresholds, data.landmark_names, unit)
    out["mode"] = mode
    out["errors"] = errors.tolist()
    return out


def mean_shape_prediction(labeled: LandmarkTensors, target: LandmarkTensors) -> np.ndarray:
    """The no-model floor: for every target image, the mean landmark positions of the
    labeled images in normalised image coordinates. Returns original-frame coordinates."""
    sizes = labeled.original_sizes[:, None, :].double()
    mean = ((labeled.original_landmarks.double() + 0.5) / sizes).mean(dim=0, keepdim=True)
    return (mean * target.original_sizes[:, None, :].double() - 0.5).numpy()


def markdown_table(metrics: dict, title: str | None = None) -> str:
    """Per-landmark MRE and SDR; with a two-stage detector's ``first_stage`` metrics, the first
    stage's MRE and SDR at the smallest threshold beside the final ones."""
    unit = metrics["unit"]
    thr = list(metrics["sdr"])
    first = metrics.get("first_stage")
    lines = [f"### {title}", ""] if title else []
    head = f"| landmark | first-stage MRE ({unit}) | first-stage SDR {thr[0]} {unit} " if first else "| landmark "
    lines.append(head + "| MRE (" + unit + ") | " + " | ".join(f"SDR {t} {unit}" for t in thr) + " |")
    lines.append("|---|" + ("---|---|" if first else "") + "---|" + "---|" * len(thr))

    def cells(row, bold=""):
        lead = f"{bold}{row['mre']:.2f} ± {row['mre_std']:.2f}{bold} | " + " | ".join(
            f"{bold}{row['sdr'][t]:.1f}{bold}" for t in thr
        )
        return lead

    def first_cells(row, bold=""):
        return f"{bold}{row['mre']:.2f} ± {row['mre_std']:.2f}{bold} | {bold}{row['sdr'][thr[0]]:.1f}{bold} | "

    for j, row in enumerate(metrics["per_landmark"]):
        lines.append(
            f"| {row['name']} | " + (first_cells(first["per_landmark"][j]) if first else "") + cells(row) + " |"
        )
    lines.append("| **all** | " + (first_cells(first, "**") if first else "") + cells(metrics, "**") + " |")
    return "\n".join(lines) + "\n"


def save_overlays(
    data: LandmarkTensors,
    pred: np.ndarray,
    out_dir: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    radii: np.ndarray | None = None,
) -> list[str]:
    """One overlay PNG per image, named by image id, at the **original** image's size, plus
    ``legend.txt`` (the numbers' landmark names). ``pred``: ``[M, N, 2]`` original pixels;
    ``radii``: ``[M, N]`` calibrated error radii (original pixels) drawn as circles.

    The picture is the original file found in ``image_dir`` (by image id, any supported
    extension), else the prepared copy resized back to the original size (right geometry,
    less detail)."""
    from .preprocessing import read_image, resize_image
    from .visualization import draw_landmarks, legend_lines

    os.makedirs(out_dir, exist_ok=True)
    originals = _files_by_stem(image_dir) if image_dir else {}
    paths = []
    for i in range(len(data) if limit is None else min(limit, len(data))):
        w, h = (int(v) for v in data.original_sizes[i].tolist())
        source = originals.get(data.image_ids[i])
        # Upsampling the prepared copy for display: bilinear reads better than area (blocky).
        image = read_image(source) if source else resize_image(data.images[i, 0].numpy(), (w, h), "bilinear")
        img = draw_landmarks(
            image, pred[i], data.original_landmarks[i].numpy(), radii=None if radii is None else radii[i]
        )
        path = os.path.join(out_dir, f"{data.image_ids[i]}.png")
        with atomic_file(path) as tmp:
            img.save(tmp)
        paths.append(path)
    write_text_atomic("\n".join(legend_lines(data.landmark_names)) + "\n", os.path.join(out_dir, "legend.txt"))
    return paths


def _files_by_stem(folder) -> dict[str, str]:
    from pathlib import Path

    from .preprocessing import IMAGE_EXTENSIONS

    found: dict[str, str] = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            found.setdefault(p.stem, str(p))
    return found


def save_cumulative_error_plot(curves: dict[str, np.ndarray], unit: str, path: str | os.PathLike) -> str:
    """Cumulative error distribution: fraction of landmarks within each error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    top = max(float(np.percentile(np.ravel(e), 98)) for e in curves.values())
    for label, errors in curves.items():
        e = np.sort(np.ravel(errors))
        ax.plot(e, np.arange(1, e.size + 1) / e.size * 100.0, label=label)
    ax.set_xlim(0, max(top, 1e-6) * 1.05)
    ax.set_xlabel(f"radial error ({unit})")
    ax.set_ylabel("landmarks within (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return os.fspath(path)


def format_mean_std(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "–"
    return f"{v.mean():.2f} ± {v.std():.2f}" if v.size > 1 else f"{v.mean():.2f}"
