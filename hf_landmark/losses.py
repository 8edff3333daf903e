"""Heatmap losses, one registry: each loss says how it reads the logits.

A loss is the training objective *and* the reading of the logits as probabilities: its
``log_probabilities`` are what the decoders see and its ``scores`` the per-landmark
confidences, so training, evaluation and inference can never read the heatmaps differently.
Depends on torch and :mod:`heatmaps` only, so it travels with a model's remote code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heatmaps import HALF_MAX_RADIUS, gaussian_disk_targets, spatial_distribution_targets


class HeatmapLoss:
    """Interface. Logits ``[B, N, H, W]``; landmarks ``[B, N, 2]`` (x, y) in the logits' pixels.
    A landmark given as NaN (a pseudo-label the consistency test rejected) is left out of the
    loss by the losses that read each channel on its own (``contour``, ``bce``)."""

    name: str = ""

    def __call__(self, logits: torch.Tensor, landmarks: torch.Tensor, sigma: float) -> torch.Tensor:
        raise NotImplementedError

    def log_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, N, H, W]`` log-probability maps in the sense this loss trains them."""
        raise NotImplementedError

    def scores(self, probabilities: torch.Tensor, coords: torch.Tensor, sigma: float) -> torch.Tensor:
        """``[B, N]`` confidences in [0, 1]; default: each channel's peak probability."""
        return probabilities.flatten(-2).amax(-1).clamp(0, 1)


class ChannelCrossEntropy(HeatmapLoss):
    """The paper's code: ``CrossEntropyLoss`` on binary disk targets (σ thresholded at half
    maximum), i.e. a softmax across the landmark channels at each pixel."""

    name = "paper"

    def __call__(self, logits, landmarks, sigma):
        if not torch.isfinite(landmarks).all():
            # Every pixel's softmax across channels needs every landmark's disk: none may be missing.
            raise ValueError(
                "the 'paper' loss (a softmax across the landmark channels) needs every landmark; "
                "use --loss contour or bce with missing landmarks"
            )
        return F.cross_entropy(logits.float(), gaussian_disk_targets(landmarks, logits.shape[-2:], sigma))

    def log_probabilities(self, logits):
        return torch.log_softmax(logits.float(), dim=1)


class BinaryCrossEntropy(HeatmapLoss):
    """Per-channel binary cross-entropy with the same binary disk targets."""

    name = "bce"

    def __call__(self, logits, landmarks, sigma):
        valid, landmarks = _split_missing(landmarks)
        per_channel = F.binary_cross_entropy_with_logits(
            logits.float(), gaussian_disk_targets(landmarks, logits.shape[-2:], sigma), reduction="none"
        ).mean(dim=(-2, -1))
        return _masked_mean(per_channel, valid)

    def log_probabilities(self, logits):
        return F.logsigmoid(logits.float())


class SpatialSoftmaxNLL(HeatmapLoss):
    """Contour-hugging heatmaps (McCouat & Voiculescu 2022): a 2-D softmax over each
    channel's pixels and the negative log-likelihood of the landmark, the target optionally
    Gaussian-smoothed by ``sigma`` (0 = the bilinear weights of the sub-pixel landmark).
    Score: the probability mass within the target's half-maximum radius of the prediction."""

    name = "contour"

    def __call__(self, logits, landmarks, sigma):
        valid, landmarks = _split_missing(landmarks)
        target = spatial_distribution_targets(landmarks, logits.shape[-2:], sigma)
        log_p = torch.log_softmax(logits.float().flatten(-2), dim=-1)
        return _masked_mean(-(target.flatten(-2) * log_p).sum(-1), valid)

    def log_probabilities(self, logits):
        return torch.log_softmax(logits.float().flatten(-2), dim=-1).view_as(logits)

    def scores(self, probabilities, coords, sigma):
        radius = max(sigma * HALF_MAX_RADIUS, 1.5)
        near = gaussian_disk_targets(coords, probabilities.shape[-2:], radius / HALF_MAX_RADIUS)
        return (probabilities * near).sum(dim=(-2, -1)).clamp(0, 1)


def _split_missing(landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid [B, N], landmarks with the missing ones at 0)``; no host sync on the hot path."""
    valid = torch.isfinite(landmarks).all(-1)
    return valid, torch.where(valid[..., None], landmarks, torch.zeros_like(landmarks))


def _masked_mean(per_landmark: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``[B, N]`` over the valid landmarks; 0 with none."""
    weight = valid.to(per_landmark.dtype)
    return (per_landmark * weight).sum() / weight.sum().clamp_min(1.0)


LOSSES: dict[str, HeatmapLoss] = {
    cls.name: cls() for cls in (ChannelCrossEntropy, BinaryCrossEntropy, SpatialSoftmaxNLL)
}


def get_loss(name: str) -> HeatmapLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
