"""Where a click on the page lands in the original image: the overview's and the zoom's
coordinate maps, the zoom's picture, and the drawing constants."""

from __future__ import annotations

import numpy as np

#: The overview's longest side, pixels.
DISPLAY_SIDE = 720


#: The zoom's side, pixels, and the magnifications offered (screen pixels per original pixel).
ZOOM_SIDE = 480


ZOOM_FACTORS = (2, 4, 8)


#: A click this close (overview pixels) to a placed point selects it, once every landmark is placed.
SELECT_RADIUS = 7


_PLACED, _PROPOSED, _CURRENT = (60, 220, 90), (255, 150, 0), (255, 235, 0)


def display_scale(width: int, height: int, side: int = DISPLAY_SIDE) -> tuple[tuple[int, int], tuple[float, float]]:
    """The overview's size ``(w, h)`` (longest side ``side``) and its exact per-axis scale."""
    s = side / max(width, height)
    w, h = max(1, round(width * s)), max(1, round(height * s))
    return (w, h), (w / width, h / height)


def click_to_original(index, scale, origin=(0, 0)) -> tuple[float, float]:
    """A Gradio click ``index`` (``[x, y]``) on a picture of the original at ``scale``
    (``(sx, sy)`` or one number) whose top-left pixel is original pixel ``origin``, as the
    original's pixel-centre coordinates."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    return origin[0] + index[0] / sx - 0.5, origin[1] + index[1] / sy - 0.5


def original_to_picture(xy, scale, origin=(0, 0)) -> tuple[float, float]:
    """Where the original's point ``xy`` lies in such a picture (its pixel-centre coordinates)."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    return (xy[0] + 0.5 - origin[0]) * sx - 0.5, (xy[1] + 0.5 - origin[1]) * sy - 0.5


def zoom_origin(centre, factor: int, side: int = ZOOM_SIDE) -> tuple[int, int]:
    """The original pixel at the top-left of the zoom around ``centre``."""
    n = side // factor
    return int(round(centre[0])) - n // 2, int(round(centre[1])) - n // 2


def zoom_crop(image01: np.ndarray, centre, factor: int, side: int = ZOOM_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """A ``side``-pixel picture of the original around ``centre`` at ``factor`` picture pixels
    per original pixel (nearest neighbour, so each original pixel is a visible square),
    contrast stretched to the crop (1st-99th percentile); outside the image is black.
    Returns the picture (uint8) and the original pixel at its top-left."""
    n = side // factor
    x0, y0 = zoom_origin(centre, factor, side)
    h, w = image01.shape
    crop = np.zeros((n, n), dtype=np.float32)
    ys, xs = slice(max(0, y0), min(h, y0 + n)), slice(max(0, x0), min(w, x0 + n))
    inside = image01[ys, xs]
    if inside.size:
        lo, hi = np.percentile(inside, (1, 99))
        if hi - lo < 1e-6:
            lo, hi = 0.0, 1.0
        crop[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = np.clip((inside - lo) / (hi - lo), 0, 1)
    big = np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)
    return (big * 255 + 0.5).astype(np.uint8), (x0, y0)
