"""The shape check: a first-stage landmark far from where the others put it is read again
near there.

A heatmap can hold two peaks, one on the landmark and one on a similar structure elsewhere;
with few labels the wrong one sometimes wins, tens of millimetres away. The other landmarks
of the same image say where it should be: a similarity transform (shift, rotation, one scale)
maps the reference shape (the labeled images' mean, in model pixels) onto the image's
predictions, fitted robustly so that the stray landmarks do not pull it. A landmark farther
than the tolerance from its mapped reference position is decoded again from its own heatmap,
restricted to the disk of that radius around the mapped position.

The tolerance is a multiple of the 90th percentile of how far true landmarks sit from the
mapped reference (:func:`shape_tolerance`, on the validation images): a shape that a
similarity cannot match exactly (another face, another jaw) stays well inside it, a jump to
another structure does not. Depends on numpy, torch and :mod:`heatmaps` only, so it travels
with a model's remote code.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch

from .heatmaps import decode

# Fewer landmarks than this leave nothing to check: a similarity fits any two exactly.
MIN_LANDMARKS = 3


def _complex(points: np.ndarray) -> np.ndarray:
    return points[..., 0] + 1j * points[..., 1]


def _similarity(w: np.ndarray, z: np.ndarray, wt: np.ndarray):
    """The least-squares similarity ``z ≈ a (w - wm) + zm`` (complex landmarks ``w`` ``[N]``
    onto each row of ``z`` ``[B, N]``, weights ``wt`` ``[B, N]``): ``(a, wm, zm)``, each ``[B, 1]``."""
    total = wt.sum(-1, keepdims=True).clip(min=1e-12)
    wm, zm = (wt * w).sum(-1, keepdims=True) / total, (wt * z).sum(-1, keepdims=True) / total
    a = (wt * np.conj(w - wm) * (z - zm)).sum(-1, keepdims=True) / (wt * np.abs(w - wm) ** 2).sum(
        -1, keepdims=True
    ).clip(min=1e-12)
    return a, wm, zm


def fit_similarity(reference: np.ndarray, points: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity from ``reference`` ``[N, 2]`` onto each of ``points``
    ``[B, N, 2]`` (``weights`` ``[B, N]``, default 1); returns the mapped reference
    ``[B, N, 2]``."""
    w = _complex(np.asarray(reference, np.float64))
    z = _complex(np.asarray(points, np.float64))
    wt = np.ones(z.shape) if weights is None else np.asarray(weights, np.float64)
    a, wm, zm = _similarity(w, z, wt)
    mapped = a * (w - wm) + zm
    return np.stack([mapped.real, mapped.imag], -1)


def _known(reference: np.ndarray, points: np.ndarray):
    """Complex reference and points, and weights ``[B, N]`` that leave out the landmarks the
    reference lacks (NaN: no labeled image had them)."""
    known = np.isfinite(reference).all(-1)
    w = _complex(np.where(known[:, None], reference, 0.0))
    z = _complex(np.asarray(points, np.float64))
    return w, z, np.broadcast_to(known.astype(np.float64), z.shape)


def similarity_scale(reference, points) -> np.ndarray:
    """``[B]``: the scale of the least-squares similarity from ``reference`` ``[N, 2]`` onto each
    of ``points`` ``[B, N, 2]`` (how large each predicted shape is against the reference)."""
    w, z, wt = _known(np.asarray(reference, np.float64), points)
    return np.abs(_similarity(w, z, wt)[0][:, 0])


def shape_distance(reference, points, scale: float) -> np.ndarray:
    """``[B]``: how far each of ``points`` ``[B, N, 2]`` is from the ``reference`` shape
    ``[N, 2]`` at the typical ``scale``: the root-mean-square distance between the points and
    the reference scaled by ``scale``, then rotated and shifted onto them by least squares, over
    the scaled reference's root-mean-square radius. A shape that is distorted, or drawn larger or
    smaller than images like it, scores high (one scaled by s: about |s / scale − 1|)."""
    w, z, wt = _known(np.asarray(reference, np.float64), points)
    a, wm, zm = _similarity(w, z, wt)
    rotation = a / np.abs(a).clip(min=1e-12)
    mapped = scale * rotation * (w - wm) + zm
    total = wt.sum(-1).clip(min=1e-12)
    rms = np.sqrt((wt * np.abs(z - mapped) ** 2).sum(-1) / total)
    radius = np.sqrt((wt * np.abs(w - wm) ** 2).sum(-1) / total)
    return rms / (scale * radius).clip(min=1e-12)


