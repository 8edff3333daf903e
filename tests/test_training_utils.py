import pytest
import torch

from hf_landmark.training_utils import describe_cpu_threads, long_run_warning, parse_float_pair, parse_int_list


def test_long_cpu_runs_are_announced_with_their_estimate():
    cpu = torch.device("cpu")
    # 2 s per step x 2,000 steps = 4,000 s = 1.1 h: announced; 500 s: not; never on a GPU.
    assert "about 1.1 h on this CPU (2.00 s per step, 2000 steps" in long_run_warning(2.0, 2000, cpu, "pre-training")
    assert long_run_warning(0.5, 1000, cpu, "pre-training") is None
    assert long_run_warning(2.0, 2000, torch.device("cuda"), "pre-training") is None


def test_cpu_thread_note(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    note = describe_cpu_threads(torch.device("cpu"))
    assert f"{torch.get_num_threads()} threads (torch's default" in note and "OMP_NUM_THREADS=1" in note
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert "threads (OMP_NUM_THREADS)" in describe_cpu_threads(torch.device("cpu"))
    assert describe_cpu_threads(torch.device("cuda")) is None


def test_value_parsers_name_the_argument():
    import pytest

    from hf_landmark.errors import UserInputError

    assert parse_int_list("1, 5,10") == [1, 5, 10] and parse_float_pair("-1,1") == (-1.0, 1.0)
    with pytest.raises(UserInputError, match="--labels: expected comma-separated integers, got '1,five'"):
        parse_int_list("1,five", "--labels")
    with pytest.raises(UserInputError, match="--pixel-range: expected two comma-separated numbers"):
        parse_float_pair("0", "--pixel-range")


def test_training_steps_are_importable_functions(tmp_path):
    import dataclasses

    import hf_landmark
    from hf_landmark.training import fewshot_benchmark, finetune, pretrain

    assert hf_landmark.pretrain is pretrain.pretrain and hf_landmark.finetune is finetune.finetune
    assert hf_landmark.benchmark is fewshot_benchmark.benchmark
    # Their arguments are dataclasses whose defaults follow the recipes.
    args = finetune.FinetuneArguments(
        dataset=str(tmp_path), output_dir="o", num_labels=3, init="scratch", recipe="paper"
    ).resolved()
    assert dataclasses.is_dataclass(args) and (args.loss, args.learning_rate, args.max_epochs) == ("paper", 1e-4, 200)
    assert pretrain.PretrainArguments(
        dataset="org/dataset", output_dir="o", max_steps=50, save_steps="20"
    ).save_at == [20, 50]


def test_training_runs_one_after_another_at_different_precisions(synth_prepared, tmp_path, monkeypatch):
    """Accelerate fixes one precision per process; `auto` resolves by a timed training step on a
    CPU with bf16 instructions, to fp32 on one without. Forcing each answer, in either order,
    the runs must all train, each at its own precision (a second run at another precision used
    to raise), and record what decided it."""
    import json

    import hf_landmark.training_utils as tu
    from hf_landmark.training import finetune as ft

    seen, probes = [], []
    for has_bf16, faster in ((False, None), (True, "bf16"), (True, "no")):
        monkeypatch.setattr(tu, "cpu_has_bf16", lambda v=has_bf16: v)
        monkeypatch.setattr(
            tu, "probe_precision", lambda step, f=faster: (step(), {"choice": f, "fp32_s": 1.0, "bf16_s": 2.0})[1]
        )
        args = ft.FinetuneArguments(
            dataset=str(synth_prepared),
            output_dir=str(tmp_path / f"run{len(seen)}"),
            num_labels=2,
            init="scratch",
            preset="tiny",
            resolution=32,
            max_steps=2,
            eval_steps=2,
            no_refine=True,
            report_to="none",
            mixed_precision="auto",
        )
        summary = ft.finetune(args)
        seen.append(summary["mixed_precision"])
        record = json.loads((tmp_path / f"run{len(seen) - 1}" / "model" / "hf_landmark_training.json").read_text())
        probes.append((record["mixed_precision"], record["precision_probe"] and record["precision_probe"]["choice"]))
    assert seen == ["no", "bf16", "no"]
    assert probes == [("no", None), ("bf16", "bf16"), ("no", "no")]


def test_the_precision_probe_picks_the_faster_step():
    """The probe times the job's step in fp32 and under bf16 autocast; forced timings (a clock
    that advances more in one of them) decide each way."""
    from hf_landmark.training_utils import probe_precision

    for slow_in, expected in ((True, "no"), (False, "bf16")):
        clock = [0.0]
        calls = []

        def step(slow_in=slow_in, clock=clock, calls=calls):
            autocast = torch.is_autocast_enabled("cpu")
            calls.append(autocast)
            clock[0] += 0.5 if autocast == slow_in else 0.1

        result = probe_precision(step, timer=lambda clock=clock: clock[0])
        assert result["choice"] == expected and calls == [False] * 3 + [True] * 3  # a warm-up and two timed steps each
        assert (result["fp32_s"], result["bf16_s"]) == pytest.approx((0.1, 0.5) if slow_in else (0.5, 0.1))


def test_a_run_at_another_precision_autocasts_its_own_forward_passes():
    """Whatever precision the process's Accelerate state holds, each run's forward passes run
    at the run's own precision: bf16 where it asked for bf16, fp32 where it asked for fp32."""
    from accelerate.state import AcceleratorState, is_initialized

    from hf_landmark.training_utils import make_accelerator

    first, _, _ = make_accelerator("no")
    fixed = AcceleratorState().mixed_precision
    assert is_initialized() and fixed in ("no", "bf16")  # whatever the first run of this process asked for
    for precision, dtype in (("bf16", torch.bfloat16), ("no", torch.float32), ("bf16", torch.bfloat16)):
        accelerator, autocast, resolved = make_accelerator(precision)
        assert resolved == precision
        model = accelerator.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4)))
        hidden = []  # the layer's own output, inside the forward pass (Accelerate returns fp32 outputs)
        handle = model[0].register_forward_hook(lambda m, i, o, seen=hidden: seen.append(o.dtype))
        with autocast():
            model(torch.randn(2, 4))
        handle.remove()
        assert hidden == [dtype], (precision, fixed, hidden)


