#!/usr/bin/env python
"""Throughput and peak memory of one DDPM pre-training step (forward, ε-MSE, backward, AdamW)
per preset, resolution and precision on the current device. Prints a Markdown table.

    python training/benchmark_pretrain.py --presets tiny,small,base --resolutions 64,128,256 --batch-size 4
    python training/benchmark_pretrain.py --refiner --presets tiny,small --resolutions 64 --fine-size 512 --batch-size 16

``--refiner`` times a refinement-stage training step instead: crops of ``--fine-size`` images
(``refiner_batch``, as fine-tuning cuts them), the refiner's forward on each crop's own
channel, the contour loss, backward and AdamW; ``--resolutions`` are then crop sizes and
``--batch-size`` crops. (Pre-training the refiner as a DDPM on crops costs a DDPM step at
the crop size: the rows without ``--refiner``.)

The paper's baselines (``hf-landmark[baselines]``):

    python training/benchmark_pretrain.py --backbone smp_unet --presets densenet161 --resolutions 64,128,256
    python training/benchmark_pretrain.py --ssl mocov3,simclrv2,dino --presets densenet161 --resolutions 64

``--backbone smp_unet`` times a detector fine-tuning step of the DenseNet U-Net (forward, the
contour loss on 19 landmarks, backward, AdamW; ``--presets`` are encoder names);
``--backbone unet2d`` the same step for a U-Net preset, to compare like with like. ``--ssl``
times a self-supervised pre-training step of the encoder (the views, the method's heads and
momentum networks, its loss, backward, AdamW).

Each configuration runs in a fresh process, so "peak memory" is that configuration's own:
peak resident memory of the process on CPU (libraries included), peak allocated memory on CUDA.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from hf_landmark.training.pretrain import build_unet
from hf_landmark.training_utils import parse_int_list


@dataclass(frozen=True)
class Timing:
    """How a step is timed: its precision, batch, warm-up and timed steps, and the device."""

    precision: str
    batch: int
    warmup: int
    steps: int
    device: str


def step_time(preset: str, size: int, timing: Timing) -> tuple[float, float, int]:
    batch, device = timing.batch, timing.device
    torch.manual_seed(0)
    unet = build_unet(preset, size).to(device)
    sched = DDPMScheduler(num_train_timesteps=500, beta_schedule="linear")
    x = torch.rand(batch, 1, size, size, device=device) * 2 - 1

    def loss_of_one_step():
        noise = torch.randn_like(x)
        t = torch.randint(0, 500, (batch,), device=device)
        return F.mse_loss(unet(sched.add_noise(x, noise, t), t).sample.float(), noise)

    return measure(unet, loss_of_one_step, timing)


def measure(module, loss_of_one_step, timing: Timing, trainable=None) -> tuple[float, float, int]:
    """``(items/s, peak memory MiB, parameters)`` of AdamW steps on ``loss_of_one_step()``
    (its forward runs under the precision's autocast) over ``trainable`` (default: all)."""
    precision, batch, warmup, steps, device = (
        timing.precision,
        timing.batch,
        timing.warmup,
        timing.steps,
        timing.device,
    )
    params = sum(p.numel() for p in module.parameters())
    opt = torch.optim.AdamW(module.parameters() if trainable is None else trainable, lr=1e-4)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_of_one_step()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (MiB)
    elapsed = (time.perf_counter() - start) / steps
    return batch / elapsed, peak, params


def refiner_step_time(preset: str, crop: int, fine: int, timing: Timing):
    from hf_landmark import LandmarkConfig, LandmarkDetector
    from hf_landmark.losses import get_loss
    from hf_landmark.modeling_landmark import own_channel
    from hf_landmark.refinement import refiner_batch

    torch.manual_seed(0)
    config = LandmarkConfig(
        backbone_config="tiny",
        num_landmarks=19,
        image_size=64,
        refine_size=fine,
        refine_crop=crop,
        refine_backbone_config=preset,
        refine_sigma=2.0,
    )
    batch, device = timing.batch, timing.device
    refiner = LandmarkDetector(config).refiner.to(device)
    images = torch.rand(4, 1, fine, fine, device=device)
    truth = torch.rand(4, 19, 2, device=device) * (fine - 1)
    offsets = torch.randn(20, 19, 2) * 6
    loss_fn = get_loss(config.refine_loss)

    def loss_of_one_step():
        crops, landmark, local = refiner_batch(images, truth, offsets, config, batch)
        return loss_fn(own_channel(refiner(crops)[0], landmark), local, config.refine_sigma)

    return measure(refiner, loss_of_one_step, timing)


def detector_step_time(backbone: str, preset: str, size: int, timing: Timing):
    from hf_landmark import LandmarkConfig, LandmarkDetector

    batch, device = timing.batch, timing.device
    torch.manual_seed(0)
    config = LandmarkConfig(
        backbone=backbone,
        backbone_config=preset if backbone == "unet2d" else {"encoder_name": preset},
        num_landmarks=19,
        image_size=size,
        sigma=6.0 * size / 256,
    )
    model = LandmarkDetector(config).to(device).train()
    x = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    labels = torch.rand(batch, 19, 2, device=device) * (size - 1)
    return measure(model, lambda: model(x, labels=labels).loss, timing)


def ssl_step_time(method: str, encoder: str, size: int, timing: Timing):
    from hf_landmark.training.pretrain_ssl import SSLModel

    batch, device = timing.batch, timing.device
    torch.manual_seed(0)
    model = (
        SSLModel(method, encoder, size, (-1.0, 1.0), {"mocov3": 0.2, "simclrv2": 0.5}.get(method)).to(device).train()
    )
    images = torch.rand(batch, 1, size, size, device=device)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_of_one_step():
        model.update_momentum_networks(0.5)
        return model(images)

    ips, peak, _ = measure(model, loss_of_one_step, timing, params)
    return ips, peak, sum(p.numel() for p in model.encoder.parameters())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,small,base,large")
    p.add_argument("--resolutions", default="64,128,256")
    p.add_argument("--precisions", default=None, help="default: fp32 and bf16 on CPU, fp32 and fp16 on CUDA")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--refiner", action="store_true", help="time a refinement-stage training step (see above)")
    p.add_argument(
        "--fine-size", type=int, default=512, help="with --refiner: the fine image side the crops come from"
    )
    p.add_argument(
        "--backbone",
        choices=["unet2d", "smp_unet"],
        help="time a detector fine-tuning step of this backbone (see above)",
    )
    p.add_argument(
        "--ssl", help="time self-supervised pre-training steps of these methods, comma-separated (see above)"
    )
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = (args.precisions or ("fp32,fp16" if device == "cuda" else "fp32,bf16")).split(",")
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch_size}; torch {torch.__version__}")
    what = (
        f"refiner crops from {args.fine_size} px"
        if args.refiner
        else f"fine-tuning {args.backbone}"
        if args.backbone
        else "DDPM"
    )
    print(
        f"| preset | parameters | {'crop' if args.refiner else 'resolution'} | precision | {'crops' if args.refiner else 'images'}/s | s/step | peak memory (MiB) | step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    methods = args.ssl.split(",") if args.ssl else [None]
    for preset, method in [(p, m) for p in args.presets.split(",") for m in methods]:
        for size in parse_int_list(args.resolutions):
            for precision in precisions:
                # A fresh process per configuration: its peak memory is its own.
                timing = Timing(precision, args.batch_size, args.warmup, args.steps, device)
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    if method:
                        job = pool.submit(ssl_step_time, method, preset, size, timing)
                        what = f"{method} pre-training"
                    elif args.backbone:
                        job = pool.submit(detector_step_time, args.backbone, preset, size, timing)
                    elif args.refiner:
                        job = pool.submit(refiner_step_time, preset, size, args.fine_size, timing)
                    else:
                        job = pool.submit(step_time, preset, size, timing)
                    ips, peak, params = job.result()
                print(
                    f"| {preset} | {params / 1e6:.2f} M | {size} | {precision} | {ips:.2f} | {args.batch_size / ips:.3f} | {peak:.0f} | {what} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
