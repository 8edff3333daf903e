import os

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from transformers import AutoConfig, AutoModel

from hf_landmark import LandmarkConfig, LandmarkDetector, LandmarkImageProcessor, UserInputError, unet_preset
from hf_landmark.data.synthetic import render_synthetic, synthetic_landmarks
from hf_landmark.preprocessing import original_to_model


def tiny(num_landmarks=3, size=32, **kw):
    return LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=num_landmarks, image_size=size, **kw))


def test_presets():
    model = tiny()
    assert sum(p.numel() for p in model.parameters()) <= 1_000_000
    base = UNet2DModel(sample_size=256, out_channels=1, **unet_preset("base"))
    assert tuple(base.config.block_out_channels) == (64, 128, 256, 512)
    assert base.config.layers_per_block == 2
    # Attention only in the deepest (32x32 at 256 px) down/up blocks and the mid block, 4 heads.
    assert [type(b).__name__ for b in base.down_blocks] == [
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "AttnDownBlock2D",
    ]
    assert base.down_blocks[3].attentions[0].heads == 4
    assert unet_preset("large")["block_out_channels"] == [128, 256, 512, 1024]
    assert unet_preset("small")["block_out_channels"] == [32, 64, 128, 256]
    compact = unet_preset("compact")
    assert (compact["block_out_channels"], compact["layers_per_block"]) == ([16, 32, 64, 128], 2)
    sizes = [
        sum(p.numel() for p in UNet2DModel(sample_size=64, **unet_preset(n)).parameters())
        for n in ("tiny", "compact", "small")
    ]
    assert sizes == sorted(sizes) and sizes[1] < 4_000_000
    # Any size divisible by 8 runs.
    for size in (40, 48):
        out = tiny(size=size)(torch.zeros(1, 1, size, size)).heatmaps
        assert out.shape == (1, 3, size, size)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = tiny(landmark_names=["a", "b", "c"]).eval()
    x = torch.randn(2, 1, 32, 32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LandmarkConfig)
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(loaded, LandmarkDetector)
    assert loaded.config.landmark_names == ["a", "b", "c"]
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(model(x).heatmaps, loaded(x).heatmaps)


