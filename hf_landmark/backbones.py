"""Backbones of the landmark detector, one registry.

A backbone maps preprocessed images ``[B, 1, S, S]`` to heatmap logits ``[B, N, S, S]``, one
channel per landmark, plus an image embedding ``[B, C]`` (what the out-of-distribution check
compares with the training images), and knows how to take weights from its kind of
pre-trained checkpoint.
The detector (:mod:`modeling_landmark`) holds one, chosen by ``config.backbone``; a new
backbone is a class here plus its registry entry. Self-contained (torch, diffusers and the
configuration file) so it travels with a model's remote code.
"""

from __future__ import annotations

import json
import os

import torch
from diffusers import UNet2DModel
from torch import nn

from .configuration_landmark import LandmarkConfig, unet_kwargs

#: Written next to a pre-trained DDPM: how its inputs were preprocessed (range, resolution).
PRETRAINING_INFO_FILE = "hf_landmark_pretraining.json"


class UNet2DBackbone(nn.Module):
    """A diffusers ``UNet2DModel`` run at the constant ``config.timestep``; its last
    convolution is the head with ``num_landmarks`` outputs. Because the timestep is a
    constant, the time embedding is too, and a DDPM checkpoint loads unchanged."""

    head_prefix = "unet.conv_out."

    def __init__(self, config: LandmarkConfig, refiner: bool = False):
        super().__init__()
        # The refiner sees crops of refine_crop px; its head has a channel per landmark too.
        unet_config, size = (config.refine_backbone_config, config.refine_crop) if refiner else (config.backbone_config, config.image_size)
        self.unet = UNet2DModel(**unet_kwargs(unet_config, size, config.num_landmarks))
        self.timestep = int(config.timestep)
        self._embedding = None
        # The bottleneck (mid block) output, averaged over space, is the image embedding.
        self.unet.mid_block.register_forward_hook(self._keep_embedding)

    def _keep_embedding(self, module, inputs, output):
        self._embedding = output.float().mean(dim=(-2, -1))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N, S, S], embedding [B, C])``."""
        timestep = torch.full((pixel_values.shape[0],), self.timestep, device=pixel_values.device)
        logits = self.unet(pixel_values, timestep).sample
        embedding, self._embedding = self._embedding, None
        return logits, embedding

    @staticmethod
    def load_ddpm(path_or_repo: str | os.PathLike) -> tuple[UNet2DModel, dict]:
        """The U-Net of a pre-trained DDPM and its pre-training record.

        Accepts a diffusers ``DDPMPipeline`` folder or repo (``model_index.json`` + ``unet/``,
        what ``hf-landmark pretrain`` writes as ``checkpoint-<step>``) or a bare
        ``UNet2DModel`` folder (the older ``checkpoint-<step>/unet_ema``)."""
        path = os.fspath(path_or_repo)
        subfolder = "unet" if _has_file(path, "model_index.json") else None
        unet = UNet2DModel.from_pretrained(path, subfolder=subfolder, torch_dtype=torch.float32)
        info = read_pretraining_info(path) or (read_pretraining_info(path, subfolder) if subfolder else {})
        return unet, info

    @staticmethod
    def config_from_ddpm(unet: UNet2DModel) -> dict:
        """The ``backbone_config`` that rebuilds ``unet``'s architecture."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in unet.config.items()
                if not k.startswith("_") and k not in ("sample_size", "out_channels")}  # fmt: skip

    def load_ddpm_weights(self, unet: UNet2DModel, source: str) -> None:
        """Copy every tensor of a DDPM U-Net except the head (whose shape differs)."""
        head = self.head_prefix.removeprefix("unet.")
        state = {k: v for k, v in unet.state_dict().items() if not k.startswith(head)}
        missing, unexpected = self.unet.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(head) for k in missing):
            raise ValueError(f"{source}: U-Net weights do not match (missing {missing}, unexpected {unexpected})")


BACKBONES: dict[str, type[nn.Module]] = {"unet2d": UNet2DBackbone}


def build_backbone(config: LandmarkConfig, refiner: bool = False) -> nn.Module:
    """The first stage's backbone (``config.backbone``), or with ``refiner`` the refinement
    stage's U-Net (DDPM-pre-trainable on crops, see ``hf-landmark pretrain --crop-from``)."""
    if refiner:
        return UNet2DBackbone(config, refiner=True)
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[config.backbone](config)


def _has_file(path_or_repo: str, name: str, subfolder: str | None = None) -> bool:
    folder = os.path.join(path_or_repo, subfolder) if subfolder else path_or_repo
    if os.path.isdir(path_or_repo):
        return os.path.isfile(os.path.join(folder, name))
    from huggingface_hub import file_exists

    try:
        return file_exists(path_or_repo, f"{subfolder}/{name}" if subfolder else name)
    except Exception:  # offline or unreachable: the local cache decides
        return _cached_file(path_or_repo, name, subfolder) is not None


def _cached_file(repo: str, name: str, subfolder: str | None) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo, name, subfolder=subfolder)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def read_pretraining_info(path_or_repo, subfolder: str | None = None) -> dict:
    """The ``hf_landmark_pretraining.json`` record of a DDPM checkpoint, or ``{}``."""
    path = os.fspath(path_or_repo)
    if os.path.isdir(path):
        file = os.path.join(path, subfolder, PRETRAINING_INFO_FILE) if subfolder else os.path.join(path, PRETRAINING_INFO_FILE)
        if not os.path.isfile(file):
            return {}
    else:
        file = _cached_file(path, PRETRAINING_INFO_FILE, subfolder)
        if file is None:
            return {}
    with open(file, encoding="utf-8") as fh:
        info = json.load(fh)
    if not isinstance(info, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return info
