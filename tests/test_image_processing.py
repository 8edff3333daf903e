import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor

from hf_landmark import LandmarkConfig, LandmarkDetector, LandmarkImageProcessor
from hf_landmark.modeling_landmark import LandmarkDetectorOutput
from hf_landmark.pipeline_landmark import landmark_records


def _bump_logits(size, centres):
    """Logits whose 2-D softmax is a sharp bump centred on each (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    maps = [-((xs - x) ** 2 + (ys - y) ** 2) / 2.0 for x, y in centres]
    return torch.stack(maps)[None]


def test_saved_beside_every_detector_and_loaded_by_auto_class(tmp_path):
    model = LandmarkDetector(
        LandmarkConfig(
            backbone_config="tiny",
            num_landmarks=2,
            image_size=32,
            landmark_names=["a", "b"],
            loss="contour",
            sigma=1.5,
            spacing=[0.1, 0.2],
            pixel_range=[0, 1],
        )
    )
    model.save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, LandmarkImageProcessor)
    assert (processor.size, processor.pixel_range, processor.resample, processor.landmark_names) == (
        32,
        [0.0, 1.0],
        "area",
        ["a", "b"],
    )
    assert (processor.loss, processor.sigma, processor.spacing) == ("contour", 1.5, [0.1, 0.2])


def test_preprocess_outputs():
    processor = LandmarkImageProcessor(size=32, pixel_range=(-1, 1))
    white = np.full((60, 40), 255, np.uint8)
    black = np.zeros((20, 30), np.uint8)
    out = processor([white, black])
    assert out["pixel_values"].shape == (2, 1, 32, 32) and out["pixel_values"].dtype == torch.float32
    assert out["pixel_values"][0].min() == 1.0 and out["pixel_values"][1].max() == -1.0  # [0, 1] -> [-1, 1]
    assert out["original_sizes"].tolist() == [[40.0, 60.0], [30.0, 20.0]]  # (W, H)
    assert torch.isnan(out["spacings"]).all() and out["sources"] == ["image", "image"]


def test_post_process_maps_to_each_original_frame_and_mm():
    processor = LandmarkImageProcessor(size=32, landmark_names=["tip", "base"], loss="contour", sigma=1.0, spacing=0.5)
    # Bumps at model (20.5, 9.25) and (0, 31): the soft-argmax of a symmetric bump is its centre,
    # except where the image edge cuts it, so only the first landmark is checked exactly.
    outputs = LandmarkDetectorOutput(heatmaps=_bump_logits(32, [(20.5, 9.25), (0.0, 31.0)]).expand(2, -1, -1, -1))
    tensors = processor.post_process_landmark_detection(
        outputs, target_sizes=[[100, 200], [64, 32]], spacings=[[float("nan")] * 2, [0.3, 0.4]], decoder="soft_argmax"
    )
    # Per image a dict of tensors, as transformers' keypoint processors give; the pipeline's records from it.
    assert tensors[0]["landmarks"].shape == (2, 2) and tensors[0]["scores"].shape == (2,)
    torch.testing.assert_close(tensors[0]["landmarks_mm"], tensors[0]["landmarks"] * 0.5)
    assert bool(tensors[0]["spacing_assumed"]) and not bool(tensors[1]["spacing_assumed"])
    result = [landmark_records(t, processor.landmark_names) for t in tensors]
    # x = (20.5 + 0.5) * W / 32 - 0.5, y = (9.25 + 0.5) * H / 32 - 0.5.
    a, b = result[0][0], result[1][0]
    assert (
        a["label"] == "tip"
        and a["x"] == pytest.approx(21 * 100 / 32 - 0.5, abs=1e-3)
        and a["y"] == pytest.approx(9.75 * 200 / 32 - 0.5, abs=1e-3)
    )
    assert a["x_mm"] == pytest.approx(a["x"] * 0.5) and a["y_mm"] == pytest.approx(a["y"] * 0.5)  # processor's spacing
    assert a["spacing_assumed"] is True
    assert b["x"] == pytest.approx(21 * 64 / 32 - 0.5, abs=1e-3) and b["y"] == pytest.approx(
        9.75 * 32 / 32 - 0.5, abs=1e-3
    )
    assert b["x_mm"] == pytest.approx(b["x"] * 0.3) and b["y_mm"] == pytest.approx(
        b["y"] * 0.4
    )  # the image's own spacing
    assert b["spacing_assumed"] is False
    assert 0.0 <= a["score"] <= 1.0 and result[0][1]["label"] == "base"
    # Without any spacing there are no mm fields.
    bare = LandmarkImageProcessor(size=32, loss="contour", sigma=1.0)
    plain = bare.post_process_landmark_detection(outputs, target_sizes=[[32, 32]] * 2)[0]
    assert "landmarks_mm" not in plain and "x_mm" not in landmark_records(plain)[0]


def test_decoding_reads_logits_as_the_loss_does():
    logits = torch.zeros(1, 2, 16, 16)
    logits[0, 0, 4, 11] = 5.0
    logits[0, 1, 12, 3] = 5.0
    for loss in ("paper", "bce", "contour"):
        coords, scores = LandmarkImageProcessor(size=16, loss=loss, sigma=1.0).decode(
            LandmarkDetectorOutput(heatmaps=logits), "argmax"
        )
        assert coords[0].tolist() == [[11.0, 4.0], [3.0, 12.0]], loss
        assert ((scores > 0) & (scores <= 1)).all(), loss


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="resample"):
        LandmarkImageProcessor(resample="nearest")
    with pytest.raises(ValueError, match="decoder"):
        LandmarkImageProcessor(decoder="mean")
    with pytest.raises(ValueError, match="unknown loss"):
        LandmarkImageProcessor(loss="mse")


def test_conformal_radii_cover_as_guaranteed():
    """Errors with a known law (Rayleigh, scale = the spread): split conformal calibration on
    n = 50 images covers a fresh image with probability ceil(51 x 0.9) / 51 = 46/51 = 0.902."""
    from hf_landmark.image_processing_landmark import conformal_quantile

    assert conformal_quantile(np.arange(1.0, 21.0), 0.1) == 19.0  # ceil(21 x 0.9) = 19th of 20, by hand
    assert conformal_quantile(np.arange(1.0, 6.0), 0.1) == float("inf")  # 5 images cannot give 90 %
    rng = np.random.default_rng(0)
    coverage = []
    for _ in range(400):
        spread = rng.uniform(1.0, 10.0, (51, 2))  # two landmarks, 50 calibration images + 1 test image
        errors = spread * np.sqrt((rng.normal(size=(51, 2, 2)) ** 2).sum(-1))
        processor = LandmarkImageProcessor(alpha=0.1)
        processor.calibrate(spread[:50], errors[:50])
        coverage.append(errors[50] <= processor.radii(spread[50:])[0])
    assert np.mean(coverage) == pytest.approx(46 / 51, abs=0.02)


def test_radii_scale_with_the_heatmap_spread():
    """A Gaussian heatmap of std s per axis has spread sqrt(2) s; the radius follows it."""
    processor = LandmarkImageProcessor(
        size=64, loss="contour", calibration_scores=[[1.0] * 18 + [2.0, 3.0]], alpha=0.1
    )
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    spreads = []
    for s in (2.0, 6.0):
        logits = (-((xs - 31.5) ** 2 + (ys - 31.5) ** 2) / (2 * s * s))[None, None]
        spreads.append(processor.spread(LandmarkDetectorOutput(heatmaps=logits), [[128, 64]])[0, 0])
    # Original frame 128 x 64 from 64 px: x doubles, y stays: sqrt((2 s)^2 + s^2) = sqrt(5) s.
    assert spreads[0] == pytest.approx(np.sqrt(5) * 2.0, rel=0.01) and spreads[1] == pytest.approx(
        np.sqrt(5) * 6.0, rel=0.02
    )
    radii = processor.radii(np.array([spreads]))[0]
    assert radii[1] / radii[0] == pytest.approx(3.0, rel=0.02) and radii[0] == pytest.approx(
        spreads[0] * 2.0
    )  # 19th of 20 is 2.0


def test_three_calibration_images_give_radii_at_75_percent_and_strict_json(tmp_path):
    """3 calibration images cannot support 90 % (that needs 9): the radii hold at the best
    level they allow, 3/4 (the largest of the 3 normalised errors), are finite, say their level,
    and everything saved is strict JSON."""
    import json

    processor = LandmarkImageProcessor(size=32, alpha=0.1)
    processor.calibrate(np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]), np.array([[1.0, 2.0], [3.0, 1.0], [2.0, 4.0]]))
    assert processor.calibration_size == 3 and processor.radius_alpha == pytest.approx(0.25)
    # Normalised errors: landmark 0: 1, 3, 2 -> max 3; landmark 1: 1, 0.5, 2 -> max 2; times the spread.
    assert processor.radii(np.array([[2.0, 10.0]]))[0].tolist() == pytest.approx([6.0, 20.0])
    assert np.isinf(processor.radii(np.array([[2.0, 10.0]]), alpha=0.1)).all()  # an explicit 90 % still has none
    logits = torch.zeros(1, 2, 32, 32)
    logits[0, 0, 10, 12] = logits[0, 1, 20, 5] = 8.0
    items = landmark_records(
        processor.post_process_landmark_detection(LandmarkDetectorOutput(heatmaps=logits), [[64, 64]])[0]
    )
    assert all(np.isfinite(p["radius"]) and p["radius_coverage"] == pytest.approx(0.75) for p in items)
    processor.ood_threshold = float("inf")  # a non-finite number saved by mistake is null, never Infinity
    processor.save_pretrained(tmp_path)
    text = (tmp_path / "preprocessor_config.json").read_text()
    config = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))
    calibration = config["calibration"]  # what was measured after training: one section
    assert calibration["ood_threshold"] is None and len(calibration["calibration_scores"][0]) == 3
    assert "calibration_scores" not in config


def test_the_flag_is_calibrated_at_the_false_alarm_rate_on_many_images():
    """99 calibration images, delta = 5 %: each test's threshold is the ceil(100 x 0.975) = 98th
    smallest value (level delta / 2), so both together flag at most 5 % of images like them;
    with 9 images the largest (level 1/10), a bound of 20 %."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 4))
    emb, rel = rng.normal(size=(99, 4)), rng.uniform(0.01, 0.02, 99)
    processor = LandmarkImageProcessor(size=32)
    processor.calibrate_flag(ref, emb, rel)
    assert processor.spread_threshold == pytest.approx(np.sort(rel)[97])
    assert processor.ood_threshold == pytest.approx(np.sort(processor._embedding_distance(emb))[97])
    assert processor.flag_calibration_images == 99 and processor.flag_false_alarm_rate == pytest.approx(0.05)
    processor.calibrate_flag(ref, emb[:9], rel[:9])
    assert processor.spread_threshold == pytest.approx(
        rel[:9].max()
    ) and processor.flag_false_alarm_rate == pytest.approx(0.2)


