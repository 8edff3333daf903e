"""The landmark detector: a backbone that outputs one heatmap per landmark (by default a
diffusers ``UNet2DModel`` whose last convolution has one channel per landmark) and a loss
from one registry, wrapped as a transformers ``PreTrainedModel``; optionally a second,
refinement stage that re-locates each landmark on a crop of a finer copy of the image.

Self-contained (torch, transformers, diffusers and the sibling files it imports) so it can be
saved next to the weights and loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbones import (
    IMAGENET_PIXEL_RANGE,
    IMAGENET_WEIGHTS,
    UNet2DBackbone,
    build_backbone,
    read_encoder_weights,
    read_pretraining_info,
    resolve_ddpm_folder,
)
from .configuration_landmark import MEMBER_FIELDS, LandmarkConfig
from .errors import UserInputError
from .heatmaps import decode, squared_distance_maps
from .image_processing_landmark import PROCESSOR_FILE, LandmarkImageProcessor
from .losses import get_loss
from .preprocessing import crop_patches, original_to_model
from .shape import shape_check

__all__ = ["LandmarkDetector", "LandmarkDetectorOutput"]

#: How a saved config names its pipeline for transformers' custom-pipeline route.
_PIPELINE_ENTRY = {
    "impl": "pipeline_landmark.LandmarkDetectionPipeline",
    "pt": ["AutoModel"],
    "tf": [],
    "type": "image",
}
#: Fields that may differ between an ensemble's members: where each came from and what it was
#: last given. (:data:`~hf_landmark.configuration_landmark.MEMBER_FIELDS` are kept per member.)
ENSEMBLE_FREE_FIELDS = ("base_model", "refine_base_model", "transformers_version", "_name_or_path", "dtype")
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
        coarse_coordinates: ``[B, N, 2]`` the first stage's decoded landmarks (model pixels),
            when the refinement stage ran or the model has a shape check.
        shape_moved: ``[B, N]`` which of them the shape check read again near where the
            other landmarks put them (:mod:`hf_landmark.shape`), when it has one.
        coordinates: ``[B, N, 2]`` the refined landmarks (model pixels, sub-pixel).
        refined_log_probabilities: ``[B, N, C, C]`` each landmark's refiner map on its crop.
        crop_origins: ``[B, N, 2]`` the crops' top-left pixels in the fine image.
    """

    loss: torch.FloatTensor | None = None
    heatmaps: torch.FloatTensor | None = None
    log_probabilities: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    coarse_coordinates: torch.FloatTensor | None = None
    shape_moved: torch.BoolTensor | None = None
    coordinates: torch.FloatTensor | None = None
    refined_log_probabilities: torch.FloatTensor | None = None
    crop_origins: torch.LongTensor | None = None


