"""``pipeline("landmark-detection")``: images in, landmarks in original image pixels out.

Processor → model → processor: ``LandmarkImageProcessor.preprocess``, the detector, then
``post_process_landmark_detection``. Batching (``batch_size=``) comes from the base class.
"""

from __future__ import annotations

import functools
import os

from transformers import Pipeline

from .errors import UserInputError, hub_load_error, resolve_folder_or_repo


class LandmarkDetectionPipeline(Pipeline):
    """Input: a path (PNG, JPEG, BMP, TIFF, 8/16-bit; DICOM with ``pydicom``), a PIL image, a
    numpy array, or a list of them. Output per image: a list of ``{"label", "x", "y",
    "score"}`` in **original** pixels, plus ``x_mm``/``y_mm`` when a spacing is known (from
    the DICOM header, else the processor's). ``decoder=`` picks the decoder; a detector with a
    refinement stage runs both stages (``refine=False``: the first only)."""

    _load_processor = False
    # The processor is found beside the model's weights (`processor_for_model`), which also
    # covers models saved before preprocessor_config.json existed.
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    _load_tokenizer = False

    def __init__(self, *args, image_processor=None, **kwargs):
        super().__init__(*args, image_processor=image_processor, **kwargs)
        if self.image_processor is None:
            from .image_processing_landmark import processor_for_model

            self.image_processor = processor_for_model(self.model)

    def _sanitize_parameters(self, decoder=None, refine=None, **kwargs):
        forward = {"decoder": decoder} if decoder else {}
        if refine is not None:
            forward["refine"] = bool(refine)
        return {}, forward, ({"decoder": decoder} if decoder else {})

    def preprocess(self, image):
        inputs = self.image_processor(image)
        return {
            k: inputs[k] for k in ("pixel_values", "fine_pixel_values", "original_sizes", "spacings") if k in inputs
        }

    def _forward(self, inputs, decoder=None, refine=None):
        decoder = decoder or self.image_processor.decoder
        device, dtype = self.model.device, self.model.dtype
        fine = inputs.get("fine_pixel_values")
        out = self.model(
            pixel_values=inputs["pixel_values"].to(device, dtype),
            fine_pixel_values=None if fine is None else fine.to(device, dtype),
            refine=refine,
            decoder=decoder,
        )
        keep = {k: v for k, v in out.items() if k not in ("loss", "heatmaps") and v is not None}
        return dict(keep, original_sizes=inputs["original_sizes"], spacings=inputs["spacings"])

    def postprocess(self, outputs, decoder=None):
        result = self.image_processor.post_process_landmark_detection(
            outputs, target_sizes=outputs["original_sizes"], spacings=outputs["spacings"], decoder=decoder
        )[0]
        return landmark_records(result, self.image_processor.landmark_names)

    def draw_overlay(self, image, landmarks: list[dict], truth=None, min_side: int | None = None):
        """The overlay of one image and its predictions (this pipeline's output for it): the
        original image at its size (or enlarged to ``min_side``), numbered landmarks with their
        calibrated error radii when the model has them (see
        :func:`hf_landmark.visualization.draw_landmarks`). ``image``: as for the pipeline."""
        import numpy as np

        from .preprocessing import load_image
        from .visualization import draw_landmarks

        xy = np.asarray([[p["x"], p["y"]] for p in landmarks], dtype=np.float64)
        radii = None
        if landmarks and "radius" in landmarks[0]:
            radii = np.asarray([np.nan if p["radius"] is None else p["radius"] for p in landmarks], dtype=np.float64)
        return draw_landmarks(load_image(image)[0], xy, truth, radii=radii, min_side=min_side)


def load_detector(path: str):
    """A detector and its image processor from a folder or Hub repo, as the command line and
    the web demo load them; a wrong folder or unknown repo is a :class:`UserInputError`."""
    import torch
    from transformers.utils import logging as hf_logging

    from .image_processing_landmark import processor_for_model
    from .modeling_landmark import LandmarkDetector

    path = resolve_folder_or_repo(path, "--model", "model")
    hf_logging.disable_progress_bar()  # a bar per weight file is noise for an interactive user
    try:
        model = LandmarkDetector.from_pretrained(path, dtype=torch.float32).eval()
    except OSError as err:
        if not os.path.isdir(path):
            raise hub_load_error(path, "--model", "model", err) from err
        raise UserInputError(f"{path}: cannot load a detector ({err})") from err
    try:
        return model, processor_for_model(model)
    except ValueError as err:  # a processor config edited by hand, or written for another model
        raise UserInputError(f"{os.path.join(path, 'preprocessor_config.json')}: {err}") from err


@functools.lru_cache(maxsize=4)
def detection_pipeline(model: str):
    """The ``landmark-detection`` pipeline of a model folder or Hub repo (safetensors only; no
    repository code runs), cached: the annotation page and the web demo ask for it per image."""
    from transformers import pipeline

    detector, processor = load_detector(model)
    return pipeline("landmark-detection", model=detector, image_processor=processor)


def register_pipeline() -> None:
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    if "landmark-detection" not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            "landmark-detection", pipeline_class=LandmarkDetectionPipeline, pt_model=AutoModel, type="image"
        )


def landmark_records(result: dict, names=None) -> list[dict]:
    """One image's result of ``post_process_landmark_detection`` (a dict of tensors) as the
    pipeline's per-landmark records: ``{"label", "x", "y", "score", "flag"}`` in original
    pixels (``"flag"`` is the image's: ``"low_confidence"`` or ``"ok"``), plus ``"radius"``
    (None where too few calibration images exist) and ``"radius_coverage"`` once calibrated,
    ``"x_mm"``, ``"y_mm"`` and ``"spacing_assumed"`` (and ``"radius_mm"``) where a spacing is
    known, and ``"shape_moved"`` from a model with a shape check."""
    import math

    xy, scores = result["landmarks"].tolist(), result["scores"].tolist()
    names = names or [f"L{i}" for i in range(len(xy))]
    flag = "low_confidence" if bool(result["low_confidence"]) else "ok"
    radii = result["radii"].tolist() if "radii" in result else None
    mm = result["landmarks_mm"].tolist() if "landmarks_mm" in result else None
    items = []
    for j, (name, (x, y), score) in enumerate(zip(names, xy, scores)):
        item = {"label": name, "x": x, "y": y, "score": score}
        radius = None if radii is None or math.isnan(radii[j]) else radii[j]
        if radii is not None:
            item.update(radius=radius, radius_coverage=float(result["radius_coverage"]))
        if mm is not None:
            item.update(x_mm=mm[j][0], y_mm=mm[j][1], spacing_assumed=bool(result["spacing_assumed"]))
            if radii is not None:
                item["radius_mm"] = None if radius is None else float(result["radii_mm"][j])
        item["flag"] = flag
        if "shape_moved" in result:
            item["shape_moved"] = bool(result["shape_moved"][j])
        items.append(item)
    return items
