"""The paper's baselines: the DenseNet161 U-Net (``smp_unet``), its ImageNet and self-supervised
(MoCo v3 / SimCLR v2 / DINO) initialisations.

These need ``hf-landmark[baselines]`` (torchvision): ``./run.sh test-baselines`` runs them in
their own environment (CI does); ``./run.sh test`` deselects them (``-m "not baselines"``).
The encoder is the real DenseNet161 (26 M parameters) at 32-64 px: the architecture and its
weight layout are what these tests are about.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_landmark import LandmarkConfig, LandmarkDetector, UserInputError
from hf_landmark_cli import main as cli

pytestmark = pytest.mark.baselines
# Where the extra is missing (an -m that selects these in the core environment), say so.
pytest.importorskip(
    "segmentation_models_pytorch", reason="needs hf-landmark[baselines]: ./run.sh test-baselines runs these"
)


def _pretrain_ssl(dataset, out, method, steps=4, save="2,4", extra=()):
    from hf_landmark.training.pretrain_ssl import main

    return main(
        [
            "--dataset",
            str(dataset),
            "--output-dir",
            str(out),
            "--method",
            method,
            "--resolution",
            "64",
            "--max-steps",
            str(steps),
            "--save-steps",
            save,
            "--train-batch-size",
            "4",
            "--gradient-accumulation-steps",
            "1",
            "--report-to",
            "none",
            "--mixed-precision",
            "no",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def ssl_checkpoint(synth_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("ssl") / "mocov3"
    return _pretrain_ssl(synth_prepared, out, "mocov3")


@pytest.mark.parametrize("method", ["mocov3", "simclrv2", "dino"])
def test_each_ssl_objective_learns_on_synthetic_images(method, synth_prepared):
    """The loss of a fixed batch and fixed views (the same random seed before each step) falls
    by a clear margin within 12 optimiser steps: the objective, heads and gradients are wired.
    DINO's starts at ln 4096 = 8.32 (uniform prototypes) and falls slower, its targets (the
    teacher's, centred) moving too: 0.3 nats is several times its step-to-step change."""
    from hf_landmark.data import load_prepared, load_tensors
    from hf_landmark.training.pretrain_ssl import SSLModel

    images = load_tensors(load_prepared(synth_prepared)["train"], 32).images[:8]
    torch.manual_seed(0)
    model = SSLModel(method, "densenet161", 32, (-1.0, 1.0), {"mocov3": 0.2, "simclrv2": 0.5}.get(method))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(12):
        model.update_momentum_networks(step / 12)  # as training does, once per step
        torch.manual_seed(1)  # the same views every step
        loss = model(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    if method == "dino":
        assert abs(losses[0] - np.log(4096)) < 0.1 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    else:
        assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_ssl_checkpoint_loads_into_the_densenet_unet_tensor_by_tensor(ssl_checkpoint):
    from safetensors.torch import load_file

    saved = load_file(os.path.join(ssl_checkpoint, "model.safetensors"))
    info = json.load(open(os.path.join(ssl_checkpoint, "hf_landmark_pretraining.json"), encoding="utf-8"))
    assert info["method"] == "mocov3" and info["encoder_name"] == "densenet161" and info["step"] == 4
    model = LandmarkDetector.from_encoder(ssl_checkpoint, num_landmarks=3)
    assert model.config.backbone == "smp_unet" and model.config.image_size == 64  # the record's resolution
    encoder = model.backbone.net.encoder.state_dict()
    assert encoder.keys() == saved.keys() and len(saved) > 900  # every DenseNet161 tensor, BN statistics included
    for key, value in saved.items():
        assert torch.equal(encoder[key], value), key
    assert encoder["features.conv0.weight"].shape == (96, 1, 7, 7)
    # The checkpoint's card and record name the method and are readable.
    assert "MoCo v3" in open(os.path.join(ssl_checkpoint, "README.md"), encoding="utf-8").read()


def test_ssl_resume_continues_exactly_like_an_uninterrupted_run(synth_prepared, ssl_checkpoint, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "interrupted"
    _pretrain_ssl(synth_prepared, out, "mocov3", extra=["--stop-after-steps", "2"])
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    _pretrain_ssl(synth_prepared, out, "mocov3", extra=["--resume-from-checkpoint", "latest"])
    a, b = (
        load_file(os.path.join(ssl_checkpoint, "model.safetensors")),
        load_file(out / "checkpoint-4" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _torchvision_imagenet_folder(path):
    """A folder laid out like the ImageNet repos (model.safetensors, torchvision DenseNet161 keys,
    3-channel first convolution, classifier) with random weights and statistics."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(7)
    net = torchvision.models.densenet161(weights=None)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics, so that copying them shows
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(path, "model.safetensors"))
    json.dump({"architecture": "densenet161"}, open(os.path.join(path, "config.json"), "w"))
    return net.eval()


def test_imagenet_weights_load_from_a_local_safetensors_folder_and_pickles_are_refused(tmp_path, monkeypatch):
    net = _torchvision_imagenet_folder(tmp_path / "imagenet")
    model = LandmarkDetector.from_encoder(str(tmp_path / "imagenet"), num_landmarks=2, image_size=64).eval()
    # ImageNet's normalisation for a gray image: (0 - 0.449) / 0.226 and (1 - 0.449) / 0.226.
    assert model.config.pixel_range == [-1.9867, 2.4381]
    encoder = model.backbone.net.encoder
    source = net.state_dict()
    copied = encoder.state_dict()
    assert len(copied) == len(source) - 2  # every tensor but the classifier's weight and bias
    for key, value in copied.items():
        expected = source[key].sum(dim=1, keepdim=True) if key == "features.conv0.weight" else source[key]
        assert torch.equal(value, expected), key
    # Summing the RGB filters is exactly the 3-channel network on the gray image repeated.
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(encoder(x)[-1], net.features(x.repeat(1, 3, 1, 1)), atol=1e-4)
    # The same folder through fine-tuning's --init grammar.
    from hf_landmark.training.finetune import parse_init

    assert parse_init(f"imagenet={tmp_path / 'imagenet'}") == ("imagenet", str(tmp_path / "imagenet"))
    assert parse_init("imagenet") == ("imagenet", None)

    # A folder that holds only a pickle is refused by name, and nothing is unpickled.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"features.conv0.weight": torch.zeros(96, 3, 7, 7)}, pickled / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(UserInputError, match=r"pickled.*pytorch_model\.bin.*never loads"):
        LandmarkDetector.from_encoder(str(pickled), num_landmarks=2, image_size=64)
    with pytest.raises(UserInputError, match="safetensors"):
        LandmarkDetector.from_encoder(str(pickled / "pytorch_model.bin"), num_landmarks=2, image_size=64)
    # Weights of another architecture are refused, naming what is missing.
    from safetensors.torch import save_file

    (tmp_path / "other").mkdir()
    save_file({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other" / "model.safetensors")
    with pytest.raises(UserInputError, match="missing"):
        LandmarkDetector.from_encoder(str(tmp_path / "other"), num_landmarks=2, image_size=64)
    # Offline, the default Hub repo is a clear error that says what to do instead.
    with pytest.raises(UserInputError, match="smp-hub/densenet161.imagenet.*folder"):
        LandmarkDetector.from_encoder("imagenet", num_landmarks=2, image_size=64)


def test_densenet_detector_saves_loads_and_runs_through_the_pipeline(tmp_path):
    from transformers import pipeline

    from hf_landmark.image_processing_landmark import processor_for_model

    torch.manual_seed(0)
    model = LandmarkDetector(
        LandmarkConfig(backbone="smp_unet", num_landmarks=3, image_size=64, landmark_names=["a", "b", "c"])
    )
    model.eval().save_pretrained(tmp_path / "m")
    loaded = LandmarkDetector.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.backbone == "smp_unet" and loaded.config.backbone_config["encoder_name"] == "densenet161"
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x).heatmaps, loaded(x).heatmaps)
        assert loaded(x).embeddings.shape == (1, 2208)
    Image.fromarray((np.random.default_rng(2).random((200, 160)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    found = pipeline("landmark-detection", model=str(tmp_path / "m"))(str(tmp_path / "x.png"))
    processor = processor_for_model(loaded)
    inputs = processor(Image.open(tmp_path / "x.png"), return_tensors="pt")
    with torch.no_grad():
        coords = processor.post_process_coordinates(loaded(inputs["pixel_values"]), inputs["original_sizes"])[0]
    assert [p["label"] for p in found] == ["a", "b", "c"]
    assert np.allclose([[p["x"], p["y"]] for p in found], np.asarray(coords), atol=1e-4)
    assert (
        cli(["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "m"), "--output", str(tmp_path / "p.json")])
        == 0
    )
    assert json.loads((tmp_path / "p.json").read_text())["predictions"][str(tmp_path / "x.png")] == found
    # The refinement stage works behind it as behind the DDPM U-Net (its refiner is a unet2d).
    two = LandmarkDetector(
        LandmarkConfig(
            backbone="smp_unet",
            num_landmarks=3,
            image_size=64,
            refine_size=256,
            refine_crop=32,
            refine_backbone_config="tiny",
        )
    ).eval()
    assert two.config.refine_backbone_config["block_out_channels"] == [16, 32, 32, 64]
    two.save_pretrained(tmp_path / "two")
    two_stage = pipeline("landmark-detection", model=str(tmp_path / "two"))
    refined, first = two_stage(str(tmp_path / "x.png")), two_stage(str(tmp_path / "x.png"), refine=False)
    assert len(refined) == 3 and [p["x"] for p in refined] != [p["x"] for p in first]
    # A size the five poolings cannot divide, or that leaves one pixel at the bottleneck (batch
    # norm cannot train on one value per channel, and one label means batches of one), is refused.
    with pytest.raises(ValueError, match="multiple of 32"):
        LandmarkConfig(backbone="smp_unet", num_landmarks=3, image_size=96 + 16)
    with pytest.raises(ValueError, match="at least 64"):
        LandmarkConfig(backbone="smp_unet", num_landmarks=3, image_size=32)


@pytest.mark.slow
def test_benchmark_runs_the_baselines_beside_each_other(synth_prepared, ssl_checkpoint, tmp_path, capsys):
    """An SSL-initialised and a scratch DenseNet U-Net through `hf-landmark benchmark` (one
    label, first stage only), with the records and cards saying what each started from."""
    out = tmp_path / "bench"
    assert (
        cli(
            [
                "benchmark",
                "--dataset",
                str(synth_prepared),
                "--output-dir",
                str(out),
                "--init",
                f"mocov3={ssl_checkpoint}",
                "--init",
                "densenet-scratch=scratch",
                "--backbone",
                "densenet-scratch=smp_unet",
                "--labels",
                "1",
                "--seeds",
                "0",
                "--resolution",
                "64",
                "--eval-split",
                "validation",
                "--",
                "--max-steps",
                "2",
                "--eval-steps",
                "1",
                "--no-refine",
                "--report-to",
                "none",
                "--mixed-precision",
                "no",
            ]
        )
        == 0
    )
    table = (out / "results.md").read_text()
    assert "| mocov3 | 1 | 1 |" in table and "| densenet-scratch | 1 | 1 |" in table
    ssl_cell, scratch_cell = (
        out / "cells" / "mocov3-n1-s0" / "model",
        out / "cells" / "densenet-scratch-n1-s0" / "model",
    )
    ssl_record = json.loads((ssl_cell / "hf_landmark_training.json").read_text())
    assert ssl_record["init"]["kind"] == "ssl" and ssl_record["init"]["pretraining"]["method"] == "mocov3"
    scratch_record = json.loads((scratch_cell / "hf_landmark_training.json").read_text())
    assert scratch_record["init"] == {"kind": "scratch", "backbone": "smp_unet", "preset": "densenet161"}
    for cell in (ssl_cell, scratch_cell):
        assert json.loads((cell / "config.json").read_text())["backbone"] == "smp_unet"
    # The card of the SSL-initialised detector says what it is.
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(ssl_cell),
                "--dataset",
                str(synth_prepared),
                "--split",
                "validation",
                "--output",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert cli(["card", str(ssl_cell), "--metrics", str(tmp_path / "eval.json"), "--repo-id", "me/densenet"]) == 0
    card = (ssl_cell / "README.md").read_text()
    assert "MoCo v3" in card and "densenet161" in card and "hf-landmark[baselines]" in card
    assert "- densenet161\n" in card and "- ddpm\n" not in card  # the card's tags
    # A method named at --init that does not match the checkpoint's record is refused.
    with pytest.raises(UserInputError, match="expects a dino checkpoint; this is a mocov3"):
        from hf_landmark.training.finetune import FinetuneArguments, finetune

        finetune(
            FinetuneArguments(
                dataset=str(synth_prepared),
                output_dir=str(tmp_path / "x"),
                num_labels=1,
                init=f"dino={ssl_checkpoint}",
                report_to="none",
            )
        )
