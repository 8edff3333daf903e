"""Synthetic x-ray-like cephalograms with known landmarks, written in the ISBI 2015 layout.

Each image shows a repeatable anatomy (skull vault, sella ring, orbit, ear rod, maxilla,
mandible, teeth and a soft-tissue profile) whose shape varies between images through a
random similarity transform, three shape modes (face height, jaw length, prognathism) and
small per-landmark jitter. The 19 landmarks sit on structure corners, tips and ring centres,
so they are locatable from the image, and pre-training on the images has something to learn.
Deterministic by seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .readers import CEPH_LANDMARKS

#: Default synthetic image size (W, H): the ISBI aspect ratio (1935 × 2400) at 1/8 scale.
SYNTH_SIZE = (240, 300)

# Template landmark positions as fractions of (W, H), in CEPH_LANDMARKS order.
_TEMPLATE = np.array(
    [
        [0.35, 0.33],
        [0.76, 0.28],
        [0.66, 0.40],
        [0.20, 0.42],
        [0.74, 0.58],
        [0.71, 0.76],
        [0.73, 0.84],
        [0.66, 0.90],
        [0.71, 0.88],
        [0.33, 0.74],
        [0.755, 0.67],
        [0.77, 0.655],
        [0.87, 0.63],
        [0.86, 0.71],
        [0.84, 0.55],
        [0.82, 0.85],
        [0.45, 0.55],
        [0.78, 0.54],
        [0.28, 0.50],
    ],
    dtype=np.float64,
)

# Shape modes (displacements in fractions of (W, H)): lower-face height, jaw length, prognathism.
_LOWER_FACE = np.zeros_like(_TEMPLATE)
_LOWER_FACE[[4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15], 1] = [0.2, 0.6, 0.8, 1.0, 0.95, 0.5, 0.45, 0.4, 0.35, 0.55, 0.85]
_JAW = np.zeros_like(_TEMPLATE)
_JAW[[5, 6, 7, 8, 10, 13, 15], 0] = [0.8, 1.0, 0.9, 1.0, 0.7, 0.6, 0.9]
_PROG = np.zeros_like(_TEMPLATE)
_PROG[[1, 4, 11, 12, 14, 17], 0] = [0.6, 1.0, 1.0, 0.9, 0.9, 1.0]
_MODES = np.stack([_LOWER_FACE, _JAW, _PROG]) * 0.05


def synthetic_landmarks(
    rng: np.random.Generator, size=SYNTH_SIZE, margin: float = 2.0, variability: float = 1.0
) -> np.ndarray:
    """Sample one shape: ``[19, 2]`` (x, y) in pixels of a ``size`` = (W, H) image, every
    landmark at least ``margin`` pixels inside the image (shapes that leave it are redrawn).
    ``variability`` scales the spread of shape and pose: 1 gives ±6° rotation, scale
    0.92–1.06 and ±4 % shift; 2.5 gives ±15°, 0.8–1.15 and ±10 %."""
    w, h = size
    while True:
        pts = _sample_shape(rng, w, h, variability)
        if np.all(pts >= margin) and np.all(pts[:, 0] <= w - 1 - margin) and np.all(pts[:, 1] <= h - 1 - margin):
            return pts


def _sample_shape(rng: np.random.Generator, w: int, h: int, v: float) -> np.ndarray:
    pts = _TEMPLATE + np.tensordot(rng.normal(0.0, v, 3), _MODES, axes=1)
    pts = pts + rng.normal(0.0, 0.004 * v, pts.shape)
    pts = pts * np.array([w, h])
    centre = np.array([w, h]) * 0.5
    angle = np.deg2rad(rng.uniform(-6.0 * v, 6.0 * v))
    scale = rng.uniform(1.0 - 0.08 * v, 1.0 + 0.06 * v)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = rng.uniform(-0.04 * v, 0.04 * v, 2) * np.array([w, h])
    return ((pts - centre) @ rot.T) * scale + centre + shift


def render_synthetic(
    landmarks: np.ndarray, rng: np.random.Generator, size=SYNTH_SIZE, variability: float = 1.0
) -> np.ndarray:
    """Render an x-ray-like uint8 ``[H, W]`` image of the anatomy given by ``landmarks``;
    ``variability`` scales the spread of exposure, contrast and noise."""
    w, h = size
    v = variability
    ss = 2  # supersampling for smooth edges
    img = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(img)
    p = [tuple(float(v) * ss for v in q) for q in landmarks]
    unit = min(w, h) * ss / 240.0
    (sella, nasion, orbitale, porion, a_pt, b_pt, pog, men, gn, go, li, ui, ul, ll, sn, st_pog, pns, ans, ar) = p

    def lerp(a, b, t):
        return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)

    # Soft tissue: the head silhouette through the profile landmarks.
    top = (nasion[0] - 0.35 * w * ss, nasion[1] - 0.25 * h * ss)
    profile = [
        (0, 0.08 * h * ss),
        top,
        (nasion[0] + 8 * unit, nasion[1] - 6 * unit),
        (nasion[0] + 10 * unit, nasion[1] + 4 * unit),
        (sn[0] + 4 * unit, sn[1] - 14 * unit),
        sn,
        ul,
        ll,
        st_pog,
        (st_pog[0] - 14 * unit, st_pog[1] + 18 * unit),
        (men[0] - 10 * unit, men[1] + 16 * unit),
        (go[0] - 30 * unit, h * ss),
        (0, h * ss),
    ]
    draw.polygon(profile, fill=70)
    # Skull vault: a thick elliptical ring from the ear rod to the nasion.
    cx, cy = (porion[0] + nasion[0]) / 2, nasion[1] - 0.02 * h * ss
    rx, ry = (nasion[0] - porion[0]) / 2 + 6 * unit, 0.26 * h * ss
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=185, width=int(9 * unit))
    draw.chord([cx - rx, cy - ry, cx + rx, cy + ry], 200, 340, fill=95)
    # Sella turcica: a ring centred on Sella; ear rod: a ring centred on Porion.
    for c, r, val in ((sella, 9 * unit, 230), (porion, 7 * unit, 250)):
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=val, width=int(3 * unit))
    # Orbit: an ellipse whose lowest point is Orbitale.
    draw.ellipse(
        [orbitale[0] - 14 * unit, orbitale[1] - 30 * unit, orbitale[0] + 14 * unit, orbitale[1]],
        outline=170,
        width=int(4 * unit),
    )
    # Frontal bone and nasal bone meeting at Nasion.
    draw.line(
        [lerp((cx, cy - ry), nasion, 0.5), nasion, (nasion[0] + 12 * unit, nasion[1] + 26 * unit)],
        fill=200,
        width=int(5 * unit),
    )
    # Maxilla: palate from PNS to ANS, then down through A point to the upper incisor.
    draw.polygon([pns, ans, a_pt, ui, lerp(pns, ui, 0.5)], fill=150)
    draw.line([pns, ans], fill=235, width=int(5 * unit))
    # Mandible: ramus from Articulare to Gonion, body to Menton, symphysis to B point.
    draw.line([ar, go, men, gn, pog, b_pt, li], fill=225, width=int(8 * unit), joint="curve")
    draw.polygon([go, men, gn, pog, b_pt, lerp(go, b_pt, 0.6)], fill=160)
    # Incisors: tapering teeth ending at the incisal tips.
    draw.line([lerp(a_pt, ui, 0.2), ui], fill=250, width=int(5 * unit))
    draw.line([lerp(b_pt, li, 0.15), li], fill=245, width=int(5 * unit))
    # Cervical spine for context.
    for k in range(4):
        y0 = ar[1] + (18 + 26 * k) * unit
        draw.rectangle([ar[0] - 22 * unit, y0, ar[0] + 2 * unit, y0 + 18 * unit], fill=120)

    img = img.filter(ImageFilter.GaussianBlur(radius=1.2 * ss)).resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    arr = arr * rng.uniform(1.0 - 0.2 * v, 1.0 + 0.1 * v) + 0.08 * v * np.sin(
        xx * rng.uniform(2, 5) + yy * rng.uniform(2, 5)
    )
    arr = np.clip(arr, 0, 1) ** rng.uniform(1.0 - 0.15 * v, 1.0 + 0.2 * v)
    arr = arr + rng.normal(0.0, 0.03 * min(v, 2.0), arr.shape)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_synthetic_isbi(
    out_dir: str | os.PathLike,
    num_images: int = 40,
    seed: int = 0,
    size=SYNTH_SIZE,
    image_format: str = "bmp",
    annotator_noise_px: float = 1.0,
    variability: float = 1.0,
) -> Path:
    """Write ``num_images`` synthetic cephalograms in the ISBI 2015 layout:
    ``RawImage/TrainingData/NNN.<fmt>`` and ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt``
    (19 ``x,y`` lines in integer pixels, as the originals). The two annotators differ by
    ``annotator_noise_px`` (std); the true landmark is their mean before rounding.
    ``variability`` scales the spread of shape, pose and exposure (see :func:`synthetic_landmarks`).
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    img_dir = out / "RawImage" / "TrainingData"
    ann = {who: out / "AnnotationsByMD" / f"400_{who}" for who in ("senior", "junior")}
    for d in (img_dir, *ann.values()):
        d.mkdir(parents=True, exist_ok=True)
    for i in range(1, num_images + 1):
        lm = synthetic_landmarks(rng, size, variability=variability)
        image = render_synthetic(lm, rng, size, variability=variability)
        name = f"{i:03d}"
        Image.fromarray(image, mode="L").save(img_dir / f"{name}.{image_format}")
        noise = rng.normal(0.0, annotator_noise_px / 2, lm.shape)
        for who, sign in (("senior", 1.0), ("junior", -1.0)):
            pts = np.rint(lm + sign * noise).astype(int)
            (ann[who] / f"{name}.txt").write_text("\n".join(f"{x},{y}" for x, y in pts) + "\n", encoding="utf-8")
    return out


__all__ = ["CEPH_LANDMARKS", "SYNTH_SIZE", "render_synthetic", "synthetic_landmarks", "write_synthetic_isbi"]
