"""The landmark detector: a backbone that outputs one heatmap per landmark (by default a
diffusers ``UNet2DModel`` whose last convolution has one channel per landmark) and a loss
from one registry, wrapped as a transformers ``PreTrainedModel``.

Self-contained (torch, transformers, diffusers and the sibling files it imports) so it can be
saved next to the weights and loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbones import UNet2DBackbone, build_backbone
from .configuration_landmark import LandmarkConfig
from .errors import UserInputError
from .image_processing_landmark import PROCESSOR_FILE, LandmarkImageProcessor
from .losses import get_loss

__all__ = ["LandmarkDetector", "LandmarkDetectorOutput"]

#: How a saved config names its pipeline for transformers' custom-pipeline route.
_PIPELINE_ENTRY = {"impl": "pipeline_landmark.LandmarkDetectionPipeline", "pt": ["AutoModel"], "tf": [], "type": "image"}
#: Checkpoints saved before the backbone seam keep the U-Net at ``unet.*``.
_LEGACY_KEYS = {r"^unet\.": "backbone.unet."}


@dataclass
class LandmarkDetectorOutput(ModelOutput):
    """Output of :class:`LandmarkDetector`.

    Attributes:
        loss: scalar training loss, when ``labels`` are given.
        heatmaps: ``[B, N, H, W]`` logits, one channel per landmark, in the input pixel frame.
        log_probabilities: ``[B, N, H, W]`` the logits read as the loss reads them (what the
            decoders and scores use).
        embeddings: ``[B, C]`` the backbone's image embedding (out-of-distribution check).
    """

    loss: torch.FloatTensor | None = None
    heatmaps: torch.FloatTensor | None = None
    log_probabilities: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


class LandmarkDetector(PreTrainedModel):
    """Heatmap landmark detector: ``config.backbone`` (default the DDPM-pre-trainable
    diffusers U-Net at a constant timestep) and ``config.loss``. The detector never takes a
    timestep. Post-processing (decoding, original-frame coordinates) lives in
    :class:`~hf_landmark.image_processing_landmark.LandmarkImageProcessor`."""

    config_class = LandmarkConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"

    def __init__(self, config: LandmarkConfig):
        super().__init__(config)
        self.heatmap_loss = get_loss(config.loss)
        self.backbone = build_backbone(config)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` restricted to safetensors: a folder or repo whose
        weights are only a pickle (``pytorch_model.bin``) is refused, never unpickled. A local
        folder without weights is a :class:`UserInputError` that says where they usually are."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("hf_landmark loads safetensors weights only; pickled weights are never unpickled")
        kwargs["use_safetensors"] = True
        kwargs.setdefault("key_mapping", _LEGACY_KEYS)
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path) and not kwargs.get("subfolder"):
            check_model_folder(path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, plus what makes the folder self-sufficient: the
        image processor of this config when the folder has none yet (``preprocessor_config.json``)
        and the pipeline's file with a ``custom_pipelines`` entry, so that
        ``pipeline("landmark-detection", model=folder, trust_remote_code=True)`` works where
        hf_landmark is not installed."""
        self.config.custom_pipelines = {"landmark-detection": dict(_PIPELINE_ENTRY)}
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            del self.config.custom_pipelines
        from transformers.dynamic_module_utils import get_relative_import_files

        pipeline_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline_landmark.py")
        for file in {pipeline_file, *get_relative_import_files(pipeline_file)}:
            shutil.copy(file, save_directory)
        if not os.path.isfile(os.path.join(save_directory, PROCESSOR_FILE)):
            LandmarkImageProcessor.from_model_config(self.config).save_pretrained(save_directory)

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
        heatmaps, embeddings = self.backbone(pixel_values)
        loss = None
        if labels is not None:
            loss = self.heatmap_loss(heatmaps, labels, self.config.sigma)
        log_p = self.heatmap_loss.log_probabilities(heatmaps)
        if return_dict is False:
            return tuple(v for v in (loss, heatmaps, log_p, embeddings) if v is not None)
        return LandmarkDetectorOutput(loss=loss, heatmaps=heatmaps, log_probabilities=log_p, embeddings=embeddings)

    @classmethod
    def from_ddpm(
        cls,
        ddpm_path_or_repo: str | os.PathLike,
        num_landmarks: int,
        image_size: int | None = None,
        **config_kwargs,
    ) -> LandmarkDetector:
        """Build a detector from a pre-trained DDPM: a diffusers ``DDPMPipeline`` folder or
        repo (``checkpoint-<step>`` of ``hf-landmark pretrain``) or a bare ``UNet2DModel``
        folder (the older ``checkpoint-<step>/unet_ema``).

        Every U-Net weight except the last convolution is copied unchanged; the new head has
        ``num_landmarks`` output channels. The checkpoint's pre-training record supplies the
        default ``pixel_range`` and resolution."""
        unet, info = UNet2DBackbone.load_ddpm(ddpm_path_or_repo)
        if "pixel_range" in info:
            config_kwargs.setdefault("pixel_range", info["pixel_range"])
        size = image_size or info.get("resolution") or unet.config.sample_size
        config = LandmarkConfig(backbone="unet2d", backbone_config=UNet2DBackbone.config_from_ddpm(unet),
                                num_landmarks=num_landmarks, image_size=int(size), **config_kwargs)  # fmt: skip
        model = cls(config)
        model.backbone.load_ddpm_weights(unet, os.fspath(ddpm_path_or_repo))
        model.config.base_model = os.fspath(ddpm_path_or_repo)
        return model


def check_model_folder(path: str) -> None:
    """Raise a :class:`UserInputError` naming what a local model folder lacks."""
    if os.path.isfile(os.path.join(path, "model.safetensors")) or os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
        return
    hints = []
    if os.path.isfile(os.path.join(path, "model", "model.safetensors")):
        hints.append(f"the fine-tuned detector is in {os.path.join(path, 'model')}")
    if os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isfile(os.path.join(path, "diffusion_pytorch_model.safetensors")):
        hints.append("this is a pre-trained DDPM, not a detector: fine-tune it first (hf-landmark finetune --init PATH)")
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        hints.append("its weights are a pickle (pytorch_model.bin), which hf_landmark never loads")
    if not hints:
        hints.append("a detector folder holds config.json and model.safetensors (hf-landmark finetune writes them to OUT/model)")
    raise UserInputError(f"{path}: no model.safetensors in this folder; " + "; ".join(hints))
