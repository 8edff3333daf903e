"""What a processor's calibration holds and how it is read: the split conformal quantile of the
error radii, and the keys of the ``calibration`` section of the processor's config.
Self-contained (numpy): it travels with a model's remote code."""

from __future__ import annotations

import numpy as np


def conformal_quantile(scores, alpha: float) -> float:
    """The split conformal quantile of ``n`` calibration scores: their ⌈(n + 1)(1 − α)⌉-th
    smallest, so that a new exchangeable score falls at or below it with probability at least
    1 − α; ``inf`` when ``n`` is too small for that (n < 1/α − 1)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = int(np.ceil((s.size + 1) * (1.0 - alpha)))
    return float(s[k - 1]) if 1 <= k <= s.size else float("inf")


#: The ``calibration`` section of a processor's config: what was measured on held-out images
#: after training, each key readable as an attribute of the processor:
#:
#: - ``calibration_scores``: per landmark, the normalised errors (radial error / heatmap
#:   spread) of the calibration images (``LandmarkImageProcessor.calibrate``); ``None`` before calibration.
#: - ``embedding_mean``, ``embedding_scale``, ``ood_threshold``: the training images'
#:   embedding statistics and the distance beyond which an image is flagged
#:   ``low_confidence``; ``spread_threshold``: the mean relative heatmap spread (spread
#:   over the image diagonal) beyond which it is; ``flag_calibration_images`` and
#:   ``flag_false_alarm_rate``: how many images calibrated the flag and the bound reached
#:   (``LandmarkImageProcessor.calibrate_flag``); ``shape_reference`` (``[N, 2]`` model pixels,
#:   the labeled images' mean landmarks), ``shape_scale`` (the typical scale of the first
#:   stage's shapes against it) and ``shape_threshold``: the shape distance
#:   (:func:`hf_landmark.shape.shape_distance`) beyond which an image is flagged, its landmarks
#:   drawn distorted, or larger or smaller than images like it.
#: - ``landmark_offsets``: ``[N, 2]`` model pixels subtracted from the decoded landmarks
#:   of the stage they were measured on, ``landmark_offsets_stage`` (``"refined"``: a
#:   two-stage model's refined landmarks; ``"first"``: a one-stage model's, or a
#:   two-stage model run without its refiner), each landmark's mean error on held-out
#:   labeled images, shrunk toward none (``hf_landmark.calibration.calibrate_processor``);
#:   ``None``: no correction.
#: - ``shape_model_mean`` (``[N, 2]`` original pixels), ``shape_model_covariance`` (``[2N, 2N]``)
#:   and ``shape_model_noise`` (``[N]``, each landmark's noise per unit of heatmap spread): the
#:   shape fusion's point distribution model (:mod:`hf_landmark.shape_model`), applied to the
#:   landmarks of ``shape_model_stage`` (``"refined"`` or ``"first"``, as the offsets);
#:   ``None``: no fusion.
#: - ``calibration_source``: which images calibrated the radii when not the validation split
#:   fine-tuning held out (``hf-landmark calibrate``: a user's labeled images from the site
#:   the detector will run on); ``None``: the validation split.
CALIBRATION_KEYS = (
    "calibration_scores",
    "calibration_source",
    "embedding_mean",
    "embedding_scale",
    "ood_threshold",
    "spread_threshold",
    "flag_calibration_images",
    "flag_false_alarm_rate",
    "shape_reference",
    "shape_scale",
    "shape_threshold",
    "landmark_offsets",
    "landmark_offsets_stage",
    "shape_model_mean",
    "shape_model_covariance",
    "shape_model_noise",
    "shape_model_stage",
)


class Calibrated:
    """An attribute of :class:`LandmarkImageProcessor` kept in its ``calibration`` section."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.calibration.get(self.name)

    def __set__(self, obj, value):
        obj.calibration[self.name] = value
