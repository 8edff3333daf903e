#!/usr/bin/env python
"""Self-supervised pre-training of the baselines' encoder (DenseNet161) with MoCo v3, SimCLR v2
or DINO on unlabeled x-rays: the paper's comparison methods.

    accelerate launch training/pretrain_ssl.py --dataset PREPARED_DIR --output-dir OUT --method mocov3

(or ``hf-landmark pretrain-ssl ...``, or ``hf_landmark.pretrain_ssl(SSLArguments(...))``), then
``hf-landmark finetune --init OUT/checkpoint-<step>`` (or ``--init mocov3=OUT/checkpoint-<step>``)
fine-tunes an ``smp_unet`` detector whose encoder starts from it. Needs
``pip install 'hf-landmark[baselines]'``.

The paper's setting is the default: the train + validation images (never test) at 256 px,
batch 4 × 8 accumulation, AdamW lr 1e-4, 10,000 steps. The objectives' losses, heads and
momentum updates are lightly's (``NTXentLoss``, ``DINOLoss``, ``SimCLRProjectionHead``,
``MoCoProjectionHead``, ``BYOLPredictionHead``, ``DINOProjectionHead``, ``update_momentum``,
``cosine_schedule``); MoCo v3's loss (InfoNCE between one view's queries and the other
view's momentum keys, negatives the batch's other keys, times 2τ) is four lines here because
lightly's ``NTXentLoss`` also takes the same view's samples as negatives (SimCLR's loss).

* **simclrv2**: 3-layer projection head (2048 hidden, 128 out, batch norm), NT-Xent, τ 0.5.
* **mocov3**: 3-layer projector (2048 hidden, 256 out, batch norm) and 2-layer predictor
  (2048 hidden); the momentum encoder's momentum rises from 0.99 to 1 on a cosine; τ 0.2.
* **dino**: 2 global views and 6 local views (3/8 of the side, a multiple of 32); head 2048
  hidden, 256 bottleneck, 4,096 prototypes (the ImageNet 65,536 are for 1.3 M images);
  teacher temperature 0.04, student 0.1, centre momentum 0.9; teacher momentum 0.996 → 1.
  The teacher's encoder is the one saved (DINO's evaluation protocol); for the other two
  methods the online encoder.

Augmentations for grayscale radiographs (no hue, saturation or grayscale conversion; one
channel throughout): random resized crop (scale 0.25–1 of the image, 0.05–0.25 for DINO's
local views, aspect 3/4–4/3), rotation ±10°, horizontal flip (p 0.5, as the authors' code),
brightness and contrast jitter 0.4 (p 0.8), Gaussian blur (p 0.5; σ 0.1–2 px at 224 px as in
SimCLR, scaled with the view size: 0.03–0.57 px at 64, 0.11–2.3 at 256), and on the second
view solarisation (p 0.2). Then the [0, 1] intensities are mapped to the detector's
``--pixel-range``.

Every ``--save-steps`` step writes ``OUT/checkpoint-<step>/``, renamed into place only when
complete: ``model.safetensors`` (the encoder, in the torchvision layout that smp-hub's ImageNet
weights also use), ``config.json``, the pre-training record ``hf_landmark_pretraining.json``,
a model card, and ``state/`` (``accelerator.save_state``, to resume exactly; pickles, never
publish them).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn

from hf_landmark.backbones import (
    BASELINES_HINT,
    ENCODER_WEIGHTS_FILE,
    PRETRAINING_INFO_FILE,
    SSL_METHODS,
    encoder_embedding,
    import_smp,
)
from hf_landmark.cards import ssl_card, write_card
from hf_landmark.data import ImagePool, dataset_info, describe_split_counts, load_prepared
from hf_landmark.errors import MissingExtraError, UserInputError, resolve_folder_or_repo
from hf_landmark.fileio import json_text
from hf_landmark.preprocessing import to_pixel_values
from hf_landmark.training_utils import (
    MIXED_PRECISION_CHOICES,
    MIXED_PRECISION_HELP,
    argument_parser,
    check_choice,
    load_resume_state,
    parse_arguments,
    parse_float_pair,
    parse_int_list,
    remove_partial_checkpoints,
    resolve_resume,
    run_accelerator,
    run_steps,
    tracker_config,
)
from hf_landmark.training_utils import save_checkpoint as save_staged_checkpoint

logger = get_logger(__name__)


@dataclass
class SSLArguments:
    """Arguments of :func:`pretrain_ssl`."""

    dataset: str = field(metadata={"help": "prepared dataset folder (hf-landmark prepare) or Hub dataset id"})
    output_dir: str = field(metadata={"help": "where checkpoint-<step>/ folders and logs go"})
    method: Literal["mocov3", "simclrv2", "dino"] = field(metadata={"help": "the self-supervised objective"})
    encoder: str = field(default="densenet161", metadata={"help": "segmentation_models_pytorch encoder name"})
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
    resolution: int = field(
        default=256, metadata={"help": "view side in pixels (a multiple of 32); the detector's input size"}
    )
    pixel_range: str = field(default="-1,1", metadata={"help": "model intensity range 'lo,hi' (the detector's)"})
    max_steps: int = field(default=10000, metadata={"help": "optimiser steps"})
    save_steps: str = field(default="10000", metadata={"help": "steps to save a checkpoint at (the last step always)"})
    train_batch_size: int = field(default=4, metadata={"help": "images per batch and process"})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "batches per optimiser step"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    temperature: float | None = field(
        default=None, metadata={"help": "contrastive temperature (default: mocov3 0.2, simclrv2 0.5)"}
    )
    max_grad_norm: float = field(default=3.0, metadata={"help": "gradient-norm clipping (0: none)"})
    mixed_precision: str = field(default="auto", metadata={"help": MIXED_PRECISION_HELP})
    seed: int = field(default=0, metadata={"help": "random seed"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint-<step> folder"}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "any Accelerate tracker, 'all' or 'none'"})
    logging_steps: int = field(default=10, metadata={"help": "log the window-mean loss and speed every N steps"})
    stop_after_steps: int | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # tests: simulate a kill

    def __post_init__(self):
        self.dataset = resolve_folder_or_repo(
            self.dataset, "--dataset", "prepared dataset", "create one with hf-landmark prepare"
        )
        resolve_resume(
            self.output_dir, self.resume_from_checkpoint
        )  # a mistyped checkpoint fails here, before any work
        check_choice("--method", self.method, SSL_METHODS)
        check_choice("--mixed-precision", self.mixed_precision, MIXED_PRECISION_CHOICES)
        self.pixel_range = parse_float_pair(self.pixel_range, "--pixel-range")
        if self.resolution % 32:
            raise UserInputError(
                f"--resolution: must be a multiple of 32 (the encoder downsamples 5 times), got {self.resolution}"
            )
        if "test" in self.splits.split(","):
            raise UserInputError("--splits: pre-training must not see the test split")
        if self.temperature is None:
            self.temperature = {"mocov3": 0.2, "simclrv2": 0.5}.get(self.method)

    @property
    def save_at(self) -> list[int]:
        return sorted(set(parse_int_list(self.save_steps, "--save-steps")) | {self.max_steps})


def parser():
    return argument_parser(SSLArguments, "hf-landmark pretrain-ssl", __doc__)


def local_resolution(resolution: int) -> int:
    """DINO's local views: 3/8 of the side (96 for 256 px), a multiple of 32, at least 32."""
    return max(32, int(round(resolution * 3 / 8 / 32)) * 32)


