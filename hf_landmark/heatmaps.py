"""Heatmap targets and decoders.

Every function works on batched tensors and on coordinates ``(x, y)`` in the pixel frame of
the heatmap (the model input): pixel ``(i, j)`` (row, column) has its centre at
``x = j, y = i``. Sub-pixel positions are honoured everywhere.

This module depends only on torch, numpy and scipy so that it can travel with a model's
weights (``trust_remote_code``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

#: Ratio between the radius of the half-maximum disk and sigma: sqrt(2 ln 2).
HALF_MAX_RADIUS = math.sqrt(2.0 * math.log(2.0))

DECODERS = ("centroid", "argmax", "soft_argmax")


def _grid(size: tuple[int, int], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    ys = torch.arange(h, device=device, dtype=dtype).view(h, 1)
    xs = torch.arange(w, device=device, dtype=dtype).view(1, w)
    return xs, ys


def squared_distance_maps(landmarks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Squared distance from every pixel centre to each landmark.

    Args:
        landmarks: ``[B, N, 2]`` (x, y) in heatmap pixels.
        size: ``(H, W)`` of the heatmap.
    Returns:
        ``[B, N, H, W]`` squared distances in pixels².
    """
    landmarks = landmarks.float()
    xs, ys = _grid(size, landmarks.device, landmarks.dtype)
    dx = xs - landmarks[..., 0, None, None]
    dy = ys - landmarks[..., 1, None, None]
    return dx * dx + dy * dy


def gaussian_heatmaps(landmarks: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Unnormalised Gaussians ``exp(-d² / 2σ²)`` (peak 1) at each landmark: ``[B, N, H, W]``."""
    return torch.exp(-squared_distance_maps(landmarks, size) / (2.0 * sigma * sigma))


def gaussian_disk_targets(
    landmarks: torch.Tensor, size: tuple[int, int], sigma: float = 5.0, antialias: bool = True
) -> torch.Tensor:
    """The paper's binary targets: a Gaussian of ``sigma`` thresholded at half its maximum.

    That is a disk of radius ``r = sigma * sqrt(2 ln 2)`` (5.89 px for sigma 5) around each
    landmark: 1 inside, 0 outside. With ``antialias`` (default) each pixel on the rim holds
    the fraction of it inside the disk (``clamp(r - d + 0.5, 0, 1)``), so the target's
    centroid follows a sub-pixel landmark; ``antialias=False`` is the hard disk
    ``d <= r`` of the paper's code. Returns float ``[B, N, H, W]``.
    """
    radius = sigma * HALF_MAX_RADIUS
    d2 = squared_distance_maps(landmarks, size)
    if not antialias:
        return (d2 <= radius * radius).float()
    return (radius + 0.5 - d2.sqrt()).clamp(0.0, 1.0)


def bilinear_targets(landmarks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A distribution on the four pixels around each sub-pixel landmark (bilinear weights).

    Its mean is exactly the landmark. Landmarks outside the image give an all-zero map.
    Returns ``[B, N, H, W]``.
    """
    h, w = size
    b, n, _ = landmarks.shape
    x, y = landmarks[..., 0].float(), landmarks[..., 1].float()
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    out = torch.zeros(b * n, h * w, device=landmarks.device)
    rows = torch.arange(b * n, device=landmarks.device)
    for ox, oy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + ox).long().flatten(), (y0 + oy).long().flatten()
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx = yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)
        out[rows, idx] += torch.where(inside, weight.flatten(), torch.zeros_like(weight.flatten()))
    return out.view(b, n, h, w)


