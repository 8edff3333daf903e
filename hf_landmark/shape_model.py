"""The shape fusion: each final landmark weighed against where the image's other landmarks put it.

A detector reads each landmark from its own heatmap. Where that map is unsure (a soft edge, an
incisor tip among others), the other landmarks of the same image still say a good deal about
where it lies. A point distribution model says how much: the shapes of many images (the
labeled images' true landmarks, the validation images', and the first stage's landmarks on the
unlabeled pool), brought into one frame by similarity transforms (shift, rotation, one scale),
give a mean shape and a covariance of the 2N coordinates. For a new image the model's landmarks
are mapped into that frame (each weighted by how sure it is), and the Gaussian posterior of the
true shape given them is

    fused = mean + C (C + D)^-1 (observed - mean),

where ``D`` holds each landmark's noise variance: the square of its heatmap spread times a
per-landmark factor measured on the calibration images. A sure landmark barely moves; an unsure one moves
toward where its neighbours put it, along the directions the shapes vary in. The covariance is
shrunk halfway toward its diagonal so that a few dozen shapes give a usable one.

Self-contained (numpy and the package's :mod:`shape`): it travels with a model's remote code.
"""

from __future__ import annotations

import warnings

import numpy as np

from .shape import MIN_LANDMARKS, _complex, _similarity

#: A shape model needs at least this many complete shapes (fewer: no fusion).
MIN_SHAPES = 5
#: The covariance is shrunk this far toward its diagonal.
SHRINK = 0.5
#: Alignment rounds of the generalised Procrustes mean.
PROCRUSTES_ROUNDS = 5


def _to_frame(mean: np.ndarray, points: np.ndarray, weights: np.ndarray | None = None):
    """Each of ``points`` ``[B, N, 2]`` mapped into the frame of ``mean`` ``[N, 2]`` by the
    least-squares similarity of ``mean`` onto it (``weights`` ``[B, N]``). Returns
    ``(points in the frame [B, N] complex, (a, wm, zm))``: a point ``q`` of the frame is
    ``a (q - wm) + zm`` in the image."""
    w, z = _complex(np.asarray(mean, np.float64)), _complex(np.asarray(points, np.float64))
    wt = np.ones(z.shape) if weights is None else np.asarray(weights, np.float64)
    a, wm, zm = _similarity(w, z, wt)
    a = np.where(np.abs(a) > 1e-12, a, 1.0)  # a degenerate shape (all one point) stays where it is
    return (z - zm) / a + wm, (a, wm, zm)


def _flat(frame: np.ndarray) -> np.ndarray:
    """Complex ``[B, N]`` → real ``[B, 2N]`` (x0, y0, x1, y1, ...)."""
    return np.stack([frame.real, frame.imag], -1).reshape(len(frame), -1)


def fit_shape_model(shapes, shrink: float = SHRINK) -> tuple[np.ndarray, np.ndarray] | None:
    """The point distribution model of ``shapes`` ``[M, N, 2]`` (a shape with a missing
    landmark is left out): ``(mean [N, 2], covariance [2N, 2N])``, the generalised Procrustes
    mean and the covariance of the shapes aligned onto it, shrunk by ``shrink`` toward its
    diagonal. ``None`` with fewer than :data:`MIN_SHAPES` complete shapes or
    :data:`~hf_landmark.shape.MIN_LANDMARKS` landmarks."""
    shapes = np.asarray(shapes, np.float64)
    shapes = shapes[np.isfinite(shapes).all(axis=(1, 2))]
    if len(shapes) < MIN_SHAPES or shapes.shape[1] < MIN_LANDMARKS:
        return None
    mean = shapes.mean(0)
    for _ in range(PROCRUSTES_ROUNDS):
        aligned, _ = _to_frame(mean, shapes)
        mean = np.stack([aligned.real.mean(0), aligned.imag.mean(0)], -1)
    x = _flat(_to_frame(mean, shapes)[0])
    covariance = np.cov(x.T)
    covariance = (1.0 - shrink) * covariance + shrink * np.diag(np.diag(covariance))
    # A coordinate no shape varies in would make the solve singular: at least a millionth of the mean variance.
    covariance += np.eye(len(covariance)) * max(1e-6 * float(np.trace(covariance)) / len(covariance), 1e-12)
    return mean, covariance


def fuse_shapes(points, sd, mean, covariance) -> np.ndarray:
    """``points`` ``[B, N, 2]`` fused with the shape model ``(mean [N, 2], covariance
    [2N, 2N])``, each landmark's noise standard deviation ``sd`` ``[B, N]`` (the points'
    units): the posterior mean of the shape, mapped back into each image. Returns ``[B, N, 2]``."""
    points = np.asarray(points, np.float64)
    sd = np.maximum(np.asarray(sd, np.float64), 1e-6)
    mean, covariance = np.asarray(mean, np.float64), np.asarray(covariance, np.float64)
    frame, (a, wm, zm) = _to_frame(mean, points, 1.0 / sd**2)
    noise = np.repeat((sd / np.abs(a)) ** 2, 2, axis=-1)  # [B, 2N]: the frame's variances
    mu = mean.reshape(-1)
    residual = _flat(frame) - mu
    # (C + D_b) y_b = r_b for each image b, then C y_b: the posterior mean's pull.
    system = covariance[None] + noise[:, :, None] * np.eye(len(mu))[None]
    pulled = mu + np.einsum("ij,bj->bi", covariance, np.linalg.solve(system, residual[..., None])[..., 0])
    fused = pulled.reshape(len(points), -1, 2)
    back = a * (_complex(fused) - wm) + zm
    return np.stack([back.real, back.imag], -1)


def noise_factors(errors, spread, weight: float) -> np.ndarray | None:
    """Each landmark's noise standard deviation per unit of heatmap spread: ``sqrt(weight)``
    times its median ratio of radial error to spread over the calibration images (``errors``,
    ``spread`` ``[M, N]``, the same units; NaN errors left out). ``weight`` < 1 trusts the
    detector more than the shapes, > 1 less. ``None`` when no landmark has an error."""
    ratio = np.asarray(errors, np.float64) / np.maximum(np.asarray(spread, np.float64), 1e-12)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a landmark no image has: an all-NaN column
        factors = np.sqrt(weight) * np.nanmedian(np.where(np.isfinite(ratio), ratio, np.nan), axis=0)
    known = np.isfinite(factors)
    if not known.any():
        return None
    # A landmark no calibration image has takes the landmarks' median factor; none is exactly 0
    # (a landmark every calibration image had to the pixel still has some noise).
    return np.maximum(np.where(known, factors, np.median(factors[known])), 1e-6)
