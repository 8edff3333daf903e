"""Self-training on the unlabeled pool (finetune --self-train): masked losses, refiner crops
of kept pseudo-labels only, the consistency test, and a whole run on synthetic data."""

import json

import numpy as np
import pytest
import torch

from hf_landmark.losses import get_loss
from hf_landmark.refinement import refiner_batch
from hf_landmark.self_training import choose_pseudo_labels


@pytest.mark.parametrize("name", ["contour", "bce"])
def test_a_missing_landmark_is_left_out_of_the_loss(name):
    loss = get_loss(name)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    landmarks = torch.tensor([[[3.0, 4.0], [8.0, 9.0], [12.0, 2.0]], [[5.0, 5.0], [1.0, 14.0], [7.5, 7.5]]])
    masked = landmarks.clone()
    masked[0, 1] = float("nan")  # image 0's landmark 1 rejected
    # The mean over the five valid (image, landmark) pairs, each computed as without a mask.
    per_pair = [
        loss(logits[b : b + 1, j : j + 1], landmarks[b : b + 1, j : j + 1], 2.0)
        for b in range(2)
        for j in range(3)
        if (b, j) != (0, 1)
    ]
    assert loss(logits, masked, 2.0).item() == pytest.approx(torch.stack(per_pair).mean().item(), rel=1e-5)
    # Nothing valid: no gradient signal, a zero loss rather than NaN.
    assert loss(logits, torch.full_like(landmarks, float("nan")), 2.0).item() == 0.0


def test_the_paper_loss_refuses_missing_landmarks():
    landmarks = torch.tensor([[[3.0, 4.0], [float("nan"), float("nan")]]])
    with pytest.raises(ValueError, match="needs every landmark"):
        get_loss("paper")(torch.randn(1, 2, 16, 16), landmarks, 2.0)


def test_refiner_crops_only_kept_pseudo_labels():
    from hf_landmark import LandmarkConfig

    cfg = LandmarkConfig(backbone_config="tiny", num_landmarks=3, image_size=32)
    cfg.set_refinement(128, 32, "tiny", "contour", 2.0)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, 128, 128, generator=g)
    truth = torch.rand(4, 3, 2, generator=g) * 100 + 14
    valid = torch.tensor([[True, False, False], [False, False, True], [False, False, False], [False, True, False]])
    truth[~valid] = float("nan")
    errors = torch.zeros(5, 3, 2)
    crops, landmark, local = refiner_batch(images, truth, errors, cfg, 400, g, valid)
    assert crops.shape == (400, 1, 32, 32) and torch.isfinite(local).all()
    # Only the three valid pairs are drawn, each about a third of the time.
    counts = np.bincount(landmark.numpy(), minlength=3)
    assert counts.sum() == 400 and all(90 < c < 180 for c in counts), counts
    # With zero offsets the truth sits at the crop centre (16, 16) up to the 1-px jitter, or
    # anywhere inside the crop for the one crop in ten drawn wide.
    centred = ((local[:, 0] - 16).abs() <= 4).all(-1)
    assert centred.float().mean() > 0.8


# Two landmarks; on validation landmark 0's error is 2x its spread, landmark 1's 10x (a
# landmark the model tends to miss). Three pool images 300 x 400 (diagonal 500 px), whose
# spreads give expected errors (px) [[2, 10], [10, 5], [4, 30]].
SPREAD = np.array([[1.0, 1.0], [5.0, 0.5], [2.0, 3.0]])
SIZES = np.array([[300, 400]] * 3)
VAL_SPREAD = np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0]])
VAL_ERRORS = np.array([[2.0, 10.0], [4.0, 10.0], [2.0, 20.0]])


def test_the_consistency_test_keeps_the_smallest_expected_errors():
    spread, sizes, val_spread, val_errors = SPREAD, SIZES, VAL_SPREAD, VAL_ERRORS
    keep, threshold = choose_pseudo_labels(spread, sizes, val_spread, val_errors, 0.5)
    # Expected errors (px): [[2, 10], [10, 5], [4, 30]]; the median of the six is 7.5 px.
    assert threshold == pytest.approx(7.5 / 500)
    np.testing.assert_array_equal(keep, [[True, False], [False, True], [True, False]])
    # Image 0 flagged: the share is taken of the other two's four: [10, 5, 4, 30] -> median 7.5 again.
    keep, threshold = choose_pseudo_labels(spread, sizes, val_spread, val_errors, 0.5, np.array([False, True, True]))
    assert threshold == pytest.approx(7.5 / 500)
    np.testing.assert_array_equal(keep, [[False, False], [False, True], [True, False]])
    # Everything flagged: nothing kept.
    keep, threshold = choose_pseudo_labels(spread, sizes, val_spread, val_errors, 0.5, np.zeros(3, bool))
    assert threshold is None and not keep.any()


