"""Backbones of the landmark detector, one registry.

A backbone maps preprocessed images ``[B, 1, S, S]`` to heatmap logits ``[B, N, S, S]``, one
channel per landmark, plus an image embedding ``[B, C]`` (what the out-of-distribution check
compares with the training images), and knows how to take weights from its kind of
pre-trained checkpoint.
The detector (:mod:`modeling_landmark`) holds one, chosen by ``config.backbone``; a new
backbone is a class here plus its registry entry. Self-contained (torch, diffusers,
safetensors and the configuration file; ``smp_unet`` also segmentation_models_pytorch) so it
travels with a model's remote code.
"""

from __future__ import annotations

import json
import logging
import os
import re

import torch
from diffusers import UNet2DModel
from torch import nn

from .configuration_landmark import LandmarkConfig, unet_kwargs
from .errors import MissingExtraError, UserInputError

#: Written next to a pre-trained DDPM: how its inputs were preprocessed (range, resolution).
PRETRAINING_INFO_FILE = "hf_landmark_pretraining.json"
logger = logging.getLogger(__name__)


class UNet2DBackbone(nn.Module):
    """A diffusers ``UNet2DModel`` run at the constant ``config.timestep``; its last
    convolution is the head with ``num_landmarks`` outputs. Because the timestep is a
    constant, the time embedding is too, and a DDPM checkpoint loads unchanged."""

    head_prefix = "unet.conv_out."

    def __init__(self, config: LandmarkConfig, refiner: bool = False):
        super().__init__()
        # The refiner sees crops of refine_crop px; its head has a channel per landmark too.
        unet_config, size = (
            (config.refine_backbone_config, config.refine_crop)
            if refiner
            else (config.backbone_config, config.image_size)
        )
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
        what ``hf-landmark pretrain`` writes as ``checkpoint-<step>``), a bare ``UNet2DModel``
        folder (the older ``checkpoint-<step>/unet_ema``), or the pre-training's output folder,
        for its newest checkpoint (:func:`resolve_ddpm_folder`)."""
        path = resolve_ddpm_folder(path_or_repo)
        subfolder = "unet" if _has_file(path, "model_index.json") else None
        unet = UNet2DModel.from_pretrained(path, subfolder=subfolder, torch_dtype=torch.float32)
        info = read_pretraining_info(path) or (read_pretraining_info(path, subfolder) if subfolder else {})
        return unet, info

    @staticmethod
    def config_from_ddpm(unet: UNet2DModel) -> dict:
        """The ``backbone_config`` that rebuilds ``unet``'s architecture."""
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in unet.config.items()
            if not k.startswith("_") and k not in ("sample_size", "out_channels")
        }

    def load_ddpm_weights(self, unet: UNet2DModel, source: str) -> None:
        """Copy every tensor of a DDPM U-Net except the head (whose shape differs)."""
        head = self.head_prefix.removeprefix("unet.")
        state = {k: v for k, v in unet.state_dict().items() if not k.startswith(head)}
        missing, unexpected = self.unet.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(head) for k in missing):
            raise ValueError(f"{source}: U-Net weights do not match (missing {missing}, unexpected {unexpected})")


#: The self-supervised objectives of ``hf-landmark pretrain-ssl`` (the paper's baselines).
SSL_METHODS = ("mocov3", "simclrv2", "dino")
BASELINES_HINT = "install the baselines extra: pip install 'hf-landmark[baselines]' (it needs torchvision)"


def import_smp():
    """segmentation_models_pytorch, or an ImportError that says how to install it."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:  # torchvision missing or mismatched counts too
        raise MissingExtraError(
            f"the smp_unet backbone needs segmentation_models_pytorch ({err}); {BASELINES_HINT}"
        ) from err
    return smp


class SmpUNetBackbone(nn.Module):
    """The paper's baselines' network: segmentation_models_pytorch's ``Unet`` (by default a
    DenseNet161 encoder and smp's default decoder), one input channel, one output channel per
    landmark. Its encoder takes ImageNet or self-supervised weights (:meth:`load_encoder_weights`).

    One input channel: a 3-channel (RGB) first convolution is summed over its input channels,
    what smp does for ``in_channels=1`` and exactly what the 3-channel network computes on a
    grayscale image repeated three times (the authors' SSL rows fed such images)."""

    def __init__(self, config: LandmarkConfig, refiner: bool = False):
        super().__init__()
        if refiner:
            raise ValueError("the refinement stage is a unet2d")
        smp = import_smp()
        c = config.backbone_config
        self.net = smp.Unet(
            encoder_name=c["encoder_name"],
            encoder_depth=int(c["encoder_depth"]),
            encoder_weights=None,
            decoder_channels=tuple(c["decoder_channels"]),
            in_channels=int(c["in_channels"]),
            classes=config.num_landmarks,
        )
        self._embedding = None
        self.net.encoder.register_forward_hook(self._keep_embedding)

    def _keep_embedding(self, module, inputs, features):
        # The deepest feature map, through a ReLU (torchvision's DenseNet classifier input) and
        # averaged over space: the embedding the SSL objectives trained.
        self._embedding = encoder_embedding(features)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N, S, S], embedding [B, C])``."""
        logits = self.net(pixel_values)
        embedding, self._embedding = self._embedding, None
        return logits, embedding

    def load_encoder_weights(self, state: dict[str, torch.Tensor], source: str) -> int:
        """Copy an encoder's weights (torchvision/timm DenseNet layout, as smp-hub, timm's
        ``*.tv_in1k`` repositories and ``hf-landmark pretrain-ssl`` store them) into the
        encoder; every encoder tensor must be present with its shape. Returns the number of
        tensors copied."""
        encoder = self.net.encoder
        state = encoder_state_dict(state, encoder, source)
        nn.Module.load_state_dict(encoder, state, strict=True)
        return len(state)


def encoder_embedding(features) -> torch.Tensor:
    """``[B, C]``: an smp encoder's deepest feature map through a ReLU, averaged over space."""
    return torch.relu(features[-1].float()).mean(dim=(-2, -1))