def test_the_flag_catches_a_whole_shape_drawn_small_that_the_other_tests_let_through(tmp_path):
    """The shape test: a square of 4 landmarks, side 10 model px; the reference images' shapes
    at scales 0.9, 1.0, 1.0, 1.1 (typical scale: their median, 1.0); 99 calibration images at
    scales 0.90-1.10, so with 3 tests at delta = 5 % the threshold is their largest distance,
    |1.1 / 1.0 - 1| = 0.1 (the ceil(100 x (1 - 0.05 / 3)) = 99th of 99), a bound of 5 %. A shape
    drawn at 0.7 of the size (distance 0.3) is flagged; one at 1.05, rotated and moved, is not;
    an image with the same embedding and spreads as the calibration ones is only flagged by its shape."""
    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])

    def drawn(scale, angle=0.0, at=(16.0, 16.0)):
        c, s = np.cos(angle), np.sin(angle)
        return (square - 5.0) @ np.array([[c, s], [-s, c]]) * scale + np.array(at)

    rng = np.random.default_rng(0)
    ref_emb, emb = rng.normal(size=(50, 4)), rng.normal(size=(99, 4))
    spreads = rng.uniform(0.01, 0.02, 99)
    calibration_shapes = np.stack([drawn(s) for s in np.linspace(0.9, 1.1, 99)])
    reference_shapes = np.stack([drawn(s) for s in (0.9, 1.0, 1.0, 1.1)])
    processor = LandmarkImageProcessor(size=32)
    processor.calibrate_flag(ref_emb, emb, spreads, (square, reference_shapes, calibration_shapes))
    assert processor.shape_scale == pytest.approx(1.0)
    assert processor.shape_threshold == pytest.approx(0.1)
    assert processor.flag_false_alarm_rate == pytest.approx(0.05)
    assert processor.spread_threshold == pytest.approx(spreads.max())  # 3 tests: each at its largest value
    odd = np.stack([drawn(0.7, at=(8.0, 24.0)), drawn(1.05, angle=0.4, at=(12.0, 18.0))])
    assert processor.shape_distances(odd) == pytest.approx([0.3, 0.05])
    # The two images: an ordinary embedding and spread each; only the first shape is implausible.
    log_p = torch.full((2, 4, 32, 32), -np.log(32.0 * 32.0))
    outputs = {"embeddings": torch.from_numpy(emb[:2]), "log_probabilities": log_p}
    outputs["coarse_coordinates"] = torch.from_numpy(odd).float()
    sizes = np.full((2, 2), 320.0)
    assert processor.flags(outputs, sizes, spread=np.full((2, 4), 0.015 * np.sqrt(2) * 320)) == [
        "low_confidence",
        "ok",
    ]
    # Saved and loaded, the test travels; calibrated without shapes (the 0.4 API), it is off.
    processor.save_pretrained(tmp_path)
    loaded = LandmarkImageProcessor.from_pretrained(tmp_path)
    assert loaded.shape_threshold == pytest.approx(0.1) and loaded.shape_distances(odd) == pytest.approx([0.3, 0.05])
    with pytest.raises(ValueError, match="shape_reference holds 4 landmarks, the model predicted 3"):
        loaded.shape_distances(odd[:, :3])
    loaded.calibrate_flag(ref_emb, emb, spreads)
    assert loaded.shape_threshold is None and loaded.flag_false_alarm_rate == pytest.approx(0.05)


