"""The refinement stage's training data: the first stage's validation errors, crop offsets
drawn from them, and batches of crops placed exactly as inference places them.
and the refinement stage's training loop (:func:`train_refiner`)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from .errors import UserInputError
from .modeling_landmark import own_channel
from .preprocessing import crop_patches, to_pixel_values

logger = get_logger(__name__)


def first_stage_offsets(model, processor, val, fine_size: int, decoder: str) -> np.ndarray:
    """The first stage's validation errors ``[M, N, 2]`` in fine pixels (estimate − truth):
    the offsets the refiner is trained to undo."""
    from .evaluation import predict_split
    from .preprocessing import original_to_model

    pred = predict_split(model, processor, val, decoder, refine=False)
    sizes = val.original_sizes.double().numpy()[:, None, :]
    first = original_to_model(pred["first_stage_coords"], sizes, fine_size)
    truth = original_to_model(val.original_landmarks.double().numpy(), sizes, fine_size)
    return first - truth


def sample_offsets(errors: torch.Tensor, landmark: torch.Tensor, crop: int, generator=None) -> torch.Tensor:
    """``[K, 2]`` crop-centre offsets (fine pixels) for crops of ``landmark`` ``[K]``: a
    validation error of the same landmark (``errors`` ``[M, N, 2]``) with random signs and a
    1-px jitter; one crop in ten uniform over the crop instead (so far-off estimates are seen
    too); all kept 2 px inside the crop so the truth is in it."""
    k = landmark.shape[0]
    pick = torch.randint(0, errors.shape[0], (k,), generator=generator)
    off = errors[pick, landmark] * (torch.randint(0, 2, (k, 2), generator=generator) * 2 - 1) + torch.randn(
        k, 2, generator=generator
    )
    half = crop / 2 - 2
    wide = torch.rand(k, generator=generator) < 0.1
    off[wide] = (torch.rand(int(wide.sum()), 2, generator=generator) * 2 - 1) * half
    return off.clamp(-half, half)


def refiner_batch(
    images01: torch.Tensor,
    truth: torch.Tensor,
    offsets: torch.Tensor,
    config,
    count: int,
    generator=None,
    valid: torch.Tensor | None = None,
):
    """``count`` training crops for the refiner from fine images ``[B, 1, F, F]`` in [0, 1] and
    their landmarks ``truth`` ``[B, N, 2]`` (fine pixels): for a random image and landmark
    each, the crop centred at the truth plus an offset (:func:`sample_offsets` of the first
    stage's errors ``offsets`` ``[M, N, 2]``), exactly as inference places it; with ``valid``
    ``[B, N]`` (False: a rejected pseudo-label) only among the valid pairs. Returns
    ``(crops [K, 1, C, C] pixel values, landmark [K], local truth [K, 1, 2] crop pixels)``."""
    device, crop = images01.device, config.refine_crop
    if valid is None:
        which = torch.randint(0, images01.shape[0], (count,), generator=generator).to(device)
        landmark = torch.randint(0, truth.shape[1], (count,), generator=generator)
    else:
        pair = torch.multinomial(valid.flatten().float().cpu(), count, replacement=True, generator=generator)
        which, landmark = (pair // truth.shape[1]).to(device), pair % truth.shape[1]
    target = truth[which, landmark.to(device)]
    origins = torch.round(target + sample_offsets(offsets, landmark, crop, generator).to(device)).long() - crop // 2
    pixels = to_pixel_values(images01, config.pixel_range)[which]
    crops = crop_patches(pixels, origins[:, None], crop, fill=config.pixel_range[0])[:, 0]
    return crops, landmark.to(device), (target - origins)[:, None].float()


def train_refiner(
    ctx, model_dir: str, train, record: dict, first_best: dict, weights: torch.Tensor | None = None, tag: str = ""
):
    """Stage 2: a refiner for the saved best first stage, trained on crops of the same training
    images (centred at the truth plus offsets drawn from the first stage's validation errors,
    with the training augmentation on the fine images; ``weights`` as the first stage's; NaN
    landmarks never cropped), selected on the validation split's final MRE. The two-stage
    detector replaces the first-stage one only if it is better on validation. ``ctx`` is a
    :class:`hf_landmark.stages.Stages`. Returns ``(summary, best)``."""
    from .evaluation import compute_metrics, predict_split
    from .losses import get_loss
    from .training_loop import Selection, save_model_atomic, weight_average

    settings, accelerator = ctx.settings, ctx.accelerator
    detector, processor, errors = refiner_for(ctx, model_dir)
    cfg = detector.config
    summary = refiner_summary(settings, cfg, ctx.fine_size, errors)
    summary["prior"] = {"factor": settings.refine_prior, "sigma_fine_px": cfg.refine_prior}
    optimizer = torch.optim.AdamW(
        detector.refiner.parameters(), lr=settings.refine_learning_rate, weight_decay=settings.weight_decay
    )
    # Cosine decay to zero over the run: the refiner settles instead of hopping between minima.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.refine_max_steps)
    ema = weight_average(settings, detector.refiner)
    refiner, optimizer, schedule = accelerator.prepare(detector.refiner, optimizer, schedule)
    next_batch = refiner_batches(settings, train, ctx.fine_size, errors, cfg, weights, accelerator.device)
    loss_fn = get_loss(cfg.refine_loss)
    selection = Selection(
        {"val_mre": first_best["val_mre"], "step": 0, "refined": False}, settings.early_stopping_patience
    )

    def evaluate() -> dict:
        return compute_metrics(predict_split(detector, processor, ctx.val, settings.decoder)["coords"], ctx.val, cfg)

    def save(step: int, metrics: dict) -> None:
        refine = summary | {"best_step": step}
        saved = dict(record, refine=refine, val_mre=metrics["mre"], best_step=first_best.get("step"))
        save_model_atomic(
            detector,
            processor,
            model_dir,
            dict(saved, first_stage_val_mre=first_best["val_mre"], unit=metrics["unit"]),
        )

    what = "refinement stage" + (f" ({tag})" if tag else "")
    progress = tqdm(total=settings.refine_max_steps, desc=what, disable=not accelerator.is_local_main_process)
    refiner.train()
    for step in range(1, settings.refine_max_steps + 1):
        loss = _refiner_step(ctx, refiner, (optimizer, schedule), next_batch(), (loss_fn, cfg.refine_sigma), step)
        if ema is not None:
            ema.step(detector.refiner.parameters())
        progress.update(1)
        if step % settings.eval_steps and step != settings.refine_max_steps:
            continue
        metrics, _ = selection.validate(
            step, ema, detector.refiner, evaluate, save if accelerator.is_main_process else None, refined=True
        )
        summary["history"].append({"step": step, "train_loss": loss.item(), "val_mre": metrics["mre"]})
        prefix = f"{tag}/" if tag else ""
        accelerator.log(
            {f"{prefix}refine/train_loss": loss.item(), f"{prefix}refine/val_mre": metrics["mre"]}, step=step
        )
        best = selection.best
        progress.set_postfix(loss=f"{loss.item():.3f}", val_mre=f"{metrics['mre']:.2f}", best=f"{best['val_mre']:.2f}")
        if selection.should_stop:
            break
        refiner.train()
    progress.close()
    best = selection.best
    if not best["refined"]:
        logger.warning(
            "the refinement stage did not beat the first stage on validation (%.3f); the first-stage model is kept",
            first_best["val_mre"],
        )
        return summary, dict(first_best, refined=False)
    logger.info("refinement: validation MRE %.3f -> %.3f %s", first_best["val_mre"], best["val_mre"], best["unit"])
    return summary, best


def refiner_for(ctx, model_dir: str):
    """The saved best first stage with a new refiner, its processor, and the first stage's
    validation errors (fine px) that the refiner trains to undo; the refinement prior set from them
    (validation, the saved model and every later prediction read the refiner's maps under it)."""
    from .image_processing_landmark import LandmarkImageProcessor
    from .modeling_landmark import LandmarkDetector, refine_prior_sigmas

    settings = ctx.settings
    detector = LandmarkDetector.from_pretrained(model_dir, dtype=torch.float32)
    init = None if settings.refine_init == "scratch" else settings.refine_init
    detector.add_refiner(ctx.fine_size, settings.refine_crop, settings.refine_preset, settings.refine_sigma, ddpm=init)
    detector.to(ctx.accelerator.device)
    processor = LandmarkImageProcessor.from_model_config(detector.config)
    errors = first_stage_offsets(
        detector, processor, ctx.val, ctx.fine_size, settings.decoder
    )  # the first stage alone
    prior = refine_prior_sigmas(errors, settings.refine_prior) if settings.refine_prior else None
    detector.config.set_refine_prior(prior)
    return detector, processor, errors


def _refiner_step(ctx, refiner, optimizers, batch, loss, step: int) -> torch.Tensor:
    """One optimiser step of the refiner on ``batch`` ``(crops, landmark, local truth)`` with
    ``loss`` ``(loss function, target sigma)``."""
    settings, accelerator = ctx.settings, ctx.accelerator
    optimizer, schedule = optimizers
    crops, landmark, local = batch
    with ctx.autocast():
        logits = own_channel(refiner(crops)[0], landmark).float()
    loss_fn, sigma = loss
    loss = loss_fn(logits, local, sigma)
    if not torch.isfinite(loss):
        raise UserInputError(
            f"{settings.output_dir}: the refinement stage diverged (loss {loss.item()} at step {step}); "
            f"lower --refine-learning-rate (now {settings.refine_learning_rate:g}); the first-stage model is kept"
        )
    accelerator.backward(loss)
    if settings.max_grad_norm:
        accelerator.clip_grad_norm_(refiner.parameters(), settings.max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def refiner_summary(settings, cfg, fine_size: int, errors: np.ndarray) -> dict:
    """The training record's ``refine`` section before training, and the log line on the first
    stage's validation errors the crops must cover."""
    radial = np.sqrt((errors**2).sum(-1))
    crop = cfg.refine_crop
    covered = float((np.abs(errors) < crop / 2 - 2).all(-1).mean())
    logger.info(
        "first-stage validation errors (fine px): median %.1f, 95%% %.1f, max %.1f; %.1f%% inside the %d-px crops",
        np.median(radial),
        np.quantile(radial, 0.95),
        radial.max(),
        100 * covered,
        crop,
    )
    return {
        "init": settings.refine_init,
        "refine_size": fine_size,
        "crop": crop,
        "sigma": cfg.refine_sigma,
        "schedule": {
            "max_steps": settings.refine_max_steps,
            "learning_rate": settings.refine_learning_rate,
            "batch_size": settings.refine_batch_size,
        },
        "prior": None,
        "first_stage_val_errors_fine_px": {
            "median": float(np.median(radial)),
            "p95": float(np.quantile(radial, 0.95)),
            "max": float(radial.max()),
            "inside_crop": covered,
        },
        "history": [],
    }


def refiner_batches(settings, train, fine_size: int, errors: np.ndarray, cfg, weights, device):
    """A function giving the next training batch of crops ``(crops, landmark, local truth)``:
    images drawn (by ``weights``, else uniformly) with a generator seeded by ``settings.seed``,
    augmented, and cropped by :func:`refiner_batch`."""
    from .preprocessing import original_to_model
    from .training_loop import augment

    fine_images = train.fine_images.to(device)
    fine_truth = original_to_model(
        train.original_landmarks.float(), train.original_sizes[:, None, :].float(), fine_size
    ).to(device)
    valid = torch.isfinite(fine_truth).all(-1)
    masked = not bool(valid.all())
    offsets = torch.as_tensor(errors, dtype=torch.float32)
    generator = torch.Generator().manual_seed(settings.seed)
    batch = min(settings.train_batch_size, len(train))

    def next_batch():
        if weights is None:
            idx = torch.randint(0, len(train), (batch,), generator=generator).to(device)
        else:
            idx = torch.multinomial(weights, batch, replacement=True, generator=generator).to(device)
        x, y = augment(settings.augmentation, fine_images[idx], fine_truth[idx], generator=generator)
        return refiner_batch(x, y, offsets, cfg, settings.refine_batch_size, generator, valid[idx] if masked else None)

    return next_batch


def refine_size_for(no_refine: bool, refine_size: int | None, prepared: int, size: int) -> int:
    """The refinement stage's fine size: ``refine_size`` (``--refine-size``), else the prepared
    images' side divided down to at most 8x the model's (an exact area resize); 0 when
    refinement is off or the prepared images are not at least 4x the model's side (then it says so)."""
    if no_refine:
        return 0
    if refine_size:
        if refine_size % 8 or refine_size <= size:
            raise UserInputError(
                f"--refine-size: must be a multiple of 8 above the model's {size} px, got {refine_size}"
            )
        return refine_size
    divisor = next((k for k in range(1, prepared + 1) if prepared % k == 0 and prepared // k <= 8 * size), prepared)
    fine = prepared // divisor
    if fine < 4 * size or fine % 8:
        # Plain logging: this runs before the Accelerator exists (accelerate's logger needs one).
        logging.getLogger(__name__).warning(
            "no refinement stage: the dataset was prepared at %d px, less than 4x the model's %d px; "
            "prepare it at e.g. --image-size %d for one (or pass --no-refine)",
            prepared,
            size,
            8 * size,
        )
        return 0
    return fine
