#!/usr/bin/env python
"""DDPM self-supervised pre-training of a diffusers ``UNet2DModel`` on unlabeled x-rays.

    accelerate launch training/pretrain.py --dataset PREPARED_DIR --output-dir OUT --preset base

(or ``hf-landmark pretrain ...``, or ``hf_landmark.pretrain(PretrainArguments(...))``). The paper's recipe is the default: 500 diffusion steps,
linear β, ε-prediction with MSE, AdamW lr 1e-4, batch 4 × 8 accumulation, EMA 0.995,
gradient clipping. ``--recipe paper`` additionally reproduces the paper code's details
(intensities in [0, 1] instead of [-1, 1], t drawn from 1..499, clipping by value 1.0).
It trains on the unlabeled, train and validation splits (their images, never their labels),
never on test.

Every ``--save-steps`` step writes ``OUT/checkpoint-<step>/``, renamed into place only when
complete: a diffusers ``DDPMPipeline`` of the EMA weights (``model_index.json``, ``unet/``,
``scheduler/``, safetensors; ``DDPMPipeline.from_pretrained(checkpoint)`` samples from it),
its pre-training record and model card, ``samples.png``, and ``state/``
(``accelerator.save_state``, to resume; pickles, never publish them).

Multi-process: ``accelerate launch --multi_gpu --num_processes K ...`` on GPUs; on CPUs
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ...`` (plain
``--cpu --num_processes 2`` silently runs one process). Multi-node: Accelerate's
``--num_machines/--machine_rank/--main_process_ip``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image

from hf_landmark.backbones import PRETRAINING_INFO_FILE
from hf_landmark.cards import ddpm_card, write_card
from hf_landmark.configuration_landmark import UNET_PRESETS, unet_kwargs
from hf_landmark.data import ImagePool, dataset_info, describe_split_counts, load_prepared, random_affine
from hf_landmark.errors import UserInputError, resolve_folder_or_repo
from hf_landmark.fileio import json_text
from hf_landmark.preprocessing import crop_patches, to_pixel_values, to_uint8
from hf_landmark.training_utils import (
    MIXED_PRECISION_CHOICES,
    MIXED_PRECISION_HELP,
    argument_parser,
    check_choice,
    choose_mixed_precision,
    load_resume_state,
    parse_arguments,
    parse_float_pair,
    parse_int_list,
    remove_partial_checkpoints,
    resolve_resume,
    run_accelerator,
    run_steps,
    tracker_config,
    training_step_probe,
)
from hf_landmark.training_utils import save_checkpoint as save_staged_checkpoint

logger = get_logger(__name__)

RECIPES = {
    # The paper's hyper-parameters with the usual diffusers conventions.
    "default": {"pixel_range": "-1,1", "min_timestep": 0, "clip_grad_value": None},
    # The paper's code: images in [0, 1], t from 1..499, gradients clipped by value 1.0.
    "paper": {"pixel_range": "0,1", "min_timestep": 1, "clip_grad_value": 1.0},
}


@dataclass
class PretrainArguments:
    """Arguments of :func:`pretrain`; ``None`` means the recipe's value."""

    dataset: str = field(metadata={"help": "prepared dataset folder (hf-landmark prepare) or Hub dataset id"})
    output_dir: str = field(metadata={"help": "where checkpoint-<step>/ folders and logs go"})
    splits: str = field(
        default="unlabeled,train,validation",
        metadata={"help": "splits to pre-train on (never test; those the dataset lacks are skipped)"},
    )
    pool_memory_mb: float = field(
        default=1024,
        metadata={
            "help": "a pool whose decoded images take more than this (MB) is read from its Arrow files batch by batch instead of memory"
        },
    )
    preset: str = field(default="base", metadata={"help": f"U-Net preset: {', '.join(sorted(UNET_PRESETS))}"})
    resolution: int = field(
        default=256, metadata={"help": "image side in pixels (a multiple of 8); with --crop-from the crop side"}
    )
    crop_from: int = field(
        default=0,
        metadata={
            "help": "pre-train a refinement stage: random --resolution-px crops of the images "
            "resized to this side (the detector's refine size, e.g. 512); 0: whole images"
        },
    )
    recipe: Literal["default", "paper"] = field(default="default", metadata={"help": "see the description above"})
    pixel_range: str | None = field(
        default=None, metadata={"help": "model intensity range 'lo,hi' (default: the recipe's)"}
    )
    min_timestep: int | None = field(
        default=None, metadata={"help": "smallest training timestep (default: the recipe's)"}
    )
    max_steps: int = field(default=10000, metadata={"help": "optimiser steps"})
    save_steps: str = field(
        default="4000,6000,8000,10000", metadata={"help": "steps to save a checkpoint at (the last step always)"}
    )
    train_batch_size: int = field(default=4, metadata={"help": "per process"})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "batches per optimiser step"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    lr_scheduler: str = field(
        default="constant", metadata={"help": "diffusers learning-rate schedule (constant, linear, cosine, ...)"}
    )
    lr_warmup_steps: int = field(default=0, metadata={"help": "warm-up steps of the schedule"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm clipping (0: none)"})
    clip_grad_value: float | None = field(
        default=None, metadata={"help": "clip by value instead of norm (default: the recipe's)"}
    )
    ema_decay: float = field(default=0.995, metadata={"help": "EMA decay of the saved weights"})
    num_train_timesteps: int = field(default=500, metadata={"help": "diffusion steps"})
    beta_schedule: str = field(default="linear", metadata={"help": "noise schedule (diffusers DDPMScheduler)"})
    no_augment: bool = field(default=False, metadata={"help": "disable the ±2° / ±2 %% / ±2 %% augmentation"})
    mixed_precision: str = field(default="auto", metadata={"help": MIXED_PRECISION_HELP})
    seed: int = field(default=0, metadata={"help": "random seed"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint-<step> folder"}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "any Accelerate tracker, 'all' or 'none'"})
    logging_steps: int = field(default=10, metadata={"help": "log the window-mean loss and speed every N steps"})
    num_samples: int = field(default=16, metadata={"help": "images in each checkpoint's sample grid (0: none)"})
    sample_inference_steps: int = field(
        default=50, metadata={"help": "DDIM steps for samples (0: the full DDPM chain)"}
    )
    stop_after_steps: int | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # tests: simulate a kill

    def __post_init__(self):
        self.dataset = resolve_folder_or_repo(
            self.dataset, "--dataset", "prepared dataset", "create one with hf-landmark prepare"
        )
        resolve_resume(
            self.output_dir, self.resume_from_checkpoint
        )  # a mistyped checkpoint fails here, before any work
        check_choice("--preset", self.preset, UNET_PRESETS)
        check_choice("--mixed-precision", self.mixed_precision, MIXED_PRECISION_CHOICES)
        recipe = RECIPES[self.recipe]
        self.pixel_range = parse_float_pair(self.pixel_range or recipe["pixel_range"], "--pixel-range")
        self.min_timestep = recipe["min_timestep"] if self.min_timestep is None else self.min_timestep
        self.clip_grad_value = recipe["clip_grad_value"] if self.clip_grad_value is None else self.clip_grad_value
        if self.resolution % 8:
            raise UserInputError(f"--resolution: must be a multiple of 8, got {self.resolution}")
        if self.crop_from and self.crop_from < self.resolution:
            raise UserInputError(
                f"--crop-from: the crops ({self.resolution} px) must fit in the images ({self.crop_from} px)"
            )
        if "test" in self.splits.split(","):
            raise UserInputError("--splits: pre-training must not see the test split")

    @property
    def save_at(self) -> list[int]:
        return sorted(set(parse_int_list(self.save_steps, "--save-steps")) | {self.max_steps})


def parser():
    return argument_parser(PretrainArguments, "hf-landmark pretrain", __doc__)


def build_unet(preset: str, resolution: int) -> UNet2DModel:
    return UNet2DModel(**unet_kwargs(preset, resolution, out_channels=1))


@torch.no_grad()
def sample_grid(unet: UNet2DModel, args, num: int, seed: int) -> Image.Image:
    """Generate ``num`` images with the (EMA) U-Net and tile them into one grayscale picture."""
    if args.sample_inference_steps and args.sample_inference_steps < args.num_train_timesteps:
        scheduler = DDIMScheduler(
            num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule, clip_sample=False
        )
        pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
        kwargs = {"num_inference_steps": args.sample_inference_steps, "eta": 0.0}
    else:
        scheduler = DDPMScheduler(
            num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule, clip_sample=False
        )
        pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
        kwargs = {"num_inference_steps": args.num_train_timesteps}
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        batch_size=num, generator=torch.Generator(device="cpu").manual_seed(seed), output_type="np", **kwargs
    ).images
    # The pipelines map x -> x / 2 + 0.5 (for [-1, 1] data); undo that, then map our range to [0, 1].
    lo, hi = args.pixel_range
    images01 = ((out[..., 0] - 0.5) * 2.0 - lo) / (hi - lo)
    cols = int(math.ceil(math.sqrt(num)))
    rows = int(math.ceil(num / cols))
    s = images01.shape[1]
    grid = np.zeros((rows * s, cols * s), dtype=np.float32)
    for i, im in enumerate(images01):
        r, c = divmod(i, cols)
        grid[r * s : (r + 1) * s, c * s : (c + 1) * s] = im
    return Image.fromarray(to_uint8(grid), mode="L")


def pretrain(args: PretrainArguments) -> str:
    """Pre-train a DDPM; returns the folder of its last checkpoint (a ``DDPMPipeline``)."""
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint)
    precision, probe = choose_precision(args, resume)
    accelerator, autocast, mixed_precision = run_accelerator(args, precision)
    set_seed(args.seed, device_specific=True)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        remove_partial_checkpoints(args.output_dir)
    # Data: the train (+ validation) images, decoded once at the model resolution (or at
    # --crop-from, which the crops are cut from).
    images = ImagePool(
        load_prepared(args.dataset),
        args.splits,
        args.crop_from or args.resolution,
        args.dataset,
        max_bytes=args.pool_memory_mb * 2**20,
    ).to(accelerator.device)
    logger.info(
        "pre-training on %s from %s (%s)",
        describe_split_counts(images.counts),
        args.dataset,
        "decoded in memory" if images.in_memory else "read from its Arrow files batch by batch",
    )
    logger.info(accelerator.state, main_process_only=False)
    run = build_run(args, accelerator, autocast, images)
    global_step = load_resume_state(accelerator, args, resume)
    if accelerator.is_main_process:
        accelerator.init_trackers("pretrain", config=tracker_config(args))
    record = pretraining_record(args, run, mixed_precision, probe)
    logger.info(
        "pre-training %s (%.2f M parameters) on %d images at %d px, batch %d (%d x %d x %d processes), %d steps, %s precision",
        args.preset,
        record["num_parameters"] / 1e6,
        record["num_images"],
        args.resolution,
        record["effective_batch_size"],
        args.train_batch_size,
        args.gradient_accumulation_steps,
        accelerator.num_processes,
        args.max_steps,
        mixed_precision,
    )
    global_step = train_loop(args, run, global_step, record)
    accelerator.end_training()
    return os.path.join(args.output_dir, f"checkpoint-{global_step}")


def choose_precision(args: PretrainArguments, resume) -> tuple[str, dict | None]:
    """``--mixed-precision``; auto: a timed training step of this U-Net at this size decides
    between bf16 and fp32 on a CPU, and a resumed run keeps the precision its checkpoint
    recorded (bit-exact resume)."""
    choice = args.mixed_precision
    if (
        choice == "auto"
        and resume is not None
        and os.path.isfile(info := os.path.join(resume[1], PRETRAINING_INFO_FILE))
    ):
        with open(info, encoding="utf-8") as fh:
            choice = json.load(fh).get("mixed_precision") or choice
    n = min(2, args.train_batch_size)  # two images: the probe costs six small training steps
    probe_inputs = {"sample": torch.randn(n, 1, args.resolution, args.resolution), "timestep": torch.full((n,), 100)}
    return choose_mixed_precision(
        choice, training_step_probe(lambda: build_unet(args.preset, args.resolution), probe_inputs)
    )


@dataclass
class PretrainRun:
    """What the training loop works with: the Accelerator and its autocast, the images, the
    (prepared) U-Net, its moving average, the optimiser and both schedules."""

    accelerator: Any
    autocast: Any
    images: Any
    unet: Any
    ema: Any
    optimizer: Any
    lr_scheduler: Any
    noise_scheduler: Any
    num_parameters: int


def build_run(args: PretrainArguments, accelerator, autocast, images) -> PretrainRun:
    unet = build_unet(args.preset, args.resolution)
    num_parameters = sum(p.numel() for p in unet.parameters())
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=UNet2DModel, model_config=unet.config)
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
    )
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return PretrainRun(
        accelerator, autocast, images, unet, ema, optimizer, lr_scheduler, noise_scheduler, num_parameters
    )