def test_mean_offsets_shrink_toward_none_and_leave_each_image_out():
    from hf_landmark.calibration import mean_offsets

    nan = float("nan")
    # 3 images, 2 landmarks; landmark 1 is missing on image 2.
    errors = np.array([[[1.0, -2.0], [4.0, 0.0]], [[2.0, -2.0], [2.0, 2.0]], [[3.0, -2.0], [nan, nan]]])
    offsets, held_out = mean_offsets(errors, pseudo_images=1.0)
    # landmark 0: sums (6, -6) over 3 images + 1 pseudo-image -> (1.5, -1.5); landmark 1: (6, 2) / (2 + 1).
    np.testing.assert_allclose(offsets, [[1.5, -1.5], [2.0, 2 / 3]], atol=1e-9)
    # Image 0 left out: landmark 0 (5, -4) / (2 + 1), landmark 1 (2, 2) / (1 + 1).
    np.testing.assert_allclose(held_out[0], [[5 / 3, -4 / 3], [1.0, 1.0]], atol=1e-9)
    # Image 2 had no landmark 1: it is corrected by all the images that had it.
    assert held_out[2, 1].tolist() == pytest.approx([2.0, 2 / 3])
    # No shrinkage: the plain means.
    np.testing.assert_allclose(mean_offsets(errors, 0.0)[0], [[2.0, -2.0], [3.0, 1.0]])