class LandmarkDetector(PreTrainedModel):
    """Heatmap landmark detector: ``config.backbone`` (default the DDPM-pre-trainable
    diffusers U-Net at a constant timestep) and ``config.loss``. The detector never takes a
    timestep. Post-processing (decoding, original-frame coordinates) lives in
    :class:`~hf_landmark.image_processing_landmark.LandmarkImageProcessor`.

    With ``config.refine_size`` the detector has a second stage, ``refiner``: a U-Net shared
    by all landmarks that sees, for each landmark, a ``refine_crop``-px crop of the image at
    ``refine_size`` px centred on the first stage's estimate and outputs one channel per
    landmark; a crop is read on its own landmark's channel (trained only there), so the
    network knows which landmark it looks for without extra inputs and its weights load from
    a DDPM pre-trained on crops like any U-Net's."""

    config_class = LandmarkConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"

    def __init__(self, config: LandmarkConfig):
        super().__init__(config)
        self.heatmap_loss = get_loss(config.loss)
        if config.ensemble_members:
            # An ensemble: K detectors of one architecture; see `_ensemble_forward`.
            self.members = torch.nn.ModuleList(
                LandmarkDetector(config.member_config(k)) for k in range(config.ensemble_size)
            )
            self.backbone = self.refiner = None
        else:
            self.members = None
            self.backbone = build_backbone(config)
            self.refiner = build_backbone(config, refiner=True) if config.refine_size else None
        self.post_init()

    def detectors(self) -> list[LandmarkDetector]:
        """The single detectors this model runs: its ensemble's members, or itself."""
        return list(self.members) if self.members is not None else [self]

    @property
    def has_refinement_stage(self) -> bool:
        return self.detectors()[0].refiner is not None

    @classmethod
    def ensemble(cls, detectors: list[LandmarkDetector]) -> LandmarkDetector:
        """An ensemble of fine-tuned detectors of one architecture (e.g. the same recipe with
        different seeds): it runs each and averages their landmarks. Its configuration is the
        first detector's, with each member's own :data:`MEMBER_FIELDS`; the members' weights
        are copied."""
        if len(detectors) < 2:
            raise ValueError(f"an ensemble needs at least 2 detectors, got {len(detectors)}")
        singles = [d for det in detectors for d in det.detectors()]
        for det in singles[1:]:
            differ = differing_shared_fields(singles[0].config, det.config)
            if differ:
                raise ValueError(f"the detectors differ in {', '.join(differ)}: an ensemble's members share them")
        config = copy.deepcopy(singles[0].config)
        config.set_ensemble_members([d.config.member_fields() for d in singles])
        model = cls(config)
        for member, det in zip(model.members, singles):
            member.load_state_dict(det.state_dict())
        return model.eval()

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
        fine_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        refine: bool | None = None,
        decoder: str = "centroid",
        return_dict: bool | None = None,
    ) -> LandmarkDetectorOutput:
        """Args:
        pixel_values: ``[B, 1, H, W]`` preprocessed images (H, W multiples of 8).
        fine_pixel_values: ``[B, 1, F, F]`` the same images at ``config.refine_size``
            (the image processor's ``fine_pixel_values``); with them a detector that has a
            refinement stage runs it.
        labels: ``[B, N, 2]`` landmark (x, y) in input pixels, for the (first-stage) loss.
        refine: ``False`` runs the first stage only.
        decoder: how the first stage's heatmaps are read to place the crops (and the
            refined maps to place the landmarks).
        """
        if self.members is not None:
            out = self._ensemble_forward(pixel_values, fine_pixel_values, labels, refine, decoder)
            return out.to_tuple() if return_dict is False else out
        heatmaps, embeddings = self.backbone(pixel_values)
        loss = None
        if labels is not None:
            loss = self.heatmap_loss(heatmaps, labels, self.config.sigma)
        log_p = self.heatmap_loss.log_probabilities(heatmaps)
        out = LandmarkDetectorOutput(loss=loss, heatmaps=heatmaps, log_probabilities=log_p, embeddings=embeddings)
        refines = self.refiner is not None and fine_pixel_values is not None and refine is not False
        checks = self.config.reference_shape is not None and not self.training  # not on every training step
        if refines or checks:
            coarse = decode(log_p.detach().exp(), decoder, log_maps=log_p.detach())
            if checks:
                coarse, out["shape_moved"] = shape_check(
                    coarse, log_p, self.config.reference_shape, self.config.shape_tolerance, decoder
                )
            out["coarse_coordinates"] = coarse
        if refines:
            for key, value in self.refine(fine_pixel_values, coarse, decoder).items():
                out[key] = value
        if return_dict is False:
            return out.to_tuple()
        return out

    def _ensemble_forward(self, pixel_values, fine_pixel_values, labels, refine, decoder) -> LandmarkDetectorOutput:
        """An ensemble's output: each member's landmarks, averaged (``coarse_coordinates``,
        ``coordinates``), and its maps as the mixture of the members' (what the scores, the
        spreads and so the radii read): the first stage's ``log_probabilities`` are the log of
        the members' mean probability; each member's refined map is placed in one crop of
        twice the side centred on the averaged landmark (``crop_origins``) and the maps
        averaged there, so the spread holds both the members' own and their disagreement.
        ``embeddings`` are the members' side by side; ``shape_moved`` where any member's moved."""
        outs = [
            m(pixel_values, fine_pixel_values, labels=labels, refine=refine, decoder=decoder) for m in self.members
        ]
        log_p = torch.logsumexp(torch.stack([o.log_probabilities for o in outs]), 0) - math.log(len(outs))
        coarse = [
            o.coarse_coordinates
            if o.coarse_coordinates is not None
            else decode(o.log_probabilities.detach().exp(), decoder, log_maps=o.log_probabilities.detach())
            for o in outs
        ]
        out = LandmarkDetectorOutput(
            loss=None if labels is None else torch.stack([o.loss for o in outs]).mean(),
            heatmaps=log_p,
            log_probabilities=log_p,
            embeddings=None if outs[0].embeddings is None else torch.cat([o.embeddings for o in outs], dim=-1),
            coarse_coordinates=torch.stack(coarse).mean(0),
        )
        moved = [o.shape_moved for o in outs if o.shape_moved is not None]
        if moved:
            out["shape_moved"] = torch.stack(moved).any(0)
        if outs[0].coordinates is not None:
            cfg = self.config
            coords = torch.stack([o.coordinates for o in outs]).mean(0)
            side = 2 * cfg.refine_crop
            origins = crop_origins(coords, cfg.image_size, fine_pixel_values.shape[-1], side)
            probs = sum(shift_into(o.refined_log_probabilities.exp(), o.crop_origins - origins, side) for o in outs)
            probs = probs / probs.sum(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
            out["coordinates"] = coords
            out["refined_log_probabilities"] = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
            out["crop_origins"] = origins
        return out

    def refine(self, fine_pixel_values: torch.Tensor, coarse: torch.Tensor, decoder: str = "centroid") -> dict:
        """The refinement stage for first-stage estimates ``coarse`` ``[B, N, 2]`` (model pixels):
        ``coarse_coordinates``, ``coordinates``, ``refined_log_probabilities``, ``crop_origins``."""
        cfg = self.config
        fine_size, crop = fine_pixel_values.shape[-1], cfg.refine_crop
        if tuple(fine_pixel_values.shape[-2:]) != (cfg.refine_size, cfg.refine_size):
            raise ValueError(
                f"fine_pixel_values must be {cfg.refine_size} x {cfg.refine_size} (config.refine_size), "
                f"got {tuple(fine_pixel_values.shape[-2:])}"
            )
        origins = crop_origins(coarse, cfg.image_size, fine_size, crop)
        crops = crop_patches(fine_pixel_values, origins, crop, fill=cfg.pixel_range[0])  # [B, N, 1, C, C]
        b, n = coarse.shape[:2]
        idx = torch.arange(n, device=coarse.device).repeat(b)
        logits = own_channel(self.refiner(crops.flatten(0, 1))[0], idx)  # [B*N, 1, C, C]
        log_p = get_loss(cfg.refine_loss).log_probabilities(logits).view(b, n, crop, crop)
        if cfg.refine_prior is not None:
            # The first-stage estimate in crop pixels (near the crop's centre pixel).
            centre = (
                original_to_model(coarse.detach().float(), (cfg.image_size, cfg.image_size), fine_size)
                - origins.float()
            )
            sigma = torch.tensor(cfg.refine_prior, dtype=log_p.dtype, device=log_p.device)[:, None, None]
            log_p = log_p - squared_distance_maps(centre, (crop, crop)).to(log_p.dtype) / (2 * sigma**2)
            log_p = log_p - torch.logsumexp(log_p.flatten(-2), -1)[..., None, None]
        local = decode(log_p.exp(), decoder, log_maps=log_p)
        refined = original_to_model(local + origins.to(local.dtype), (fine_size, fine_size), cfg.image_size)
        return {
            "coarse_coordinates": coarse,
            "coordinates": refined,
            "refined_log_probabilities": log_p,
            "crop_origins": origins,
        }

    def add_refiner(
        self,
        refine_size: int,
        refine_crop: int | None = None,
        backbone_config: dict | str | None = None,
        refine_sigma: float | None = None,
        ddpm: str | os.PathLike | None = None,
    ) -> None:
        """Give the detector a (new) refinement stage: from scratch with ``backbone_config``
        (default the first stage's), or from a DDPM pre-trained on crops (``hf-landmark
        pretrain --crop-from``), whose architecture it takes; every U-Net weight but the head
        is copied. ``refine_crop``: the crop side in fine pixels (default the crop DDPM's
        resolution, else 64); the U-Net is convolutional, so a DDPM pre-trained on 64-px crops
        also starts a refiner of 96-px crops."""
        unet = None
        if ddpm is not None:
            ddpm = resolve_ddpm_folder(ddpm)
            unet, info = UNet2DBackbone.load_ddpm(ddpm)
            backbone_config = UNet2DBackbone.config_from_ddpm(unet)
            refine_crop = refine_crop or int(info.get("resolution") or unet.config.sample_size)
            if "pixel_range" in info and [float(v) for v in info["pixel_range"]] != self.config.pixel_range:
                raise UserInputError(
                    f"{ddpm}: pre-trained with pixel range {info['pixel_range']}, the detector uses {self.config.pixel_range}"
                )
        cfg = self.config
        cfg.set_refinement(refine_size, refine_crop or 64, backbone_config, cfg.refine_loss, refine_sigma)
        cfg.set_refine_prior(None)  # it belongs to the refiner it was measured for
        self.refiner = build_backbone(cfg, refiner=True).to(self.device)
        cfg.refine_base_model = None
        if unet is not None:
            self.refiner.load_ddpm_weights(unet, os.fspath(ddpm))
            cfg.refine_base_model = os.fspath(ddpm)

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
        ddpm_path_or_repo = resolve_ddpm_folder(ddpm_path_or_repo)  # a pre-training's folder: its newest checkpoint
        unet, info = UNet2DBackbone.load_ddpm(ddpm_path_or_repo)
        if "pixel_range" in info:
            config_kwargs.setdefault("pixel_range", info["pixel_range"])
        size = image_size or info.get("resolution") or unet.config.sample_size
        config = LandmarkConfig(
            backbone="unet2d",
            backbone_config=UNet2DBackbone.config_from_ddpm(unet),
            num_landmarks=num_landmarks,
            image_size=int(size),
            **config_kwargs,
        )
        model = cls(config)
        model.backbone.load_ddpm_weights(unet, os.fspath(ddpm_path_or_repo))
        model.config.base_model = os.fspath(ddpm_path_or_repo)
        return model

    @classmethod
    def from_encoder(
        cls,
        weights: str | os.PathLike,
        num_landmarks: int,
        image_size: int | None = None,
        encoder_name: str | None = None,
        **config_kwargs,
    ) -> LandmarkDetector:
        """Build an ``smp_unet`` detector (the paper's baselines) whose encoder comes from a
        folder or Hub repo with a ``model.safetensors`` in the torchvision layout: ImageNet
        weights (``"imagenet"`` means :data:`~hf_landmark.backbones.IMAGENET_WEIGHTS` of the
        encoder) or an ``hf-landmark pretrain-ssl`` checkpoint, whose record supplies the
        encoder name, ``pixel_range`` and resolution (ImageNet weights: ``pixel_range``
        defaults to ImageNet's normalisation, :data:`~hf_landmark.backbones.IMAGENET_PIXEL_RANGE`).
        Every encoder tensor is copied (checked); the decoder and head start from scratch."""
        source = os.fspath(weights)
        info = {} if source == "imagenet" or os.path.isfile(source) else read_pretraining_info(source)
        name = encoder_name or info.get("encoder_name") or "densenet161"
        if source == "imagenet":
            if name not in IMAGENET_WEIGHTS:
                raise UserInputError(
                    f"no ImageNet weights are known for encoder {name!r}; pass a folder or repo (imagenet=PATH)"
                )
            source = IMAGENET_WEIGHTS[name]
        config_kwargs.setdefault("pixel_range", info.get("pixel_range", IMAGENET_PIXEL_RANGE))
        size = int(image_size or info.get("resolution") or 256)
        config = LandmarkConfig(
            backbone="smp_unet",
            backbone_config={"encoder_name": name},
            num_landmarks=num_landmarks,
            image_size=size,
            **config_kwargs,
        )
        try:
            state = read_encoder_weights(source)
        except (OSError, ValueError) as err:  # a missing file, a pickle, an unreachable or unknown repo
            hint = (
                ""
                if os.path.isdir(source)
                else (
                    "; without the Hub, download the repo's model.safetensors (torchvision layout) "
                    "into a folder and pass that folder"
                )
            )
            raise UserInputError(f"{source}: cannot read the encoder weights: {err}{hint}") from err
        model = cls(config)
        try:
            model.backbone.load_encoder_weights(state, source)
        except ValueError as err:
            raise UserInputError(str(err)) from err
        model.config.base_model = source
        return model


def shared_fields(config: LandmarkConfig) -> dict:
    """The configuration fields an ensemble's members must share (all but
    :data:`MEMBER_FIELDS` and :data:`ENSEMBLE_FREE_FIELDS`)."""
    skip = set(MEMBER_FIELDS) | set(ENSEMBLE_FREE_FIELDS)
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def crop_origins(coarse: torch.Tensor, image_size: int, fine_size: int, crop: int) -> torch.Tensor:
    """Top-left fine pixels ``[B, N, 2]`` (integer) of crops whose centre pixel
    (``crop // 2``) is the fine pixel nearest each estimate ``coarse`` (model pixels)."""
    centre = original_to_model(coarse.detach().float(), (image_size, image_size), fine_size)
    return torch.round(centre).long() - crop // 2


def refine_prior_sigmas(errors, factor: float, pseudo_images: float = 5.0) -> list[float]:
    """Per-landmark sigmas (fine pixels) of the refinement prior from the first stage's
    validation errors ``errors`` ``[M, N, 2]`` (fine pixels, NaN where a landmark is missing):
    ``factor`` x each landmark's root-mean-square error per axis, shrunk toward all landmarks'
    by ``pseudo_images`` images' worth (2-6 validation images give no prior narrower than
    their evidence), at least 1 px."""
    errors = np.asarray(errors, dtype=np.float64)
    squared = np.square(errors).sum(-1) / 2  # [M, N] per-axis squared error
    seen = np.isfinite(squared)
    count = seen.sum(0)
    pooled = np.nanmean(squared)
    own = np.where(count > 0, np.nansum(squared, 0) / np.maximum(count, 1), pooled)
    shrunk = (count * own + pseudo_images * pooled) / (count + pseudo_images)
    return [max(1.0, factor * float(v)) for v in np.sqrt(shrunk)]


def differing_shared_fields(a: LandmarkConfig, b: LandmarkConfig) -> list[str]:
    """The :func:`shared_fields` in which configurations ``a`` and ``b`` differ, sorted."""
    x, y = shared_fields(a), shared_fields(b)
    return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))