def pretraining_record(args: PretrainArguments, run: PretrainRun, mixed_precision: str, probe) -> dict:
    """What each checkpoint records about its training (hf_landmark_pretraining.json and the card)."""
    return {
        "dataset": str(args.dataset),
        "dataset_name": dataset_info(args.dataset).get("kind"),
        "splits": args.splits,
        "split_counts": run.images.counts,
        "num_images": len(run.images),
        "preset": args.preset,
        "num_parameters": run.num_parameters,
        "resolution": args.resolution,
        "crop_from": args.crop_from,
        "pixel_range": list(args.pixel_range),
        "num_train_timesteps": args.num_train_timesteps,
        "beta_schedule": args.beta_schedule,
        "prediction_type": "epsilon",
        "effective_batch_size": args.train_batch_size
        * args.gradient_accumulation_steps
        * run.accelerator.num_processes,
        "learning_rate": args.learning_rate,
        "ema_decay": args.ema_decay,
        "recipe": args.recipe,
        "seed": args.seed,
        "mixed_precision": mixed_precision,
        "precision_probe": probe,
    }


def train_step(args: PretrainArguments, run: PretrainRun, global_step: int) -> float:
    """One optimiser step (``gradient_accumulation_steps`` batches of noised images or crops);
    returns its mean loss. A non-finite loss ends the run with the checkpoints intact."""
    accelerator, unet, images = run.accelerator, run.unet, run.images
    step_loss = 0.0
    for _ in range(args.gradient_accumulation_steps):
        with accelerator.accumulate(unet):
            idx = torch.randint(0, len(images), (args.train_batch_size,))
            clean = images[idx]
            if not args.no_augment:
                clean, _ = random_affine(clean, clean.new_zeros(clean.shape[0], 0, 2))
            if args.crop_from:
                origins = torch.randint(
                    0, args.crop_from - args.resolution + 1, (clean.shape[0], 1, 2), device=clean.device
                )
                clean = crop_patches(clean, origins, args.resolution, fill=0.0)[:, 0]
            clean = to_pixel_values(clean, args.pixel_range)
            noise = torch.randn_like(clean)
            t = torch.randint(args.min_timestep, args.num_train_timesteps, (clean.shape[0],), device=clean.device)
            noisy = run.noise_scheduler.add_noise(clean, noise, t)
            with run.autocast():
                pred = unet(noisy, t).sample
            loss = F.mse_loss(pred.float(), noise)
            if not torch.isfinite(loss):
                accelerator.end_training()
                last = max((s for s in args.save_at if s <= global_step), default=None)
                raise UserInputError(
                    f"{args.output_dir}: pre-training diverged: the loss became {loss.item()} at step {global_step + 1}; "
                    f"lower --learning-rate (now {args.learning_rate:g})"
                    + (f"; checkpoint-{last} and earlier are intact" if last else "; no checkpoint was written")
                )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if args.clip_grad_value:
                    accelerator.clip_grad_value_(unet.parameters(), args.clip_grad_value)
                elif args.max_grad_norm:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
            run.optimizer.step()
            run.lr_scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach().item() / args.gradient_accumulation_steps
    return step_loss


