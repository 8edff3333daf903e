"""Landmark detection metrics (MRE, SDR) as an ``evaluate`` module, wrapping
``hf_landmark.metrics`` (one implementation).

    import evaluate, hf_landmark.metric_module as mm, os
    metric = evaluate.load(os.path.join(os.path.dirname(mm.__file__), "landmark_detection.py"))
    metric.compute(predictions=[[[x, y], ...]], references=[[[x, y], ...]], spacing=0.1, thresholds=[2, 4])
"""

import datasets
import evaluate
import numpy as np

from hf_landmark.metrics import radial_errors, summarize_errors

_DESCRIPTION = "Mean radial error and successful detection rate of anatomical landmarks, per image [N, 2] (x, y) in original pixels."
_KWARGS = """
Args:
    predictions: per image, N (x, y) landmark positions in original pixels.
    references: per image, the true positions in the same frame.
    spacing: None (pixels), a number, (sx, sy), or one value / pair per image.
    thresholds: SDR thresholds in the unit of the errors.
    landmark_names: optional names for the per-landmark results.
Returns: mre, mre_std, sdr, per_landmark, num_images, unit.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class LandmarkDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"), length=2)),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("float64"), length=2)),
                }
            ),
        )

    def _compute(self, predictions, references, spacing=None, thresholds=(2.0, 2.5, 3.0, 4.0), landmark_names=None):
        errors = radial_errors(np.asarray(predictions), np.asarray(references), spacing)
        return summarize_errors(errors, thresholds, landmark_names, unit="px" if spacing is None else "mm")
