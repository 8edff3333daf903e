"""The shape fusion: its point distribution model, the Gaussian fusion, and how the image
processor applies it (hf_landmark.shape_model)."""

import numpy as np
import pytest

from hf_landmark.image_processing_landmark import LandmarkImageProcessor
from hf_landmark.modeling_landmark import LandmarkDetectorOutput
from hf_landmark.shape_model import MIN_SHAPES, fit_shape_model, fuse_shapes, noise_factors

SQUARE = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])


def _similar(shape, scale, angle, shift):
    c, s = np.cos(angle), np.sin(angle)
    return scale * shape @ np.array([[c, s], [-s, c]]) + np.asarray(shift)


def test_a_sure_neighbourhood_pulls_an_unsure_landmark_by_the_variance_ratio():
    """Covariance 4 I, the observed square exact but corner 2 moved 4 px right with noise sd 2
    (variance 4), the other corners sure (sd 0.01): the similarity is the identity, and corner 2's
    posterior is the prior plus 4 / (4 + 4) of its residual, 2 px right; the others stay."""
    observed = SQUARE.copy()
    observed[2, 0] += 4.0
    sd = np.array([[0.01, 0.01, 2.0, 0.01]])
    fused = fuse_shapes(observed[None], sd, SQUARE, 4.0 * np.eye(8))[0]
    np.testing.assert_allclose(fused[2], [12.0, 10.0], atol=1e-3)
    np.testing.assert_allclose(fused[[0, 1, 3]], SQUARE[[0, 1, 3]], atol=1e-3)


def test_a_shape_the_model_expects_is_left_where_it_is_in_any_pose():
    """The mean shape moved, turned and scaled is its own posterior mean: fusion undoes nothing of
    the pose, whatever the noise."""
    pose = _similar(SQUARE, 3.0, 0.4, (100.0, -50.0))
    fused = fuse_shapes(pose[None], np.array([[1.0, 5.0, 0.5, 2.0]]), SQUARE, np.eye(8))
    np.testing.assert_allclose(fused[0], pose, atol=1e-9)


def test_the_shape_model_is_the_procrustes_mean_and_leaves_out_incomplete_shapes():
    rng = np.random.default_rng(0)
    shapes = np.stack(
        [_similar(SQUARE, rng.uniform(0.5, 2), rng.uniform(-1, 1), rng.normal(0, 50, 2)) for _ in range(8)]
    )
    incomplete = shapes[0].copy()
    incomplete[1] = np.nan
    mean, covariance = fit_shape_model(np.concatenate([shapes, incomplete[None]]))
    # Every shape is the square in another pose: the mean is a square (equal sides, right angles) and nothing varies.
    sides = np.linalg.norm(np.roll(mean, -1, 0) - mean, axis=1)
    np.testing.assert_allclose(sides, sides[0], rtol=1e-9)
    assert np.dot(mean[1] - mean[0], mean[3] - mean[0]) == pytest.approx(0.0, abs=1e-9)
    assert covariance.shape == (8, 8) and np.abs(covariance).max() < 1e-6 * sides[0] ** 2
    assert fit_shape_model(shapes[: MIN_SHAPES - 1]) is None  # too few shapes: no fusion
    assert fit_shape_model(shapes[:, :2]) is None  # two landmarks: a similarity fits any


def test_the_covariance_is_shrunk_halfway_to_its_diagonal():
    """Shapes whose corners 1 and 2 move together in x by +-1 (so no pose absorbs it all):
    their covariance in x is positive, and halved by the shrinkage; the diagonal is kept."""
    shapes = []
    for d in (-1.0, 1.0) * 5:
        s = SQUARE.copy()
        s[1:3, 0] += d
        shapes.append(s)
    _, full = fit_shape_model(np.stack(shapes), shrink=0.0)
    _, half = fit_shape_model(np.stack(shapes), shrink=0.5)
    assert full[2, 4] > 0.05  # x of corner 1 with x of corner 2 (what the pose leaves of it)
    assert half[2, 4] == pytest.approx(full[2, 4] / 2, rel=1e-6)
    np.testing.assert_allclose(np.diag(half), np.diag(full), rtol=1e-6)


def test_noise_factors_are_the_weighted_median_error_per_unit_of_spread():
    nan = np.nan
    # 3 images, 3 landmarks: ratios (1, 3, 5), (2, 4, -) and a landmark no image has.
    errors = np.array([[1.0, 4.0, nan], [3.0, 8.0, nan], [5.0, nan, nan]])
    spread = np.array([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0], [1.0, 2.0, 1.0]])
    # Medians 3 and 3 (of 2 and 4); sqrt(0.25) = 0.5 of them; the third takes the median of the others.
    np.testing.assert_allclose(noise_factors(errors, spread, 0.25), [1.5, 1.5, 1.5])
    assert noise_factors(np.full((2, 3), nan), spread[:2], 0.25) is None


def _bump_logits(size, centres, sharp=4.0):
    import torch

    ys, xs = np.mgrid[0:size, 0:size]
    maps = [-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sharp**2) * 8 for x, y in centres]
    return torch.tensor(np.stack(maps)[None], dtype=torch.float32)


def test_the_processor_fuses_the_stage_it_was_calibrated_on_and_saves_the_model(tmp_path):
    processor = LandmarkImageProcessor(size=32, landmark_names=list("abcd"), loss="contour", sigma=1.0)
    outputs = LandmarkDetectorOutput(heatmaps=_bump_logits(32, [(8, 8), (20, 8), (21, 20), (8, 20)]))
    before, _ = processor.post_process_coordinates(outputs, [[32, 32]], decoder="soft_argmax")
    mean = np.array([[8.0, 8.0], [20.0, 8.0], [20.0, 20.0], [8.0, 20.0]])
    processor.set_shape_model((mean, np.eye(8)), [1.0, 1.0, 1.0, 1.0], "first")
    after, _ = processor.post_process_coordinates(outputs, [[32, 32]], decoder="soft_argmax")
    # Corner c, decoded a pixel right of where the square puts it, moves back toward it; all stay in the image.
    assert after[0, 2, 0] < before[0, 2, 0] - 0.1 and (after >= 0).all() and (after <= 31).all()
    processor.save_pretrained(tmp_path)
    loaded = LandmarkImageProcessor.from_pretrained(tmp_path)
    assert loaded.shape_model_stage == "first" and np.allclose(loaded.shape_model_covariance, np.eye(8))
    np.testing.assert_allclose(loaded.post_process_coordinates(outputs, [[32, 32]], decoder="soft_argmax")[0], after)
    # Measured on refined landmarks, it leaves a first stage alone.
    loaded.set_shape_model((mean, np.eye(8)), [1.0] * 4, "refined")
    np.testing.assert_allclose(loaded.post_process_coordinates(outputs, [[32, 32]], decoder="soft_argmax")[0], before)
    loaded.set_shape_model(None)
    assert loaded.shape_model_mean is None and loaded.shape_model_stage is None
    with pytest.raises(ValueError, match=r"a mean \[N, 2\], a covariance \[2N, 2N\] and noise \[N\]"):
        loaded.set_shape_model((mean, np.eye(6)), [1.0] * 4)
    with pytest.raises(ValueError, match="3 landmarks for 4"):
        loaded.set_shape_model((mean[:3], np.eye(6)), [1.0] * 3)
