"""Overlays a clinician can read: landmarks drawn on the image at its own resolution.

One drawing function for ``hf-landmark evaluate``, ``hf-landmark predict``, the demo and the
web app. Each landmark is a numbered marker (the numbers are the landmark order, 1-based;
:func:`legend_lines` gives the names); with the truth known, a green ring marks the true
position and a yellow line the error. Marker and text sizes follow the image size and the
number of landmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .preprocessing import resize_image, to_uint8

#: Overlays larger than this (longest side, pixels) are downscaled for display.
MAX_OVERLAY_SIDE = 2400
_PRED = (255, 60, 60)
_TRUE = (40, 220, 60)
_ERROR = (255, 215, 0)
_TEXT = (255, 255, 255)
_RADIUS_ALPHA = 120  # of 255


def marker_radius(width: int, height: int, num_landmarks: int) -> int:
    """Marker radius in display pixels: about 0.6 % of the shorter side, smaller when many
    landmarks crowd the image, never below 2 px."""
    crowding = min(1.0, math.sqrt(19.0 / max(num_landmarks, 1)))
    return max(2, int(round(0.006 * min(width, height) * crowding)))


def draw_landmarks(
    image01: np.ndarray,
    pred_xy: np.ndarray,
    true_xy: np.ndarray | None = None,
    radii: np.ndarray | None = None,
    numbered: bool = True,
    max_side: int = MAX_OVERLAY_SIDE,
    min_side: int | None = None,
) -> Image.Image:
    """An RGB overlay of ``image01`` (``[H, W]`` in [0, 1]) at its own size (downscaled only
    past ``max_side``; upscaled to ``min_side`` when given, for small images). ``pred_xy`` /
    ``true_xy``: ``[N, 2]`` (x, y) in ``image01``'s pixels; ``radii``: optional ``[N]``
    circles (pixels) drawn thin and translucent around the predictions (none where not finite)."""
    h, w = image01.shape
    scale = min(1.0, max_side / max(w, h))
    if min_side and max(w, h) < min_side:
        scale = min_side / max(w, h)
    if scale != 1.0:
        image01 = resize_image(image01, (max(1, round(w * scale)), max(1, round(h * scale))))
    img = Image.fromarray(to_uint8(image01), mode="L").convert("RGB")
    draw = ImageDraw.Draw(img)
    pred = (np.asarray(pred_xy, dtype=np.float64) + 0.5) * scale - 0.5
    n = len(pred)
    r = marker_radius(img.width, img.height, n)
    line = max(1, r // 3)
    font = ImageFont.load_default(size=max(10, int(r * 2.6)))
    if true_xy is not None:
        truth = (np.asarray(true_xy, dtype=np.float64) + 0.5) * scale - 0.5
        for (px, py), (tx, ty) in zip(pred, truth):
            draw.line([(tx, ty), (px, py)], fill=_ERROR, width=line)
            draw.ellipse([tx - r, ty - r, tx + r, ty + r], outline=_TRUE, width=line)
    if radii is not None:
        # Thin and translucent: overlapping circles must not hide the anatomy under them.
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        ring = ImageDraw.Draw(layer)
        for (px, py), rad in zip(pred, np.asarray(radii, dtype=np.float64) * scale):
            if np.isfinite(rad):  # no radius (too few calibration images): no circle
                ring.ellipse([px - rad, py - rad, px + rad, py + rad], outline=(*_PRED, _RADIUS_ALPHA), width=1)
        img = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
        draw = ImageDraw.Draw(img)
    for i, (px, py) in enumerate(pred):
        draw.ellipse([px - r, py - r, px + r, py + r], fill=_PRED, outline=(0, 0, 0))
        if numbered:
            draw.text(
                (px + r + 1, py - r),
                str(i + 1),
                fill=_TEXT,
                font=font,
                stroke_width=max(1, line // 2),
                stroke_fill=(0, 0, 0),
            )
    return img


def legend_lines(names: Sequence[str]) -> list[str]:
    """``["1 Sella", "2 Nasion", ...]``: what the overlay's numbers mean."""
    return [f"{i + 1} {name}" for i, name in enumerate(names)]
