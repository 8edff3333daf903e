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

from .heatmaps import DECODERS, decode
from .losses import get_loss
from .preprocessing import RESAMPLE_METHODS, load_image, model_to_original, resize_image, to_pixel_values

PROCESSOR_FILE = "preprocessor_config.json"


class LandmarkImageProcessor(BaseImageProcessor):
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
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int = 256,
        pixel_range: Sequence[float] = (-1.0, 1.0),
        resample: str = "area",
        landmark_names: Sequence[str] | None = None,
        loss: str = "contour",
        sigma: float = 6.0,
        spacing: float | Sequence[float] | None = None,
        decoder: str = "centroid",
        **kwargs,
    ):
        if resample not in RESAMPLE_METHODS:
            raise ValueError(f"resample must be one of {RESAMPLE_METHODS}, got {resample!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        get_loss(loss)
        super().__init__(**kwargs)
        self.size = int(size)
        self.pixel_range = [float(v) for v in pixel_range]
        self.resample = resample
        self.landmark_names = list(landmark_names) if landmark_names is not None else None
        self.loss = loss
        self.sigma = float(sigma)
        self.spacing = spacing
        self.decoder = decoder

    @classmethod
    def from_model_config(cls, config, resample: str = "area", **kwargs) -> LandmarkImageProcessor:
        """The processor of a detector with ``config`` (:class:`LandmarkConfig`)."""
        return cls(size=config.image_size, pixel_range=config.pixel_range, resample=resample, landmark_names=config.landmark_names,
                   loss=config.loss, sigma=config.sigma, spacing=config.spacing, **kwargs)  # fmt: skip

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
            ``pixel_values`` ``[B, 1, S, S]`` float32; ``original_sizes`` ``[B, 2]`` (W, H) of
            each input; ``spacings`` ``[B, 2]`` mm per pixel from the file (DICOM), NaN where
            the file has none; ``sources``: the file names (or ``"image"``).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if not isinstance(images, (list, tuple)):
            images = [images]
        pixels, sizes, spacings, sources = [], [], [], []
        for image in images:
            image01, spacing, source = load_image(image)
            pixels.append(self.resize(image01))
            sizes.append((image01.shape[1], image01.shape[0]))
            spacings.append(spacing if spacing is not None else (float("nan"), float("nan")))
            sources.append(source)
        pixel_values = to_pixel_values(torch.from_numpy(np.stack(pixels))[:, None], self.pixel_range)
        data = {"pixel_values": pixel_values, "original_sizes": torch.tensor(sizes, dtype=torch.float64),
                "spacings": torch.tensor(spacings, dtype=torch.float64)}  # fmt: skip
        out = BatchFeature(data=data, tensor_type=return_tensors)
        out["sources"] = sources
        return out

    # --- model -> coordinates ----------------------------------------------------------

    def decode(self, outputs, decoder: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output (``log_probabilities`` or ``heatmaps`` logits, ``[B, N, S, S]``) →
        coordinates ``[B, N, 2]`` in model pixels and scores ``[B, N]`` in [0, 1]."""
        loss = get_loss(self.loss)
        log_p = outputs.get("log_probabilities") if hasattr(outputs, "get") else None
        if log_p is None:
            log_p = loss.log_probabilities(outputs["heatmaps"])
        log_p = log_p.detach().float()
        probs = log_p.exp()
        coords = decode(probs, decoder or self.decoder, log_maps=log_p)
        return coords, loss.scores(probs, coords, self.sigma)

    def post_process_coordinates(self, outputs, target_sizes, decoder: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates in each image's original frame, as arrays: ``([B, N, 2] float64 (x, y)
        original pixels, [B, N] scores)``. ``target_sizes``: ``[B, 2]`` original (W, H)."""
        coords, scores = self.decode(outputs, decoder)
        sizes = torch.as_tensor(np.asarray(target_sizes, dtype=np.float64)).reshape(-1, 1, 2)
        xy = model_to_original(coords.double().cpu(), sizes, self.size)
        return xy.numpy(), scores.cpu().numpy().astype(np.float64)

    def post_process_landmark_detection(self, outputs, target_sizes, spacings=None, decoder: str | None = None) -> list[list[dict]]:
        """Per image a list of ``{"label", "x", "y", "score"}`` in original pixels, plus
        ``"x_mm"``/``"y_mm"`` when a spacing is known: ``spacings[i]`` (e.g. from a DICOM
        header) if finite, else the processor's ``spacing``, an assumption about the image
        (its training data's), which ``"spacing_assumed": True`` marks.

        Args:
            outputs: the model's output (``LandmarkDetectorOutput``).
            target_sizes: ``[B, 2]`` original (W, H) of each image (``original_sizes`` of
                :meth:`preprocess`).
            spacings: ``[B, 2]`` mm per pixel, NaN where unknown; optional.
            decoder: overrides the processor's default decoder.
        """
        xy, scores = self.post_process_coordinates(outputs, target_sizes, decoder)
        names = self.landmark_names or [f"L{i}" for i in range(xy.shape[1])]
        results = []
        for i in range(xy.shape[0]):
            spacing, assumed = self._spacing_of(None if spacings is None else spacings[i])
            items = []
            for name, (x, y), s in zip(names, xy[i], scores[i]):
                item = {"label": name, "x": float(x), "y": float(y), "score": float(s)}
                if spacing is not None:
                    item.update(x_mm=float(x * spacing[0]), y_mm=float(y * spacing[1]), spacing_assumed=assumed)
                items.append(item)
            results.append(items)
        return results

    def _spacing_of(self, image_spacing) -> tuple[tuple[float, float] | None, bool]:
        """``(spacing, assumed)``: the image's own spacing, else the processor's (assumed)."""
        if image_spacing is not None:
            s = np.asarray(image_spacing, dtype=np.float64).reshape(-1)
            if s.size == 2 and np.all(np.isfinite(s)):
                return (float(s[0]), float(s[1])), False
        if self.spacing is None:
            return None, False
        s = np.asarray(self.spacing, dtype=np.float64).reshape(-1)
        return ((float(s[0]), float(s[0])) if s.size == 1 else (float(s[0]), float(s[1]))), True


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