def test_a_share_kept_of_each_landmark_gives_the_hardest_landmark_pseudo_labels_too():
    # Expected errors (px): [[2, 10], [10, 5], [4, 30]].
    spread, sizes, val_spread, val_errors = SPREAD, SIZES, VAL_SPREAD, VAL_ERRORS
    # A shared 20 % (sorted [2, 4, 5, 10, 10, 30]: the 20 % quantile is 4 px) keeps landmark 0's
    # two best and none of landmark 1.
    keep, threshold = choose_pseudo_labels(spread, sizes, val_spread, val_errors, 0.2)
    assert threshold == pytest.approx(4 / 500)
    np.testing.assert_array_equal(keep, [[True, False], [False, False], [True, False]])
    # Each landmark keeping a third (its 34 % quantile: 3.36 px and 8.4 px) adds landmark 1's
    # best (5 px, image 1); the shared threshold is unchanged.
    keep, threshold = choose_pseudo_labels(spread, sizes, val_spread, val_errors, 0.2, keep_each=0.34)
    assert threshold == pytest.approx(4 / 500)
    np.testing.assert_array_equal(keep, [[True, False], [False, True], [True, False]])
    # Image 0 flagged: each landmark's share is of the usable images only ([10, 4] and [5, 30]),
    # and the flagged image keeps nothing.
    keep, _ = choose_pseudo_labels(
        spread, sizes, val_spread, val_errors, 0.2, np.array([False, True, True]), keep_each=0.5
    )
    np.testing.assert_array_equal(keep, [[False, False], [False, True], [True, False]])


@pytest.fixture(scope="module")
def prepared128(synth_raw, tmp_path_factory):
    from hf_landmark.data import prepare

    out = tmp_path_factory.mktemp("prepared128") / "ceph128"
    prepare("ceph", synth_raw, out, image_size=128, split_counts=(14, 5, None))
    return out