def test_from_ddpm_copies_every_weight_but_the_head(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    torch.manual_seed(1)
    ddpm = UNet2DModel(sample_size=32, out_channels=1, **unet_preset("tiny"))
    ddpm.save_pretrained(tmp_path / "unet_ema")  # the older layout: a bare U-Net folder
    DDPMPipeline(unet=ddpm, scheduler=DDPMScheduler(num_train_timesteps=500)).save_pretrained(tmp_path / "pipe")
    for source in ("unet_ema", "pipe"):
        det = LandmarkDetector.from_ddpm(tmp_path / source, num_landmarks=5)
        ddpm_state, det_state = ddpm.state_dict(), det.backbone.unet.state_dict()
        assert set(ddpm_state) == set(det_state)
        for key, value in ddpm_state.items():
            if key.startswith("conv_out."):
                assert det_state[key].shape[0] == 5
            else:
                assert torch.equal(value, det_state[key]), (source, key)
        assert det.config.image_size == 32 and det.config.num_landmarks == 5 and det.config.backbone == "unet2d"


def test_a_model_saved_before_the_backbone_seam_still_loads(tmp_path):
    """The previous release saved the U-Net at `unet.*` with its arguments under `unet` in
    config.json, and no preprocessor_config.json: it loads, predicts the same, and gets the
    bilinear processor it was trained with."""
    import json

    from safetensors.torch import load_file, save_file

    from hf_landmark.image_processing_landmark import processor_for_model

    torch.manual_seed(2)
    model = tiny(landmark_names=["a", "b", "c"]).eval()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file(
        {k.replace("backbone.unet.", "unet.", 1): v for k, v in state.items()},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    config = json.loads((tmp_path / "config.json").read_text())
    config["unet"] = config.pop("backbone_config")
    config.pop("backbone")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "preprocessor_config.json").unlink()
    old = LandmarkDetector.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(old(x).heatmaps, model(x).heatmaps, atol=1e-5, rtol=0)
    assert processor_for_model(old).resample == "bilinear" and processor_for_model(model).resample == "area"


def _fixed_batch(size=64, n=2):
    rng = np.random.default_rng(0)
    images, landmarks = [], []
    for _ in range(n):
        lm = synthetic_landmarks(rng)
        images.append(render_synthetic(lm, rng) / 255.0)
        landmarks.append(lm)
    lm = torch.tensor(np.stack(landmarks), dtype=torch.float32)[:, :6]
    return LandmarkImageProcessor(size=size)(images)["pixel_values"], original_to_model(lm, (240, 300), size)


def test_each_loss_learns_a_fixed_batch_to_within_2_px():
    x, y = _fixed_batch()
    # Per loss: target sigma (px), learning rate, steps. The paper's loss gives no gradient
    # outside the disks, so it is run at its own sigma (5) and a gentler rate.
    for loss, sigma, lr, steps in (("paper", 5.0, 1e-3, 200), ("bce", 4.0, 3e-3, 300), ("contour", 1.0, 3e-3, 150)):
        torch.manual_seed(0)
        model = tiny(num_landmarks=6, size=64, loss=loss, sigma=sigma)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            out = model(x, labels=y)
            out.loss.backward()
            opt.step()
        coords, scores = LandmarkImageProcessor.from_model_config(model.config).decode(model.eval()(x))
        err = (coords - y).norm(dim=-1)
        assert err.max() < 2.0, (loss, err.max().item())
        assert ((scores >= 0) & (scores <= 1)).all()


def test_remote_code_route_without_the_package(tmp_path):
    import subprocess
    import sys

    tiny(landmark_names=["a", "b", "c"]).save_pretrained(tmp_path / "m")
    assert {"modeling_landmark.py", "configuration_landmark.py", "heatmaps.py"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    code = (
        "import sys; sys.modules['hf_landmark'] = None\n"  # the package is not importable
        "import torch\nfrom transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path / 'm')!r}, trust_remote_code=True, dtype=torch.float32)\n"
        "from transformers import AutoImageProcessor\n"
        f"p = AutoImageProcessor.from_pretrained({str(tmp_path / 'm')!r}, trust_remote_code=True)\n"
        "inputs = p(torch.zeros(40, 30))\n"
        "out = p.post_process_landmark_detection(m(pixel_values=inputs['pixel_values']), inputs['original_sizes'])\n"
        "print(type(m).__module__.startswith('transformers_modules'), type(p).__module__.startswith('transformers_modules'),"
        " len(out[0]['landmarks']), p.landmark_names)\n"
        "from transformers import pipeline\n"
        f"pipe = pipeline('landmark-detection', model={str(tmp_path / 'm')!r}, trust_remote_code=True)\n"
        "res = pipe([torch.zeros(40, 30).numpy()] * 3, batch_size=2)\n"
        "print(type(pipe).__module__.startswith('transformers_modules'), len(res), max(abs(a['x'] - b[0]) for a, b in zip(res[0], out[0]['landmarks'].tolist())) < 1e-3)\n"
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-2:] == ["True True 3 ['a', 'b', 'c']", "True 3 True"]


def test_pickled_weights_are_refused(tmp_path):
    import pytest

    model = tiny()
    model.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="pytorch_model.bin.*never loads"):
        LandmarkDetector.from_pretrained(tmp_path)


def test_the_baselines_backbone_without_its_extra_says_how_to_install_it(monkeypatch):
    """``smp_unet`` configs load anywhere; building the network without
    segmentation_models_pytorch is an ImportError naming the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    config = LandmarkConfig(backbone="smp_unet", num_landmarks=3, image_size=64)
    assert config.backbone_config["encoder_name"] == "densenet161" and config.refine_backbone_config[
        "block_out_channels"
    ] == [64, 128, 256, 512]
    with pytest.raises(ImportError, match=r"hf-landmark\[baselines\]") as info:
        LandmarkDetector(config)
    assert isinstance(info.value, UserInputError)  # the command line prints it as one line


def _two_stage(seed: int, prior=None):
    torch.manual_seed(seed)
    model = tiny(refine_size=64, refine_crop=16, refine_backbone_config="tiny").eval()
    if prior:
        model.config.set_refine_prior(prior)
    return model


def _moments(maps, origins):
    """Each map's mean (fine px, in the image) and variance per axis, ``[B, N, 2]`` each."""
    from hf_landmark.heatmaps import spatial_spread

    p = maps / maps.sum((-2, -1), keepdim=True)
    side = maps.shape[-1]
    grid = torch.arange(side, dtype=p.dtype)
    mean = torch.stack([(p.sum(-2) * grid).sum(-1), (p.sum(-1) * grid).sum(-1)], -1) + origins
    return mean, spatial_spread(maps) ** 2


def test_an_ensemble_averages_its_members_landmarks_and_mixes_their_maps(tmp_path):
    import copy

    a, b = _two_stage(0, prior=[2.0, 3.0, 4.0]), _two_stage(1)
    ensemble = LandmarkDetector.ensemble([a, b])
    assert ensemble.config.ensemble_size == 2 and ensemble.has_refinement_stage
    # Each member keeps what it measured for itself.
    assert ensemble.members[0].config.refine_prior == [2.0, 3.0, 4.0]
    assert ensemble.members[1].config.refine_prior is None
    g = torch.Generator().manual_seed(0)
    x, fine = torch.randn(2, 1, 32, 32, generator=g), torch.randn(2, 1, 64, 64, generator=g)
    with torch.no_grad():
        out_a, out_b, out = a(x, fine), b(x, fine), ensemble(x, fine)
    torch.testing.assert_close(out.coordinates, (out_a.coordinates + out_b.coordinates) / 2)
    torch.testing.assert_close(out.coarse_coordinates, (out_a.coarse_coordinates + out_b.coarse_coordinates) / 2)
    # The first stage's maps: the members' mean probability.
    torch.testing.assert_close(
        out.log_probabilities.exp(), (out_a.log_probabilities.exp() + out_b.log_probabilities.exp()) / 2
    )
    assert out.embeddings.shape == (2, 2 * out_a.embeddings.shape[1])
    # Saved and loaded as one folder: the same landmarks.
    ensemble.save_pretrained(tmp_path)
    loaded = LandmarkDetector.from_pretrained(tmp_path).eval()
    assert loaded.members[0].config.refine_prior == [2.0, 3.0, 4.0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, fine).coordinates, out.coordinates, atol=0, rtol=0)

    # The refined maps' mixture, on a crop twice the side: its variance is the members' mean
    # variance plus the variance of their means. Two members with one first stage (their crops
    # coincide, so nothing of them falls outside) and their own refiners:
    c = copy.deepcopy(a)
    c.refiner = b.refiner
    with torch.no_grad():  # sharper maps, peaked elsewhere than a's
        c.refiner.unet.conv_out.weight.mul_(30.0)
    with torch.no_grad():
        out_c, out = c(x, fine), LandmarkDetector.ensemble([a, c])(x, fine)
    assert out.refined_log_probabilities.shape[-1] == 32
    ma, va = _moments(out_a.refined_log_probabilities.exp(), out_a.crop_origins)
    mc, vc = _moments(out_c.refined_log_probabilities.exp(), out_c.crop_origins)
    m, v = _moments(out.refined_log_probabilities.exp(), out.crop_origins)
    assert (ma - mc).abs().max() > 2.0  # the members disagree
    torch.testing.assert_close(m, (ma + mc) / 2, atol=1e-3, rtol=0)
    torch.testing.assert_close(v, (va + vc) / 2 + ((ma - mc) / 2) ** 2, atol=1e-3, rtol=1e-4)


