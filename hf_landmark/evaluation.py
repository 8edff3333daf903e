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
from .preprocessing import original_to_model, to_pixel_values

PAPER_GRID = 256


@torch.no_grad()
def predict_tensors(model, processor, data: LandmarkTensors, decoder: str | None = None, batch_size: int = 16, device=None):
    """Predict every image of ``data`` through the image processor's path: its intensity
    mapping, the model, and its post-processing into each image's **original** frame.

    Returns ``(coordinates [M, N, 2] float64 original pixels, scores [M, N], mean loss)``; the
    loss is the model's training loss against ``data.landmarks``, averaged over images."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    coords, scores, losses = [], [], []
    for start in range(0, len(data), batch_size):
        part = slice(start, start + batch_size)
        x = to_pixel_values(data.images[part], processor.pixel_range).to(device)
        out = model(pixel_values=x, labels=data.landmarks[part].to(device))
        c, s = processor.post_process_coordinates(out, target_sizes=data.original_sizes[part], decoder=decoder)
        coords.append(c)
        scores.append(s)
        losses.append(out.loss.item() * x.shape[0])
    model.train(was_training)
    return np.concatenate(coords), np.concatenate(scores), float(sum(losses) / len(data))


def physical_errors(pred: np.ndarray, data: LandmarkTensors, config) -> tuple[np.ndarray, str]:
    """Errors in the original frame, in the unit of the model's ``config.unit_convention``:
    ``spacing`` (each image's spacing, else ``config.spacing``; pixels when neither is known),
    ``wrist`` (``config.wrist_distance_mm`` over the distance between ``config.wrist_indices``
    of the ground truth) or ``pixels``. ``pred``: ``[M, N, 2]`` original pixels."""
    truth = data.original_landmarks.double().numpy()
    convention = getattr(config, "unit_convention", "spacing")
    if convention == "wrist":
        spacing = wrist_spacing(truth, config.wrist_indices, getattr(config, "wrist_distance_mm", 50.0))
        return radial_errors(pred, truth, spacing[:, None]), "mm"
    if convention == "pixels":
        return radial_errors(pred, truth), "px"
    if data.has_spacing:
        return radial_errors(pred, truth, data.spacing.numpy()), "mm"
    if getattr(config, "spacing", None) is not None:
        return radial_errors(pred, truth, config.spacing), "mm"
    return radial_errors(pred, truth), "px"


def paper_errors(pred: np.ndarray, data: LandmarkTensors, wrist_indices=(0, 4)) -> tuple[np.ndarray, str]:
    """Errors as the paper's code computes them, on the 256 grid (see metrics)."""
    sizes = data.original_sizes[:, None, :].double()
    pred_grid = original_to_model(torch.as_tensor(pred, dtype=torch.float64), sizes, PAPER_GRID)
    true_grid = original_to_model(data.original_landmarks.double(), sizes, PAPER_GRID)
    errors = paper_compatible_errors(pred_grid, true_grid, data.dataset, PAPER_GRID, data.original_sizes, wrist_indices=wrist_indices)
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
    unit = metrics["unit"]
    thr = list(metrics["sdr"])
    lines = [f"### {title}", ""] if title else []
    lines.append("| landmark | MRE (" + unit + ") | " + " | ".join(f"SDR {t} {unit}" for t in thr) + " |")
    lines.append("|---|---|" + "---|" * len(thr))
    for row in metrics["per_landmark"]:
        lines.append(f"| {row['name']} | {row['mre']:.2f} ± {row['mre_std']:.2f} | " + " | ".join(f"{row['sdr'][t]:.1f}" for t in thr) + " |")
    lines.append(f"| **all** | **{metrics['mre']:.2f} ± {metrics['mre_std']:.2f}** | " + " | ".join(f"**{metrics['sdr'][t]:.1f}**" for t in thr) + " |")
    return "\n".join(lines) + "\n"


def save_overlays(
    data: LandmarkTensors, pred: np.ndarray, out_dir: str | os.PathLike, image_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> list[str]:
    """One overlay PNG per image, named by image id, at the **original** image's size, plus
    ``legend.txt`` (the numbers' landmark names). ``pred``: ``[M, N, 2]`` original pixels.

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
        img = draw_landmarks(image, pred[i], data.original_landmarks[i].numpy())
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
