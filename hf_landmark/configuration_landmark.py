"""Configuration of the landmark detector: a backbone that outputs one heatmap per landmark
(today the diffusers ``UNet2DModel`` at a constant timestep), a loss, and the facts about the
images (size, intensity range, spacing convention).

This file imports only ``transformers`` so that it can travel with the weights and be
loaded with ``trust_remote_code=True`` on a machine without ``hf_landmark``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import PreTrainedConfig

_DOWN = ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
_UP = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D")


def _unet_preset(base: int, layers_per_block: int, norm_num_groups: int, widths=(1, 2, 4, 8)) -> dict:
    channels = [base * m for m in widths]
    return {
        "in_channels": 1,
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "down_block_types": list(_DOWN),
        "up_block_types": list(_UP),
        # 4 heads at the deepest level; the last down block does not downsample, so its
        # attention (and the mid block's) runs at 1/8 of the input: 32x32 for 256 px.
        "attention_head_dim": channels[-1] // 4,
        "norm_num_groups": norm_num_groups,
    }


#: Named U-Net presets (diffusers ``UNet2DModel`` keyword arguments, without sizes/outputs).
UNET_PRESETS: dict[str, dict] = {
    # The paper's design in diffusers terms: channel multipliers [1, 2, 4, 8] on width 64.
    "base": _unet_preset(64, 2, 32),
    "large": _unet_preset(128, 2, 32),
    # For CPU runs at 64-128 px.
    "small": _unet_preset(32, 2, 32),
    # < 1 M parameters: the tests' U-Net, and the 30-minute recipe's refiner (its crop DDPM).
    "tiny": _unet_preset(16, 1, 8, widths=(1, 2, 2, 4)),
    # "small" at half its width (3.9 M parameters, about twice "tiny"'s cost per step on a
    # CPU): a larger refiner when its crop DDPM is pre-trained with it (docs/evidence.md).
    "compact": _unet_preset(16, 2, 8),
}

UNIT_CONVENTIONS = ("spacing", "wrist", "pixels")

#: What each member of an ensemble measured for itself on its own validation errors; every
#: other field of its configuration is the ensemble's.
MEMBER_FIELDS = ("reference_shape", "shape_tolerance", "refine_prior")

#: The paper's baselines' architecture (``backbone="smp_unet"``): segmentation_models_pytorch's
#: ``Unet`` with a DenseNet161 encoder, its default decoder, one input channel.
SMP_UNET_DEFAULTS: dict = {
    "encoder_name": "densenet161",
    "encoder_depth": 5,
    "decoder_channels": [256, 128, 64, 32, 16],
    "in_channels": 1,
}


def smp_unet_config(value: dict | str | None = None) -> dict:
    """``smp_unet`` backbone arguments: the defaults, updated by a dict or an encoder name."""
    config = dict(SMP_UNET_DEFAULTS, decoder_channels=list(SMP_UNET_DEFAULTS["decoder_channels"]))
    if isinstance(value, str):
        config["encoder_name"] = value
    elif value:
        config.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in value.items()})
    return config


def unet_preset(name: str) -> dict:
    """Return a copy of the ``UNet2DModel`` keyword arguments of a named preset."""
    if name not in UNET_PRESETS:
        raise ValueError(f"Unknown U-Net preset {name!r}; choose one of {sorted(UNET_PRESETS)}.")
    return {k: (list(v) if isinstance(v, list) else v) for k, v in UNET_PRESETS[name].items()}


def unet_kwargs(unet: dict | str, sample_size: int, out_channels: int) -> dict:
    """``UNet2DModel`` keyword arguments from a preset name or a dict, with size and outputs."""
    kwargs = unet_preset(unet) if isinstance(unet, str) else {k: v for k, v in unet.items() if not k.startswith("_")}
    for key in ("sample_size", "out_channels"):
        kwargs.pop(key, None)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return dict(kwargs, sample_size=sample_size, out_channels=out_channels)


class LandmarkConfig(PreTrainedConfig):
    """Configuration of :class:`LandmarkDetector`.

    Args:
        backbone: the network that maps ``[B, 1, S, S]`` images to ``[B, N, S, S]`` logits,
            by registry name (:data:`hf_landmark.backbones.BACKBONES`): ``"unet2d"``, the
            diffusers ``UNet2DModel`` run at the constant ``timestep``, or ``"smp_unet"``, the
            paper's baselines' segmentation_models_pytorch U-Net (DenseNet161 encoder; needs
            ``hf-landmark[baselines]``).
        backbone_config: the backbone's own arguments; for ``unet2d`` the ``UNet2DModel``
            keyword arguments (a preset name is also accepted; ``out_channels`` is always
            ``num_landmarks``), ``unet=`` being its older name; for ``smp_unet``
            ``encoder_name``, ``encoder_depth``, ``decoder_channels``, ``in_channels`` (an
            encoder name is also accepted; see :data:`SMP_UNET_DEFAULTS`).
        num_landmarks: number of landmarks N; the head outputs one heatmap per landmark.
        landmark_names: N names, in channel order.
        image_size: side of the square model input in pixels (any multiple of 8 works).
        loss: by registry name (:data:`hf_landmark.losses.LOSSES`): ``"paper"`` (cross-entropy across landmark channels with binary disk targets),
            ``"bce"`` (per-channel binary cross-entropy) or ``"contour"`` (2-D softmax over
            each channel's pixels, negative log-likelihood of the true landmark).
        sigma: Gaussian sigma of the heatmap targets in model-input pixels. ``paper``/``bce``
            threshold it at half maximum into a disk; ``contour`` uses it to smooth the target
            distribution (0 = only the bilinear weights of the sub-pixel landmark).
        timestep: the constant timestep at which the pre-trained U-Net is run. The detector
            never takes a timestep: its time embedding is that of this constant (default 0,
            the nearly noise-free end of the DDPM chain, which matches clean inputs).
        pixel_range: the intensity range the model expects, ``[lo, hi]``; images in [0, 1]
            are mapped linearly to it.
        spacing: mm per original pixel, a number or ``[sx, sy]``, or ``None`` when unknown.
        unit_convention: how evaluation converts errors to physical units: ``"spacing"``
            (each image's spacing, else ``spacing``), ``"wrist"`` (hand: ``wrist_distance_mm``
            between the two ``wrist_indices`` landmarks of the ground truth) or ``"pixels"``.
        wrist_indices: the two 0-based landmark indices of the wrist convention.
        wrist_distance_mm: the physical distance the wrist convention assumes (50 mm).
        refine_size: side F of the fine copy of each image that the refinement stage crops
            (the same square resize as ``image_size``, at F px); 0: no refinement stage.
        refine_crop: side of the square crop (fine pixels) centred on each first-stage
            estimate; the refiner re-locates the landmark within it.
        refine_backbone_config: the refiner U-Net's ``UNet2DModel`` arguments (or a preset
            name); its head has one channel per landmark and each crop is read on its own
            landmark's channel. Default: the first stage's when that is a ``unet2d``, else
            the ``base`` preset.
        refine_loss: the refiner's per-channel loss, ``"contour"`` or ``"bce"``.
        refine_sigma: the refiner's target sigma in fine pixels (default ``sigma``).
        reference_shape: ``[N, 2]`` the labeled images' mean landmarks in model pixels, for
            the shape check (:mod:`hf_landmark.shape`); ``None``: no check.
        shape_tolerance: how far (model pixels) a first-stage landmark may sit from the
            reference shape mapped onto the image before it is read again near there.
        refine_prior: ``[N]`` per-landmark sigmas (fine pixels) of a Gaussian around the
            first-stage estimate that multiplies each refiner map before it is read (the
            refiner may move a landmark far only where its map is much surer there);
            ``None``: the refiner's map alone.
        ensemble_members: ``None`` for one detector; for an ensemble of K detectors of this
            architecture (fine-tuned with different seeds, landmarks averaged), K dicts of
            what each member measured for itself (:data:`MEMBER_FIELDS`: its shape check and
            refinement prior). The top-level values of those fields are the first member's.
    """

    model_type = "ddpm-landmark"

    def __init__(  # noqa: PLR0913 (every saved field a parameter, as in transformers)
        self,
        backbone: str = "unet2d",
        backbone_config: dict | str | None = None,
        num_landmarks: int = 19,
        landmark_names: list[str] | None = None,
        image_size: int = 256,
        loss: str = "contour",
        sigma: float = 6.0,
        timestep: int = 0,
        pixel_range: tuple[float, float] | list[float] = (-1.0, 1.0),
        spacing: float | list[float] | None = None,
        unit_convention: str = "spacing",
        wrist_indices: tuple[int, int] | list[int] = (0, 4),
        wrist_distance_mm: float = 50.0,
        dataset_name: str | None = None,
        refine_size: int = 0,
        refine_crop: int = 64,
        refine_backbone_config: dict | str | None = None,
        refine_loss: str = "contour",
        refine_sigma: float | None = None,
        reference_shape: list | None = None,
        shape_tolerance: float | None = None,
        refine_prior: list | None = None,
        ensemble_members: list[dict] | None = None,
        **kwargs: Any,
    ):
        # Saved configs name the repository's own pipeline file for `pipeline(...,
        # trust_remote_code=True)` where hf_landmark is absent. The installed package serves
        # the task from its registry instead (transformers would otherwise demand
        # trust_remote_code for a task it already knows), so its class drops the entry.
        if __name__.startswith("hf_landmark."):
            kwargs.pop("custom_pipelines", None)
        # Models saved before the backbone seam existed call the U-Net arguments `unet`.
        legacy_unet = kwargs.pop("unet", None)
        if backbone == "smp_unet":
            backbone_config = smp_unet_config(backbone_config)
            factor = 2 ** int(backbone_config["encoder_depth"])
            if image_size % factor or image_size < 2 * factor:
                # At one bottleneck pixel, batch norm cannot train on a batch of one image.
                raise ValueError(
                    f"image_size must be a multiple of {factor} and at least {2 * factor} for an smp_unet of "
                    f"depth {backbone_config['encoder_depth']}, got {image_size}"
                )
        if backbone_config is None:
            backbone_config = legacy_unet if legacy_unet is not None else "base"
        if isinstance(backbone_config, str):
            backbone_config = unet_preset(backbone_config)
        if unit_convention not in UNIT_CONVENTIONS:
            raise ValueError(f"unit_convention must be one of {UNIT_CONVENTIONS}, got {unit_convention!r}")
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
        if landmark_names is not None and len(landmark_names) != num_landmarks:
            raise ValueError(f"{len(landmark_names)} landmark names given for {num_landmarks} landmarks")
        self.backbone = backbone
        self.backbone_config = dict(backbone_config)
        self.num_landmarks = int(num_landmarks)
        self.landmark_names = list(landmark_names) if landmark_names else [f"L{i}" for i in range(num_landmarks)]
        self.image_size = int(image_size)
        self.loss = loss
        self.sigma = float(sigma)
        self.timestep = int(timestep)
        self.pixel_range = [float(v) for v in pixel_range]
        self.spacing = spacing
        self.unit_convention = unit_convention
        self.wrist_indices = [int(i) for i in wrist_indices]
        self.wrist_distance_mm = float(wrist_distance_mm)
        self.dataset_name = dataset_name
        self.set_refinement(refine_size, refine_crop, refine_backbone_config, refine_loss, refine_sigma)
        self.set_shape_check(reference_shape, shape_tolerance)
        self.set_refine_prior(refine_prior)
        self.set_ensemble_members(ensemble_members)
        super().__init__(**kwargs)

    @property
    def ensemble_size(self) -> int:
        """How many detectors the model holds: 1, or the ensemble's K."""
        return len(self.ensemble_members) if self.ensemble_members else 1

    def set_ensemble_members(self, members: list[dict] | None) -> None:
        """Set (and check) the ensemble's per-member fields; ``None``: one detector."""
        if not members:
            self.ensemble_members = None
            return
        members = [dict(m) for m in members]
        if len(members) < 2:
            raise ValueError(f"an ensemble holds at least 2 members, got {len(members)}")
        for m in members:
            if set(m) != set(MEMBER_FIELDS):
                raise ValueError(f"ensemble_members: each member gives exactly {MEMBER_FIELDS}, got {sorted(m)}")
            probe = copy.copy(self)  # the setters' checks, on a scratch copy
            probe.set_shape_check(m["reference_shape"], m["shape_tolerance"])
            probe.set_refine_prior(m["refine_prior"])
        self.ensemble_members = members

    def member_fields(self) -> dict:
        """This (single) detector's :data:`MEMBER_FIELDS`."""
        return {k: copy.deepcopy(getattr(self, k)) for k in MEMBER_FIELDS}

    def member_config(self, index: int) -> LandmarkConfig:
        """The configuration of ensemble member ``index``: this one with the member's own fields."""
        member = copy.deepcopy(self)
        fields = self.ensemble_members[index]
        member.ensemble_members = None
        member.set_shape_check(fields["reference_shape"], fields["shape_tolerance"])
        member.set_refine_prior(fields["refine_prior"])
        return member

    def set_refine_prior(self, sigmas) -> None:
        """Set (and check) the refinement prior's per-landmark sigmas in fine pixels; ``None``: off."""
        if sigmas is None:
            self.refine_prior = None
            return
        values = [float(v) for v in sigmas]
        if len(values) != self.num_landmarks or not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"refine_prior must be {self.num_landmarks} positive sigmas (fine pixels), got {sigmas}")
        self.refine_prior = values

    def set_shape_check(self, reference_shape, tolerance: float | None) -> None:
        """Set (and check) the shape check's reference ``[N, 2]`` and tolerance; ``None``: off."""
        if reference_shape is None or tolerance is None:
            self.reference_shape, self.shape_tolerance = None, None
            return
        shape = [[float(v) for v in point] for point in reference_shape]
        if len(shape) != self.num_landmarks or any(len(point) != 2 for point in shape):
            raise ValueError(f"reference_shape must be {self.num_landmarks} (x, y) points, got {len(shape)}")
        if not float(tolerance) > 0:
            raise ValueError(f"shape_tolerance must be positive, got {tolerance}")
        self.reference_shape, self.shape_tolerance = shape, float(tolerance)

    def set_refinement(
        self,
        refine_size: int,
        refine_crop: int = 64,
        backbone_config: dict | str | None = None,
        loss: str = "contour",
        sigma: float | None = None,
    ) -> None:
        """Set (and check) the refinement stage's fields; ``refine_size`` 0 means none."""
        if refine_size and (refine_size % 8 or refine_crop % 8 or not 8 <= refine_crop <= refine_size):
            raise ValueError(
                f"refine_size ({refine_size}) and refine_crop ({refine_crop}) must be multiples of 8 with crop <= size"
            )
        if loss not in ("contour", "bce"):
            raise ValueError(f"refine_loss must be 'contour' or 'bce' (a per-channel loss), got {loss!r}")
        if isinstance(backbone_config, str):
            backbone_config = unet_preset(backbone_config)
        self.refine_size = int(refine_size)
        self.refine_crop = int(refine_crop)
        if not backbone_config:
            backbone_config = dict(self.backbone_config) if self.backbone == "unet2d" else unet_preset("base")
        self.refine_backbone_config = dict(backbone_config)
        self.refine_loss = loss
        self.refine_sigma = float(self.sigma if sigma is None else sigma)