def test_landmark_offsets_move_the_stage_they_were_measured_on_and_are_saved(tmp_path):
    processor = LandmarkImageProcessor(size=32, landmark_names=["tip", "base"], loss="contour", sigma=1.0)
    outputs = LandmarkDetectorOutput(heatmaps=_bump_logits(32, [(20.5, 9.25), (10.0, 12.0)]))
    before, _ = processor.post_process_coordinates(outputs, [[64, 32]], decoder="soft_argmax")
    processor.set_landmark_offsets([[1.0, -0.5], [0.0, 2.0]], "first")  # model pixels
    after, _ = processor.post_process_coordinates(outputs, [[64, 32]], decoder="soft_argmax")
    # Model pixels scale to the original frame by W / 32 = 2 in x and H / 32 = 1 in y.
    np.testing.assert_allclose((before - after)[0], [[2.0, -0.5], [0.0, 2.0]], atol=1e-9)
    processor.save_pretrained(tmp_path)
    loaded = LandmarkImageProcessor.from_pretrained(tmp_path)
    assert loaded.landmark_offsets == [[1.0, -0.5], [0.0, 2.0]] and loaded.landmark_offsets_stage == "first"
    # Offsets measured on refined landmarks leave a first stage alone (a two-stage model run without its refiner).
    loaded.set_landmark_offsets([[1.0, -0.5], [0.0, 2.0]], "refined")
    np.testing.assert_allclose(loaded.post_process_coordinates(outputs, [[64, 32]], decoder="soft_argmax")[0], before)
    with pytest.raises(ValueError, match="3 pairs for 2 landmarks"):
        loaded.set_landmark_offsets([[0, 0]] * 3)
    with pytest.raises(ValueError, match="'refined' or 'first'"):
        loaded.set_landmark_offsets(None, "final")


