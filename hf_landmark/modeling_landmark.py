"""The landmark detector: a diffusers ``UNet2DModel`` whose last convolution outputs one
heatmap per landmark, wrapped as a transformers ``PreTrainedModel``.

Self-contained (torch, transformers, diffusers and the two sibling files it imports) so it
can be saved next to the weights and loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_landmark import LandmarkConfig
from .heatmaps import HALF_MAX_RADIUS, decode, gaussian_disk_targets, spatial_distribution_targets

#: Written next to a pre-trained DDPM U-Net: how its inputs were preprocessed.
PRETRAINING_INFO_FILE = "hf_landmark_pretraining.json"
_HEAD_PREFIX = "conv_out."


@dataclass
class LandmarkDetectorOutput(ModelOutput):
    """Output of :class:`LandmarkDetector`.

    Attributes:
        loss: scalar training loss, when ``labels`` are given.
        heatmaps: ``[B, N, H, W]`` logits, one channel per landmark, in the input pixel frame.
    """

    loss: torch.FloatTensor | None = None
    heatmaps: torch.FloatTensor | None = None


def landmark_loss(logits: torch.Tensor, landmarks: torch.Tensor, loss: str, sigma: float) -> torch.Tensor:
    """Training loss of heatmap logits against landmark coordinates.

    Args:
        logits: ``[B, N, H, W]``.
        landmarks: ``[B, N, 2]`` (x, y) in the logits' pixel frame.
        loss: ``"paper"``: ``CrossEntropyLoss`` with binary disk targets, i.e. a softmax
            across the landmark channels at each pixel (the paper's code); ``"bce"``:
            per-channel binary cross-entropy with the same targets; ``"contour"``: a 2-D
            softmax over each channel's pixels and the negative log-likelihood of the
            landmark (McCouat & Voiculescu 2022), optionally Gaussian-smoothed by ``sigma``.
    """
    logits = logits.float()
    size = logits.shape[-2:]
    if loss == "paper":
        return F.cross_entropy(logits, gaussian_disk_targets(landmarks, size, sigma))
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, gaussian_disk_targets(landmarks, size, sigma))
    if loss == "contour":
        target = spatial_distribution_targets(landmarks, size, sigma)
        log_p = torch.log_softmax(logits.flatten(-2), dim=-1)
        return -(target.flatten(-2) * log_p).sum(-1).mean()
    raise ValueError(f"Unknown loss {loss!r}")


def heatmap_log_probabilities(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Log-probability maps matching how a loss reads the logits (channels, sigmoid or pixels)."""
    logits = logits.float()
    if loss == "paper":
        return torch.log_softmax(logits, dim=1)
    if loss == "bce":
        return F.logsigmoid(logits)
    if loss == "contour":
        return torch.log_softmax(logits.flatten(-2), dim=-1).view_as(logits)
    raise ValueError(f"Unknown loss {loss!r}")


class LandmarkDetector(PreTrainedModel):
    """Heatmap landmark detector on a (DDPM pre-trained) diffusers ``UNet2DModel``.

    The detector never takes a timestep: the U-Net runs at the constant ``config.timestep``
    (default 0), so its time embedding is a constant and a diffusers DDPM checkpoint loads
    unchanged. The head is the U-Net's last convolution with ``num_landmarks`` outputs.
    """

    config_class = LandmarkConfig
    base_model_prefix = "detector"
    main_input_name = "pixel_values"

    def __init__(self, config: LandmarkConfig):
        super().__init__(config)
        self.unet = UNet2DModel(**config.unet_kwargs())
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` restricted to safetensors: a folder or repo whose
        weights are only a pickle (``pytorch_model.bin``) is refused, never unpickled."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("hf_landmark loads safetensors weights only; pickled weights are never unpickled")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(*args, **kwargs)

    def _init_weights(self, module):
        # diffusers initialises its own layers; transformers' default would overwrite them.
        pass

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> LandmarkDetectorOutput:
        """Args:
            pixel_values: ``[B, 1, H, W]`` preprocessed images (H, W multiples of 8).
            labels: ``[B, N, 2]`` landmark (x, y) in input pixels, for the loss.
        """
        timestep = torch.full((pixel_values.shape[0],), self.config.timestep, device=pixel_values.device)
        heatmaps = self.unet(pixel_values, timestep).sample
        loss = None
        if labels is not None:
            loss = landmark_loss(heatmaps, labels, self.config.loss, self.config.sigma)
        if return_dict is False:
            return (loss, heatmaps) if loss is not None else (heatmaps,)
        return LandmarkDetectorOutput(loss=loss, heatmaps=heatmaps)

    @torch.no_grad()
    def decode_heatmaps(self, heatmaps: torch.Tensor, decoder: str = "centroid") -> tuple[torch.Tensor, torch.Tensor]:
        """Landmarks and confidences from heatmap logits.

        Returns:
            coordinates ``[B, N, 2]`` (x, y) in the heatmaps' pixel frame, and scores
            ``[B, N]`` in [0, 1]: the peak probability for ``paper``/``bce``, and for
            ``contour`` the probability mass within the target radius of the prediction.
        """
        log_p = heatmap_log_probabilities(heatmaps, self.config.loss)
        probs = log_p.exp()
        coords = decode(probs, decoder, log_maps=log_p)
        if self.config.loss == "contour":
            radius = max(self.config.sigma * HALF_MAX_RADIUS, 1.5)
            near = gaussian_disk_targets(coords, probs.shape[-2:], radius / HALF_MAX_RADIUS)
            scores = (probs * near).sum(dim=(-2, -1))
        else:
            scores = probs.flatten(-2).amax(-1)
        return coords, scores.clamp(0, 1)

    @torch.no_grad()
    def predict_landmarks(self, pixel_values: torch.Tensor, decoder: str = "centroid") -> tuple[torch.Tensor, torch.Tensor]:
        """Predict landmarks: coordinates ``[B, N, 2]`` in input pixels and scores ``[B, N]``."""
        return self.decode_heatmaps(self(pixel_values).heatmaps, decoder)

    @classmethod
    def from_ddpm(
        cls,
        unet_path_or_repo: str | os.PathLike,
        num_landmarks: int,
        subfolder: str | None = None,
        image_size: int | None = None,
        **config_kwargs,
    ) -> LandmarkDetector:
        """Build a detector from a pre-trained diffusers ``UNet2DModel`` (folder or Hub repo).

        Every U-Net weight except the last convolution is copied unchanged; the new head has
        ``num_landmarks`` output channels. When the checkpoint carries
        ``hf_landmark_pretraining.json``, its ``pixel_range`` and resolution become defaults.
        """
        ddpm = UNet2DModel.from_pretrained(unet_path_or_repo, subfolder=subfolder, torch_dtype=torch.float32)
        info = read_pretraining_info(unet_path_or_repo, subfolder)
        unet_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ddpm.config.items() if not k.startswith("_")}
        for key in ("sample_size", "out_channels"):
            unet_kwargs.pop(key, None)
        if "pixel_range" in info:
            config_kwargs.setdefault("pixel_range", info["pixel_range"])
        size = image_size or info.get("resolution") or ddpm.config.sample_size
        config = LandmarkConfig(unet=unet_kwargs, num_landmarks=num_landmarks, image_size=int(size), **config_kwargs)
        model = cls(config)
        state = {k: v for k, v in ddpm.state_dict().items() if not k.startswith(_HEAD_PREFIX)}
        missing, unexpected = model.unet.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(_HEAD_PREFIX) for k in missing):
            raise ValueError(f"{unet_path_or_repo}: U-Net weights do not match (missing {missing}, unexpected {unexpected})")
        model.config.base_model = str(unet_path_or_repo)
        return model


def read_pretraining_info(path_or_repo, subfolder: str | None) -> dict:
    folder = os.path.join(str(path_or_repo), subfolder) if subfolder else str(path_or_repo)
    if os.path.isdir(folder):
        file = os.path.join(folder, PRETRAINING_INFO_FILE)
        if not os.path.isfile(file):
            return {}
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            file = hf_hub_download(str(path_or_repo), PRETRAINING_INFO_FILE, subfolder=subfolder)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return {}
    with open(file, encoding="utf-8") as fh:
        info = json.load(fh)
    if not isinstance(info, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return info
