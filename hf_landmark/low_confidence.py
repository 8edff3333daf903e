"""The low-confidence flag of :class:`~hf_landmark.image_processing_landmark.LandmarkImageProcessor`:
its three tests (an embedding unlike the training images', first-stage heatmaps too spread out,
first-stage landmarks drawing a shape unlike the labeled images') and their calibration. A
mixin: it reads the processor's calibrated attributes, :meth:`decode` and :meth:`spread`.
Travels with a model's remote code (numpy, torch and the package's own :mod:`shape`)."""

from __future__ import annotations

import numpy as np
import torch

from .shape import MIN_LANDMARKS, shape_distance, similarity_scale
from .uncertainty import conformal_quantile


class LowConfidenceFlag:
    """The flag's tests and their calibration, mixed into the image processor."""

    def ood_distances(self, outputs) -> np.ndarray | None:
        """How far each image's embedding lies from the training images' (a normalised RMS
        distance, ``[B]``); ``None`` without reference statistics."""
        emb = outputs.get("embeddings") if hasattr(outputs, "get") else None
        if emb is None or self.embedding_mean is None:
            return None
        return self._embedding_distance(emb.detach().double().cpu().numpy())

    def _embedding_distance(self, embeddings: np.ndarray) -> np.ndarray:
        z = (np.asarray(embeddings, dtype=np.float64) - np.asarray(self.embedding_mean)) / np.asarray(
            self.embedding_scale
        )
        return np.sqrt((z**2).mean(axis=-1))

    @staticmethod
    def relative_spread(spread: np.ndarray, target_sizes) -> np.ndarray:
        """Per image, the mean heatmap spread (``[B, N]``, :meth:`spread`) over the image
        diagonal, ``[B]``: large when the model cannot tell where the landmarks are."""
        sizes = np.asarray(target_sizes, dtype=np.float64).reshape(-1, 2)
        return np.asarray(spread).mean(axis=1) / np.sqrt((sizes**2).sum(axis=1))

    def shape_distances(self, coords) -> np.ndarray | None:
        """``[B]``: how far the first stage's landmarks ``coords`` ``[B, N, 2]`` (model pixels)
        lie from the calibrated reference shape at its typical scale
        (:func:`hf_landmark.shape.shape_distance`); ``None`` before :meth:`calibrate_flag` set one."""
        if self.shape_reference is None or self.shape_scale is None:
            return None
        points = coords.detach().double().cpu().numpy() if torch.is_tensor(coords) else np.asarray(coords)
        reference = np.asarray(self.shape_reference, dtype=np.float64)
        if points.shape[-2:] != reference.shape:
            raise ValueError(
                f"calibration.shape_reference holds {len(reference)} landmarks, the model predicted "
                f"{points.shape[-2]}: the processor was calibrated for another model"
            )
        return shape_distance(reference, points, self.shape_scale)

    def flags(
        self,
        outputs,
        target_sizes,
        spread: np.ndarray | None = None,
        spread_check: bool = True,
        decoder: str | None = None,
    ) -> list[str]:
        """Per image ``"low_confidence"`` or ``"ok"``. Low confidence: smaller than
        ``min_image_side``, or (once calibrated, :meth:`calibrate_flag`) an embedding farther
        from the training images', heatmaps more spread out, or first-stage landmarks farther
        from the labeled images' shape (:meth:`shape_distances`) than the thresholds, which let
        through all but ``flag_false_alarm_rate`` of images like the calibration ones. ``spread``: the
        :meth:`spread` of ``outputs`` (the first stage's: how sure the model is of where
        to look), when already computed. ``spread_check=False``: the embedding test alone (how
        sure the model is of each landmark is judged elsewhere, e.g. by self-training's choice).
        ``decoder``: how the first stage's maps are read where the output has no landmarks of its
        own (as :meth:`decode`)."""
        sizes = np.asarray(target_sizes, dtype=np.float64).reshape(-1, 2)
        odd = sizes.min(axis=1) < self.min_image_side
        far = self.ood_distances(outputs)
        if far is not None and self.ood_threshold is not None:
            odd |= far > self.ood_threshold
        if spread_check and self.spread_threshold is not None:
            spread = self.spread(outputs, sizes, stage="first") if spread is None else spread
            odd |= self.relative_spread(spread, sizes) > self.spread_threshold
        if spread_check and self.shape_threshold is not None:
            odd |= self.shape_distances(self.decode(outputs, decoder, stage="first")[0]) > self.shape_threshold
        return ["low_confidence" if o else "ok" for o in odd]

    def calibrate_flag(self, reference_embeddings, embeddings, relative_spread, shapes=None) -> None:
        """Calibrate the low-confidence flag: ``reference_embeddings`` ``[K, C]`` (training
        images) set what "like the training data" means; ``embeddings`` ``[M, C]`` and their
        first-stage ``relative_spread`` ``[M]`` (:meth:`relative_spread`), of other images like
        those the model will see (validation and unlabeled pool images, never test), set each
        test's threshold at its conformal quantile at level ``false_alarm_rate / T`` for T tests
        (or ``1 / (M + 1)``, the largest, when M is too small), so that the tests together flag
        at most ``false_alarm_rate`` of such images (``flag_false_alarm_rate`` records the bound
        reached). ``shapes``: ``(reference [N, 2], reference points [K', N, 2], points [M, N, 2])``
        in model pixels, for the third test: the labeled images' mean landmarks, the first
        stage's landmarks on the reference images (their median similarity scale is the typical
        one) and on the M images (their :meth:`shape_distances` set its threshold); ``None`` (or
        fewer than 3 landmarks) leaves the shape test off."""
        ref = np.asarray(reference_embeddings, dtype=np.float64)
        self.embedding_mean = ref.mean(axis=0).tolist()
        self.embedding_scale = np.maximum(ref.std(axis=0), 1e-6).tolist()
        self.shape_reference = self.shape_scale = self.shape_threshold = None
        if shapes is not None:
            reference = np.asarray(shapes[0], dtype=np.float64)
            if np.isfinite(reference).all(-1).sum() >= MIN_LANDMARKS:
                self.shape_reference = reference.tolist()  # NaN (saved as null): no labeled image had it
                self.shape_scale = float(np.median(similarity_scale(reference, np.asarray(shapes[1]))))
        n = len(relative_spread)
        tests = 2 if self.shape_reference is None else 3
        level = max(self.false_alarm_rate / tests, 1.0 / (n + 1))
        self.ood_threshold = conformal_quantile(self._embedding_distance(embeddings), level)
        self.spread_threshold = conformal_quantile(np.asarray(relative_spread, dtype=np.float64), level)
        if self.shape_reference is not None:
            self.shape_threshold = conformal_quantile(self.shape_distances(np.asarray(shapes[2])), level)
        self.flag_calibration_images = int(n)
        self.flag_false_alarm_rate = float(min(1.0, tests * level))
