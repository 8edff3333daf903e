import numpy as np
import pytest

from hf_landmark.metrics import (
    paper_compatible_errors,
    radial_errors,
    successful_detection_rates,
    summarize_errors,
    wrist_spacing,
)


def test_radial_errors_in_pixels_and_mm():
    true = np.zeros((1, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 1.0]]])
    assert radial_errors(pred, true).tolist() == [[5.0, 1.0]]
    assert radial_errors(pred, true, 0.1) == pytest.approx(np.array([[0.5, 0.1]]))
    # Anisotropic (sx, sy) = (0.1, 0.2): sqrt(0.3² + 0.8²) = 0.8544.
    assert radial_errors(pred, true, (0.1, 0.2))[0, 0] == pytest.approx(0.854400, abs=1e-6)
    # Per image: image 0 at 0.1 mm/px, image 1 at 0.5 mm/px.
    pred2, true2 = np.concatenate([pred, pred]), np.concatenate([true, true])
    assert radial_errors(pred2, true2, np.array([[0.1], [0.5]])) == pytest.approx(np.array([[0.5, 0.1], [2.5, 0.5]]))


def test_sdr_and_summary():
    errors = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert successful_detection_rates(errors, [2.0, 3.0]) == {2.0: 50.0, 3.0: 75.0}
    s = summarize_errors(errors, [2.5], ["A", "B"], unit="mm")
    assert s["mre"] == 2.5 and s["mre_std"] == pytest.approx(np.std([1, 2, 3, 4]))
    assert s["sdr"] == {"2.5": 50.0}
    assert s["per_landmark"][0] == {"name": "A", "mre": 2.0, "mre_std": 1.0, "sdr": {"2.5": 50.0}}
    assert s["num_images"] == 2


def test_wrist_convention():
    lm = np.zeros((1, 6, 2))
    lm[0, 4] = [60.0, 80.0]  # 100 px from landmark 0
    lm[0, 5] = [0.0, 25.0]  # 25 px from landmark 1 (at the origin)
    assert wrist_spacing(lm)[0] == pytest.approx(0.5)
    assert wrist_spacing(lm, indices=(1, 5))[0] == pytest.approx(2.0)


def test_paper_mode_swaps_ceph_factors_and_uses_the_grid():
    true = np.array([[[100.0, 100.0]]])
    pred_x = np.array([[[110.0, 100.0]]])
    pred_y = np.array([[[100.0, 110.0]]])
    sizes = np.array([[1935, 2400]])
    # x error scaled by 2400/256*0.1 (the swap), y by 1935/256*0.1.
    assert paper_compatible_errors(pred_x, true, "ceph", 256, sizes)[0, 0] == pytest.approx(10 * 2400 / 256 * 0.1)
    assert paper_compatible_errors(pred_y, true, "ceph", 256, sizes)[0, 0] == pytest.approx(10 * 1935 / 256 * 0.1)
    # The ground truth is re-decoded and rounded: 100.4 -> 100, and predictions are rounded.
    assert paper_compatible_errors(np.array([[[103.4, 104.2]]]), np.array([[[100.4, 100.0]]]), "chest")[
        0, 0
    ] == pytest.approx(5.0)
    # Hand: 50 mm over the grid distance of wrist landmarks 0 and 4.
    hand_true = np.zeros((1, 5, 2)) + 50.0
    hand_true[0, 4] = [150.0, 50.0]
    hand_pred = hand_true.copy()
    hand_pred[0, 2, 0] += 4.0
    assert paper_compatible_errors(hand_pred, hand_true, "hand")[0, 2] == pytest.approx(4.0 * 50 / 100)


def test_evaluate_module_wraps_the_same_functions():
    import os

    import evaluate

    import hf_landmark.metric_module as mm

    metric = evaluate.load(os.path.join(os.path.dirname(mm.__file__), "landmark_detection.py"))
    out = metric.compute(
        predictions=[[[3.0, 4.0], [0.0, 1.0]]], references=[[[0.0, 0.0], [0.0, 0.0]]], spacing=0.1, thresholds=[0.2]
    )
    assert out["mre"] == pytest.approx(0.3) and out["sdr"] == {"0.2": 50.0} and out["unit"] == "mm"
