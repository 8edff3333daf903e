"""The refinement stage: crops, the two-stage model, its training batch and its learning."""

import numpy as np
import pytest
import torch
from transformers import pipeline

from hf_landmark import LandmarkConfig, LandmarkDetector, LandmarkImageProcessor
from hf_landmark.losses import get_loss
from hf_landmark.modeling_landmark import crop_origins, own_channel, refine_prior_sigmas
from hf_landmark.preprocessing import crop_patches, original_to_model


def two_stage(seed=0, **kw):
    torch.manual_seed(seed)
    config = LandmarkConfig(
        backbone_config="tiny",
        num_landmarks=3,
        image_size=32,
        landmark_names=["a", "b", "c"],
        spacing=[0.1, 0.1],
        refine_size=128,
        refine_crop=32,
        refine_sigma=1.5,
        **kw,
    )
    return LandmarkDetector(config).eval()


def test_crops_are_exact_pixels_and_padded_beyond_the_border():
    image = torch.arange(30, dtype=torch.float32).view(1, 1, 6, 5)  # pixel (x, y) holds 5 y + x
    crops = crop_patches(image, torch.tensor([[[-2, -1], [3, 4]]]), 4, fill=-9.0)
    assert crops.shape == (1, 2, 1, 4, 4)
    top_left = crops[0, 0, 0]
    assert top_left[0].tolist() == [-9, -9, -9, -9]  # row y = -1
    assert top_left[1].tolist() == [-9, -9, 0, 1]  # row y = 0, x = -2..1
    assert top_left[3].tolist() == [-9, -9, 10, 11]
    bottom_right = crops[0, 1, 0]
    assert bottom_right[0].tolist() == [23, 24, -9, -9]  # row y = 4, x = 3..6
    assert bottom_right[1].tolist() == [28, 29, -9, -9]
    assert bottom_right[2:].eq(-9).all()
    # A crop centred on an estimate: its centre pixel (crop // 2) is the fine pixel nearest it.
    coarse = torch.tensor([[[10.0, 3.2]]])  # model pixels of a 32-px model; fine 128 px: x 41.5 -> 42, y 14.3 -> 14
    assert crop_origins(coarse, 32, 128, 16).tolist() == [[[42 - 8, 14 - 8]]]


def test_two_stage_model_saves_loads_exactly_and_runs_both_stages(tmp_path):
    model = two_stage()
    processor = LandmarkImageProcessor.from_model_config(model.config)
    image = (np.random.default_rng(1).random((150, 120)) * 255).astype(np.uint8)
    inputs = processor(image)
    assert inputs["pixel_values"].shape == (1, 1, 32, 32) and inputs["fine_pixel_values"].shape == (1, 1, 128, 128)
    out = model(pixel_values=inputs["pixel_values"], fine_pixel_values=inputs["fine_pixel_values"])
    assert out.coordinates.shape == (1, 3, 2) and out.refined_log_probabilities.shape == (1, 3, 32, 32)
    # The refined landmark lies in its crop, mapped back to model pixels.
    fine_xy = original_to_model(out.coordinates, (32, 32), 128)
    assert ((fine_xy >= out.crop_origins) & (fine_xy <= out.crop_origins + 31)).all()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = LandmarkDetector.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.refiner is not None and loaded.config.refine_size == 128
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    again = loaded(pixel_values=inputs["pixel_values"], fine_pixel_values=inputs["fine_pixel_values"])
    assert torch.equal(out.coordinates, again.coordinates)
    # The pipeline runs both stages without extra arguments; refine=False gives the first stage.
    pipe = pipeline("landmark-detection", model=str(tmp_path))
    both, first = pipe(image), pipe(image, refine=False)
    xy, scores = processor.post_process_coordinates(out, inputs["original_sizes"])
    first_xy, _ = processor.post_process_coordinates(out, inputs["original_sizes"], stage="first")
    assert np.allclose([[p["x"], p["y"]] for p in both], xy[0], atol=1e-4)
    assert np.allclose([[p["x"], p["y"]] for p in first], first_xy[0], atol=1e-4)
    assert np.allclose([p["score"] for p in both], scores[0], atol=1e-6)
    assert not np.allclose(xy, first_xy, atol=1e-3)


