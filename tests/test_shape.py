import math

import numpy as np
import pytest
import torch

from hf_landmark import LandmarkConfig, LandmarkDetector
from hf_landmark.heatmaps import decode
from hf_landmark.shape import robust_similarity, shape_check, shape_tolerance

# A reference shape (model pixels) and the same shape turned by 90 degrees about a point:
# (x, y) -> (50 - y, x), which maps every reference landmark onto whole pixels.
REFERENCE = np.array([[10, 10], [30, 10], [30, 30], [10, 30], [20, 20]], dtype=np.float64)
TURNED = np.stack([50 - REFERENCE[:, 1], REFERENCE[:, 0]], axis=1)  # (40,10) (40,30) (20,30) (20,10) (30,20)


def _log_maps(peaks, size=48, sigma=1.5):
    """``[1, N, size, size]`` log-probabilities, one channel per landmark: each a sum of
    Gaussian bumps ``[(x, y, height), ...]`` over a small floor."""
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    maps = []
    for bumps in peaks:
        m = torch.full((size, size), 1e-6, dtype=torch.float64)
        for x, y, height in bumps:
            m = m + height * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
        maps.append(m / m.sum())
    return torch.stack(maps)[None].float().log()


def test_a_landmark_on_another_structure_is_read_again_where_the_others_put_it():
    # Landmark 4's heatmap has its larger peak 31 px away, at (8, 42), and a smaller one on
    # its true position (30, 20); the other four are where the turned shape puts them.
    peaks = [[(x, y, 1.0)] for x, y in TURNED[:4]] + [[(8, 42, 1.0), (30, 20, 0.6)]]
    log_p = _log_maps(peaks)
    coords = decode(log_p.exp(), "centroid", log_maps=log_p)
    assert coords[0, 4].tolist() == pytest.approx([8, 42], abs=0.05)  # the decoder alone takes the wrong peak

    checked, moved = shape_check(coords, log_p, REFERENCE, tolerance=4.0)
    assert moved.tolist() == [[False, False, False, False, True]]
    assert checked[0, 4].tolist() == pytest.approx([30, 20], abs=0.05)
    assert torch.equal(checked[0, :4], coords[0, :4])
    # A plain least-squares fit is pulled by the stray landmark (its mapped centre moves by
    # (-22, 22) / 5 ≈ 6 px), so the others would look wrong; the robust fit is not.
    mapped = robust_similarity(REFERENCE, coords.double().numpy(), 4.0)[0]
    assert mapped[:4] == pytest.approx(TURNED[:4], abs=1e-3)


def test_a_shape_that_differs_within_the_tolerance_is_left_alone():
    # Landmark 0 sits 3 px off the turned reference (another patient's shape), within 4 px.
    points = TURNED.copy()
    points[0] += [3, 0]
    peaks = [[(x, y, 1.0)] for x, y in points]
    log_p = _log_maps(peaks)
    coords = decode(log_p.exp(), "centroid", log_maps=log_p)
    checked, moved = shape_check(coords, log_p, REFERENCE, tolerance=4.0)
    assert not moved.any() and torch.equal(checked, coords)
    # Off (no tolerance), or too few landmarks to check, nothing moves either.
    assert not shape_check(coords, log_p, REFERENCE, tolerance=0)[1].any()
    assert not shape_check(coords[:, :2], log_p[:, :2], REFERENCE[:2], tolerance=1.0)[1].any()
    assert not shape_check(coords, log_p, np.zeros((5, 2)), tolerance=1.0)[
        1
    ].any()  # a reference of one point repeated


def test_the_tolerance_scales_the_ninetieth_percentile_of_true_shapes_distances():
    # A square about the origin; the displacement e * (x, -y) of each corner is orthogonal to
    # every similarity (its sum and its complex moment sum(conj(w) * conj(w)) are zero), so
    # a least-squares fit leaves all of it: every corner sits e * sqrt(2) from the fit.
    square = np.array([[1, 1], [-1, 1], [1, -1], [-1, -1]], dtype=np.float64)
    stretched = square * [1 + 1.0, 1 - 1.0]  # e = 1
    angle, scale, shift = math.radians(30), 2.0, np.array([5.0, -3.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = scale * stretched @ rotation.T + shift  # the same shape turned, scaled 2x, shifted: 2 sqrt(2)
    # Distances: four of sqrt(2), four of 2 sqrt(2); their 90th percentile is 2 sqrt(2).
    assert shape_tolerance(square, np.stack([stretched, moved]), 2.5) == pytest.approx(2.5 * 2 * math.sqrt(2))


def test_a_model_with_a_reference_shape_checks_its_first_stage_and_keeps_it_when_saved(tmp_path):
    config = LandmarkConfig(backbone_config="tiny", num_landmarks=5, image_size=32, sigma=1.0)
    assert config.reference_shape is None
    config.set_shape_check((REFERENCE * 32 / 48).tolist(), 2.0)
    torch.manual_seed(0)
    model = LandmarkDetector(config).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(pixel_values=x)
    expected, moved = shape_check(
        decode(out.log_probabilities.exp(), "centroid", log_maps=out.log_probabilities),
        out.log_probabilities,
        config.reference_shape,
        2.0,
    )
    assert torch.equal(out.coarse_coordinates, expected) and torch.equal(out.shape_moved, moved)
    model.train()
    assert model(pixel_values=x).shape_moved is None  # not on every training step
    model.save_pretrained(tmp_path / "m")
    again = LandmarkDetector.from_pretrained(tmp_path / "m")
    np.testing.assert_allclose(again.config.reference_shape, REFERENCE * 32 / 48)
    assert again.config.shape_tolerance == 2.0
    with pytest.raises(ValueError, match="5 \\(x, y\\) points"):
        config.set_shape_check([[0, 0]], 2.0)