@pytest.mark.slow
def test_self_training_on_the_pool_of_synthetic_images(prepared128, tmp_path):
    from hf_landmark import LandmarkDetector
    from hf_landmark.data import load_prepared, load_tensors
    from hf_landmark.self_training import pseudo_labels
    from hf_landmark_cli import main as cli

    out = tmp_path / "ft"
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(prepared128),
                "--num-labels",
                "3",
                "--init",
                "scratch",
                "--preset",
                "tiny",
                "--resolution",
                "32",
                "--max-steps",
                "30",
                "--eval-steps",
                "10",
                "--refine-max-steps",
                "20",
                "--report-to",
                "none",
                "--mixed-precision",
                "no",
                "--self-train",
                "1",
                "--refine-prior",
                "0",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    # The consistency test on the refiner's own maps: a refiner of 20 steps is nearly flat, and
    # under the refinement prior its maps' spread would be the prior's, the same on every image.
    summary = json.loads((out / "training_summary.json").read_text())
    st = summary["self_training"]
    (round1,) = st["rounds"]
    # The pool: the 14 training images but the 3 labeled ones, 19 landmarks each. Of the
    # images not flagged as unlike the labeled ones (with 5 validation images the embedding
    # test flags about one in six of familiar images too), 40 % of the predictions are kept,
    # and below 5 labels also 40 % of each landmark's: of n values the quantile's linear
    # interpolation keeps floor(0.4 * (n - 1)) + 1 (with no flagged image 84 of 209 and 5 of
    # each landmark's 11, so 95 to 84 + 95 in all).
    assert (round1["pool_images"], round1["pool_landmarks"]) == (11, 209)
    assert round1["flagged_images"] <= 5 and st["keep"] == st["keep_each"] == 0.4
    m = 11 - round1["flagged_images"]
    shared, each = int(0.4 * (19 * m - 1)) + 1, int(0.4 * (m - 1)) + 1
    assert max(shared, 19 * each) <= round1["kept_landmarks"] <= shared + 19 * each
    kept_count = round1["kept_landmarks"]
    quality = round1["pseudo_label_error"]
    assert quality["images_with_truth"] == 11 and quality["unit"] == "mm"
    # The kept pseudo-labels are better than the predictions as a whole (the truth only reports).
    assert quality["kept_mre"] < quality["all_mre"]
    # The round's model is kept only if it beats the first pass on validation.
    assert round1["model_kept"] == (round1["val_mre"] < st["without"]["val_mre"])
    assert summary["best"]["val_mre"] == pytest.approx(min(round1["val_mre"], st["without"]["val_mre"]))
    assert st["model_from_round"] == (1 if round1["model_kept"] else 0)
    record = json.loads((out / "model" / "hf_landmark_training.json").read_text())
    assert record["self_training"]["rounds"][0]["kept_landmarks"] == kept_count and "self_training_round" not in record
    assert sorted(p.name for p in out.iterdir()) == ["model", "training_summary.json"]  # no round folder left
    # The card says what self-training did.
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(out / "model"),
                "--dataset",
                str(prepared128),
                "--split",
                "test",
                "--output",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert cli(["card", str(out / "model"), "--metrics", str(tmp_path / "m.json")]) == 0
    card = (out / "model" / "README.md").read_text()
    assert (
        f"Self-training round 1: {kept_count} of 209 landmarks predicted on 11 unlabeled images kept as pseudo-labels"
        in card
    )
    assert f"their error against held-back labels {quality['kept_mre']:.2f} mm" in card

    # A deliberately offset first stage: on blank copies of pool images the model has nothing
    # to find, so its estimates land anywhere; the consistency test must reject them.
    model = LandmarkDetector.from_pretrained(out / "model")
    data = load_prepared(prepared128)
    size, fine = model.config.image_size, model.config.refine_size
    pool = load_tensors(data["train"].select(range(3, 14)), size, "area", fine)
    val = load_tensors(data["validation"], size, "area", fine)
    blank = pool.subset(range(len(pool)))
    blank.images = torch.full_like(pool.images, 0.5)
    if fine:
        blank.fine_images = torch.full_like(pool.fine_images, 0.5)
    mixed = pool.concat(blank)
    labeled = load_tensors(data["train"].select(range(3)), size, "area", fine)
    coords, keep, facts = pseudo_labels(str(out / "model"), mixed, val, labeled, "centroid", (0.4, 0.0), "cpu")
    truth = mixed.original_landmarks.numpy()
    errors = np.linalg.norm(coords - truth, axis=-1)
    # Blank images are flagged as unlike the labeled ones and give no pseudo-label; the kept
    # ones are real images' landmarks, closer to the truth than the blank images' estimates.
    assert facts["flagged_images"] >= 11 and not keep[11:].any() and keep[:11].any()
    assert errors[keep].mean() < errors[11:].mean()


def test_self_training_stops_at_the_first_round_that_is_not_better(prepared128, tmp_path, monkeypatch):
    """With ROUNDS > 1, a round whose model is worse on validation ends self-training: the next
    round would pseudo-label the pool with the same model, and another draw of training noise
    chosen on validation is not a gain. The model of the first pass stays."""
    from hf_landmark import stages
    from hf_landmark.training import finetune as ft
    from hf_landmark_cli import main as cli

    real = stages.train_two_stages
    tags = []

    def every_round_worse(*args, tag="", **kwargs):
        tags.append(tag)
        outcome = real(*args, tag=tag, **kwargs)
        if tag:  # a self-training round: make it lose on validation
            outcome["best"] = dict(outcome["best"], val_mre=outcome["best"]["val_mre"] + 1e6)
        return outcome

    monkeypatch.setattr(ft, "train_two_stages", every_round_worse)
    monkeypatch.setattr(stages, "train_two_stages", every_round_worse)  # the rounds' own calls
    out = tmp_path / "ft"
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(prepared128),
                "--num-labels",
                "3",
                "--init",
                "scratch",
                "--preset",
                "tiny",
                "--resolution",
                "32",
                "--max-steps",
                "20",
                "--eval-steps",
                "10",
                "--no-refine",
                "--report-to",
                "none",
                "--mixed-precision",
                "no",
                "--self-train",
                "3",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    assert tags == ["", "self-train-1"]  # the first pass and one round, not three
    summary = json.loads((out / "training_summary.json").read_text())
    st = summary["self_training"]
    (round1,) = st["rounds"]
    assert round1["model_kept"] is False and st["model_from_round"] == 0
    assert summary["best"]["val_mre"] == pytest.approx(st["without"]["val_mre"])
    record = json.loads((out / "model" / "hf_landmark_training.json").read_text())
    assert record["self_training"]["model_from_round"] == 0