def test_fine_tuning_labels_the_images_coverage_selects(synth_prepared, tmp_path):
    """--selection coverage labels the images hf-landmark select would choose from the training
    split with the same network; it needs a pre-trained --init."""
    import json

    import pytest

    from hf_landmark import LandmarkConfig, LandmarkDetector, LandmarkImageProcessor
    from hf_landmark.data import load_prepared, load_tensors
    from hf_landmark.errors import UserInputError
    from hf_landmark.selection import choose, pooled_features
    from hf_landmark.training import finetune as ft

    with pytest.raises(UserInputError, match="--selection: coverage"):
        ft.FinetuneArguments(
            dataset=str(synth_prepared),
            output_dir=str(tmp_path / "x"),
            num_labels=2,
            init="scratch",
            subset="coverage",
        )
    # A detector folder stands in for a pre-trained network: its U-Net as a DDPM checkpoint.
    det = LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=1, image_size=32))
    det.backbone.unet.save_pretrained(tmp_path / "ddpm")
    args = ft.FinetuneArguments(
        dataset=str(synth_prepared),
        output_dir=str(tmp_path / "run"),
        num_labels=3,
        init=str(tmp_path / "ddpm"),
        subset="coverage",
        resolution=32,
        max_steps=1,
        eval_steps=1,
        no_refine=True,
        report_to="none",
    )
    summary = ft.finetune(args)
    model = LandmarkDetector.from_ddpm(str(tmp_path / "ddpm"), 1, image_size=32)
    train = load_tensors(load_prepared(synth_prepared)["train"], 32)
    pixels = train.pixel_values(LandmarkImageProcessor.from_model_config(model.config).pixel_range)
    expected = sorted(
        train.image_ids[i] for i in choose("coverage", train.image_ids, 3, pooled_features(model, pixels))
    )
    assert summary["labeled_image_ids"] == expected
    assert json.loads((tmp_path / "run" / "model" / "hf_landmark_training.json").read_text())["subset"] == "coverage"
