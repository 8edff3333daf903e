import math

import pytest
import torch

from hf_landmark.heatmaps import (
    HALF_MAX_RADIUS,
    bilinear_targets,
    decode,
    decode_argmax,
    decode_centroid,
    decode_soft_argmax,
    gaussian_disk_targets,
    spatial_distribution_targets,
)


def test_disk_radius_is_half_maximum_of_the_gaussian():
    assert HALF_MAX_RADIUS * 5 == pytest.approx(5.887, abs=1e-3)
    centre = torch.tensor([[[30.0, 30.0]]])
    hard = gaussian_disk_targets(centre, (64, 64), 5.0, antialias=False)[0, 0]
    # (30 + 5, 30 + 3): distance sqrt(34) = 5.83 <= 5.887 -> inside; (36, 30): 6 -> outside.
    assert hard[33, 35] == 1 and hard[30, 36] == 0 and hard[30, 30] == 1
    # The hard disk covers the lattice points within 5.887 px: 109 of them.
    assert int(hard.sum()) == sum(1 for i in range(-6, 7) for j in range(-6, 7) if i * i + j * j <= 5.887**2)
    soft = gaussian_disk_targets(centre, (64, 64), 5.0)[0, 0]
    assert soft[30, 30] == 1 and soft[30, 36] == pytest.approx(5.887 + 0.5 - 6, abs=1e-3) and soft[30, 37] == 0


def test_sub_pixel_centres_round_trip_through_targets_and_decoders():
    g = torch.Generator().manual_seed(0)
    landmarks = torch.rand(3, 19, 2, generator=g) * 40 + 12
    targets = gaussian_disk_targets(landmarks, (64, 64), 5.0)
    for decoder in ("centroid", "soft_argmax"):
        err = (decode(targets, decoder) - landmarks).norm(dim=-1)
        assert err.max() < 0.1, decoder
    # A rounded target would be off by up to 0.7 px: sub-pixel centres are really honoured.
    rounded = gaussian_disk_targets(landmarks.round(), (64, 64), 5.0)
    assert (decode(rounded, "centroid") - landmarks).norm(dim=-1).max() > 0.3


def test_bilinear_and_gaussian_distributions_have_the_landmark_as_mean():
    lm = torch.tensor([[[10.25, 20.75], [33.5, 13.0]]])
    for sigma in (0.0, 1.5):
        p = spatial_distribution_targets(lm, (40, 40), sigma)
        assert p.sum(dim=(-2, -1)).allclose(torch.ones(1, 2))
        assert decode_soft_argmax(torch.log(p)).allclose(lm, atol=1e-3)
    b = bilinear_targets(lm, (40, 40))[0, 0]
    assert b[20, 10] == pytest.approx(0.75 * 0.25) and b[21, 11] == pytest.approx(0.25 * 0.75)


def test_argmax_and_largest_component_centroid():
    maps = torch.zeros(1, 2, 32, 32)
    maps[0, 0, 7, 12] = 1.0
    assert decode_argmax(maps)[0, 0].tolist() == [12.0, 7.0]
    # Channel 1: a small bright blob (2 px) and a larger one (3x3) at the same height.
    maps[0, 1, 5, 5:7] = 1.0
    maps[0, 1, 19:22, 24:27] = 0.9
    xy = decode_centroid(maps)[0, 1]
    assert xy.tolist() == pytest.approx([25.0, 20.0])


def test_unknown_decoder_is_rejected():
    with pytest.raises(ValueError, match="Unknown decoder"):
        decode(torch.zeros(1, 1, 8, 8), "median")
    assert math.isfinite(float(decode_centroid(torch.zeros(1, 1, 8, 8)).sum()))
