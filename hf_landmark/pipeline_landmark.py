"""``pipeline("landmark-detection")``: images in, landmarks in original image pixels out."""

from __future__ import annotations

import os

import numpy as np
import torch
from transformers import Pipeline

from .preprocessing import model_to_original, prepare_pixel_values, read_dicom, read_image, to_grayscale01


class LandmarkDetectionPipeline(Pipeline):
    """Input: a path (PNG, JPEG, BMP, TIFF, 8/16-bit; DICOM with ``pydicom``), a PIL image, a
    numpy array, or a list of them. Output per image: a list of ``{"label", "x", "y",
    "score"}`` in **original** pixels, plus ``x_mm``/``y_mm`` when a spacing is known (from
    the DICOM header, else the model's ``config.spacing``). ``decoder=`` picks the decoder."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __call__(self, inputs, *args, batch_size: int | None = None, **kwargs):
        """``batch_size > 1`` with a list runs the model on stacked batches (every image is
        resized to the model's square input, so they stack without padding)."""
        if not isinstance(inputs, list) or not batch_size or batch_size <= 1:
            return super().__call__(inputs, *args, **kwargs)
        _, _, post = self._sanitize_parameters(**kwargs)
        results = []
        for start in range(0, len(inputs), batch_size):
            items = [self.preprocess(x) for x in inputs[start : start + batch_size]]
            batch = {"pixel_values": torch.cat([it["pixel_values"] for it in items])}
            with torch.no_grad():
                heatmaps = self._forward({**batch, "original_size": None, "spacing": None, "source": None})["heatmaps"]
            for k, it in enumerate(items):
                results.append(self.postprocess({**it, "heatmaps": heatmaps[k : k + 1]}, **post))
        return results

    def _sanitize_parameters(self, decoder=None, **kwargs):
        post = {"decoder": decoder} if decoder else {}
        return {}, {}, post

    def preprocess(self, image):
        spacing = None
        source = "image"
        if isinstance(image, (str, os.PathLike)):
            source = os.fspath(image)
            if source.lower().endswith((".dcm", ".dicom")):
                image01, spacing = read_dicom(source)
            else:
                image01 = read_image(source)
        else:
            image01 = to_grayscale01(image if not isinstance(image, torch.Tensor) else image.numpy())
        h, w = image01.shape
        cfg = self.model.config
        return {"pixel_values": prepare_pixel_values([image01], cfg.image_size, cfg.pixel_range),
                "original_size": (w, h), "spacing": spacing, "source": source}

    def _forward(self, inputs):
        out = self.model(pixel_values=inputs["pixel_values"].to(self.model.device, self.model.dtype))
        return {"heatmaps": out.heatmaps, **{k: inputs[k] for k in ("original_size", "spacing", "source")}}

    def postprocess(self, outputs, decoder="centroid"):
        cfg = self.model.config
        coords, scores = self.model.decode_heatmaps(outputs["heatmaps"], decoder)
        xy = model_to_original(coords[0].double().cpu(), outputs["original_size"], cfg.image_size).numpy()
        spacing = outputs["spacing"] or cfg.spacing
        if spacing is not None and np.ndim(spacing) == 0:
            spacing = (float(spacing), float(spacing))
        result = []
        for name, (x, y), s in zip(cfg.landmark_names, xy, scores[0].tolist()):
            item = {"label": name, "x": float(x), "y": float(y), "score": float(s)}
            if spacing is not None:
                item.update(x_mm=float(x * spacing[0]), y_mm=float(y * spacing[1]))
            result.append(item)
        return result


def register_pipeline() -> None:
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    if "landmark-detection" not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            "landmark-detection", pipeline_class=LandmarkDetectionPipeline, pt_model=AutoModel, type="image"
        )