def spatial_distribution_targets(landmarks: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Per-channel target distributions (summing to 1) for the 2-D softmax (contour) loss.

    ``sigma == 0`` gives the bilinear weights of the sub-pixel landmark (the negative
    log-likelihood of the true landmark pixel); ``sigma > 0`` a normalised Gaussian, which
    smooths the target at low resolution. Returns ``[B, N, H, W]``.
    """
    if sigma <= 0:
        return bilinear_targets(landmarks, size)
    g = gaussian_heatmaps(landmarks, size, sigma)
    return g / g.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def spatial_spread(maps: torch.Tensor) -> torch.Tensor:
    """Spread of each channel read as a distribution over its pixels (normalised to sum 1):
    the standard deviations ``(σx, σy)`` about its mean, in heatmap pixels. A sharp, single
    peak gives a small spread; a flat or multi-modal map a large one.
    ``[B, N, H, W]`` non-negative scores → ``[B, N, 2]``."""
    p = maps.detach().float().clamp_min(0)
    p = p / p.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    xs, ys = _grid(p.shape[-2:], p.device, p.dtype)
    mx, my = (p * xs).sum(dim=(-2, -1)), (p * ys).sum(dim=(-2, -1))
    vx = (p * (xs - mx[..., None, None]) ** 2).sum(dim=(-2, -1))
    vy = (p * (ys - my[..., None, None]) ** 2).sum(dim=(-2, -1))
    return torch.stack([vx, vy], dim=-1).clamp_min(0).sqrt()


def decode_argmax(maps: torch.Tensor) -> torch.Tensor:
    """Position of each channel's maximum: ``[B, N, H, W]`` → ``[B, N, 2]`` (x, y)."""
    w = maps.shape[-1]
    idx = maps.flatten(-2).argmax(dim=-1)
    return torch.stack([(idx % w).float(), torch.div(idx, w, rounding_mode="floor").float()], dim=-1)


def decode_soft_argmax(log_maps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Expected position under a softmax over each channel's pixels of ``beta * log_maps``.

    With log-probabilities and ``beta=1`` this is the probability-weighted mean position.
    ``[B, N, H, W]`` → ``[B, N, 2]`` (x, y).
    """
    h, w = log_maps.shape[-2:]
    p = torch.softmax(beta * log_maps.float().flatten(-2), dim=-1).view_as(log_maps)
    xs, ys = _grid((h, w), p.device, p.dtype)
    return torch.stack([(p * xs).sum(dim=(-2, -1)), (p * ys).sum(dim=(-2, -1))], dim=-1)


def decode_centroid(maps: torch.Tensor, threshold: float = 0.5, weighted: bool = True) -> torch.Tensor:
    """The paper's decoder: per channel, threshold at ``threshold`` × the channel maximum,
    keep the largest connected component (8-connectivity) and return its centroid,
    intensity-weighted by default (``weighted=False``: the plain area centroid).

    Channels with a non-positive maximum fall back to the argmax.
    ``[B, N, H, W]`` (non-negative scores) → ``[B, N, 2]`` (x, y).
    """
    arr = maps.detach().float().cpu().numpy()
    b, n, h, w = arr.shape
    out = np.zeros((b, n, 2), dtype=np.float64)
    fallback = decode_argmax(maps.detach().float().cpu()).numpy()
    structure = np.ones((3, 3), dtype=bool)
    ys, xs = np.mgrid[0:h, 0:w]
    for i in range(b):
        for j in range(n):
            m = arr[i, j]
            peak = m.max()
            if not peak > 0:
                out[i, j] = fallback[i, j]
                continue
            mask = m >= threshold * peak
            labels, count = ndimage.label(mask, structure=structure)
            if count > 1:
                sizes = np.bincount(labels.ravel())[1:]
                mask = labels == (int(np.argmax(sizes)) + 1)
            wts = m[mask].astype(np.float64) if weighted else np.ones(int(mask.sum()))
            total = wts.sum()
            out[i, j, 0] = (xs[mask] * wts).sum() / total
            out[i, j, 1] = (ys[mask] * wts).sum() / total
    return torch.from_numpy(out).to(device=maps.device, dtype=torch.float32)


def decode(maps: torch.Tensor, decoder: str = "centroid", log_maps: torch.Tensor | None = None) -> torch.Tensor:
    """Decode landmark positions with a named decoder.

    Args:
        maps: ``[B, N, H, W]`` non-negative scores (probabilities).
        decoder: ``"centroid"``, ``"argmax"`` or ``"soft_argmax"``.
        log_maps: log-scores for ``soft_argmax`` (default ``log(maps)``).
    Returns:
        ``[B, N, 2]`` (x, y) in heatmap pixels.
    """
    if decoder == "centroid":
        return decode_centroid(maps)
    if decoder == "argmax":
        return decode_argmax(maps)
    if decoder == "soft_argmax":
        return decode_soft_argmax(log_maps if log_maps is not None else torch.log(maps.float().clamp_min(0)))
    raise ValueError(f"Unknown decoder {decoder!r}; choose one of {DECODERS}.")
