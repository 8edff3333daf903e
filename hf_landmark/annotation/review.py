"""The review queue's order: which images' predictions to look at first."""

from __future__ import annotations

import warnings

import numpy as np


def review_scores(radii, sizes, scores) -> np.ndarray:
    """How likely each image's predictions are wrong, to review the worst first: the mean over
    its landmarks of the calibrated radius relative to the image's size and to that landmark's
    median over the images (so every landmark weighs alike, whatever its usual radius); for a
    model without radii, one minus the mean heatmap score. ``radii`` ``[M, N]`` original
    pixels (NaN: none), ``sizes`` ``[M, 2]`` (W, H), ``scores`` ``[M, N]``."""
    radii = np.asarray(radii, dtype=np.float64)
    if radii.size and np.isfinite(radii).any():
        relative = radii / np.asarray(sizes, dtype=np.float64).max(axis=1, keepdims=True)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            typical = np.nanmedian(relative, axis=0, keepdims=True)
            score = np.nanmean(relative / np.where(typical > 0, typical, np.nan), axis=1)
        return np.nan_to_num(score, nan=0.0)
    return 1.0 - np.asarray(scores, dtype=np.float64).mean(axis=1)


def review_order(scores, finished) -> list[int]:
    """Images in the order to review them: those with work left first, the highest
    :func:`review_scores` first; finished images last, in the same order."""
    return sorted(range(len(scores)), key=lambda i: (bool(finished[i]), -float(scores[i]), i))
