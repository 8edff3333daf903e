"""The refinement stage's training data: the first stage's validation errors, crop offsets
drawn from them, and batches of crops placed exactly as inference places them.
``training/finetune.py`` trains the refiner on them."""

from __future__ import annotations

import numpy as np
import torch

from .preprocessing import crop_patches, to_pixel_values


def first_stage_offsets(model, processor, val, fine_size: int, decoder: str) -> np.ndarray:
    """The first stage's validation errors ``[M, N, 2]`` in fine pixels (estimate − truth):
    the offsets the refiner is trained to undo."""
    from .evaluation import predict_split
    from .preprocessing import original_to_model

    pred = predict_split(model, processor, val, decoder, refine=False)
    sizes = val.original_sizes.double().numpy()[:, None, :]
    first = original_to_model(pred["first_stage_coords"], sizes, fine_size)
    truth = original_to_model(val.original_landmarks.double().numpy(), sizes, fine_size)
    return first - truth


def sample_offsets(errors: torch.Tensor, landmark: torch.Tensor, crop: int, generator=None) -> torch.Tensor:
    """``[K, 2]`` crop-centre offsets (fine pixels) for crops of ``landmark`` ``[K]``: a
    validation error of the same landmark (``errors`` ``[M, N, 2]``) with random signs and a
    1-px jitter; one crop in ten uniform over the crop instead (so far-off estimates are seen
    too); all kept 2 px inside the crop so the truth is in it."""
    k = landmark.shape[0]
    pick = torch.randint(0, errors.shape[0], (k,), generator=generator)
    off = errors[pick, landmark] * (torch.randint(0, 2, (k, 2), generator=generator) * 2 - 1) + torch.randn(
        k, 2, generator=generator
    )
    half = crop / 2 - 2
    wide = torch.rand(k, generator=generator) < 0.1
    off[wide] = (torch.rand(int(wide.sum()), 2, generator=generator) * 2 - 1) * half
    return off.clamp(-half, half)


def refiner_batch(
    images01: torch.Tensor,
    truth: torch.Tensor,
    offsets: torch.Tensor,
    config,
    count: int,
    generator=None,
    valid: torch.Tensor | None = None,
):
    """``count`` training crops for the refiner from fine images ``[B, 1, F, F]`` in [0, 1] and
    their landmarks ``truth`` ``[B, N, 2]`` (fine pixels): for a random image and landmark
    each, the crop centred at the truth plus an offset (:func:`sample_offsets` of the first
    stage's errors ``offsets`` ``[M, N, 2]``), exactly as inference places it; with ``valid``
    ``[B, N]`` (False: a rejected pseudo-label) only among the valid pairs. Returns
    ``(crops [K, 1, C, C] pixel values, landmark [K], local truth [K, 1, 2] crop pixels)``."""
    device, crop = images01.device, config.refine_crop
    if valid is None:
        which = torch.randint(0, images01.shape[0], (count,), generator=generator).to(device)
        landmark = torch.randint(0, truth.shape[1], (count,), generator=generator)
    else:
        pair = torch.multinomial(valid.flatten().float().cpu(), count, replacement=True, generator=generator)
        which, landmark = (pair // truth.shape[1]).to(device), pair % truth.shape[1]
    target = truth[which, landmark.to(device)]
    origins = torch.round(target + sample_offsets(offsets, landmark, crop, generator).to(device)).long() - crop // 2
    pixels = to_pixel_values(images01, config.pixel_range)[which]
    crops = crop_patches(pixels, origins[:, None], crop, fill=config.pixel_range[0])[:, 0]
    return crops, landmark.to(device), (target - origins)[:, None].float()