def robust_similarity(reference: np.ndarray, points: np.ndarray, tolerance: float) -> np.ndarray | None:
    """The similarity from ``reference`` ``[N, 2]`` onto ``points`` ``[B, N, 2]`` that stray
    landmarks do not pull: of the similarities through every pair of landmarks, the one with
    the smallest truncated cost (each landmark's squared distance over ``tolerance``, capped at
    1), refitted by least squares on the landmarks within ``tolerance`` of it. Returns the
    mapped reference ``[B, N, 2]``, or None when no two reference landmarks differ."""
    w = _complex(np.asarray(reference, np.float64))  # [N]
    z = _complex(np.asarray(points, np.float64))  # [B, N]
    pairs = np.array([(i, j) for i, j in combinations(range(len(w)), 2) if abs(w[j] - w[i]) > 1e-9])
    if not len(pairs):
        return None
    i, j = pairs[:, 0], pairs[:, 1]
    a = (z[:, j] - z[:, i]) / (w[j] - w[i])  # [B, P]
    b = z[:, i] - a * w[i]
    residual = np.abs(a[..., None] * w + b[..., None] - z[:, None, :])  # [B, P, N]
    cost = np.minimum((residual / tolerance) ** 2, 1.0).sum(-1)
    best = cost.argmin(-1)
    inliers = residual[np.arange(len(z)), best] <= tolerance  # [B, N]
    return fit_similarity(reference, points, inliers.astype(np.float64))


def shape_tolerance(reference: np.ndarray, truth: np.ndarray, factor: float) -> float:
    """``factor`` times the 90th percentile of the distances between true landmarks
    ``[M, N, 2]`` and the reference ``[N, 2]`` mapped onto them by least squares (model
    pixels)."""
    truth = np.asarray(truth, np.float64)
    distances = np.linalg.norm(fit_similarity(reference, truth) - truth, axis=-1)
    return float(factor * np.quantile(distances, 0.9))


def shape_check(coords: torch.Tensor, log_p: torch.Tensor, reference, tolerance: float, decoder: str = "centroid"):
    """The first stage's landmarks ``coords`` ``[B, N, 2]`` (model pixels, decoded from
    ``log_p`` ``[B, N, H, W]``) checked against the ``reference`` shape ``[N, 2]``: a landmark
    more than ``tolerance`` pixels from the robustly mapped reference is decoded again with
    ``decoder`` from its heatmap restricted to the disk of that radius around its mapped
    position (moved inside the map first). Returns ``(coords, moved [B, N] bool)``."""
    reference = np.asarray(reference, np.float64)
    moved = torch.zeros(coords.shape[:2], dtype=torch.bool, device=coords.device)
    if len(reference) < MIN_LANDMARKS or not tolerance or tolerance <= 0:
        return coords, moved
    tolerance = max(float(tolerance), 1.0)  # at least the pixel nearest the mapped position
    points = coords.detach().double().cpu().numpy()
    expected = robust_similarity(reference, points, tolerance)
    if expected is None:  # a reference of one point repeated places nothing
        return coords, moved
    far = np.linalg.norm(expected - points, axis=-1) > tolerance
    if not far.any():
        return coords, moved
    h, w = log_p.shape[-2:]
    expected[..., 0] = expected[..., 0].clip(0, w - 1)
    expected[..., 1] = expected[..., 1].clip(0, h - 1)
    b_idx, n_idx = np.nonzero(far)
    index = (torch.from_numpy(b_idx), torch.from_numpy(n_idx))
    ys, xs = torch.meshgrid(
        torch.arange(h, device=log_p.device, dtype=torch.float64),
        torch.arange(w, device=log_p.device, dtype=torch.float64),
        indexing="ij",
    )
    centre = torch.from_numpy(expected[b_idx, n_idx]).to(log_p.device)  # [K, 2]
    inside = (xs - centre[:, 0, None, None]) ** 2 + (ys - centre[:, 1, None, None]) ** 2 <= tolerance**2  # [K, H, W]
    maps = log_p.detach()[index].float()  # [K, H, W]
    restricted = maps.masked_fill(~inside, -torch.inf)
    restricted = restricted - restricted.amax(dim=(-2, -1), keepdim=True)  # its peak at exp(0): nothing underflows
    again = decode(restricted.exp()[:, None], decoder, log_maps=restricted[:, None])[:, 0]  # [K, 2]
    coords = coords.clone()
    coords[index] = again.to(coords)
    moved[index] = True
    return coords, moved


def shape_prior(train, val, factor: float) -> tuple[list | None, float | None]:
    """The shape check's ``(reference shape, tolerance)`` in model pixels: the labeled images'
    (``train``) mean landmarks, and ``factor`` times the 90th percentile of the validation
    images' distances from it (:func:`shape_tolerance`); ``(None, None)`` when off."""
    import logging

    if not factor or train.landmarks.shape[1] < MIN_LANDMARKS:
        return None, None
    reference = train.landmarks.double().mean(dim=0).numpy()
    # At least a pixel: true shapes that a similarity matches exactly (synthetic data) leave no spread to scale.
    tolerance = max(1.0, shape_tolerance(reference, val.landmarks.double().numpy(), factor))
    logging.getLogger(__name__).info(
        "shape check: a first-stage landmark more than %.2f px (of %d) from where the others put it is read again there",
        tolerance,
        train.image_size,
    )
    return reference.tolist(), tolerance