class RadiographViews:
    """Random views of ``[1, S, S]`` images in [0, 1] (torchvision ``transforms.v2``); see the
    module description. ``scale`` is the crop's share of the image area."""

    def __init__(self, size: int, scale=(0.25, 1.0), solarize: float = 0.0):
        from torchvision.transforms import v2

        # SimCLR's blur: σ 0.1-2 px on 224-px views, so scaled with the view size.
        sigma = (0.1 * size / 224, 2.0 * size / 224)
        kernel = 2 * math.ceil(3 * sigma[1]) + 1
        steps = [
            v2.RandomResizedCrop(size, scale=scale, ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomApply([v2.RandomRotation(10.0)], p=0.5),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=0.5),
        ]
        if solarize:
            steps.append(v2.RandomSolarize(0.5, p=solarize))
        self.transform = v2.Compose(steps)

    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` → ``[B, 1, size, size]``, each image its own random view."""
        return torch.stack([self.transform(im).clamp(0, 1) for im in images01])


def build_encoder(name: str) -> nn.Module:
    """A randomly initialised one-channel smp encoder (the ``smp_unet`` detector's)."""
    smp = import_smp()
    return smp.encoders.get_encoder(name, in_channels=1, depth=5, weights=None)


def embed(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return encoder_embedding(encoder(x))


def mocov3_loss(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's contrastive loss: each query's positive is its own image's key from the other
    view, the negatives the batch's other keys; scaled by 2τ as in the paper."""
    logits = F.normalize(query, dim=1) @ F.normalize(key, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device)) * 2 * temperature


class SSLModel(nn.Module):
    """The encoder with a method's heads (and momentum copies); ``forward(images01)`` returns
    the loss for a batch of unaugmented images in [0, 1]; :meth:`update_momentum_networks`
    runs once per optimiser step; :meth:`export_encoder` is what fine-tuning loads."""

    def __init__(self, method: str, encoder_name: str, resolution: int, pixel_range, temperature: float | None):
        super().__init__()
        self.encoder = build_encoder(encoder_name)  # first: a missing extra is named here
        try:
            from lightly.loss import DINOLoss, NTXentLoss
            from lightly.models.modules.heads import (
                BYOLPredictionHead,
                DINOProjectionHead,
                MoCoProjectionHead,
                SimCLRProjectionHead,
            )
            from lightly.models.utils import deactivate_requires_grad
        except ImportError as err:
            raise MissingExtraError(f"self-supervised pre-training needs lightly ({err}); {BASELINES_HINT}") from err

        self.method, self.pixel_range, self.temperature = method, tuple(pixel_range), temperature
        dim = self.encoder.out_channels[-1]
        self.views = [RadiographViews(resolution), RadiographViews(resolution, solarize=0.2)]
        if method == "simclrv2":
            make_head = lambda: SimCLRProjectionHead(dim, 2048, 128, num_layers=3, batch_norm=True)  # noqa: E731
            self.criterion = NTXentLoss(temperature=temperature)
        elif method == "mocov3":
            make_head = lambda: MoCoProjectionHead(dim, 2048, 256, num_layers=3, batch_norm=True)  # noqa: E731
            self.predictor = BYOLPredictionHead(256, 2048, 256)
        elif method == "dino":
            make_head = lambda: DINOProjectionHead(dim, 2048, 256, 4096, batch_norm=True)  # noqa: E731
            self.criterion = DINOLoss(
                output_dim=4096, warmup_teacher_temp=0.04, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9
            )
            self.local_views = RadiographViews(local_resolution(resolution), scale=(0.05, 0.25))
            self.num_local = 6
        else:
            raise ValueError(f"unknown method {method!r}")
        self.head = make_head()
        if method in ("mocov3", "dino"):
            # The momentum copies start equal to the online networks (a weight-normalised
            # layer cannot be deep-copied, hence a new head loaded with the online one's state).
            self.momentum_encoder = copy.deepcopy(self.encoder)
            self.momentum_head = make_head()
            self.momentum_head.load_state_dict(self.head.state_dict())
            deactivate_requires_grad(self.momentum_encoder)
            deactivate_requires_grad(self.momentum_head)

    def _pixels(self, views01: torch.Tensor) -> torch.Tensor:
        return to_pixel_values(views01, self.pixel_range)

    @torch.no_grad()
    def update_momentum_networks(self, progress: float) -> None:
        """Move the momentum encoder and head towards the online ones, once per optimiser step
        (momentum 0.99 → 1 for MoCo v3, 0.996 → 1 for DINO, on a cosine over ``progress``)."""
        if self.method == "simclrv2":
            return
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        momentum = cosine_schedule(int(progress * 1000), 1000, 0.99 if self.method == "mocov3" else 0.996, 1.0)
        update_momentum(self.encoder, self.momentum_encoder, momentum)
        update_momentum(self.head, self.momentum_head, momentum)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        views = [self._pixels(v(images01.cpu()).to(images01.device)) for v in self.views]
        if self.method == "simclrv2":
            return self.criterion(*(self.head(embed(self.encoder, v)) for v in views))
        with torch.no_grad():
            keys = [self.momentum_head(embed(self.momentum_encoder, v)) for v in views]
        if self.method == "mocov3":
            queries = [self.predictor(self.head(embed(self.encoder, v))) for v in views]
            return mocov3_loss(queries[0], keys[1], self.temperature) + mocov3_loss(
                queries[1], keys[0], self.temperature
            )
        local = [self._pixels(self.local_views(images01.cpu()).to(images01.device)) for _ in range(self.num_local)]
        student = [self.head(embed(self.encoder, v)) for v in views + local]
        return self.criterion(keys, student)

    def export_encoder(self) -> nn.Module:
        """The encoder fine-tuning starts from: DINO's teacher, else the online encoder."""
        return self.momentum_encoder if self.method == "dino" else self.encoder


def pretrain_ssl(args: SSLArguments) -> str:
    """Pre-train an encoder; returns the folder of its last checkpoint."""
    accelerator, autocast, mixed_precision = run_accelerator(args, args.mixed_precision)
    set_seed(args.seed, device_specific=True)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        remove_partial_checkpoints(args.output_dir)

    images = ImagePool(
        load_prepared(args.dataset), args.splits, args.resolution, args.dataset, max_bytes=args.pool_memory_mb * 2**20
    ).to(accelerator.device)
    num_images, split_counts = len(images), images.counts
    logger.info(
        "pre-training on %s from %s (%s)",
        describe_split_counts(split_counts),
        args.dataset,
        "decoded in memory" if images.in_memory else "read from its Arrow files batch by batch",
    )
    if num_images < 2 and args.method != "dino":
        raise UserInputError(
            f"{args.dataset}: {args.method} contrasts images with each other; it needs at least 2, found {num_images}"
        )

    model = SSLModel(args.method, args.encoder, args.resolution, args.pixel_range, args.temperature)
    num_parameters = sum(p.numel() for p in model.encoder.parameters())
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    model, optimizer = accelerator.prepare(model, optimizer)

    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint)
    global_step = load_resume_state(accelerator, args, resume)
    if accelerator.is_main_process:
        accelerator.init_trackers("pretrain_ssl", config=tracker_config(args))
    effective_batch = args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    batch = f"batch {effective_batch} ({args.train_batch_size} x {args.gradient_accumulation_steps} x {accelerator.num_processes} processes)"
    logger.info(
        "%s pre-training of %s (%.2f M parameters) on %d images at %d px, %s, %d steps, %s precision",
        *(args.method, args.encoder, num_parameters / 1e6, num_images, args.resolution, batch, args.max_steps),
        mixed_precision,
    )
    record = ssl_record(args, images, num_parameters, effective_batch, mixed_precision)
    unwrapped = accelerator.unwrap_model(model)

    def step(at: int) -> float:
        # Once per optimiser step, not per accumulated batch (that would compound the momentum).
        unwrapped.update_momentum_networks(at / args.max_steps)
        return train_step(args, accelerator, autocast, (model, optimizer, images), at)

    def save(at: int, facts: dict) -> None:
        save_checkpoint(accelerator, model, args, dict(record, step=at, **facts))

    model.train()
    global_step = run_steps(args, accelerator, step, save, global_step, f"{args.method} pre-training")
    accelerator.end_training()
    return os.path.join(args.output_dir, f"checkpoint-{global_step}")


def ssl_record(args: SSLArguments, images, num_parameters: int, effective_batch: int, mixed_precision: str) -> dict:
    """What each checkpoint records about its training (its pre-training record and card)."""
    num_images, split_counts = len(images), images.counts
    return {
        "method": args.method,
        "encoder_name": args.encoder,
        "in_channels": 1,
        "dataset": str(args.dataset),
        "dataset_name": dataset_info(args.dataset).get("kind"),
        "splits": args.splits,
        "split_counts": split_counts,
        "num_images": num_images,
        "num_parameters": num_parameters,
        "resolution": args.resolution,
        "pixel_range": list(args.pixel_range),
        "temperature": args.temperature,
        "effective_batch_size": effective_batch,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "mixed_precision": mixed_precision,
    }


def train_step(args: SSLArguments, accelerator, autocast, parts, global_step: int) -> float:
    """One optimiser step (``gradient_accumulation_steps`` batches); returns its mean loss. A
    non-finite loss ends the run with the checkpoints intact."""
    model, optimizer, images = parts
    step_loss = 0.0
    for _ in range(args.gradient_accumulation_steps):
        with accelerator.accumulate(model):
            idx = torch.randint(0, len(images), (args.train_batch_size,))
            with autocast():
                loss = model(images[idx]).float()
            if not torch.isfinite(loss):
                accelerator.end_training()
                raise UserInputError(
                    f"{args.output_dir}: pre-training diverged: the loss became {loss.item()} at step "
                    f"{global_step + 1}; lower --learning-rate (now {args.learning_rate:g})"
                )
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach().item() / args.gradient_accumulation_steps
    return step_loss


def save_checkpoint(accelerator, model, args, info: dict) -> None:
    """Write checkpoint-<step> under a temporary name, then rename it into place."""
    from safetensors.torch import save_file

    def write_files(tmp_path):
        encoder = accelerator.unwrap_model(model).export_encoder()
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, str(tmp_path / ENCODER_WEIGHTS_FILE), metadata={"format": "pt"})
        with open(tmp_path / "config.json", "w", encoding="utf-8") as fh:
            fh.write(json_text({"encoder_name": info["encoder_name"], "in_channels": 1, "layout": "torchvision"}))
        with open(tmp_path / PRETRAINING_INFO_FILE, "w", encoding="utf-8") as fh:
            fh.write(json_text(info))
        write_card(ssl_card(info), str(tmp_path))

    final = save_staged_checkpoint(accelerator, args.output_dir, info["step"], write_files)
    if final is not None:
        logger.info("saved %s", final)


def main(argv=None) -> str:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return pretrain_ssl(parse_arguments(parser(), SSLArguments, argv))


if __name__ == "__main__":
    main()
