"""Fine-tuning's stages as library code: the first stage (the heatmap detector) and both stages in
order (:func:`train_two_stages`; the refinement stage is :func:`hf_landmark.refinement.train_refiner`),
on the shared loop of :mod:`hf_landmark.training_loop`. ``training/finetune.py`` resolves the
arguments and calls them."""

from __future__ import annotations

import math
import shutil
import time
from functools import partial

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from .errors import UserInputError
from .evaluation import compute_metrics, predict_tensors
from .preprocessing import to_pixel_values
from .refinement import train_refiner
from .training_loop import Selection, Stages, StageSettings, augment, save_model_atomic, weight_average
from .training_utils import long_run_warning

logger = get_logger(__name__)


def train_two_stages(
    ctx: Stages, model, train, model_dir: str, record: dict, weights: torch.Tensor | None = None, tag: str = ""
) -> dict:
    """The first stage on ``train`` (``weights``: each image's sampling weight; None: uniform),
    then the refinement stage on the best first stage, both selected on ``val``; the best model
    goes to ``model_dir``. ``tag`` prefixes the tracker's keys (a self-training round).
    Returns ``{"best", "first_stage", "refine", "steps", "history", "wrote_model"}``."""
    first = train_first_stage(ctx, model, train, model_dir, record, weights, tag)
    best, refine_summary = dict(first["best"]), None
    if ctx.fine_size and first["wrote_model"]:
        refine_summary, best = train_refiner(ctx, model_dir, train, record, first["best"], weights, tag)
    return {
        "best": best,
        "first_stage": first["best"],
        "refine": refine_summary,
        "steps": first["steps"],
        "history": first["history"],
        "wrote_model": first["wrote_model"],
    }


def first_stage_schedule(settings: StageSettings, num_images: int) -> tuple[int, int]:
    """``(max_steps, eval_steps)``: the settings', or from ``max_epochs`` over ``num_images``."""
    max_steps, eval_steps = settings.max_steps, settings.eval_steps
    if max_steps is None:
        batches_per_epoch = math.ceil(num_images / settings.train_batch_size)
        max_steps = max(1, math.ceil(settings.max_epochs * batches_per_epoch / settings.gradient_accumulation_steps))
        eval_steps = eval_steps or max(1, math.ceil(batches_per_epoch / settings.gradient_accumulation_steps))
    return max_steps, eval_steps


def diverged_error(settings: StageSettings, what: str) -> UserInputError:
    return UserInputError(
        f"{settings.output_dir}: fine-tuning diverged: {what}; no model was kept from it. Lower --learning-rate "
        f"(now {settings.learning_rate:g}) or check the labels"
    )


def _first_stage_step(ctx: Stages, model, optimizer, batch_of, step: int) -> torch.Tensor:
    """One optimiser step of the first stage (``gradient_accumulation_steps`` batches)."""
    settings, accelerator = ctx.settings, ctx.accelerator
    for _ in range(settings.gradient_accumulation_steps):
        with accelerator.accumulate(model):
            x, y = batch_of()
            x, y = augment(settings.augmentation, x, y)
            x = to_pixel_values(x, ctx.processor.pixel_range)
            with ctx.autocast():
                loss = model(pixel_values=x, labels=y).loss
            if not torch.isfinite(loss):
                raise diverged_error(settings, f"the training loss became {loss.item()} at step {step + 1}")
            accelerator.backward(loss)
            if accelerator.sync_gradients and settings.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return loss


