"""Landmark metrics: radial errors, mean radial error (MRE) and successful detection rate (SDR).

Default (``physical``) mode measures in the **original image frame**: predictions are mapped
back from the model frame, and errors are converted to mm with an explicit spacing
(isotropic, ``(sx, sy)``, or one per image), or left in pixels when no spacing exists.

``paper`` mode reproduces how the paper's code computed its tables (see
:func:`paper_compatible_errors`), so numbers can be set beside them; it is not correct
metrology (anisotropic factors are swapped for the cephalograms, errors are on the 256 grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .heatmaps import decode_centroid, gaussian_disk_targets

#: The 50 mm wrist-width convention for the hand dataset (Payer et al. 2019).
WRIST_DISTANCE_MM = 50.0


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def radial_errors(pred, true, spacing=None) -> np.ndarray:
    """Euclidean distance between predicted and true landmarks.

    Args:
        pred, true: ``[M, N, 2]`` (x, y) in the same pixel frame (normally the original).
        spacing: ``None`` (errors in pixels), a number (isotropic mm/px), ``(sx, sy)``
            (any length-2 vector), or per image ``[M, 1]`` / ``[M]`` (isotropic; M ≠ 2) or
            ``[M, 2]``.
    Returns:
        ``[M, N]`` errors in mm (or pixels without spacing).
    """
    pred, true = _np(pred), _np(true)
    if pred.shape != true.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred and true must both be [M, N, 2]; got {pred.shape} and {true.shape}")
    diff = pred - true
    if spacing is not None:
        s = _np(spacing)
        if s.ndim == 0:
            s = np.broadcast_to(s, (1, 1, 2))
        elif s.ndim == 1 and s.shape[0] == 2:
            s = s.reshape(1, 1, 2)
        elif s.ndim == 1 or (s.ndim == 2 and s.shape[1] == 1):
            s = np.repeat(s.reshape(-1, 1, 1), 2, axis=-1)
        elif s.ndim == 2 and s.shape[1] == 2:
            s = s.reshape(-1, 1, 2)
        else:
            raise ValueError(f"spacing of shape {s.shape} not understood")
        diff = diff * s
    return np.sqrt((diff**2).sum(-1))


def wrist_spacing(true, indices: Sequence[int] = (0, 4), distance_mm: float = WRIST_DISTANCE_MM) -> np.ndarray:
    """Per-image isotropic spacing (mm per pixel) from the hand's wrist-width convention:
    ``distance_mm`` divided by the distance between landmarks ``indices`` of ``true``
    (``[M, N, 2]``). The paper's code uses 0-based (0, 4); Payer et al. use (1, 5)."""
    true = _np(true)
    i, j = indices
    width = np.sqrt(((true[:, i] - true[:, j]) ** 2).sum(-1))
    if np.any(width <= 0):
        raise ValueError(f"wrist landmarks {i} and {j} coincide in some image; cannot derive spacing")
    return distance_mm / width


def successful_detection_rates(errors, thresholds: Sequence[float]) -> dict[float, float]:
    """Percentage of errors ``<=`` each threshold (same unit as ``errors``)."""
    e = _np(errors).ravel()
    return {float(t): float(100.0 * np.mean(e <= t)) for t in thresholds}


def mean_radial_error(errors) -> tuple[float, float]:
    """Mean and standard deviation of all radial errors."""
    e = _np(errors).ravel()
    return float(e.mean()), float(e.std())


def summarize_errors(
    errors, thresholds: Sequence[float], landmark_names: Sequence[str] | None = None, unit: str = "mm"
) -> dict:
    """Overall and per-landmark MRE ± std and SDR from ``[M, N]`` errors."""
    e = _np(errors)
    names = list(landmark_names) if landmark_names is not None else [f"L{i}" for i in range(e.shape[1])]
    mre, std = mean_radial_error(e)
    per = []
    for j, name in enumerate(names):
        m, s = mean_radial_error(e[:, j])
        per.append(
            {"name": name, "mre": m, "mre_std": s, "sdr": _str_keys(successful_detection_rates(e[:, j], thresholds))}
        )
    return {
        "mre": mre,
        "mre_std": std,
        "unit": unit,
        "sdr": _str_keys(successful_detection_rates(e, thresholds)),
        "per_landmark": per,
        "num_images": int(e.shape[0]),
        "num_landmarks": int(e.shape[1]),
    }


def _str_keys(d: dict[float, float]) -> dict[str, float]:
    return {f"{k:g}": v for k, v in d.items()}


# --- the paper's evaluation, reproduced -------------------------------------------------


def paper_ground_truth(true_model, model_size: int, sigma: float = 5.0) -> torch.Tensor:
    """The paper's ground truth: the annotation (model frame) encoded as a binary disk
    heatmap, decoded again with the centroid decoder, and rounded to integers.

    The authors take the centroid of the largest external contour (image moments); we use
    the area centroid of the largest connected component, which equals it for a filled disk.
    """
    true_model = torch.as_tensor(true_model, dtype=torch.float32)
    maps = gaussian_disk_targets(true_model, (model_size, model_size), sigma, antialias=False)
    return torch.round(decode_centroid(maps, weighted=False))


#: The paper's code re-decodes its ground truth from Gaussian heatmaps of this sigma (grid pixels).
PAPER_SIGMA = 5.0


def paper_compatible_errors(
    pred_model,
    true_model,
    dataset: str,
    model_size: int = 256,
    original_sizes=None,
    spacing: float = 0.1,
    wrist_indices: Sequence[int] = (0, 4),
) -> np.ndarray:
    """Errors exactly as the paper's code computes them.

    Args:
        pred_model: ``[M, N, 2]`` predictions on the model grid (already decoded).
        true_model: ``[M, N, 2]`` annotations mapped to the model grid; re-decoded here
            through :func:`paper_ground_truth`.
        dataset: ``"ceph"``: the x error scaled by ``H/S · spacing`` and the y error by
            ``W/S · spacing`` (factors swapped; for 1935×2400 images: 2400/256·0.1 and
            1935/256·0.1); ``"hand"``: 50 mm over the distance between the two wrist landmarks
            of the re-decoded ground truth on the grid; ``"chest"`` (and anything else): grid
            pixels.
        original_sizes: ``[M, 2]`` original ``(W, H)``, needed for ``ceph``.
    Returns:
        ``[M, N]`` errors (mm for ceph and hand, grid pixels otherwise).
    """
    pred = np.round(_np(pred_model))
    gt = paper_ground_truth(true_model, model_size, PAPER_SIGMA).numpy().astype(np.float64)
    diff = pred - gt
    if dataset == "ceph":
        if original_sizes is None:
            raise ValueError("paper-compatible ceph errors need the original image sizes")
        sizes = _np(original_sizes).reshape(-1, 1, 2)
        fx = sizes[..., 1] / model_size * spacing  # H scales x: the paper's swap
        fy = sizes[..., 0] / model_size * spacing
        return np.sqrt((diff[..., 0] * fx) ** 2 + (diff[..., 1] * fy) ** 2)
    errors = np.sqrt((diff**2).sum(-1))
    if dataset == "hand":
        errors = errors * wrist_spacing(gt, wrist_indices)[:, None]
    return errors