#: torchvision's pre-1.0 DenseNet names (``norm.1``), which smp's own loader also accepts.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def encoder_state_dict(state: dict[str, torch.Tensor], encoder: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """``state`` in ``encoder``'s own key layout and input channels: an ``encoder.`` prefix and
    a classifier are dropped, old DenseNet names renamed, a 3-channel first convolution summed
    to the encoder's channel count 1. Raises ``ValueError`` naming what does not match."""
    own = encoder.state_dict()
    if state and all(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        if key.startswith(("classifier.", "fc.", "head.")):
            continue
        match = _OLD_DENSENET_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    missing = sorted(set(own) - set(out))
    unexpected = sorted(set(out) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source}: encoder weights do not match the {type(encoder).__name__} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''} of {len(missing)}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} of {len(unexpected)})"
        )
    for key, value in out.items():
        target = own[key].shape
        if value.ndim == 4 and value.shape[1] == 3 and target[1] == 1 and value.shape[0] == target[0]:
            out[key] = value.sum(dim=1, keepdim=True)
        elif value.shape != target:
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the encoder expects {tuple(target)}")
    return {k: v.to(own[k].dtype) for k, v in out.items()}


#: The ImageNet weights of an encoder: safetensors repositories in the torchvision layout
#: (the files segmentation_models_pytorch itself downloads).
IMAGENET_WEIGHTS = {"densenet161": "smp-hub/densenet161.imagenet"}
#: The detector's intensity range for ImageNet weights: [0, 1] normalised as ImageNet's
#: channels are, with the mean of their means and standard deviations (a gray image).
IMAGENET_PIXEL_RANGE = (round((0 - 0.449) / 0.226, 4), round((1 - 0.449) / 0.226, 4))
ENCODER_WEIGHTS_FILE = "model.safetensors"
_PICKLES = ("pytorch_model.bin", "model.pth", "model.pt", "model.bin")


def read_encoder_weights(path_or_repo: str | os.PathLike, what: str = "encoder weights") -> dict[str, torch.Tensor]:
    """The tensors of an encoder folder or Hub repo's ``model.safetensors`` (ImageNet weights,
    or an ``hf-landmark pretrain-ssl`` checkpoint). Pickled weights are refused, never loaded."""
    from safetensors.torch import load_file

    path = os.fspath(path_or_repo)
    if os.path.isdir(path):
        file = os.path.join(path, ENCODER_WEIGHTS_FILE)
        if not os.path.isfile(file):
            pickles = [p for p in _PICKLES if os.path.isfile(os.path.join(path, p))]
            why = (
                f"it holds only pickled weights ({', '.join(pickles)}), which hf_landmark never loads"
                if pickles
                else "no such file"
            )
            raise FileNotFoundError(f"{path}: {what} must be a {ENCODER_WEIGHTS_FILE}; {why}")
    elif os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(f"{path}: {what} must be a safetensors file; pickled weights are never loaded")
        file = path
    else:
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(path, ENCODER_WEIGHTS_FILE)
    return load_file(file)


BACKBONES: dict[str, type[nn.Module]] = {"unet2d": UNet2DBackbone, "smp_unet": SmpUNetBackbone}


def build_backbone(config: LandmarkConfig, refiner: bool = False) -> nn.Module:
    """The first stage's backbone (``config.backbone``), or with ``refiner`` the refinement
    stage's U-Net (DDPM-pre-trainable on crops, see ``hf-landmark pretrain --crop-from``)."""
    if refiner:
        return UNet2DBackbone(config, refiner=True)
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[config.backbone](config)


def resolve_ddpm_folder(path_or_repo: str | os.PathLike, arg: str = "") -> str:
    """The folder :meth:`UNet2DBackbone.load_ddpm` reads for ``path_or_repo``: a local
    ``checkpoint-<step>`` (or bare ``UNet2DModel``) folder itself; the output folder of
    ``hf-landmark pretrain`` (its ``checkpoint-<step>`` folders, no model in it) → its newest
    checkpoint.
    A Hub id is returned unchanged. A local folder that is neither raises
    :class:`UserInputError` naming it (and ``arg``, the option that gave it)."""
    path = os.fspath(path_or_repo)
    prefix = f"{arg}: " if arg else ""
    if not os.path.isdir(path) or any(
        os.path.isfile(os.path.join(path, f)) for f in ("model_index.json", "config.json")
    ):
        return path
    from .fileio import list_checkpoints

    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise UserInputError(
            f"{prefix}{path}: not a pre-trained DDPM folder: no model_index.json or config.json in it, and no "
            "checkpoint-<step> folder of hf-landmark pretrain"
        )
    newest = os.fspath(checkpoints[-1][1])
    if not os.path.isfile(os.path.join(newest, "model_index.json")):
        raise UserInputError(f"{prefix}{newest}: not a pre-trained DDPM checkpoint (no model_index.json in it)")
    logger.info("%s: the output folder of a pre-training; using its newest checkpoint, %s", path, newest)
    return newest


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
        file = (
            os.path.join(path, subfolder, PRETRAINING_INFO_FILE)
            if subfolder
            else os.path.join(path, PRETRAINING_INFO_FILE)
        )
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