def train_loop(args: PretrainArguments, run: PretrainRun, global_step: int, record: dict) -> int:
    """Steps from ``global_step`` to ``--max-steps`` (:func:`hf_landmark.training_utils.run_steps`),
    the moving average updated after each; returns the last step."""

    def step(at: int) -> float:
        loss = train_step(args, run, at)
        run.ema.step(run.unet.parameters())
        return loss

    def save(at: int, facts: dict) -> None:
        save_checkpoint(run.accelerator, run.unet, run.ema, args, dict(record, step=at, **facts))

    def extra_logs() -> dict:
        return {"lr": run.lr_scheduler.get_last_lr()[0], "ema_decay": run.ema.cur_decay_value}

    run.unet.train()
    return run_steps(args, run.accelerator, step, save, global_step, "pre-training", extra_logs)


def main(argv=None) -> str:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return pretrain(parse_arguments(parser(), PretrainArguments, argv))


def save_checkpoint(accelerator, unet, ema, args, info: dict):
    """Write checkpoint-<step> under a temporary name, then rename it into place."""

    def write_files(tmp_path):
        # Building the EMA copy draws random initial weights; keep the training RNG untouched
        # so that a resumed run continues exactly like an uninterrupted one.
        with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
            write_weights_and_samples(accelerator, unet, ema, args, str(tmp_path), info)

    final = save_staged_checkpoint(accelerator, args.output_dir, info["step"], write_files)
    if final is not None:
        logger.info("saved %s", final)


def write_weights_and_samples(accelerator, unet, ema, args, tmp_path, info: dict):
    """The EMA U-Net and its noise schedule as a diffusers ``DDPMPipeline`` (safetensors),
    the pre-training record, the card, and samples."""
    ema_unet = UNet2DModel.from_config(accelerator.unwrap_model(unet).config)
    ema.copy_to(ema_unet.parameters())
    scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule)
    DDPMPipeline(unet=ema_unet, scheduler=scheduler).save_pretrained(tmp_path, safe_serialization=True)
    with open(os.path.join(tmp_path, PRETRAINING_INFO_FILE), "w", encoding="utf-8") as fh:
        fh.write(json_text(info))
    write_card(ddpm_card(info), tmp_path)
    if args.num_samples > 0:
        grid = sample_grid(ema_unet.to(accelerator.device), args, args.num_samples, seed=args.seed)
        grid.save(os.path.join(tmp_path, "samples.png"))
        accelerator.log({"samples_saved_at": info["step"]}, step=info["step"])


if __name__ == "__main__":
    main()