def test_a_crop_ddpm_starts_the_refiner_at_its_own_crop_size_or_at_the_one_asked_for(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from hf_landmark import unet_preset

    torch.manual_seed(3)
    ddpm = UNet2DModel(sample_size=16, out_channels=1, **unet_preset("tiny"))
    DDPMPipeline(unet=ddpm, scheduler=DDPMScheduler(num_train_timesteps=500)).save_pretrained(tmp_path / "crops")
    own, asked = LandmarkDetector(two_stage().config), LandmarkDetector(two_stage().config)
    own.add_refiner(128, ddpm=tmp_path / "crops")
    asked.add_refiner(128, 24, ddpm=tmp_path / "crops")
    assert own.config.refine_crop == 16 and asked.config.refine_crop == 24
    # Both copy the DDPM's weights (the U-Net is convolutional: any crop size takes them) ...
    head = asked.refiner.head_prefix.removeprefix("unet.")
    for key, value in ddpm.state_dict().items():
        if not key.startswith(head):
            assert torch.equal(asked.refiner.unet.state_dict()[key], value), key
    # ... and refine within crops of their own size.
    image = (np.random.default_rng(0).random((150, 120)) * 255).astype(np.uint8)
    for model, crop in ((own, 16), (asked, 24)):
        inputs = LandmarkImageProcessor.from_model_config(model.config)(image)
        out = model.eval()(pixel_values=inputs["pixel_values"], fine_pixel_values=inputs["fine_pixel_values"])
        assert out.refined_log_probabilities.shape == (1, 3, crop, crop)


def test_the_refinement_prior_sigmas_by_hand():
    nan = float("nan")
    # Landmark 0 is off by (3, 4) and (0, 0) fine px: per-axis mean square (25 / 2 + 0) / 2 = 6.25;
    # landmark 1 by (1, 1) and missing: 1. All three errors: (12.5 + 0 + 1) / 3 = 4.5.
    errors = np.array([[[3.0, 4.0], [1.0, 1.0]], [[0.0, 0.0], [nan, nan]]])
    # Shrunk by 5 images' worth toward 4.5: (2 * 6.25 + 5 * 4.5) / 7 = 5 and (1 + 5 * 4.5) / 6 = 23.5 / 6.
    assert refine_prior_sigmas(errors, 2.0) == pytest.approx([2 * 5**0.5, 2 * (23.5 / 6) ** 0.5])
    assert refine_prior_sigmas(errors, 0.1) == [1.0, 1.0]  # never narrower than a fine pixel


def test_the_refinement_prior_holds_the_refiner_near_the_first_stage_estimate(tmp_path):
    model = two_stage()
    image = (np.random.default_rng(1).random((150, 120)) * 255).astype(np.uint8)
    inputs = LandmarkImageProcessor.from_model_config(model.config)(image)
    run = lambda m: m(pixel_values=inputs["pixel_values"], fine_pixel_values=inputs["fine_pixel_values"])  # noqa: E731
    free = run(model)
    coarse_fine = original_to_model(free.coarse_coordinates, (32, 32), 128)
    jump = (original_to_model(free.coordinates, (32, 32), 128) - coarse_fine).norm(dim=-1)
    assert jump.max() > 2  # a random refiner moves its landmarks away from the first stage's estimates
    model.config.set_refine_prior([0.05] * 3)  # a very narrow prior: the estimate's nearest fine pixel
    held = run(model)
    assert torch.equal(held.coarse_coordinates, free.coarse_coordinates)
    assert (original_to_model(held.coordinates, (32, 32), 128) - coarse_fine).abs().max() <= 0.5 + 1e-4
    assert torch.allclose(held.refined_log_probabilities.exp().sum((-2, -1)), torch.ones(1, 3))
    model.config.set_refine_prior([1e5] * 3)  # a flat one: the refiner's map alone
    assert torch.allclose(run(model).coordinates, free.coordinates, atol=1e-4)
    model.config.set_refine_prior([0.05, 1e5, 1e5])  # per landmark
    mixed = run(model).coordinates
    assert torch.allclose(mixed[:, 0], held.coordinates[:, 0]) and torch.allclose(
        mixed[:, 1:], free.coordinates[:, 1:], atol=1e-4
    )
    model.save_pretrained(tmp_path)
    assert LandmarkDetector.from_pretrained(tmp_path).config.refine_prior == [0.05, 1e5, 1e5]
    model.add_refiner(128, 32)  # a new refiner has no prior of the old one's first stage
    assert model.config.refine_prior is None
    with pytest.raises(ValueError, match="refine_prior"):
        model.config.set_refine_prior([1.0, 0.0, 1.0])


def _dots(count, size, generator):
    """Fine images with 3 landmarks drawn as distinct bright marks on a dim textured field."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    truth = torch.rand(count, 3, 2, generator=generator) * (size - 40) + 20
    images = 0.2 + 0.1 * torch.rand(count, 1, size, size, generator=generator)
    for j, radius in enumerate((1.5, 2.5, 3.5)):
        d2 = (xx - truth[:, j, 0, None, None]) ** 2 + (yy - truth[:, j, 1, None, None]) ** 2
        images[:, 0] += 0.7 * torch.exp(-d2 / (2 * radius**2))
    return images.clamp(0, 1), truth


def test_the_refiner_learns_to_undo_a_first_stage_offset():
    """A first stage off by 6 fine pixels in a random direction; the refiner, trained with the
    training code's batches on 8 images, must bring new images' landmarks within 1.5 px."""
    from hf_landmark.refinement import refiner_batch

    g = torch.Generator().manual_seed(0)
    model = two_stage(refine_loss="contour")
    cfg = model.config
    images, truth = _dots(8, 128, g)
    angle = torch.rand(20, 3, generator=g) * 2 * np.pi
    errors = torch.stack([6 * torch.cos(angle), 6 * torch.sin(angle)], -1)  # the "validation errors"
    optimizer = torch.optim.AdamW(model.refiner.parameters(), lr=2e-3)
    model.refiner.train()
    loss_fn = get_loss(cfg.refine_loss)
    for _ in range(150):
        crops, landmark, local = refiner_batch(images, truth, errors, cfg, 24, g)
        loss = loss_fn(own_channel(model.refiner(crops)[0], landmark), local, cfg.refine_sigma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_images, test_truth = _dots(6, 128, g)
    angle = torch.rand(6, 3, generator=g) * 2 * np.pi
    start = test_truth + torch.stack([6 * torch.cos(angle), 6 * torch.sin(angle)], -1)
    coarse = original_to_model(start, (128, 128), 32)  # the offset first stage, in model pixels
    with torch.no_grad():
        refined = model.refine(test_images * 2 - 1, coarse)["coordinates"]
    after = (original_to_model(refined, (32, 32), 128) - test_truth).norm(dim=-1)
    assert after.mean() < 1.5, after
    assert after.max() < 4.0, after


@pytest.mark.parametrize(
    "bad", [{"refine_crop": 20}, {"refine_size": 100}, {"refine_crop": 256}, {"refine_loss": "paper"}]
)
def test_bad_refinement_settings_are_refused(bad):
    kwargs = {"refine_size": 128, "refine_crop": 32, **bad}
    with pytest.raises(ValueError):
        LandmarkConfig(backbone_config="tiny", num_landmarks=3, image_size=32, **kwargs)


def test_the_card_describes_the_refinement_stage():
    from hf_landmark.cards import detector_card

    model = two_stage()
    metrics = {
        "unit": "mm",
        "mode": "physical",
        "mre": 1.5,
        "mre_std": 1.0,
        "sdr": {"2": 70.0},
        "split": "test",
        "dataset": "d",
        "num_images": 5,
        "decoder": "centroid",
        "per_landmark": [{"name": n, "mre": 1.5, "mre_std": 1.0, "sdr": {"2": 70.0}} for n in "abc"],
        "first_stage": {
            "mre": 2.9,
            "mre_std": 1.7,
            "sdr": {"2": 34.0},
            "per_landmark": [{"name": n, "mre": 2.9, "mre_std": 1.7, "sdr": {"2": 34.0}} for n in "abc"],
        },
    }
    training = {
        "num_labels": 3,
        "labeled_image_ids": ["1", "2", "3"],
        "subset": "first",
        "validation_images": 5,
        "best_step": 4,
        "val_mre": 1.4,
        "unit": "mm",
        "recipe": "default",
        "loss": "contour",
        "learning_rate": 1e-4,
        "seed": 0,
        "init": {"kind": "scratch", "preset": "tiny"},
        "refine": {"init": "runs/crops/checkpoint-3000", "best_step": 75},
    }
    card = str(detector_card(model.config, metrics, "org/m", training=training))
    assert "(first stage best at step 4, refinement stage at step 75," in card
    assert "32 × 32 crop of the image resized to 128 × 128" in card and "DDPM-pre-trained on crops" in card
    assert "first stage alone: MRE 2.90 mm" in card
    assert "Gaussian around" not in card  # no refinement prior
    model.config.set_refine_prior([3.0, 12.3, 5.0])
    card = str(detector_card(model.config, metrics, "org/m", training=training))
    assert "a Gaussian around the first stage's estimate, σ 3.0–12.3 fine px by landmark" in card
    assert "| a | 2.90 ± 1.70 | 34.0 | 1.50 ± 1.00 | 70.0 |" in card  # first stage beside the final, per landmark