def test_an_ensemble_of_one_detector_twice_predicts_what_it_predicts():
    one = _two_stage(0)
    processor = LandmarkImageProcessor.from_model_config(one.config)
    ensemble = LandmarkDetector.ensemble([one, one])
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    fine = torch.nn.functional.interpolate(x, size=64, mode="bilinear")
    with torch.no_grad():
        single, double = one(x, fine), ensemble(x, fine)
    sizes = [[320, 320]]
    for get in (
        lambda o: processor.post_process_coordinates(o, sizes)[0],
        lambda o: processor.post_process_coordinates(o, sizes)[1],
        lambda o: processor.spread(o, sizes),
        lambda o: processor.spread(o, sizes, stage="first"),
    ):
        np.testing.assert_allclose(get(double), get(single), rtol=1e-4, atol=1e-6)


def test_ensemble_members_must_share_the_architecture():
    with pytest.raises(ValueError, match="refine_size"):
        LandmarkDetector.ensemble([_two_stage(0), tiny()])
    with pytest.raises(ValueError, match="at least 2"):
        LandmarkDetector.ensemble([tiny()])


def test_shift_into_places_each_map_at_its_offset():
    from hf_landmark.modeling_landmark import shift_into

    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0, 1, 2] = 1.0  # row 1, column 2
    maps[0, 1, 3, 3] = 1.0
    maps[0, 2, 3, 3] = 1.0
    # (x, y) of each map's top-left pixel in the 8-px crop.
    offsets = torch.tensor([[[3, 1], [-2, -1], [6, 6]]])
    out = shift_into(maps, offsets, 8)
    assert out[0, 0].nonzero().tolist() == [[2, 5]]
    assert out[0, 1].nonzero().tolist() == [[2, 1]]
    assert out[0, 2].sum() == 0  # row 9, column 9: outside the crop


