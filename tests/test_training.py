import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image
from safetensors.torch import load_file

from hf_landmark import LandmarkDetector
from hf_landmark.data import load_prepared, load_tensors
from hf_landmark_cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = str(ROOT / "training" / "pretrain.py")


def _pretrain_args(dataset, out, steps=50, save="20,40"):
    return [
        "--dataset",
        str(dataset),
        "--output-dir",
        str(out),
        "--preset",
        "tiny",
        "--resolution",
        "32",
        "--max-steps",
        str(steps),
        "--save-steps",
        save,
        "--train-batch-size",
        "2",
        "--gradient-accumulation-steps",
        "2",
        "--num-samples",
        "4",
        "--sample-inference-steps",
        "5",
        "--report-to",
        "tensorboard",
        "--mixed-precision",
        "no",
    ]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def ddpm(synth_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm")
    subprocess.run(
        [sys.executable, PRETRAIN, *_pretrain_args(synth_prepared, out)], check=True, env=_env(), capture_output=True
    )
    return out


pytestmark = pytest.mark.slow  # training subprocesses; CI runs them too


def test_pretrain_writes_loadable_checkpoints(ddpm):
    from diffusers import DDPMPipeline

    for step in (20, 40, 50):
        ckpt = ddpm / f"checkpoint-{step}"
        assert (ckpt / "model_index.json").is_file() and (ckpt / "scheduler" / "scheduler_config.json").is_file()
        assert (ckpt / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        assert (ckpt / "state").is_dir() and (ckpt / "samples.png").is_file()
    # A diffusers user samples from a checkpoint as it is.
    pipe = DDPMPipeline.from_pretrained(ddpm / "checkpoint-50")
    assert pipe.scheduler.config.num_train_timesteps == 500
    images = pipe(
        batch_size=1, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 32, 32, 1)
    info = json.loads((ddpm / "checkpoint-50/hf_landmark_pretraining.json").read_text())
    assert (
        info["step"] == 50 and info["num_images"] == 19 and info["pixel_range"] == [-1.0, 1.0]
    )  # train + validation, no test
    assert info["preset"] == "tiny" and info["dataset_name"] == "ceph" and info["recent_loss_steps"] == 50
    card = (ddpm / "checkpoint-50/README.md").read_text()
    assert "# ddpm-landmark-backbone\n" in card and "19 cephalometric (ISBI 2015) images" in card
    assert (
        f"({info['num_parameters'] / 1e6:.2f} M parameters)" in card
        and "| optimiser steps | 50 (batch 4, EMA decay 0.995, fp32) |" in card
    )
    assert f"| training ε-MSE | {info['recent_loss']:.4f} (mean of the last 50 steps) |" in card
    unet = UNet2DModel.from_pretrained(ddpm / "checkpoint-50", subfolder="unet")
    det = LandmarkDetector.from_ddpm(ddpm / "checkpoint-50", num_landmarks=19)
    assert det.config.image_size == 32 and torch.equal(det.backbone.unet.conv_in.weight, unet.conv_in.weight)
    # The pre-training's output folder itself means its newest checkpoint (50, not 20 or 40).
    latest = LandmarkDetector.from_ddpm(ddpm, num_landmarks=19)
    assert latest.config.base_model == str(ddpm / "checkpoint-50") and torch.equal(
        latest.backbone.unet.conv_in.weight, unet.conv_in.weight
    )


def test_pretrain_logs_a_falling_loss_to_tensorboard(ddpm):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(ddpm / "logs" / "pretrain"))  # the run's scalars (hyper-parameters go to a subfolder)
    acc.Reload()
    loss = [e.value for e in acc.Scalars("loss")]
    assert [e.step for e in acc.Scalars("loss")] == [10, 20, 30, 40, 50]  # every --logging-steps and the last step
    # ε-MSE starts near 1 (the network's output is unrelated to unit-variance noise) and falls as it learns.
    assert loss[0] > 0.3 and loss[-1] < 0.6 * loss[0], loss
    assert all(e.value > 0 for e in acc.Scalars("steps_per_s"))


def test_resume_after_sigkill_matches_an_uninterrupted_run(ddpm, synth_prepared, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, PRETRAIN, *_pretrain_args(synth_prepared, out)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (out / "checkpoint-20").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint-20").is_dir() and not (out / "checkpoint-50").exists()
    subprocess.run(
        [sys.executable, PRETRAIN, *_pretrain_args(synth_prepared, out), "--resume-from-checkpoint", "latest"],
        check=True,
        env=_env(),
        capture_output=True,
    )
    assert not list(out.glob(".checkpoint-*"))
    a = load_file(ddpm / "checkpoint-50/unet/diffusion_pytorch_model.safetensors")
    b = load_file(out / "checkpoint-50/unet/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pretrain_with_two_processes(synth_prepared, tmp_path):
    out = tmp_path / "mp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        PRETRAIN,
        *_pretrain_args(synth_prepared, out, save="25"),
    ]
    res = subprocess.run(cmd, env=_env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-20000:]
    assert "batch 8 (2 x 2 x 2 processes)" in res.stderr
    for step in (25, 50):
        assert (out / f"checkpoint-{step}/unet/config.json").is_file()
        assert (out / f"checkpoint-{step}/state/random_states_1.pkl").is_file()


def test_finetune_evaluate_and_benchmark(ddpm, synth_prepared, tmp_path, capsys):
    unet = str(ddpm / "checkpoint-50")
    common = [
        "--dataset",
        str(synth_prepared),
        "--num-labels",
        "2",
        "--max-steps",
        "6",
        "--eval-steps",
        "3",
        "--report-to",
        "none",
    ]
    assert cli(["finetune", *common, "--output-dir", str(tmp_path / "ft-ddpm"), "--init", unet]) == 0
    assert (
        cli(
            [
                "finetune",
                *common,
                "--output-dir",
                str(tmp_path / "ft-scratch"),
                "--init",
                "scratch",
                "--preset",
                "tiny",
                "--resolution",
                "32",
                "--ema-decay",
                "0.9",
                "--augment",
                "5,0.1,0.03",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ft-scratch/model/hf_landmark_training.json").read_text())["ema_decay"] == 0.9
    for run in ("ft-ddpm", "ft-scratch"):
        summary = json.loads((tmp_path / run / "training_summary.json").read_text())
        assert summary["labeled_image_ids"] == ["001", "002"] and summary["steps"] == 6
        model = LandmarkDetector.from_pretrained(tmp_path / run / "model")
        assert model.config.landmark_names[0] == "Sella" and model.config.spacing == pytest.approx([0.1, 0.1])
        assert (
            model.config.unit_convention == "spacing"
            and (tmp_path / run / "model" / "preprocessor_config.json").is_file()
        )
        # The shape check's reference is the two labeled images' mean landmarks, in model pixels.
        train = load_tensors(load_prepared(str(synth_prepared))["train"], model.config.image_size)
        np.testing.assert_allclose(
            model.config.reference_shape, train.landmarks[:2].double().mean(0).numpy(), atol=1e-5
        )
        record = json.loads((tmp_path / run / "model/hf_landmark_training.json").read_text())
        assert (
            record["shape_check"]["tolerance_px"] == model.config.shape_tolerance >= 1.0
            and record["shape_check"]["factor"] == 2.5
        )

    metrics_path = tmp_path / "metrics.json"

    def evaluate(output, *flags):  # the fine-tuned detector on the test split
        model_dir, data = str(tmp_path / "ft-ddpm/model"), str(synth_prepared)
        cli(["evaluate", "--model", model_dir, "--dataset", data, "--split", "test", "--output", str(output), *flags])
        return json.loads(Path(output).read_text())

    m = evaluate(metrics_path, "--overlay-dir", str(tmp_path / "overlays"))
    for key in ("mre", "mre_std", "unit", "sdr", "per_landmark", "num_images", "mode", "model", "dataset"):
        assert key in m
    assert (
        m["unit"] == "mm"
        and m["mode"] == "physical"
        and m["num_images"] == 5
        and set(m["sdr"]) == {"2", "2.5", "3", "4"}
    )
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 5 and (tmp_path / "metrics.md").is_file()
    from PIL import Image

    # Overlays are drawn at the original image's size (240 x 300), landmarks numbered as in legend.txt.
    assert Image.open(tmp_path / "overlays" / "020.png").size == (240, 300)
    assert (tmp_path / "overlays" / "legend.txt").read_text().splitlines()[:2] == ["1 Sella", "2 Nasion"]
    # Without the shape fusion (it moves every landmark a little), then without the shape check
    # too: the same weights differ exactly at the landmarks the check read again.
    unfused = evaluate(tmp_path / "unfused.json", "--no-shape-fusion")
    unchecked = evaluate(tmp_path / "unchecked.json", "--no-shape-fusion", "--no-shape-check")
    assert m["shape_fusion"] and not unfused["shape_fusion"]
    assert unfused["predictions"] != m["predictions"]
    differ = sum(
        a != b for i in unfused["predictions"] for a, b in zip(unfused["predictions"][i], unchecked["predictions"][i])
    )
    assert unchecked["shape_moved"] == 0 and differ == m["shape_moved"]
    assert evaluate(tmp_path / "paper.json", "--paper-compatible")["mode"] == "paper"
    # The card states the real training data, the label count and the initialisation, no local paths.
    assert (
        cli(["card", str(tmp_path / "ft-ddpm/model"), "--metrics", str(metrics_path), "--repo-id", "org/ceph-2"]) == 0
    )
    card = (tmp_path / "ft-ddpm/model/README.md").read_text()
    assert "Fine-tuned on **2 labeled images** of cephalometric (ISBI 2015)" in card and "001, 002" in card
    assert (
        "a DDPM pre-trained without labels on 19 cephalometric (ISBI 2015) images (tiny U-Net, 32 px, 50 steps)"
        in card
    )
    assert str(tmp_path) not in card and "assumed for images that carry no spacing" in card
    tolerance = LandmarkDetector.from_pretrained(tmp_path / "ft-ddpm/model").config.shape_tolerance
    assert (
        f"| shape check | a first-stage landmark more than {tolerance:.1f} px (of 32) from where the other landmarks put it"
        in card
    )
    assert "| shape fusion | each final landmark weighed against where the image's other landmarks put it" in card
    # Under 5 labels the default recipe keeps the raw weights (the card says nothing of an average)
    # and augments more strongly than the paper.
    assert "learning rate 0.0001, seed 0." in card and "moving average" not in card
    assert (
        "Training augmentation: rotation within ±12.0°, scale within ±12.0 %, shift within ±6.0 % of the side, "
        "intensity power within 1/1.3–1.3."
    ) in card
    assert cli(["card", str(tmp_path / "ft-scratch/model"), "--metrics", str(metrics_path)]) == 0
    card = (tmp_path / "ft-scratch/model/README.md").read_text()
    assert "validated and saved as the moving average of its weights (EMA 0.9), seed 0." in card
    assert (
        "Training augmentation: rotation within ±5.0°, scale within ±10.0 %, shift within ±3.0 % of the side." in card
    )

    bench = [
        "benchmark",
        "--dataset",
        str(synth_prepared),
        "--output-dir",
        str(tmp_path / "bench"),
        "--init",
        f"ddpm={unet}",
        "--labels",
        "1,2",
        "--seeds",
        "0",
        "--eval-split",
        "test",
        "--",
        "--max-steps",
        "2",
        "--eval-steps",
        "2",
    ]
    cli(bench)
    table = (tmp_path / "bench/results.md").read_text()
    assert "| ddpm | 1 | 1 |" in table and "| mean shape | 2 | 1 |" in table and "DDPM (paper)" in table
    assert (tmp_path / "bench/results.png").is_file() and (tmp_path / "bench/results.csv").is_file()
    capsys.readouterr()
    cli(bench)  # resumes: every cell is already done
    assert capsys.readouterr().out.count("[skip]") == 2


def test_below_five_labels_the_default_recipe_keeps_the_raw_weights_augments_more_self_trains_twice_on_every_landmark_and_trusts_the_first_stage_more(
    synth_prepared, tmp_path
):
    """Measured on ISBI at 1, 5 and 10 labels: one threshold for all four settings."""
    from hf_landmark.training.finetune import FinetuneArguments

    def args(labels, **kw):
        return FinetuneArguments(
            dataset=str(synth_prepared), output_dir=str(tmp_path), num_labels=labels, init="scratch", **kw
        ).resolved()

    assert [args(n).ema_decay for n in (5, 10, 4, 1)] == [0.99, 0.99, 0.0, 0.0]
    assert args(10, recipe="paper").ema_decay == 0.0 and args(1, ema_decay=0.9).ema_decay == 0.9
    assert args(1).augmentation == args(4).augmentation == (12.0, 0.12, 0.06, 0.3)
    assert args(5).augmentation == args(10).augmentation == (2.0, 0.02, 0.02, 0.0)  # the paper's ±2° / ±2 % / ±2 %
    assert args(1, recipe="paper").augmentation == (2.0, 0.02, 0.02, 0.0)
    assert args(1, augment="5,0.1,0").augmentation == (5.0, 0.1, 0.0, 0.0) and args(
        1, no_augment=True
    ).augmentation == (0.0, 0.0, 0.0, 0.0)
    assert (
        args(1).shape_check == args(10).shape_check == 2.5 and args(1, recipe="paper").shape_check == 0.0
    )  # the paper's method has none
    # The refinement prior: 1 x the first stage's error below 5 labels, 2 x from 5 up, none in the paper's recipe.
    assert [args(n).refine_prior for n in (1, 4, 5, 10)] == [1.0, 1.0, 2.0, 2.0]
    assert (
        args(1, recipe="paper").refine_prior == args(10, recipe="paper").refine_prior == 0.0
        and args(1, refine_prior=3).refine_prior == 3
    )
    # Landmark offsets shrunk by 10 validation images' worth at every label count, none in the paper's recipe.
    assert [args(n).offset_correction for n in (1, 4, 5, 10)] == [10.0, 10.0, 10.0, 10.0]
    assert args(10, recipe="paper").offset_correction == 0.0 and args(1, offset_correction=4).offset_correction == 4
    # The shape fusion at weight 0.25 at every label count, none in the paper's recipe; a flag wins.
    assert [args(n).shape_fusion for n in (1, 4, 5, 10)] == [0.25, 0.25, 0.25, 0.25]
    assert args(10, recipe="paper").shape_fusion == 0.0 and args(1, shape_fusion=0).shape_fusion == 0
    # Self-training rounds: two below 5 labels, one from 5 up, none in the paper's recipe; a flag wins.
    assert [args(n).self_train for n in (1, 4, 5, 10)] == [2, 2, 1, 1]
    assert (
        args(1, recipe="paper").self_train == 0
        and args(1, self_train=0).self_train == 0
        and args(10, self_train=3).self_train == 3
    )
    # Pseudo-labels of each landmark's own best 40 % below 5 labels, the shared threshold alone from 5.
    assert [args(n).self_train_keep_each for n in (1, 4, 5, 10)] == [0.4, 0.4, 0.0, 0.0]
    assert (
        args(1, recipe="paper").self_train_keep_each == 0.0
        and args(1, self_train_keep_each=0.0).self_train_keep_each == 0.0
    )
    assert args(10, self_train_keep_each=0.2).self_train_keep_each == 0.2


def test_validation_and_the_saved_model_see_the_weight_average_and_training_its_own_weights():
    """--ema-decay: inside ``averaged`` the module holds the moving average (what is validated
    and saved), after it its own weights again (what training goes on from)."""
    from types import SimpleNamespace

    from hf_landmark.training.finetune import averaged, weight_average

    layer = torch.nn.Linear(1, 1, bias=False)
    assert weight_average(SimpleNamespace(ema_decay=0.0), layer) is None
    with averaged(None, layer):  # off: nothing changes
        pass
    ema = weight_average(SimpleNamespace(ema_decay=0.5), layer)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema.step(layer.parameters())  # the first step copies: decay 0
    with torch.no_grad():
        layer.weight.fill_(12.0)
    ema.step(layer.parameters())  # warm-up decay (1 + 1) / (10 + 1) = 2/11 (below 0.5): 2/11 * 1 + 9/11 * 12 = 10
    with averaged(ema, layer):
        assert layer.weight.item() == pytest.approx(10.0)
    assert layer.weight.item() == 12.0


def test_model_card_from_real_metrics(tmp_path):
    from huggingface_hub import ModelCard

    from hf_landmark import LandmarkConfig

    LandmarkDetector(
        LandmarkConfig(
            backbone_config="tiny",
            num_landmarks=2,
            image_size=32,
            landmark_names=["Sella", "Nasion"],
            dataset_name="ceph",
            spacing=[0.1, 0.1],
        )
    ).save_pretrained(tmp_path / "m")
    metrics = {
        "mre": 1.23456,
        "mre_std": 0.5,
        "unit": "mm",
        "sdr": {"2": 80.0, "4": 95.5},
        "mode": "physical",
        "split": "test",
        "dataset": "data/ceph",
        "num_images": 3,
        "decoder": "centroid",
        "per_landmark": [
            {"name": "Sella", "mre": 1.0, "mre_std": 0.1, "sdr": {"2": 90.0, "4": 100.0}},
            {"name": "Nasion", "mre": 1.5, "mre_std": 0.2, "sdr": {"2": 70.0, "4": 91.0}},
        ],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert (
        cli(
            [
                "card",
                str(tmp_path / "m"),
                "--metrics",
                str(tmp_path / "metrics.json"),
                "--repo-id",
                "org/ddpm-ceph-landmark",
            ]
        )
        == 0
    )
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.pipeline_tag == "keypoint-detection" and card.data.library_name == "hf-landmark"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"mre": 1.2346, "sdr_2mm": 80.0, "sdr_4mm": 95.5}
    assert (
        card.text.lstrip().startswith("# org/ddpm-ceph-landmark\n")
        and "Sella, Nasion" in card.text
        and "not a medical device" in card.text
    )
    # Self-training: the card names the round the model comes from, not every round that was kept.
    from hf_landmark.cards import detector_card

    rounds = [
        {
            "round": r,
            "kept_landmarks": 10,
            "pool_landmarks": 20,
            "pool_images": 10,
            "val_mre": mre,
            "previous_best_val_mre": before,
            "model_kept": kept,
        }
        for r, mre, before, kept in ((1, 3.05, 3.65, True), (2, 2.94, 3.05, True), (3, 3.10, 2.94, False))
    ]
    # Round 2's pseudo-labels were corrected by the fusion alone, round 3's by both.
    rounds[1]["corrections"] = {"offsets": None, "shape_fusion": {"mre_without": 3.1, "mre_with": 2.9}}
    rounds[2]["corrections"] = {"offsets": {"mre_without": 3.0}, "shape_fusion": {"mre_with": 2.8}}
    training = {
        "num_labels": 1,
        "subset": "first",
        "labeled_image_ids": ["001"],
        "validation_images": 20,
        "best_step": 150,
        "val_mre": 2.94,
        "unit": "mm",
        "recipe": "default",
        "loss": "contour",
        "learning_rate": 1e-4,
        "seed": 0,
        "init": {"kind": "scratch", "preset": "tiny"},
        "self_training": {"rounds": rounds, "model_from_round": 2},
    }
    text = detector_card(
        LandmarkDetector.from_pretrained(tmp_path / "m").config, metrics, "org/x", training=training
    ).text
    assert "validation MRE 3.05 against 3.65 before: kept, then replaced by a later round." in text
    assert "on 10 unlabeled images kept as pseudo-labels; validation MRE 3.05" in text
    assert (
        "kept as pseudo-labels, corrected by the run's shape fusion fitted on validation; validation MRE 2.94" in text
    )
    assert "corrected by the run's landmark offsets and shape fusion fitted on validation; validation MRE 3.10" in text
    assert (
        "validation MRE 2.94 against 3.05 before: this model." in text
        and "validation MRE 3.10 against 2.94 before: not kept." in text
    )


def test_evaluate_measures_what_predict_returns_on_the_raw_files(ddpm, synth_raw, tmp_path):
    """The number `hf-landmark evaluate` reports on a prepared split is the number a user gets
    from `hf-landmark predict` on the original files of that split, for both stages of a
    two-stage detector; fine-tuning trains the refinement stage by default (here on a
    DDPM pre-trained on crops) and never keeps one that is worse on validation."""
    import numpy as np

    from hf_landmark.data import prepare

    # Prepared at 128 px for a 32-px model: the first stage sees the 128-px images area-averaged
    # to 32 px; the refinement stage crops the 128-px images themselves.
    prepared = tmp_path / "prep128"
    prepare("ceph", synth_raw, prepared, image_size=128, split_counts=(14, 5, None))
    crops = tmp_path / "ddpm_crops"
    subprocess.run(
        [sys.executable, PRETRAIN, *_pretrain_args(prepared, crops, steps=4, save="2,4"), "--crop-from", "128"],
        check=True,
        env=_env(),
        capture_output=True,
    )
    assert json.loads((crops / "checkpoint-4" / "hf_landmark_pretraining.json").read_text())["crop_from"] == 128
    out = tmp_path / "ft"
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(prepared),
                "--num-labels",
                "3",
                "--max-steps",
                "8",
                "--eval-steps",
                "4",
                "--refine-max-steps",
                "8",
                "--refine-batch-size",
                "8",
                "--refine-init",
                str(crops),
                "--offset-correction",
                "10",
                "--report-to",
                "none",
                "--output-dir",
                str(out),
                "--init",
                str(ddpm / "checkpoint-50"),
            ]
        )
        == 0
    )
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["refine"]["refine_size"] == 128 and summary["refine"]["crop"] == 32  # the crop DDPM's resolution
    assert summary["refine"]["init"] == str(crops / "checkpoint-4")  # the pre-training's folder: its newest checkpoint
    # The refiner's schedule is recorded (its default length changed from 600 to 1,200 steps).
    assert summary["refine"]["schedule"] == {"max_steps": 8, "learning_rate": 3e-4, "batch_size": 8}
    prior = summary["refine"]["prior"]  # the default recipe's below 5 labels: 1 x each landmark's first-stage error
    assert prior["factor"] == 1.0 and len(prior["sigma_fine_px"]) == 19 and min(prior["sigma_fine_px"]) >= 1.0
    assert summary["best"]["val_mre"] <= summary["first_stage"]["val_mre"]
    trained = LandmarkDetector.from_pretrained(out / "model")
    assert (trained.refiner is not None) == summary["best"]["refined"]
    if trained.refiner is not None:  # its own first stage's prior (a self-training round's, where one was kept)
        assert len(trained.config.refine_prior) == 19 and min(trained.config.refine_prior) >= 1.0
    # Whatever validation chose, check the two-stage path on the model with its refiner.
    # Each landmark's mean validation error, shrunk by 10 images' worth (5 validation images keep
    # a third of it), measured on the stage the model kept, is subtracted from its predictions.
    offsets = summary["calibration"]["offsets"]
    assert offsets["images"] == 10.0 and offsets["stage"] == ("refined" if trained.refiner is not None else "first")
    assert np.asarray(offsets["model_px"]).shape == (19, 2) and np.isfinite(offsets["model_px"]).all()
    assert set(offsets["leave_one_out"]) == {"unit", "mre_without", "mre_with", "sdr_without", "sdr_with"}
    if trained.refiner is None:
        from hf_landmark import LandmarkImageProcessor

        trained.add_refiner(128, ddpm=str(crops / "checkpoint-4"))
        trained.save_pretrained(out / "model")
        processor = LandmarkImageProcessor.from_model_config(trained.config)
        processor.set_landmark_offsets(offsets["model_px"], "refined")
        processor.save_pretrained(out / "model")
    model_dir = out / "model"
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(model_dir),
                "--dataset",
                str(prepared),
                "--split",
                "test",
                "--output",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    # Without the offsets every landmark moves back by exactly them, scaled to each original frame
    # (where the correction would have carried a landmark off the picture, it stopped at the centre
    # of the model's edge pixel). The shape fusion, which the saved processor holds where the
    # refiner was kept, is off in both, as it reads the landmarks after the offsets.
    for name, switches in (("shifted", []), ("raw", ["--no-offset-correction"])):
        args = ["--model", str(model_dir), "--dataset", str(prepared), "--split", "test", "--no-shape-fusion"]
        assert cli(["evaluate", *args, *switches, "--output", str(tmp_path / f"{name}.json")]) == 0
    raw = json.loads((tmp_path / "raw.json").read_text())["predictions"]
    shifted = json.loads((tmp_path / "shifted.json").read_text())["predictions"]
    for image_id, xy in shifted.items():
        size = np.array(Image.open(synth_raw / "RawImage" / "TrainingData" / f"{image_id}.bmp").size, float)
        scale = size / 32
        expected = np.clip(
            np.array(raw[image_id]) - np.asarray(offsets["model_px"]) * scale, 0.5 * scale - 0.5, 31.5 * scale - 0.5
        )
        np.testing.assert_allclose(np.array(xy), expected, atol=1e-4)  # float32 coordinates
    assert "first_stage" in metrics and len(metrics["first_stage"]["per_landmark"]) == 19
    assert "first-stage MRE" in (tmp_path / "m.md").read_text()
    ids = sorted(metrics["predictions"])
    assert ids == ["020", "021", "022", "023", "024"]
    files = [str(synth_raw / "RawImage" / "TrainingData" / f"{i}.bmp") for i in ids]
    assert cli(["predict", *files, "--model", str(model_dir), "--output", str(tmp_path / "p.json")]) == 0
    assert (
        cli(["predict", *files, "--model", str(model_dir), "--output", str(tmp_path / "q.json"), "--no-refine"]) == 0
    )
    predicted = json.loads((tmp_path / "p.json").read_text())["predictions"]
    first_stage = json.loads((tmp_path / "q.json").read_text())["predictions"]
    errors, first_errors, diffs = [], [], []
    for image_id, file in zip(ids, files):
        senior = np.loadtxt(synth_raw / f"AnnotationsByMD/400_senior/{image_id}.txt", delimiter=",")
        junior = np.loadtxt(synth_raw / f"AnnotationsByMD/400_junior/{image_id}.txt", delimiter=",")
        xy = np.array([[p["x"], p["y"]] for p in predicted[file]])
        diffs.append(np.abs(xy - np.array(metrics["predictions"][image_id])).max(-1))  # original pixels
        errors.append(np.linalg.norm((xy - (senior + junior) / 2) * 0.1, axis=1))
        first_xy = np.array([[p["x"], p["y"]] for p in first_stage[file]])
        first_errors.append(np.linalg.norm((first_xy - (senior + junior) / 2) * 0.1, axis=1))
    # The two read the same pixels up to float rounding (the prepared split against the original
    # file). On that rounding a landmark of this barely trained model can cross the centroid's
    # half-maximum threshold or the refiner's crop grid and move by a pixel; nearly all agree
    # to a thousandth of a pixel.
    diffs = np.concatenate(diffs)
    assert (diffs < 1e-3).mean() >= 0.95 and diffs.max() < 3, np.sort(diffs)[-5:]
    assert np.mean(errors) == pytest.approx(metrics["mre"], rel=0.005)
    assert np.mean(first_errors) == pytest.approx(metrics["first_stage"]["mre"], rel=0.005)


def test_a_diverging_fine_tuning_stops_and_keeps_no_model(synth_prepared, tmp_path, capsys):
    # At lr 1 without clipping the first validation is still finite (a "best" model is saved)
    # and the next is not: the run must stop and take that model back.
    out = tmp_path / "ft"
    code = cli(
        [
            "finetune",
            "--dataset",
            str(synth_prepared),
            "--num-labels",
            "2",
            "--init",
            "scratch",
            "--preset",
            "tiny",
            "--resolution",
            "32",
            "--learning-rate",
            "1",
            "--max-grad-norm",
            "0",
            "--max-steps",
            "40",
            "--eval-steps",
            "1",
            "--early-stopping-patience",
            "100",
            "--report-to",
            "none",
            "--output-dir",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "fine-tuning diverged" in err and "no model was kept" in err and "Traceback" not in err
    assert not (out / "model").exists() and not (out / "training_summary.json").exists()


def test_fine_tuning_calibrates_radii_and_flags_unfamiliar_images(ddpm, synth_raw, synth_prepared, tmp_path, capsys):
    """The radii and the out-of-distribution rule are fitted on the validation split at the end
    of fine-tuning, saved with the model, and reach the pipeline, the CLI and the web app."""
    import csv

    import numpy as np
    from PIL import Image
    from transformers import pipeline

    from hf_landmark import LandmarkImageProcessor
    from hf_landmark.app import predict as app_predict

    out = tmp_path / "ft"
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(synth_prepared),
                "--num-labels",
                "3",
                "--max-steps",
                "20",
                "--eval-steps",
                "10",
                "--report-to",
                "none",
                "--output-dir",
                str(out),
                "--init",
                str(ddpm / "checkpoint-50"),
            ]
        )
        == 0
    )
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["calibration"]["calibration_images"] == 5 and summary["calibration"]["alpha"] == 0.1
    processor = LandmarkImageProcessor.from_pretrained(out / "model")
    # 5 validation images cannot support 90 % (that needs 9): the radii hold at 5/6 = 83.3 %, and say so.
    assert len(processor.calibration_scores) == 19 and len(processor.calibration_scores[0]) == 5
    assert processor.ood_threshold > 0 and processor.spread_threshold > 0 and len(processor.embedding_mean) == 64
    assert summary["calibration"]["finite_radii"] and summary["calibration"]["radius_coverage"] == pytest.approx(5 / 6)
    # The flag needs no labels: the 5 validation images and every other one of the 11 unlabeled
    # training images (the others join the 3 labeled ones as the reference) calibrate it; with 10
    # images each of its 3 tests (embedding, spread, shape) takes their largest value as its
    # threshold, a bound of 3/11 false alarms.
    assert summary["calibration"]["flag_calibration_images"] == 10
    assert summary["calibration"]["flag_false_alarm_rate"] == pytest.approx(3 / 11)
    assert processor.shape_threshold > 0 and len(processor.shape_reference) == 19 and processor.shape_scale > 0
    image = synth_raw / "RawImage" / "TrainingData" / "020.bmp"  # a test image
    first = pipeline("landmark-detection", model=str(out / "model"))(str(image))[0]
    assert first["radius"] > 0 and first["radius_coverage"] == pytest.approx(5 / 6)
    capsys.readouterr()
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(out / "model"),
                "--dataset",
                str(synth_prepared),
                "--split",
                "test",
                "--output",
                str(tmp_path / "m5.json"),
            ]
        )
        == 0
    )
    assert "error radii at 83.3 % (5 calibration images; 90 % needs at least 9): coverage" in capsys.readouterr().out

    # At alpha 0.2 (needs 4 images) the radii are finite and appear everywhere.
    processor.alpha = 0.2
    processor.save_pretrained(out / "model")
    pipe = pipeline("landmark-detection", model=str(out / "model"))
    assert pipe.image_processor.alpha == 0.2  # round trip through preprocessor_config.json
    res = pipe(str(image))
    assert all(
        np.isfinite(p["radius"]) and p["radius"] > 0 and p["radius_mm"] == pytest.approx(p["radius"] * 0.1)
        for p in res
    )
    Image.fromarray(np.zeros((300, 240), np.uint8)).save(tmp_path / "blank.png")
    Image.fromarray(np.full((1, 1), 90, np.uint8)).save(tmp_path / "dot.png")
    assert (
        pipe(str(tmp_path / "blank.png"))[0]["flag"] == "low_confidence"
        and pipe(str(tmp_path / "dot.png"))[0]["flag"] == "low_confidence"
    )
    assert (
        cli(
            [
                "predict",
                str(image),
                str(tmp_path / "blank.png"),
                "--model",
                str(out / "model"),
                "--output",
                str(tmp_path / "p.json"),
                "--csv",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["flags"][str(tmp_path / "blank.png")] == "low_confidence"
    assert data["predictions"][str(image)][0]["radius"] == pytest.approx(res[0]["radius"])
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    assert float(rows[0]["radius"]) == pytest.approx(res[0]["radius"]) and rows[-1]["flag"] == "low_confidence"
    _, table, note, _ = app_predict(str(tmp_path / "blank.png"), str(out / "model"))
    assert "Low confidence" in note and table[0][6] != ""
    capsys.readouterr()
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(out / "model"),
                "--dataset",
                str(synth_prepared),
                "--split",
                "test",
                "--output",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    u = json.loads((tmp_path / "m.json").read_text())["uncertainty"]
    # Levels above 5/6 have no radii and are left out of the reliability curve (it showed a false 100 % there).
    assert 0.0 <= u["coverage"] <= 1.0 and u["mean_radius"] > 0 and len(u["per_landmark"]) == 19
    assert [r["nominal"] for r in u["reliability"]] == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert (
        tmp_path / "m_reliability.png"
    ).is_file() and "error radii at 80.0 % (5 calibration images): coverage" in capsys.readouterr().out
    # calibrate: the radii again on the 5 test images (from the site the model will run on).
    # At the 80 % the test set above, 5 images give each landmark's largest normalised error as
    # its quantile, so the radii reach every landmark of those same images (the largest one
    # of each lies on its radius, equal up to rounding); the source reaches the card.
    assert cli(["calibrate", "--model", str(out / "model"), "--dataset", str(synth_prepared)]) == 0
    assert "calibrated the radii of" in capsys.readouterr().out
    recal = LandmarkImageProcessor.from_pretrained(out / "model")
    assert recal.calibration_size == 5 and recal.calibration_source == f"5 images of {synth_prepared.name} (test)"
    evaluated = ["evaluate", "--model", str(out / "model"), "--dataset", str(synth_prepared), "--split", "test"]
    assert cli([*evaluated, "--output", str(tmp_path / "m6.json")]) == 0
    u6 = json.loads((tmp_path / "m6.json").read_text())["uncertainty"]
    assert u6["radius_coverage"] == pytest.approx(0.8)
    from hf_landmark.data import load_prepared, load_tensors
    from hf_landmark.evaluation import predict_split
    from hf_landmark.pipeline_landmark import load_detector

    model, fresh = load_detector(str(out / "model"))
    test = load_tensors(load_prepared(synth_prepared)["test"], fresh.size, fresh.resample, fresh.refine_size)
    pred = predict_split(model, fresh, test)
    errors = np.hypot(*(pred["coords"] - test.original_landmarks.double().numpy()).transpose(2, 0, 1))
    assert np.sort(errors / pred["spread"], axis=0) == pytest.approx(np.sort(recal.calibration_scores, axis=1).T)
    assert (errors <= fresh.radii(pred["spread"]) * (1 + 1e-9)).all() and u6["coverage"] >= 1 - 19 / 95
    # benchmark_radii reads the same predictions (its MRE is evaluate's); 5 images give no
    # radii at 90 or 95 %, and halves of 2 and 3 images none at 80 % for its cross-fit.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from benchmark_radii import main as benchmark_radii

    bench = benchmark_radii(["--model", str(out / "model"), "--dataset", str(synth_prepared), "--splits", "test"])
    row = bench["splits"]["test"]
    assert row["mre"] == pytest.approx(json.loads((tmp_path / "m6.json").read_text())["mre"])
    assert row["levels"]["0.8"]["coverage"] == pytest.approx(100 * u6["coverage"])
    assert row["levels"]["0.9"]["coverage"] is None and row["levels"]["0.8"]["cross_fit_coverage"] is None
    assert cli(["card", str(out / "model"), "--metrics", str(tmp_path / "m6.json")]) == 0
    assert (
        f"conformal prediction on 5 images of {synth_prepared.name} (test) the weights"
        in (out / "model" / "README.md").read_text()
    )
    # The training labels chose the weights: left out (14 training images, 3 labeled: 11).
    assert cli(["calibrate", "--model", str(out / "model"), "--dataset", str(synth_prepared), "--split", "train"]) == 0
    assert LandmarkImageProcessor.from_pretrained(out / "model").calibration_size == 11
    capsys.readouterr()
    assert cli(["calibrate", "--model", str(tmp_path), "--dataset", str(synth_prepared)]) == 2
    assert "not a detector folder (preprocessor_config.json missing)" in capsys.readouterr().err
    # Every JSON written on the way is strict JSON (no NaN, no Infinity).
    written = [*out.rglob("*.json"), *tmp_path.glob("*.json")]
    assert len(written) >= 7  # config, processor, record, summary, predictions, two metrics files
    for path in written:
        json.loads(
            path.read_text(encoding="utf-8"),
            parse_constant=lambda c, path=path: pytest.fail(f"{path}: {c} is not JSON"),
        )


def test_the_recipe_is_one_table_shown_by_show_recipe_and_in_the_design_notes(capsys):
    from hf_landmark.recipes import DEFAULT, DEFAULT_FEW, PAPER, recipe_table, resolve_recipe
    from hf_landmark.training.finetune import FinetuneArguments, main

    assert resolve_recipe("default", 4) is DEFAULT_FEW and resolve_recipe("default", 5) is DEFAULT
    assert resolve_recipe("paper", 1) is resolve_recipe("paper", 50) is PAPER
    # The long recipe: the default one, three seeds' detectors saved as their ensemble.
    for n in (1, 10):
        long, default = resolve_recipe("long", n).as_dict(), resolve_recipe("default", n).as_dict()
        assert (long.pop("ensemble"), default.pop("ensemble")) == (3, 1)
        assert {k: v for k, v in long.items() if k != "name"} == {k: v for k, v in default.items() if k != "name"}
    assert (
        FinetuneArguments(dataset=".", output_dir="o", num_labels=1, init="scratch", recipe="long").resolved().ensemble
        == 3
    )
    assert main(["--show-recipe", "3"]) is None
    shown = capsys.readouterr().out
    assert (
        shown.startswith("recipe: default, fewer than 5 labels")
        and "augment                      12,0.12,0.06,0.3" in shown
    )
    # Every argument left unset takes the resolved recipe's value; the design notes show the same table.
    args = FinetuneArguments(dataset=".", output_dir="out", num_labels=10, init="scratch").resolved()
    assert (args.ema_decay, args.offset_correction, args.self_train, args.augment) == (0.99, 10.0, 1, "2,0.02,0.02")
    design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    table = design.split("<!-- recipe-table: generated by hf_landmark.recipes.recipe_table() -->\n")[1].split(
        "<!-- /recipe-table -->"
    )[0]
    assert table == recipe_table()


def test_finetune_help_groups_every_argument_and_every_release_0_4_flag_still_parses():
    import dataclasses

    from hf_landmark.training.finetune import ARGUMENT_GROUPS, FinetuneArguments, parser

    grouped = [name for names in ARGUMENT_GROUPS.values() for name in names]
    fields = [f.name for f in dataclasses.fields(FinetuneArguments) if f.init]
    assert sorted(grouped) == sorted(fields) and len(grouped) == len(set(grouped))
    text = parser().format_help()
    assert all(f"\n{title}:\n" in text for title in ARGUMENT_GROUPS)
    # Every flag of release 0.4, with a value where it takes one, parses as it did.
    flags_0_4 = (
        "--dataset d --output-dir o --num-labels 3 --init scratch --pretrained scratch --backbone unet2d --encoder densenet161 "
        "--subset first --selection first --seed 1 --preset tiny --recipe default --loss contour --resolution 32 --sigma 1.5 "
        "--learning-rate 1e-4 --train-batch-size 2 --gradient-accumulation-steps 1 --max-steps 5 --max-epochs 2 --eval-steps 1 "
        "--early-stopping-patience 3 --plateau-patience 2 --plateau-factor 0.5 --weight-decay 0.01 --ema-decay 0.9 "
        "--max-grad-norm 1 --decoder centroid --augment 2,0.02,0.02 --no-augment --shape-check 2.5 --offset-correction 10 "
        "--mixed-precision no --report-to none --pixel-range=-1,1 --no-refine --refine-init scratch --refine-size 256 "
        "--refine-crop 64 --refine-preset tiny --refine-sigma 2 --refine-prior 1 --refine-max-steps 10 --refine-batch-size 4 "
        "--refine-learning-rate 3e-4 --self-train 1 --self-train-keep 0.4 --self-train-keep-each 0.2 "
        "--self-train-labeled-share 0.5 --self-train-pool 100"
    ).split()
    namespace = vars(parser().parse_args(flags_0_4))
    assert (
        namespace["refine_size"] == 256 and namespace["self_train_keep_each"] == 0.2 and namespace["no_refine"] is True
    )


def test_an_ensemble_is_fine_tuned_on_one_draw_of_labels_and_predicts_its_members_mean(
    ddpm, synth_raw, synth_prepared, tmp_path, capsys
):
    """``--ensemble 2``: two detectors on the same (seeded random) labels with seeds 4 and 5,
    saved as one folder whose landmarks are their mean, calibrated as one model, with a card
    that says what it is; ``hf-landmark ensemble`` builds the same model from the members."""
    from transformers import pipeline

    from hf_landmark import LandmarkImageProcessor
    from hf_landmark.data import few_shot_indices

    out = tmp_path / "ens"
    args = ["--dataset", str(synth_prepared), "--num-labels", "3", "--subset", "random", "--seed", "4"]
    args += ["--max-steps", "12", "--eval-steps", "6", "--no-refine", "--self-train", "0", "--offset-correction", "0"]
    args += ["--shape-fusion", "0", "--report-to", "none", "--init", str(ddpm / "checkpoint-50")]
    assert cli(["finetune", *args, "--ensemble", "2", "--output-dir", str(out)]) == 0
    ids = load_prepared(synth_prepared)["train"]["image_id"]
    drawn = sorted(ids[i] for i in few_shot_indices(ids, 3, "random", 4))
    folders = ("members/seed-4/model", "members/seed-5/model", "model")
    records = [json.loads((out / d / "hf_landmark_training.json").read_text()) for d in folders]
    assert [r["seed"] for r in records] == [4, 5, [4, 5]]
    assert all(sorted(r["labeled_image_ids"]) == drawn for r in records)
    assert records[2]["ensemble"]["members"] == 2
    summary = json.loads((out / "training_summary.json").read_text())
    assert set(summary["members"]) == {"members/seed-4", "members/seed-5"}
    assert summary["calibration"]["calibration_images"] == 5
    processor = LandmarkImageProcessor.from_pretrained(out / "model")
    assert len(processor.calibration_scores) == 19 and len(processor.calibration_scores[0]) == 5
    image = str(synth_raw / "RawImage" / "TrainingData" / "020.bmp")  # a test image
    run = [pipeline("landmark-detection", model=str(out / d))(image) for d in folders]
    for a, b, mean in zip(*run):
        assert mean["x"] == pytest.approx((a["x"] + b["x"]) / 2, abs=1e-4)
        assert mean["y"] == pytest.approx((a["y"] + b["y"]) / 2, abs=1e-4)
        assert mean["radius"] > 0
    assert abs(run[0][0]["x"] - run[1][0]["x"]) > 1e-3  # the seeds gave two detectors
    # The web page shows the ensemble's landmarks and radii as any detector's.
    from hf_landmark.app import predict as app_predict

    overlay, table, _, _ = app_predict(image, str(out / "model"))
    assert len(table) == 19 and table[0][2] == round(run[2][0]["x"], 1) and table[0][6] != ""
    assert min(overlay.size) >= 256

    # The same members assembled after the fact: the same model and calibration.
    capsys.readouterr()
    members = [str(out / "members" / s / "model") for s in ("seed-4", "seed-5")]
    again = tmp_path / "again"
    assert cli(["ensemble", *members, "--dataset", str(synth_prepared), "--output", str(again)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote an ensemble of 2 detectors to {again}: validation MRE ")
    assert LandmarkImageProcessor.from_pretrained(again).calibration_scores == processor.calibration_scores
    # Its card says what it is.
    assert (
        cli(
            ["evaluate", "--model", str(again), "--dataset", str(synth_prepared), "--output", str(tmp_path / "m.json")]
        )
        == 0
    )
    assert cli(["card", str(again), "--metrics", str(tmp_path / "m.json"), "--repo-id", "org/ens"]) == 0
    card = (again / "README.md").read_text()
    assert "as an **ensemble of 2 detectors**" in card and "own seed\n(4, 5)" in card
    assert "2 detectors of this architecture, landmarks averaged" in card


def test_an_ensemble_with_one_member_left_is_that_member(ddpm, synth_prepared, tmp_path, monkeypatch, caplog):
    """When every member but one differs in architecture (on few validation images one member's
    refinement stage can lose while the others' win), ``--ensemble`` saves the one left as the
    model, says so, and names the others in the summary."""
    import logging

    import hf_landmark.ensembles as ensembles

    monkeypatch.setattr(ensembles, "compatible_members", lambda dirs, mres: (dirs[1:], dirs[:1]))
    monkeypatch.setattr(ensembles, "differing_fields", lambda a, b: ["refine_size"])
    out = tmp_path / "ens"
    args = ["--dataset", str(synth_prepared), "--num-labels", "2", "--seed", "7", "--max-steps", "6"]
    args += [
        "--eval-steps",
        "3",
        "--no-refine",
        "--self-train",
        "0",
        "--offset-correction",
        "0",
        "--report-to",
        "none",
    ]
    with caplog.at_level(logging.WARNING):
        assert (
            cli(
                ["finetune", *args, "--init", str(ddpm / "checkpoint-50"), "--ensemble", "2", "--output-dir", str(out)]
            )
            == 0
        )
    summary = json.loads((out / "training_summary.json").read_text())
    member = json.loads((out / "members" / "seed-8" / "training_summary.json").read_text())
    assert summary["left_out"] == ["members/seed-7"] and summary["ensemble"] is None
    assert summary["best"] == member["best"] and summary["calibration"] == member["calibration"]
    kept = out / "members" / "seed-8" / "model"
    assert (out / "model" / "model.safetensors").read_bytes() == (kept / "model.safetensors").read_bytes()
    config = json.loads((out / "model" / "config.json").read_text())
    assert not config.get("ensemble_members")
    assert f"no ensemble: only {kept} is left" in caplog.text
    assert "members/seed-7/model is left out of the ensemble: it differs from" in caplog.text


def test_pseudo_labels_are_what_the_calibrated_detector_predicts(ddpm, synth_prepared, tmp_path):
    """With the run's corrections, a round's pseudo-labels are the pool predictions of the detector
    calibrated as fine-tuning calibrates it (offsets and fusion fitted on validation, the pool's
    first-stage landmarks among the fusion's shapes); without them, its raw predictions."""
    from hf_landmark.calibration import Corrections, calibrate_processor
    from hf_landmark.evaluation import compute_metrics, predict_split
    from hf_landmark.image_processing_landmark import processor_for_model
    from hf_landmark.self_training import pseudo_labels

    out = tmp_path / "ft"
    args = ["finetune", "--dataset", str(synth_prepared), "--num-labels", "3", "--max-steps", "8", "--eval-steps", "4"]
    args += ["--no-refine", "--self-train", "0", "--report-to", "none", "--init", str(ddpm / "checkpoint-50")]
    assert cli([*args, "--offset-correction", "0", "--shape-fusion", "0", "--output-dir", str(out)]) == 0
    model_dir = str(out / "model")
    model = LandmarkDetector.from_pretrained(model_dir).eval()
    processor = processor_for_model(model)
    prepared = load_prepared(synth_prepared)
    labeled_ids = json.loads((out / "model" / "hf_landmark_training.json").read_text())["labeled_image_ids"]
    train = prepared["train"]
    split = [[i for i, x in enumerate(train["image_id"]) if (x in labeled_ids) == flag] for flag in (True, False)]
    labeled, pool = (load_tensors(train.select(rows), model.config.image_size, processor.resample) for rows in split)
    val = load_tensors(prepared["validation"], model.config.image_size, processor.resample)
    unlabeled_pool = pool.with_landmarks(torch.full_like(pool.landmarks, float("nan")))
    corrections = Corrections(offset_images=2.0, shape_fusion=0.25)
    raw, _, facts = pseudo_labels(model_dir, unlabeled_pool, val, labeled, "centroid", (0.5, 0.0), "cpu")
    assert "corrections" not in facts
    np.testing.assert_allclose(raw, predict_split(model, processor, pool, "centroid")["coords"], rtol=0, atol=1e-9)
    coords, chosen, facts = pseudo_labels(
        model_dir, unlabeled_pool, val, labeled, "centroid", (0.5, 0.0), "cpu", corrections
    )
    calibrate_processor(model, processor, val, labeled, "centroid", [pool], corrections)
    assert processor.landmark_offsets is not None and processor.fuses("first")
    expected = predict_split(model, processor, pool, "centroid")["coords"]
    np.testing.assert_allclose(coords, expected, rtol=0, atol=1e-6)
    assert np.abs(coords - raw).max() > 0.01  # the corrections moved them
    assert facts["corrections"]["offsets"]["mre_without"] == pytest.approx(
        compute_metrics(
            predict_split(model, processor_for_model(model), val, "centroid")["coords"], val, model.config
        )["mre"]
    )
    assert 0 < chosen.mean() <= 0.6


def test_a_teacher_gives_the_first_self_training_round_its_pseudo_labels(ddpm, synth_prepared, tmp_path):
    """``--teacher``: the first round pseudo-labels the pool with the teacher's predictions (the
    error the round reports for all of them is the teacher's own on those images, computed here
    independently), and the record, the summary and the card say so."""
    from hf_landmark.evaluation import physical_errors, predict_split
    from hf_landmark.pipeline_landmark import load_detector

    base = ["finetune", "--dataset", str(synth_prepared), "--num-labels", "3", "--max-steps", "8"]
    base += ["--eval-steps", "4", "--no-refine", "--offset-correction", "0", "--report-to", "none"]
    base += ["--init", str(ddpm / "checkpoint-50")]
    teacher = tmp_path / "teacher"
    assert cli([*base, "--self-train", "0", "--output-dir", str(teacher)]) == 0
    student = tmp_path / "student"
    assert (
        cli(
            [
                *base,
                "--self-train",
                "1",
                "--seed",
                "3",
                "--teacher",
                str(teacher / "model"),
                "--output-dir",
                str(student),
            ]
        )
        == 0
    )
    summary = json.loads((student / "training_summary.json").read_text())
    first = summary["self_training"]["rounds"][0]
    assert first["pseudo_labels_from"] == "teacher" and summary["self_training"]["teacher"] == str(teacher / "model")
    # The teacher's predictions on the training images left unlabeled (the pool's with labels).
    model, processor = load_detector(str(teacher / "model"))
    train = load_prepared(synth_prepared)["train"]
    labeled = json.loads((teacher / "model" / "hf_landmark_training.json").read_text())["labeled_image_ids"]
    pool = load_tensors(
        train.select([i for i, x in enumerate(train["image_id"]) if x not in labeled]),
        model.config.image_size,
        processor.resample,
    )
    errors, unit = physical_errors(predict_split(model, processor, pool)["coords"], pool, model.config)
    assert first["pseudo_label_error"]["images_with_truth"] == len(pool) > 0
    assert first["pseudo_label_error"]["all_mre"] == pytest.approx(float(errors.mean()), rel=1e-5)
    # The run's corrections (here the fusion) are fitted again on the teacher's predictions and
    # reported: validation, each image fused without its fold, as the teacher's own calibration did.
    own = json.loads((teacher / "model" / "preprocessor_config.json").read_text())["calibration"]
    assert own["shape_model_mean"] is not None and first["corrections"]["offsets"] is None
    fusion = first["corrections"]["shape_fusion"]
    assert fusion["folds"] == len(load_prepared(synth_prepared)["validation"]) and fusion["unit"] == unit
    record = json.loads((student / "model" / "hf_landmark_training.json").read_text())
    assert record["teacher"]["members"] == 1 and record["teacher"]["path"] == str(teacher / "model")
    metrics = tmp_path / "m.json"
    assert (
        cli(
            ["evaluate", "--model", str(student / "model"), "--dataset", str(synth_prepared), "--output", str(metrics)]
        )
        == 0
    )
    assert cli(["card", str(student / "model"), "--metrics", str(metrics), "--repo-id", "org/student"]) == 0
    card = (student / "model" / "README.md").read_text()
    assert "(the teacher's predictions: a detector fine-tuned on the same labels)" in card


def test_benchmark_match_checks_a_detector_on_the_images_it_was_not_taught(ddpm, synth_prepared, tmp_path, capsys):
    """training/benchmark_match.py --templates K --split train --detector: the first K training
    images are the templates, the others are checked; the detector's errors there are
    `evaluate --exclude-training-labels`'s when it was taught on those K; a second call in the
    same process answers the same."""
    out = tmp_path / "ft"
    args = ["finetune", "--dataset", str(synth_prepared), "--num-labels", "3", "--max-steps", "8", "--eval-steps", "4"]
    args += ["--no-refine", "--self-train", "0", "--report-to", "none", "--init", str(ddpm / "checkpoint-50")]
    assert cli([*args, "--output-dir", str(out)]) == 0
    model = str(out / "model")
    assert (
        cli(
            ["evaluate", "--model", model, "--dataset", str(synth_prepared), "--split", "train"]
            + ["--exclude-training-labels", "--output", str(tmp_path / "e.json")]
        )
        == 0
    )
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from benchmark_match import main as benchmark_match

    argv = ["--dataset", str(synth_prepared), "--features", str(ddpm / "checkpoint-50"), "--templates", "3"]
    argv += ["--split", "train", "--detector", model, "--keep", "0.5"]
    first = benchmark_match(argv)
    assert benchmark_match(argv) == first
    ids = sorted(load_prepared(synth_prepared)["train"]["image_id"])
    taught = json.loads((out / "model" / "hf_landmark_training.json").read_text())["labeled_image_ids"]
    assert sorted(taught) == ids[:3] and first["template"] == ",".join(ids[:3]) and first["images"] == 14 - 3
    checked = first["detectors"][model]
    assert checked["mre"] == pytest.approx(json.loads((tmp_path / "e.json").read_text())["mre"], rel=1e-6)
    # 11 x 19 = 209 landmarks: the median spread is the 105th smallest, so 105 are kept.
    assert checked["kept"]["count"] == 105 and checked["kept"]["share"] == 0.5
    assert f"detector {model}: MRE {checked['mre']:.3f}" in capsys.readouterr().out
