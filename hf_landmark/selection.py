"""Which images to annotate: pick the images of an unlabeled pool that best represent it.

``coverage`` (default) embeds every pool image with a pre-trained network (the DDPM U-Net, or
any saved detector's backbone) and chooses, greedily, the set that maximises the facility-
location objective: the sum over all pool images of their similarity to the closest chosen
image (Quan et al., CVPR 2022, choose few-shot templates by how well they represent the
others). The greedy choice is within 1 - 1/e of the best set and, at K = 1, is the pool's
medoid. ``first`` (the paper's protocol: the first K sorted ids), ``random`` (seeded) and
``uncertainty`` (a fine-tuned detector's least confident images: flagged first, then the
largest calibrated radii, the next ones to label once a model exists) are the alternatives.

Features: the bottleneck feature map (the U-Net's mid block, an encoder's last stage),
average-pooled to a 4 x 4 grid and L2-normalised, so that two radiographs are alike when the
same structures sit in the same places, not merely when their intensities agree overall.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserInputError

STRATEGIES = ("coverage", "first", "random", "uncertainty")


@torch.no_grad()
def pooled_features(model, pixel_values: torch.Tensor, grid: int = 4, batch_size: int = 16) -> np.ndarray:
    """``[M, C * grid * grid]`` unit-norm features of ``pixel_values`` ``[M, 1, S, S]`` (the
    model's intensity range) from ``model``'s bottleneck (an ensemble's first member's)."""
    if getattr(model, "members", None) is not None:
        model = model.members[0]
    backbone = model.backbone
    hooked = backbone.unet.mid_block if hasattr(backbone, "unet") else backbone.net.encoder
    kept: list[torch.Tensor] = []

    def keep(module, inputs, output):
        kept.append(output[-1] if isinstance(output, (list, tuple)) else output)

    handle = hooked.register_forward_hook(keep)
    device = next(model.parameters()).device
    out = []
    try:
        model.eval()
        for start in range(0, len(pixel_values), batch_size):
            kept.clear()
            backbone(pixel_values[start : start + batch_size].to(device))
            fmap = F.adaptive_avg_pool2d(kept[-1].float(), grid).flatten(1)
            out.append(F.normalize(fmap, dim=1).cpu().numpy())
    finally:
        handle.remove()
    return np.concatenate(out).astype(np.float64)


def facility_location(features: np.ndarray, k: int, candidates: np.ndarray | None = None) -> list[int]:
    """Greedy facility location: ``k`` indices maximising sum_i max_{j chosen} sim(i, j), with
    ``sim`` the cosine similarity of ``features`` (rows unit-norm) mapped to [0, 1]. Every
    image counts in the sum; only ``candidates`` (a bool mask; default all) may be chosen."""
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    allowed = np.ones(n, bool) if candidates is None else np.asarray(candidates, bool)
    sim = (1.0 + features @ features.T) / 2.0
    best = np.zeros(n)
    chosen: list[int] = []
    for _ in range(k):
        gain = np.maximum(sim, best[:, None]).sum(axis=0) - best.sum()
        gain[chosen] = -np.inf
        # An outlier would be chosen for covering itself alone; it is taken only when nothing else is left.
        gain[~allowed] -= n + 1.0
        j = int(np.argmax(gain))
        chosen.append(j)
        best = np.maximum(best, sim[:, j])
    return chosen


#: How many robust standard deviations (1.4826 MAD) below the pool's median an image must sit
#: to be an outlier that coverage does not spend a label on.
OUTLIER_Z = 3.5


def _low_outliers(values: np.ndarray) -> np.ndarray:
    """Where ``values`` sit more than :data:`OUTLIER_Z` robust deviations below their median."""
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median))
    spread = max(spread, 0.05 * max(abs(median), 1e-6))  # a tight pool: 5 % of the median is the least spread
    return (median - values) / spread > OUTLIER_Z


def pool_outliers(features: np.ndarray, images: np.ndarray | None = None) -> dict[int, str]:
    """Images of the pool a model can learn little from, each with the reason: far from every
    other image (its similarity to its closest other image is an outlier low), or, with
    ``images`` (``[M, H, W]`` in [0, 1]), a contrast (1st-99th percentile range) far below
    the pool's: washed out or nearly black."""
    n = features.shape[0]
    out: dict[int, str] = {}
    if n < 5:
        return out
    sim = (1.0 + features @ features.T) / 2.0
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.max(axis=1)
    for i in np.flatnonzero(_low_outliers(nearest)):
        out[int(i)] = (
            f"far from every other image (closest similarity {nearest[i]:.3f}, pool median {np.median(nearest):.3f})"
        )
    if images is not None:
        flat = np.asarray(images, dtype=np.float64).reshape(n, -1)
        lo, hi = np.percentile(flat, 1, axis=1), np.percentile(flat, 99, axis=1)
        contrast = hi - lo
        for i in np.flatnonzero(_low_outliers(contrast)):
            reason = f"low contrast (grey values {lo[i]:.2f}-{hi[i]:.2f} of 0-1; pool median range {np.median(contrast):.2f})"
            out[int(i)] = out[int(i)] + "; " + reason if int(i) in out else reason
    return out


def represented(features: np.ndarray, chosen) -> list[int]:
    """For each chosen image, how many pool images it is the closest chosen image to."""
    sim = (1.0 + features @ features[list(chosen)].T) / 2.0
    return np.bincount(sim.argmax(axis=1), minlength=len(chosen)).tolist()


def coverage_score(features: np.ndarray, chosen) -> float:
    """Mean over the pool of the similarity to the closest chosen image (1: all alike)."""
    sim = (1.0 + features @ features[list(chosen)].T) / 2.0
    return float(sim.max(axis=1).mean())


def choose(
    strategy: str, image_ids, k: int, features: np.ndarray | None = None, seed: int = 0, uncertainty=None, excluded=()
) -> list[int]:
    """Indices of ``k`` of ``image_ids`` by ``strategy`` (:data:`STRATEGIES`); ``features``
    for ``coverage``; ``uncertainty`` ``(flagged [M] bool, mean radius [M])`` for ``uncertainty``;
    ``excluded``: indices coverage chooses only when nothing else is left (:func:`pool_outliers`)."""
    n = len(image_ids)
    if not 1 <= k <= n:
        raise UserInputError(f"--num: {k} images asked, but the pool has {n}")
    order = sorted(range(n), key=lambda i: image_ids[i])
    if strategy == "first":
        return order[:k]
    if strategy == "random":
        return sorted(
            np.random.default_rng(seed).choice(n, size=k, replace=False).tolist(), key=lambda i: image_ids[i]
        )
    if strategy == "coverage":
        candidates = np.ones(n, bool)
        candidates[list(excluded)] = False
        return facility_location(features, k, candidates)
    if strategy == "uncertainty":
        flagged, radius = uncertainty
        return sorted(range(n), key=lambda i: (not flagged[i], -radius[i], image_ids[i]))[:k]
    raise UserInputError(f"--strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")


def contact_sheet(images: torch.Tensor, labels, path, tile: int = 192, notes=None) -> str:
    """The chosen images side by side (``images`` ``[K, 1, S, S]`` in [0, 1]), each titled."""
    from PIL import Image, ImageDraw

    from .fileio import atomic_file
    from .preprocessing import to_uint8

    k = images.shape[0]
    cols = min(k, 5)
    rows = (k + cols - 1) // cols
    sheet = Image.new("L", (cols * tile, rows * (tile + 18)), 255)
    draw = ImageDraw.Draw(sheet)
    for i in range(k):
        r, c = divmod(i, cols)
        picture = Image.fromarray(to_uint8(images[i, 0].numpy())).resize((tile, tile))
        sheet.paste(picture, (c * tile, r * (tile + 18) + 18))
        draw.text((c * tile + 4, r * (tile + 18) + 3), f"{i + 1}. {labels[i]}"[:30], fill=0)
        if notes:
            draw.text((c * tile + 4, r * (tile + 18) + tile), notes[i][:32], fill=255, stroke_width=2, stroke_fill=0)
    with atomic_file(path) as tmp:
        sheet.save(tmp, format="PNG")
    return str(path)