def test_an_ensemble_loads_through_remote_code_without_the_package(tmp_path):
    import subprocess
    import sys

    ensemble = LandmarkDetector.ensemble([_two_stage(0, prior=[2.0, 3.0, 4.0]), _two_stage(1)])
    ensemble.save_pretrained(tmp_path / "m")
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    fine = torch.nn.functional.interpolate(x, size=64, mode="bilinear")
    torch.save({"x": x, "fine": fine}, tmp_path / "inputs.pt")
    with torch.no_grad():
        want = ensemble(x, fine).coordinates
    code = (
        "import sys; sys.modules['hf_landmark'] = None\n"
        "import torch\nfrom transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path / 'm')!r}, trust_remote_code=True, dtype=torch.float32).eval()\n"
        f"i = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        "with torch.no_grad():\n    c = m(i['x'], i['fine']).coordinates\n"
        f"torch.save(c, {str(tmp_path / 'got.pt')!r})\n"
        "print(type(m).__module__.startswith('transformers_modules'), len(m.members))\n"
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True 2"
    torch.testing.assert_close(torch.load(tmp_path / "got.pt"), want, atol=0, rtol=0)


def test_members_of_another_architecture_are_left_out_of_the_ensemble(tmp_path):
    from hf_landmark.ensembles import compatible_members, differing_fields

    dirs = []
    for name, model in (("a", _two_stage(0)), ("b", tiny()), ("c", _two_stage(1))):
        model.save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))
    # b has no refinement stage: the two that have one form the ensemble, whatever b measured.
    assert compatible_members(dirs, [2.0, 1.0, 2.5]) == ([dirs[0], dirs[2]], [dirs[1]])
    assert "refine_size" in differing_fields(dirs[1], dirs[0])
    # One each: the group of the better member on validation.
    assert compatible_members(dirs[:2], [2.0, 1.0]) == ([dirs[1]], [dirs[0]])
