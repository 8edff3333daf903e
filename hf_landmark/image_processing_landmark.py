"""``LandmarkImageProcessor``: the one path from pixels to coordinates and back.

``preprocess`` turns images (files, PIL, arrays; DICOM with its spacing) into the model's
``pixel_values``; ``post_process_landmark_detection`` turns the model's output into landmarks
in the caller's original image frame (and mm where a spacing is known). Training data,
evaluation, the pipeline, the command line and the web demo all go through it, so what is
measured is what users run. Saved as ``preprocessor_config.json`` beside every detector and
loaded with ``AutoImageProcessor.from_pretrained``. Self-contained (numpy, torch, PIL,
transformers and sibling files) so it travels with a model's remote code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .heatmaps import DECODERS, decode, spatial_spread
from .losses import get_loss
from .low_confidence import LowConfidenceFlag
from .preprocessing import (
    RESAMPLE_METHODS,
    load_image,
    model_to_original,
    original_to_model,
    resize_image,
    spacing_pair,
    to_pixel_values,
)
from .shape_model import fuse_shapes
from .uncertainty import CALIBRATION_KEYS, Calibrated, conformal_quantile  # noqa: F401 (conformal_quantile: its home before)

PROCESSOR_FILE = "preprocessor_config.json"


class LandmarkImageProcessor(LowConfidenceFlag, BaseImageProcessor):
    """Image processor of :class:`~hf_landmark.LandmarkDetector`.

    Args:
        size: side of the square model input in pixels.
        pixel_range: the model's intensity range ``[lo, hi]``; intensities in [0, 1] map to it.
        resample: ``"area"`` (exact area averaging; composes exactly through prepared images,
            see :mod:`hf_landmark.preprocessing`) or ``"bilinear"`` (models saved before it).
        landmark_names: N names, in channel order.
        loss: how the model's logits read as probabilities (the loss registry name).
        sigma: the loss's target sigma in model pixels (sets the score radius).
        spacing: mm per original pixel (number or ``[sx, sy]``) used when an image brings no
            spacing of its own; ``None`` when unknown.
        decoder: default decoder, one of ``centroid``, ``argmax``, ``soft_argmax``.
        alpha: miscoverage of the error radii: the true landmark lies within ``radius`` with
            probability at least ``1 - alpha`` (split conformal prediction, per landmark).
        false_alarm_rate: the share of images like the calibration ones the flag may flag
            (δ, default 5 %).
        min_image_side: images with a shorter side (pixels) are flagged too.
        refine_size: side of the fine copy the refinement stage crops (``fine_pixel_values``);
            0 when the model has no refinement stage.
        refine_loss, refine_sigma: how the refiner's maps read as probabilities and scores.
        calibration: what was measured on held-out images after training, one section of the
            config (:data:`hf_landmark.uncertainty.CALIBRATION_KEYS`, each readable as an
            attribute of the same name): the radii's conformal scores, the flag's statistics and
            thresholds, the landmark offsets. A configuration saved by release 0.4 holds these
            keys at the top level; they are read into this section.
    """

    model_input_names = ["pixel_values"]

    def __init__(  # noqa: PLR0913 (every saved field a parameter, as in transformers)
        self,
        size: int = 256,
        pixel_range: Sequence[float] = (-1.0, 1.0),
        resample: str = "area",
        landmark_names: Sequence[str] | None = None,
        loss: str = "contour",
        sigma: float = 6.0,
        spacing: float | Sequence[float] | None = None,
        decoder: str = "centroid",
        alpha: float = 0.1,
        false_alarm_rate: float = 0.05,
        min_image_side: int = 16,
        refine_size: int = 0,
        refine_loss: str = "contour",
        refine_sigma: float = 6.0,
        calibration: dict | None = None,
        **kwargs,
    ):
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if resample not in RESAMPLE_METHODS:
            raise ValueError(f"resample must be one of {RESAMPLE_METHODS}, got {resample!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        get_loss(loss)
        calibration = dict(calibration or {})
        calibration.update({k: kwargs.pop(k) for k in CALIBRATION_KEYS if k in kwargs})  # a 0.4 configuration
        unknown = sorted(set(calibration) - set(CALIBRATION_KEYS))
        if unknown:
            raise ValueError(f"calibration: unknown keys {unknown}; known: {', '.join(CALIBRATION_KEYS)}")
        super().__init__(**kwargs)
        self.size = int(size)
        self.pixel_range = [float(v) for v in pixel_range]
        self.resample = resample
        self.landmark_names = list(landmark_names) if landmark_names is not None else None
        self.loss = loss
        self.sigma = float(sigma)
        self.spacing = spacing
        self.decoder = decoder
        self.alpha = float(alpha)
        self.false_alarm_rate = float(false_alarm_rate)
        self.min_image_side = int(min_image_side)
        self.refine_size = int(refine_size)
        self.refine_loss = refine_loss
        self.refine_sigma = float(refine_sigma)
        self.calibration = {k: calibration.get(k) for k in CALIBRATION_KEYS}
        self.set_landmark_offsets(
            calibration.get("landmark_offsets"), calibration.get("landmark_offsets_stage") or "refined"
        )
        if calibration.get("shape_model_mean") is not None:  # checked as set_shape_model checks it
            self.set_shape_model(
                (calibration["shape_model_mean"], calibration.get("shape_model_covariance")),
                calibration.get("shape_model_noise"),
                calibration.get("shape_model_stage") or "refined",
            )

    calibration_scores = Calibrated()
    calibration_source = Calibrated()
    embedding_mean = Calibrated()
    embedding_scale = Calibrated()
    ood_threshold = Calibrated()
    spread_threshold = Calibrated()
    flag_calibration_images = Calibrated()
    flag_false_alarm_rate = Calibrated()
    shape_reference = Calibrated()
    shape_scale = Calibrated()
    shape_threshold = Calibrated()
    landmark_offsets = Calibrated()
    landmark_offsets_stage = Calibrated()
    shape_model_mean = Calibrated()
    shape_model_covariance = Calibrated()
    shape_model_noise = Calibrated()
    shape_model_stage = Calibrated()

    def to_json_string(self) -> str:
        """The config as strict JSON (``allow_nan=False``): a non-finite number is ``null``."""
        import json
        import math

        def strict(v):
            if isinstance(v, dict):
                return {k: strict(x) for k, x in v.items()}
            if isinstance(v, (list, tuple, np.ndarray)):
                return [strict(x) for x in v]
            if isinstance(v, np.generic):
                v = v.item()
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return json.dumps(strict(self.to_dict()), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_model_config(cls, config, resample: str = "area", **kwargs) -> LandmarkImageProcessor:
        """The processor of a detector with ``config`` (:class:`LandmarkConfig`)."""
        refine = {
            "refine_size": getattr(config, "refine_size", 0),
            "refine_loss": getattr(config, "refine_loss", "contour"),
            "refine_sigma": getattr(config, "refine_sigma", config.sigma),
        }
        return cls(
            size=config.image_size,
            pixel_range=config.pixel_range,
            resample=resample,
            landmark_names=config.landmark_names,
            loss=config.loss,
            sigma=config.sigma,
            spacing=config.spacing,
            **refine,
            **kwargs,
        )

    # --- pixels -> model ---------------------------------------------------------------

    def resize(self, image01: np.ndarray) -> np.ndarray:
        """``[H, W]`` intensities in [0, 1] → ``[S, S]`` at the model's size."""
        return resize_image(image01, self.size, self.resample)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Images → model inputs.

        Args:
            images: one image or a list: file paths, PIL images, numpy arrays or tensors
                (``[H, W]`` or ``[H, W, C]``; 8/16-bit, float, RGB(A)).
        Returns:
            ``pixel_values`` ``[B, 1, S, S]`` float32; with a refinement stage
            ``fine_pixel_values`` ``[B, 1, F, F]`` (the same resize at ``refine_size``);
            ``original_sizes`` ``[B, 2]`` (W, H) of each input; ``spacings`` ``[B, 2]`` mm per pixel from the file (DICOM), NaN where
            the file has none; ``sources``: the file names (or ``"image"``).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if not isinstance(images, (list, tuple)):
            images = [images]
        pixels, fine, sizes, spacings, sources = [], [], [], [], []
        for image in images:
            image01, spacing, source = load_image(image)
            pixels.append(self.resize(image01))
            if self.refine_size:
                fine.append(resize_image(image01, self.refine_size, self.resample))
            sizes.append((image01.shape[1], image01.shape[0]))
            spacings.append(spacing if spacing is not None else (float("nan"), float("nan")))
            sources.append(source)
        pixel_values = to_pixel_values(torch.from_numpy(np.stack(pixels))[:, None], self.pixel_range)
        data = {
            "pixel_values": pixel_values,
            "original_sizes": torch.tensor(sizes, dtype=torch.float64),
            "spacings": torch.tensor(spacings, dtype=torch.float64),
        }
        if fine:
            data["fine_pixel_values"] = to_pixel_values(torch.from_numpy(np.stack(fine))[:, None], self.pixel_range)
        out = BatchFeature(data=data, tensor_type=return_tensors)
        out["sources"] = sources
        return out

    # --- model -> coordinates ----------------------------------------------------------

    def decode(self, outputs, decoder: str | None = None, stage: str = "final") -> tuple[torch.Tensor, torch.Tensor]:
        """Model output → coordinates ``[B, N, 2]`` in model pixels and scores ``[B, N]`` in
        [0, 1]. With a refinement stage's output these are the refined landmarks the model
        decoded (``coordinates``) and the refiner's scores, unless ``stage="first"``: then the
        first stage's estimates the crops were placed at (``coarse_coordinates``). Otherwise the
        first stage's heatmaps (``log_probabilities`` or ``heatmaps`` logits) are decoded with
        ``decoder``. (A two-stage model decodes with the decoder its forward was given.)"""
        refined = _get(outputs, "refined_log_probabilities")
        if refined is not None and stage == "final":
            log_p = refined.detach().float()
            coords = _get(outputs, "coordinates").detach().float()
            local = original_to_model(coords, (self.size, self.size), self.refine_size) - _get(
                outputs, "crop_origins"
            ).to(coords)
            return self._offset(coords, "refined"), get_loss(self.refine_loss).scores(
                log_p.exp(), local, self.refine_sigma
            )
        loss = get_loss(self.loss)
        log_p = self._log_probabilities(outputs)
        probs = log_p.exp()
        coords = _get(outputs, "coarse_coordinates")
        if coords is None:
            coords = decode(probs, decoder or self.decoder, log_maps=log_p)
        coords = coords.detach().float()
        # A two-stage model's first stage was not what its offsets were measured on.
        return (coords if refined is not None else self._offset(coords, "first")), loss.scores(
            probs, coords, self.sigma
        )

    def _offset(self, coords: torch.Tensor, stage: str) -> torch.Tensor:
        if self.landmark_offsets is None or stage != self.landmark_offsets_stage:
            return coords
        # A correction never carries a landmark off the picture: the centres of its edge pixels bound it.
        moved = coords - torch.as_tensor(self.landmark_offsets, dtype=coords.dtype, device=coords.device)
        return moved.clamp(0.0, self.size - 1.0)

    def set_landmark_offsets(self, offsets, stage: str = "refined") -> None:
        """Set (and check) the per-landmark offsets ``[N, 2]`` (model pixels) subtracted from
        ``stage``'s decoded landmarks; ``None``: off."""
        if stage not in ("refined", "first"):
            raise ValueError(f"landmark_offsets_stage must be 'refined' or 'first', got {stage!r}")
        self.landmark_offsets_stage = stage
        if offsets is None:
            self.landmark_offsets = None
            return
        values = np.asarray(offsets, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != 2 or not np.isfinite(values).all():
            raise ValueError(
                f"landmark_offsets must be finite (x, y) pairs, one per landmark, got shape {values.shape}"
            )
        if self.landmark_names is not None and len(values) != len(self.landmark_names):
            raise ValueError(f"landmark_offsets: {len(values)} pairs for {len(self.landmark_names)} landmarks")
        self.landmark_offsets = values.tolist()

    # --- uncertainty -------------------------------------------------------------------

    def spread(self, outputs, target_sizes, stage: str = "final") -> np.ndarray:
        """Each landmark's heatmap spread in original pixels, ``[B, N]``: the standard deviation
        of its probability map, per axis scaled to the original frame, combined
        (``sqrt(σx² + σy²)``); at least half a map pixel. The refiner's maps when the output
        has them (unless ``stage="first"``), else the first stage's."""
        refined = _get(outputs, "refined_log_probabilities")
        if refined is not None and stage == "final":
            log_p, side = refined.detach().float(), self.refine_size
        else:
            log_p, side = self._log_probabilities(outputs), self.size
        sigma = spatial_spread(log_p.exp()).clamp_min(0.5).double().cpu().numpy()  # [B, N, 2] map px
        scale = np.asarray(target_sizes, dtype=np.float64).reshape(-1, 1, 2) / side
        return np.sqrt(((sigma * scale) ** 2).sum(-1))

    @property
    def calibration_size(self) -> int:
        """How many labeled images calibrated the radii (0 before :meth:`calibrate`)."""
        return min((len(s) for s in self.calibration_scores), default=0) if self.calibration_scores else 0

    @property
    def radius_alpha(self) -> float | None:
        """The miscoverage the radii are given at: ``alpha`` where the calibration images
        suffice, else the smallest their number ``n`` allows, ``1 / (n + 1)`` (coverage
        ``n / (n + 1)``: 85.7 % with 6 images where 90 % needs 9). ``None`` before calibration."""
        n = self.calibration_size
        return max(self.alpha, 1.0 / (n + 1)) if n else None

    def radii(self, spread: np.ndarray, alpha: float | None = None) -> np.ndarray | None:
        """Calibrated error radii ``[B, N]`` (original pixels) for spreads ``[B, N]``: the
        landmark's conformal quantile of normalised errors times the spread; ``None`` before
        :meth:`calibrate`. At :attr:`radius_alpha` by default (always finite); at an explicit
        ``alpha``, ``inf`` where too few calibration images exist for ``1 - alpha``."""
        if self.calibration_scores is None:
            return None
        alpha = self.radius_alpha if alpha is None else alpha
        q = np.array([conformal_quantile(scores, alpha) for scores in self.calibration_scores])
        return np.asarray(spread, dtype=np.float64) * q[None, :]

    def calibrate(
        self,
        spread: np.ndarray,
        errors: np.ndarray,
        target_sizes=None,
        reference_embeddings=None,
        calibration_embeddings=None,
        first_stage_spread: np.ndarray | None = None,
    ) -> None:
        """Split conformal calibration of the radii on held-out labeled images (not used for
        training), and of the flag on the same images (:meth:`calibrate_flag`; pass more,
        unlabeled, images to it directly: the flag needs no labels).

        Args:
            spread: ``[M, N]`` heatmap spreads (:meth:`spread`) of the calibration images.
            errors: ``[M, N]`` their radial errors, original pixels.
            target_sizes: ``[M, 2]`` their original (W, H), for the flag's relative spread (of
                ``first_stage_spread`` when given: the flag reads the first stage's maps).
            reference_embeddings: ``[K, C]`` embeddings of training images: their mean and
                spread define "like the training data".
            calibration_embeddings: ``[M, C]`` the calibration images' embeddings.
        """
        spread = np.asarray(spread, dtype=np.float64)
        scores = np.asarray(errors, dtype=np.float64) / spread
        # A landmark an image lacks (NaN error) is left out of that landmark's scores.
        self.calibration_scores = [[float(v) for v in col if np.isfinite(v)] for col in scores.T]
        if target_sizes is not None and reference_embeddings is not None and calibration_embeddings is not None:
            first = spread if first_stage_spread is None else np.asarray(first_stage_spread, dtype=np.float64)
            self.calibrate_flag(
                reference_embeddings, calibration_embeddings, self.relative_spread(first, target_sizes)
            )

    def _log_probabilities(self, outputs) -> torch.Tensor:
        log_p = _get(outputs, "log_probabilities")
        if log_p is None:
            log_p = get_loss(self.loss).log_probabilities(outputs["heatmaps"])
        return log_p.detach().float()

    def post_process_coordinates(
        self, outputs, target_sizes, decoder: str | None = None, stage: str = "final"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates in each image's original frame, as arrays: ``([B, N, 2] float64 (x, y)
        original pixels, [B, N] scores)``. ``target_sizes``: ``[B, 2]`` original (W, H).
        ``stage="first"``: the first stage's landmarks even when the output was refined. Once
        calibrated with a shape model (:meth:`set_shape_model`), the landmarks of the stage it
        was measured on are fused with it, inside the image."""
        coords, scores = self.decode(outputs, decoder, stage)
        sizes = torch.as_tensor(np.asarray(target_sizes, dtype=np.float64)).reshape(-1, 1, 2)
        xy = model_to_original(coords.double().cpu(), sizes, self.size).numpy()
        if self.fuses(_stage_of(outputs, stage)):
            xy = self.fuse(xy, self.spread(outputs, target_sizes, stage), target_sizes)
        return xy, scores.cpu().numpy().astype(np.float64)

    def fuse(self, xy: np.ndarray, spread: np.ndarray, target_sizes) -> np.ndarray:
        """The shape fusion of landmarks ``xy`` ``[B, N, 2]`` (original pixels) whose heatmap
        spread is ``spread`` ``[B, N]`` (:meth:`spread`), kept inside each image (``target_sizes``)."""
        sd = np.asarray(spread, dtype=np.float64) * np.asarray(self.shape_model_noise, dtype=np.float64)
        fused = fuse_shapes(xy, sd, self.shape_model_mean, self.shape_model_covariance)
        return np.clip(fused, 0.0, np.asarray(target_sizes, dtype=np.float64).reshape(-1, 1, 2) - 1.0)

    def fuses(self, stage: str) -> bool:
        """Whether the shape fusion moves ``stage``'s landmarks (``"refined"`` or ``"first"``)."""
        return self.shape_model_mean is not None and self.shape_model_stage == stage

    def set_shape_model(self, model: tuple | None, noise=None, stage: str = "refined") -> None:
        """Set the shape fusion (:mod:`hf_landmark.shape_model`): ``model`` ``(mean [N, 2],
        covariance [2N, 2N])`` in original pixels and ``noise`` ``[N]`` per unit of heatmap
        spread, applied to ``stage``'s landmarks; ``None``: off."""
        if model is None:
            self.shape_model_mean = self.shape_model_covariance = self.shape_model_noise = None
            self.shape_model_stage = None
            return
        if stage not in ("refined", "first"):
            raise ValueError(f"shape_model_stage must be 'refined' or 'first', got {stage!r}")
        mean, covariance = (np.asarray(v, dtype=np.float64) for v in model)
        noise = np.asarray(noise, dtype=np.float64)
        n = len(mean)
        if mean.shape != (n, 2) or covariance.shape != (2 * n, 2 * n) or noise.shape != (n,):
            raise ValueError(
                f"shape model: a mean [N, 2], a covariance [2N, 2N] and noise [N], got {mean.shape}, "
                f"{covariance.shape} and {noise.shape}"
            )
        if self.landmark_names is not None and n != len(self.landmark_names):
            raise ValueError(f"shape model: {n} landmarks for {len(self.landmark_names)}")
        if not (np.isfinite(mean).all() and np.isfinite(covariance).all() and (noise > 0).all()):
            raise ValueError("shape model: a finite mean and covariance and a positive noise per landmark")
        self.shape_model_mean, self.shape_model_covariance = mean.tolist(), covariance.tolist()
        self.shape_model_noise, self.shape_model_stage = noise.tolist(), stage

    def post_process_landmark_detection(
        self, outputs, target_sizes, spacings=None, decoder: str | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image a dict of tensors in its original frame:

        - ``landmarks`` ``[N, 2]`` float64 (x, y) original pixels and ``scores`` ``[N]`` in [0, 1];
        - ``low_confidence``: a bool scalar, True when the image is unlike the training images,
          its landmarks draw an unlikely shape, or it is too small (:meth:`flags`);
        - ``shape_moved`` ``[N]`` bool, from a model with a shape check: True where the first
          stage's landmark was read again near where the other landmarks put it;
        - once calibrated, ``radii`` ``[N]`` (original pixels; NaN where too few calibration
          images exist for the level): the true landmark lies within it with probability at
          least ``radius_coverage`` (a float scalar);
        - where a spacing is known, ``landmarks_mm`` ``[N, 2]``, ``spacing`` ``[2]`` (mm per pixel)
          and ``spacing_assumed`` (bool scalar), plus ``radii_mm`` once calibrated (at the larger
          spacing: never an under-estimate). The spacing is ``spacings[i]`` (e.g. from a DICOM
          header) if finite, else the processor's ``spacing``: an assumption about the image
          (its training data's).

        The pipeline turns these into per-landmark records
        (:func:`hf_landmark.pipeline_landmark.landmark_records`).

        Args:
            outputs: the model's output (``LandmarkDetectorOutput``).
            target_sizes: ``[B, 2]`` original (W, H) of each image (``original_sizes`` of
                :meth:`preprocess`).
            spacings: ``[B, 2]`` mm per pixel, NaN where unknown; optional.
            decoder: overrides the processor's default decoder.
        """
        xy, scores = self.post_process_coordinates(outputs, target_sizes, decoder)
        radii = self.radii(self.spread(outputs, target_sizes))
        flags = self.flags(outputs, target_sizes, decoder=decoder)
        moved = _get(outputs, "shape_moved")
        results = []
        for i in range(xy.shape[0]):
            result = {
                "landmarks": torch.from_numpy(xy[i]),
                "scores": torch.from_numpy(scores[i]),
                "low_confidence": torch.tensor(flags[i] == "low_confidence"),
            }
            if moved is not None:
                result["shape_moved"] = moved[i].detach().cpu().bool()
            if radii is not None:
                # Too few calibration images for 1 - alpha give no radius (NaN), never a small one.
                result["radii"] = torch.from_numpy(np.where(np.isfinite(radii[i]), radii[i], np.nan))
                result["radius_coverage"] = torch.tensor(1.0 - self.radius_alpha, dtype=torch.float64)
            spacing, assumed = self._spacing_of(None if spacings is None else spacings[i])
            if spacing is not None:
                pair = torch.tensor(spacing, dtype=torch.float64)
                result.update(
                    landmarks_mm=result["landmarks"] * pair, spacing=pair, spacing_assumed=torch.tensor(assumed)
                )
                if radii is not None:
                    result["radii_mm"] = result["radii"] * max(spacing)
            results.append(result)
        return results

    def _spacing_of(self, image_spacing) -> tuple[tuple[float, float] | None, bool]:
        """``(spacing, assumed)``: the image's own spacing, else the processor's (assumed)."""
        if image_spacing is not None:
            s = np.asarray(image_spacing, dtype=np.float64).reshape(-1)
            if s.size == 2 and np.all(np.isfinite(s)):
                return (float(s[0]), float(s[1])), False
        if self.spacing is None:
            return None, False
        return spacing_pair(self.spacing), True


def _stage_of(outputs, stage: str) -> str:
    """Which stage's landmarks :meth:`LandmarkImageProcessor.decode` gives for ``stage``."""
    return "refined" if stage == "final" and _get(outputs, "refined_log_probabilities") is not None else "first"


def _get(outputs, key):
    return outputs.get(key) if hasattr(outputs, "get") else None


def processor_for_model(model) -> LandmarkImageProcessor:
    """The processor saved beside ``model`` (``preprocessor_config.json``), else one built from
    its config. A saved model without one predates the processor and was trained on bilinear
    resizes; a model built in memory uses the default (area)."""
    from transformers.utils import cached_file

    source = getattr(model, "name_or_path", "") or ""
    if not source:
        return LandmarkImageProcessor.from_model_config(model.config)
    try:
        found = cached_file(source, PROCESSOR_FILE, _raise_exceptions_for_missing_entries=False)
    except OSError:
        found = None
    if found:
        return LandmarkImageProcessor.from_pretrained(source)
    return LandmarkImageProcessor.from_model_config(model.config, resample="bilinear")