def train_first_stage(
    ctx: Stages, model, train, model_dir: str, record: dict, weights: torch.Tensor | None = None, tag: str = ""
) -> dict:
    """Stage 1: the heatmap detector on ``train``'s images at the model's size, validated every
    ``eval_steps`` on ``val``'s MRE (the best saved to ``model_dir``), with the plateau
    schedule and early stopping. Landmarks given as NaN (rejected pseudo-labels) are left out
    of the loss. A diverged run raises and leaves no model behind."""
    settings, accelerator, processor = ctx.settings, ctx.accelerator, ctx.processor
    max_steps, eval_steps = first_stage_schedule(settings, len(train))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.plateau_factor, patience=settings.plateau_patience
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    batch_of = _image_sampler(train, weights, min(settings.train_batch_size, len(train)), device)
    unwrapped = accelerator.unwrap_model(model)
    ema = weight_average(settings, unwrapped)
    selection = Selection({"val_mre": math.inf, "step": 0}, settings.early_stopping_patience)
    history, prefix = [], f"{tag}/" if tag else ""
    n = settings.num_labels
    what = f"fine-tuning ({n} label{'s' if n > 1 else ''}{', ' + tag if tag else ''})"
    progress = tqdm(total=max_steps, desc=what, disable=not accelerator.is_local_main_process)
    start, step = time.perf_counter(), 0
    model.train()
    try:
        while step < max_steps:
            loss = _first_stage_step(ctx, model, optimizer, batch_of, step)
            if ema is not None:
                ema.step(unwrapped.parameters())
            step += 1
            if step == 2 and accelerator.is_local_main_process:
                warning = long_run_warning((time.perf_counter() - start) / 2, max_steps - step, device, "fine-tuning")
                if warning:
                    progress.write("warning: " + warning)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if step % eval_steps and step != max_steps:
                continue
            metrics, _ = selection.validate(
                step,
                ema,
                unwrapped,
                partial(_validate_first_stage, ctx, unwrapped, step),
                _saver(ctx, unwrapped, processor, model_dir, record) if accelerator.is_main_process else None,
            )
            plateau.step(metrics["val_loss"])
            lr = optimizer.param_groups[0]["lr"]
            history.append(
                dict(step=step, train_loss=loss.item(), val_loss=metrics["val_loss"], val_mre=metrics["mre"], lr=lr)
            )
            accelerator.log({f"{prefix}{k}": v for k, v in history[-1].items() if k != "step"}, step=step)
            best = selection.best
            progress.set_postfix(
                loss=f"{loss.item():.4f}", val_mre=f"{metrics['mre']:.2f}", best=f"{best['val_mre']:.2f}"
            )
            if selection.should_stop:
                logger.info(
                    "early stopping at step %d (best %.3f %s at step %d)",
                    step,
                    *(best[k] for k in ("val_mre", "unit", "step")),
                )
                break
    except UserInputError:
        # A diverged run must not leave a "best" model behind: remove the one it wrote.
        if selection.wrote_model and accelerator.is_main_process:
            shutil.rmtree(model_dir, ignore_errors=True)
        accelerator.end_training()
        raise
    progress.close()
    return {"best": selection.best, "steps": step, "history": history, "wrote_model": selection.wrote_model}


def _image_sampler(train, weights: torch.Tensor | None, batch: int, device):
    """A function giving the next batch ``(images in [0, 1], landmarks)`` of ``train``: images
    drawn by ``weights`` (each image's sampling weight), else uniformly, with replacement."""
    pixels, landmarks = train.images.to(device), train.landmarks.to(device)

    def batch_of():
        if weights is None:
            idx = torch.randint(0, len(train), (batch,), device=device)
        else:
            idx = torch.multinomial(weights, batch, replacement=True).to(device)
        return pixels[idx], landmarks[idx]

    return batch_of


def _validate_first_stage(ctx: Stages, model, step: int) -> dict:
    pred, _, val_loss = predict_tensors(model, ctx.processor, ctx.val, ctx.settings.decoder)
    if not (np.isfinite(pred).all() and np.isfinite(val_loss)):
        raise diverged_error(ctx.settings, f"the validation loss is {val_loss} at step {step}")
    return dict(compute_metrics(pred, ctx.val, model.config), val_loss=val_loss)


def _saver(ctx: Stages, model, processor, model_dir: str, record: dict):
    def save(step: int, metrics: dict) -> None:
        save_model_atomic(
            model, processor, model_dir, dict(record, best_step=step, val_mre=metrics["mre"], unit=metrics["unit"])
        )

    return save