def shift_into(maps: torch.Tensor, offsets: torch.Tensor, side: int) -> torch.Tensor:
    """Maps ``[B, N, C, C]`` whose top-left pixels sit at ``offsets`` ``[B, N, 2]`` (integer x, y)
    from another crop's, placed into that ``side`` x ``side`` crop: ``[B, N, side, side]``, zero
    where a map does not reach and the part of a map outside it dropped."""
    c = maps.shape[-1]
    grid = torch.arange(side, device=maps.device)
    offsets = offsets.to(maps.device)
    rows = grid - offsets[..., 1:2]  # [B, N, side]: each crop row's row in the map
    cols = grid - offsets[..., 0:1]
    inside = ((rows >= 0) & (rows < c))[..., :, None] & ((cols >= 0) & (cols < c))[..., None, :]
    b, n = maps.shape[:2]
    picked = maps.gather(2, rows.clamp(0, c - 1)[..., :, None].expand(b, n, side, c))
    picked = picked.gather(3, cols.clamp(0, c - 1)[..., None, :].expand(b, n, side, side))
    return picked * inside.to(maps.dtype)


def own_channel(logits: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
    """``[K, N, C, C]`` refiner logits of K crops → ``[K, 1, C, C]``, each crop's own landmark's."""
    return logits[torch.arange(logits.shape[0], device=logits.device), landmark][:, None]


def check_model_folder(path: str) -> None:
    """Raise a :class:`UserInputError` naming what a local model folder lacks."""
    if os.path.isfile(os.path.join(path, "model.safetensors")) or os.path.isfile(
        os.path.join(path, "model.safetensors.index.json")
    ):
        return
    hints = []
    if os.path.isfile(os.path.join(path, "model", "model.safetensors")):
        hints.append(f"the fine-tuned detector is in {os.path.join(path, 'model')}")
    if os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isfile(
        os.path.join(path, "diffusion_pytorch_model.safetensors")
    ):
        hints.append(
            "this is a pre-trained DDPM, not a detector: fine-tune it first (hf-landmark finetune --init PATH)"
        )
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        hints.append("its weights are a pickle (pytorch_model.bin), which hf_landmark never loads")
    if not hints:
        hints.append(
            "a detector folder holds config.json and model.safetensors (hf-landmark finetune writes them to OUT/model)"
        )
    raise UserInputError(f"{path}: no model.safetensors in this folder; " + "; ".join(hints))
