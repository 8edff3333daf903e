"""Landmarks by matching: a pre-trained DDPM's features as dense descriptors.

A diffusion U-Net's decoder features, read at a small noise level, are descriptors good enough
to find the same anatomy in another image without any training on labels (Tang et al.,
"Emergent correspondence from image diffusion", NeurIPS 2023). Given one annotated template,
each landmark's descriptor (bilinearly sampled at its position in the template's feature map)
is compared by cosine similarity with every position of a target's map; the best position is
the match. A match is trusted only if it is **cycle-consistent**: the target's descriptor at
the match, matched back into the template, lands within ``cycle_radius`` of where the landmark
is (FM-OSD and CC2D check a match both ways too).

Features: the noised image ``x_t = sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) ε`` (``ε`` from a fixed seed,
averaged over ``draws``) through the U-Net at timestep ``t``; the outputs of its last two
up-blocks, each L2-normalised per position, upsampled to the finer one and concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: The noise level the features are read at (of the DDPM's 500 training steps; chosen on ISBI validation).
DEFAULT_TIMESTEP = 5
#: How sharply the sub-pixel refinement weighs a peak's neighbours by their similarity.
PEAK_TEMPERATURE = 0.05


@dataclass
class FeatureExtractor:
    """A pre-trained DDPM's U-Net as a dense descriptor: :meth:`__call__` maps model-size
    images ``[B, 1, S, S]`` (the DDPM's intensity range) to ``[B, C, h, w]`` unit vectors."""

    unet: torch.nn.Module
    alphas_cumprod: torch.Tensor
    size: int
    pixel_range: tuple[float, float]
    timestep: int = DEFAULT_TIMESTEP
    draws: int = 2
    seed: int = 0
    blocks: tuple[int, ...] = (1, 2)

    @classmethod
    def from_ddpm(cls, path: str, **kwargs) -> FeatureExtractor:
        """From a ``hf-landmark pretrain`` checkpoint (a diffusers ``DDPMPipeline`` folder or repo)."""
        from diffusers import DDPMScheduler

        from .backbones import UNet2DBackbone

        unet, info = UNet2DBackbone.load_ddpm(path)
        try:
            scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        except (OSError, ValueError):
            scheduler = DDPMScheduler(
                num_train_timesteps=int(info.get("num_train_timesteps", 500)),
                beta_schedule=info.get("beta_schedule", "linear"),
            )
        size = int(info.get("resolution") or unet.config.sample_size)
        return cls(
            unet.eval(), scheduler.alphas_cumprod.float(), size, tuple(info.get("pixel_range", (-1.0, 1.0))), **kwargs
        )

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        blocks = [self.unet.up_blocks[i] for i in self.blocks]
        kept: list[torch.Tensor] = []
        handles = [b.register_forward_hook(lambda m, i, o: kept.append(o.float())) for b in blocks]
        a = self.alphas_cumprod[self.timestep]
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        try:
            for start in range(0, len(pixel_values), batch_size):
                x = pixel_values[start : start + batch_size].float()
                total = None
                for _ in range(self.draws):
                    noise = torch.randn(x.shape, generator=generator)
                    kept.clear()
                    self.unet(a.sqrt() * x + (1 - a).sqrt() * noise, torch.full((len(x),), self.timestep))
                    finest = kept[-1].shape[-2:]
                    feats = torch.cat(
                        [
                            F.interpolate(F.normalize(k, dim=1), size=finest, mode="bilinear", align_corners=False)
                            for k in kept[-len(self.blocks) :]
                        ],
                        dim=1,
                    )
                    total = feats if total is None else total + feats
                out.append(F.normalize(total, dim=1))
        finally:
            for h in handles:
                h.remove()
        return torch.cat(out)


def sample_descriptors(feats: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear descriptors ``[N, C]`` of one feature map ``[C, h, w]`` at points ``[N, 2]``
    given in the map's own pixel-centre coordinates."""
    c, h, w = feats.shape
    grid = torch.stack([(xy[:, 0] + 0.5) / w * 2 - 1, (xy[:, 1] + 0.5) / h * 2 - 1], dim=-1)[None, None]
    return F.normalize(
        F.grid_sample(feats[None], grid.float(), mode="bilinear", align_corners=False)[0, :, 0].T, dim=1
    )


def best_positions(
    desc: torch.Tensor, feats: torch.Tensor, radius: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each descriptor ``[N, C]`` matches best in ``[C, h, w]``: positions ``[N, 2]`` in the
    map's pixel-centre coordinates (the peak refined by the centroid of its 3 × 3 neighbourhood
    weighted by ``exp((similarity - peak) / PEAK_TEMPERATURE)``) and the peak cosine similarity ``[N]``. ``radius``: search only within
    this many map pixels of the map's centre."""
    c, h, w = feats.shape
    sim = (desc @ feats.reshape(c, -1)).reshape(-1, h, w)
    if radius is not None:
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
        )
        outside = (xs - (w - 1) / 2) ** 2 + (ys - (h - 1) / 2) ** 2 > radius**2
        sim = sim.masked_fill(outside, -2.0)
    score, idx = sim.flatten(1).max(dim=1)
    py, px = idx // w, idx % w
    out = torch.zeros(len(desc), 2)
    for n in range(len(desc)):
        y0, y1, x0, x1 = max(0, py[n] - 1), min(h, py[n] + 2), max(0, px[n] - 1), min(w, px[n] + 2)
        window = ((sim[n, y0:y1, x0:x1] - score[n]) / PEAK_TEMPERATURE).exp()
        ys, xs = torch.meshgrid(
            torch.arange(y0, y1, dtype=torch.float32), torch.arange(x0, x1, dtype=torch.float32), indexing="ij"
        )
        out[n] = torch.stack([(window * xs).sum() / window.sum(), (window * ys).sum() / window.sum()])
    return out, score


def match_landmarks(
    template_feats: torch.Tensor, template_xy: torch.Tensor, target_feats: torch.Tensor, cycle_radius: float = 1.5
) -> dict:
    """Match the template's landmarks ``[N, 2]`` (feature-map coordinates) into each target map.

    Returns, per target and landmark: ``xy`` ``[T, N, 2]`` (feature-map coordinates),
    ``similarity`` ``[T, N]``, ``cycle_error`` ``[T, N]`` (feature pixels between the landmark
    and where its match maps back to) and ``consistent`` (``cycle_error <= cycle_radius``)."""
    desc = sample_descriptors(template_feats, template_xy)
    xys, sims, cycles = [], [], []
    for feats in target_feats:
        xy, sim = best_positions(desc, feats)
        back, _ = best_positions(sample_descriptors(feats, xy), template_feats)
        xys.append(xy)
        sims.append(sim)
        cycles.append((back - template_xy).norm(dim=1))
    cycle = torch.stack(cycles)
    return {
        "xy": torch.stack(xys),
        "similarity": torch.stack(sims),
        "cycle_error": cycle,
        "consistent": cycle <= cycle_radius,
    }


def to_feature_coords(xy, original_size, feature_size: int):
    """Original pixel-centre coordinates → a ``feature_size`` map's (per axis, ``[..., 2]``)."""
    xy = torch.as_tensor(xy, dtype=torch.float32)
    size = torch.as_tensor(original_size, dtype=torch.float32)
    return (xy + 0.5) * feature_size / size - 0.5


def from_feature_coords(xy, original_size, feature_size: int):
    xy = torch.as_tensor(xy, dtype=torch.float32)
    size = torch.as_tensor(original_size, dtype=torch.float32)
    return (xy + 0.5) * size / feature_size - 0.5


def _crop(image01: np.ndarray, centre, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A ``side`` × ``side`` crop centred at ``centre`` (zero outside the image) and its top-left pixel."""
    h, w = image01.shape
    x0, y0 = int(round(centre[0] - (side - 1) / 2)), int(round(centre[1] - (side - 1) / 2))
    out = np.zeros((side, side), np.float32)
    ys, xs = slice(max(0, y0), min(h, y0 + side)), slice(max(0, x0), min(w, x0 + side))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = image01[ys, xs]
    return out, (x0, y0)


def match_images(
    extractor: FeatureExtractor,
    template01: np.ndarray,
    template_xy: np.ndarray,
    targets01,
    cycle_radius: float = 1.5,
    fine_crops: tuple[float, ...] = (0.25,),
    fine_radius: float = 0.15,
) -> list[dict]:
    """One annotated template (``[H, W]`` intensities in [0, 1], landmarks ``[N, 2]`` original
    pixels) matched into each target image, coarse to fine: the whole image at the DDPM's size,
    then for each of ``fine_crops`` (a crop side, as a fraction of the image's longer side) a
    crop around the current estimate, searched within ``fine_radius`` of the crop side of its
    centre (a move onto a structure farther away is not made).

    Per target: ``{"xy": [N, 2] original pixels, "similarity": [N] (the last stage's),
    "cycle_error": [N] (original pixels of the template, the worst stage's, where the match
    maps back to), "consistent": [N] (the match maps back within ``cycle_radius`` feature
    pixels of the landmark at every stage)}``."""
    from .preprocessing import resize_image, to_pixel_values

    def features(img):
        return extractor(
            to_pixel_values(torch.from_numpy(resize_image(img, extractor.size))[None, None], extractor.pixel_range)
        )[0]

    template_xy = np.asarray(template_xy, dtype=np.float64)
    t_size = template01.shape[::-1]
    tfeat = features(template01)
    h = tfeat.shape[-1]
    t_xy = to_feature_coords(template_xy, t_size, h)
    # The template's side of each fine stage: its crop around each landmark, once for all targets.
    stages = []
    for frac in fine_crops:
        side = max(8, int(round(frac * max(t_size))))
        crops = []
        for xy in template_xy:
            img, (x0, y0) = _crop(template01, xy, side)
            feats = features(img)
            pos = to_feature_coords(xy - (x0, y0), (side, side), feats.shape[-1])[None]
            crops.append((feats, pos, sample_descriptors(feats, pos)))
        stages.append((frac, side, crops))
    out = []
    for img in targets01:
        size = img.shape[::-1]
        res = match_landmarks(tfeat, t_xy, features(img)[None], cycle_radius)
        xy = from_feature_coords(res["xy"][0], size, h).numpy().astype(np.float64)
        cycle = (res["cycle_error"][0] * max(t_size) / h).numpy()
        consistent = res["consistent"][0].numpy().copy()
        similarity = res["similarity"][0].numpy()
        for frac, t_side, crops in stages:
            side = max(8, int(round(frac * max(size))))
            for j, (tf, tpos, desc) in enumerate(crops):
                crop, (x0, y0) = _crop(img, xy[j], side)
                cf = features(crop)
                m = cf.shape[-1]
                radius = fine_radius * m
                p, sim = best_positions(desc, cf, radius)
                back, _ = best_positions(sample_descriptors(cf, p), tf, radius)
                err = float((back - tpos).norm())
                xy[j] = from_feature_coords(p[0], (side, side), m).numpy() + (x0, y0)
                similarity[j] = float(sim[0])
                cycle[j] = max(cycle[j], err * t_side / tf.shape[-1])
                consistent[j] &= err <= cycle_radius
        out.append({"xy": xy, "similarity": similarity, "cycle_error": cycle, "consistent": consistent})
    return out