def test_landmark_offsets_never_carry_a_landmark_off_the_picture():
    processor = LandmarkImageProcessor(size=32, landmark_names=["menton", "sella"], loss="contour", sigma=1.0)
    # Menton decoded near the bottom edge (model y 30.0), Sella in the middle.
    outputs = LandmarkDetectorOutput(heatmaps=_bump_logits(32, [(16.0, 30.0), (10.0, 12.0)]))
    before, _ = processor.post_process_coordinates(outputs, [[64, 300]], decoder="argmax")
    # An offset of -3 model pixels in y would put Menton at model y 33, below the last row (31).
    processor.set_landmark_offsets([[0.0, -3.0], [0.0, -3.0]], "first")
    after, _ = processor.post_process_coordinates(outputs, [[64, 300]], decoder="argmax")
    # Sella moves the full 3 model px = 3 * 300 / 32 original px; Menton stops at the centre of
    # the last model row: (31 + 0.5) * 300 / 32 - 0.5 = 294.8125 original px, inside the 300-px image.
    assert after[0, 1, 1] - before[0, 1, 1] == pytest.approx(3 * 300 / 32)
    assert after[0, 0, 1] == pytest.approx(294.8125) and before[0, 0, 1] == pytest.approx(30.5 * 300 / 32 - 0.5)
    assert after[0, 0, 0] == pytest.approx(before[0, 0, 0])


def test_a_release_0_4_model_folder_loads_with_its_calibration_and_predicts_the_same(tmp_path):
    """Release 0.4 saved the calibration at the top level of preprocessor_config.json; it is
    read into the calibration section, and the folder predicts what the new layout does."""
    import json

    from hf_landmark.pipeline_landmark import detection_pipeline

    config = LandmarkConfig(
        backbone_config="tiny", num_landmarks=2, image_size=32, landmark_names=["a", "b"], spacing=0.1
    )
    model = LandmarkDetector(config)
    processor = LandmarkImageProcessor.from_model_config(config)
    rng = np.random.default_rng(0)
    processor.calibrate(rng.uniform(1, 2, (12, 2)), rng.uniform(0, 3, (12, 2)))
    processor.calibrate_flag(rng.normal(size=(20, 64)), rng.normal(size=(12, 64)), rng.uniform(0.01, 0.02, 12))
    processor.set_landmark_offsets([[0.5, 0.0], [0.0, -0.25]], "first")
    for name in ("new", "old"):
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
    path = tmp_path / "old" / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    flat = {k: v for k, v in saved.items() if k != "calibration"} | saved["calibration"]  # as 0.4 wrote it
    path.write_text(json.dumps(flat))
    old = AutoImageProcessor.from_pretrained(tmp_path / "old")
    assert old.calibration == processor.calibration and old.landmark_offsets_stage == "first"
    assert old.calibration_scores == processor.calibration_scores and old.ood_threshold == processor.ood_threshold
    image = (rng.uniform(0, 255, (48, 40))).astype(np.uint8)
    got = detection_pipeline(str(tmp_path / "old"))(image)
    want = detection_pipeline(str(tmp_path / "new"))(image)
    assert got == want and "radius" in got[0] and "x_mm" in got[0]
    # Saved again, it is in the new layout.
    old.save_pretrained(tmp_path / "resaved")
    assert "calibration_scores" not in json.loads((tmp_path / "resaved" / "preprocessor_config.json").read_text())
