#!/usr/bin/env python
"""Few-shot fine-tuning of a (DDPM pre-trained) U-Net into a heatmap landmark detector.

    accelerate launch training/finetune.py --dataset PREPARED_DIR --output-dir OUT \\
        --num-labels 5 --init DDPM_OUT/checkpoint-8000

(or ``hf-landmark finetune ...``, or ``hf_landmark.finetune(FinetuneArguments(...))`` from
Python). ``--init`` takes a pre-trained DDPM (a ``checkpoint-<step>`` folder, which is a
diffusers ``DDPMPipeline``, a Hub repo, or an older ``unet_ema`` folder) or ``scratch``
(``--backbone``: the diffusers U-Net of ``--preset``, or ``smp_unet``, the baselines'
DenseNet161 U-Net). The paper's baselines, an ``smp_unet`` whose encoder starts from other
weights (``pip install 'hf-landmark[baselines]'``): ``imagenet`` (the encoder's ImageNet
weights in safetensors from the Hub; ``imagenet=FOLDER_OR_REPO`` for another copy) or an
``hf-landmark pretrain-ssl`` checkpoint (``mocov3=PATH``, ``simclrv2=PATH``, ``dino=PATH``, or
the bare PATH: its record names the method). ``ddpm=PATH`` is the same as ``PATH``.
The first ``--num-labels`` sorted training images are labeled (``--subset random`` for a
seeded sample); the whole validation split drives the learning-rate plateau schedule, early
stopping and the choice of the best checkpoint (lowest validation mean radial error, in the
original image frame, measured through the image processor exactly as users run the model).
The best model and its image processor are saved to ``OUT/model``.

Recipes: ``--recipe default`` (built on the paper's for 1-10 labels; its values differ below 5
labels), ``long`` (the default three times, with seeds SEED, SEED+1, SEED+2 on the same labels,
saved to ``OUT/model`` as one detector that averages their landmarks: ``--ensemble 3``; each
member in ``OUT/members/seed-<s>``) or ``paper``. Every value is a flag's default, held in one table,
:mod:`hf_landmark.recipes` (``hf-landmark finetune --show-recipe N [--recipe paper]`` prints
the values N labels get; ``docs/design.md`` shows the table). Both use ``ReduceLROnPlateau``
on the validation loss.

Then, by default, the refinement stage: a U-Net shared by all landmarks re-locates each one
on a crop (``--refine-crop`` px, default 64) of the image resized to ``--refine-size``
(default: the prepared images' side, down to at most 8x the model's; skipped below 4x), centred
on the first stage's estimate. It trains on the same labeled images, on crops centred at the
truth plus offsets drawn from the best first stage's validation errors, from scratch or from a
DDPM pre-trained on crops (``--refine-init``, ``hf-landmark pretrain --crop-from``), and
replaces the first-stage model only if the two stages are better on validation.
``--no-refine`` trains the first stage alone.

Then, with the default recipe, self-training (``--self-train ROUNDS``; 0: off): the best model
predicts the pool (the training split's unlabeled images and the ``unlabeled`` split; never
validation or test), keeps the ``--self-train-keep`` share of predicted landmarks with the
smallest expected error (heatmap spread times the landmark's median error-to-spread ratio on
validation) as pseudo-labels (and each landmark's own best ``--self-train-keep-each``
share), and trains both stages again from ``--init`` on the labeled
images (half of each batch) plus those (the rejected landmarks left out of the losses). A
round's model replaces the best only if it is better on validation, and the first round that
is not ends self-training (the next would pseudo-label with the same model); the training record
states each round's counts and, where the pool images have labels, the pseudo-labels' error.
With ``--teacher MODEL`` (a detector or an ensemble fine-tuned on the same labels) the first
round's pseudo-labels are MODEL's predictions instead of the first pass's.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from accelerate.logging import get_logger
from accelerate.utils import set_seed

from hf_landmark import LandmarkImageProcessor
from hf_landmark.calibration import calibrate_saved_model
from hf_landmark.data import few_shot_indices, load_prepared, load_tensors
from hf_landmark.data.prepared import UNLABELED, common_spacing, require_split
from hf_landmark.data.specs import get_spec
from hf_landmark.errors import UserInputError
from hf_landmark.evaluation import compute_metrics, mean_shape_prediction
from hf_landmark.fileio import write_json_atomic
from hf_landmark.initialisation import build_model, init_record, parse_init  # noqa: F401 (parse_init: the 0.4 import path)
from hf_landmark.preprocessing import to_pixel_values
from hf_landmark.recipes import RECIPE_NAMES, describe_recipe, resolve_recipe
from hf_landmark.refinement import refine_size_for
from hf_landmark.self_training import (
    SelfTrainingPlan,
    SelfTrainingPool,
    check_teacher,
    self_train,
    self_training_pool,
)
from hf_landmark.shape import shape_prior
from hf_landmark.stages import train_two_stages
from hf_landmark.training.finetune_arguments import ARGUMENT_GROUPS, FinetuneArguments, make_parser  # noqa: F401
from hf_landmark.training_loop import TRAINING_RECORD, Stages, averaged, weight_average  # noqa: F401
from hf_landmark.training_utils import (
    choose_mixed_precision,
    describe_cpu_threads,
    parse_arguments,
    run_accelerator,
    tracker_config,
    training_step_probe,
)

logger = get_logger(__name__)


def parser():
    return make_parser(__doc__)


def finetune(args: FinetuneArguments) -> dict:
    """Fine-tune one detector, or an ensemble (``--ensemble K``: :func:`finetune_ensemble`);
    returns the training summary (also ``OUT/training_summary.json``)."""
    args = args.resolved()
    if args.ensemble > 1:
        return finetune_ensemble(args)
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    data = FinetuneData.load(args)
    model = data.new_model(args)
    processor = LandmarkImageProcessor.from_model_config(model.config)
    size = model.config.image_size
    fine_size = refine_size_for(args.no_refine, args.refine_size, data.first["image"].size[0], size)
    train_all = load_tensors(data.train_split, size, processor.resample)
    if args.num_labels > len(train_all):
        raise UserInputError(
            f"--num-labels: {args.num_labels} labels asked, but {args.dataset} has {len(train_all)} training images"
        )
    accelerator, autocast, mixed_precision, probe = prepare_accelerator(args, model, processor, train_all)
    labeled_idx = choose_labeled(args, model, processor, train_all)
    # Only the labeled images (and the validation split) are also decoded at the fine size.
    train = (
        load_tensors(data.train_split.select(labeled_idx), size, processor.resample, fine_size)
        if fine_size
        else train_all.subset(labeled_idx)
    )
    val = load_tensors(data.val_split, size, processor.resample, fine_size)
    logger.info("labeled images: %s", ", ".join(train.image_ids))
    if accelerator.is_main_process:
        accelerator.init_trackers("finetune", config=tracker_config(args))
        if note := describe_cpu_threads(accelerator.device):
            logger.info(note)
    shape = shape_prior(train, val, args.shape_check)
    model.config.set_shape_check(*shape)
    record = dict(
        training_record(args, data.first["dataset"], train.image_ids, len(val)),
        mixed_precision=mixed_precision,
        precision_probe=probe,
        shape_check={"factor": args.shape_check, "tolerance_px": shape[1], "image_size": size},
    )
    if args.teacher:
        record["teacher"] = check_teacher(args.teacher, record)
        logger.info("the first self-training round's pseudo-labels: %s's predictions", args.teacher)
    floor = compute_metrics(mean_shape_prediction(train, val), val, model.config)
    model_dir = os.path.join(args.output_dir, "model")
    start = time.perf_counter()
    stages = Stages(args.stage_settings(), accelerator, autocast, processor, val, fine_size)
    result = train_two_stages(stages, model, train, model_dir, record)
    labeled_set = set(labeled_idx)
    pool_idx = [i for i in range(len(train_all)) if i not in labeled_set]  # the training split's unlabeled images
    self_training = None
    if args.self_train and result["wrote_model"]:
        plan = self_training_plan(args, data, shape)
        result, self_training = run_self_training(stages, plan, data, train, pool_idx, record, result)
    accelerator.end_training()
    calibration = None
    if accelerator.is_main_process and result["wrote_model"]:
        pool = [train_all.subset(pool_idx)]
        if data.unlabeled is not None and len(data.unlabeled):
            pool.append(load_tensors(data.unlabeled, size, processor.resample))
        calibration = calibrate(args, model_dir, val, train_all.subset(labeled_idx), pool)
    summary = dict(
        training_summary(args, result, train.image_ids, size),
        mixed_precision=mixed_precision,
        precision_probe=probe,
        seconds=time.perf_counter() - start,
        self_training=self_training,
        mean_shape_val_mre=floor["mre"],
        calibration=calibration,
    )
    if accelerator.is_main_process:
        write_json_atomic(summary, os.path.join(args.output_dir, "training_summary.json"))
    return summary


def finetune_ensemble(args: FinetuneArguments) -> dict:
    """``--ensemble K``: K detectors fine-tuned in turn on the same labeled images (drawn with
    ``--seed``) with seeds ``seed .. seed+K-1``, each to ``OUT/members/seed-<s>`` with its own
    summary, then saved as one ensemble at ``OUT/model`` and calibrated on validation
    (:func:`hf_landmark.ensembles.save_ensemble`)."""
    from hf_landmark.ensembles import MEMBERS_DIR, compatible_members, differing_fields, save_ensemble
    from hf_landmark.fileio import atomic_directory

    log = logging.getLogger(__name__)  # between members, no Accelerator is running
    start = time.perf_counter()
    members = []
    for k in range(args.ensemble):
        member = copy.copy(args)
        member.ensemble, member.seed, member.labeled_seed = 1, args.seed + k, args.seed
        member.output_dir = os.path.join(args.output_dir, MEMBERS_DIR, f"seed-{member.seed}")
        log.info("ensemble member %d of %d: seed %d, in %s", k + 1, args.ensemble, member.seed, member.output_dir)
        members.append((member.output_dir, finetune(member)))
    model_dir = os.path.join(args.output_dir, "model")
    dirs = [os.path.join(out, "model") for out, _ in members]
    chosen, left_out = compatible_members(dirs, [s["best"]["val_mre"] for _, s in members])
    for d in left_out:
        log.warning(
            "%s is left out of the ensemble: it differs from %s in %s (on few validation images a refinement "
            "stage can lose to its first stage in one member and win in another)",
            d,
            chosen[0],
            ", ".join(differing_fields(d, chosen[0])),
        )
    first = members[0][1]
    summary = dict(
        {k: first[k] for k in ("labeled_image_ids", "num_labels", "init", "recipe", "recipe_defaults", "resolution")},
        seed=[s["seed"] for _, s in members],
        members={os.path.relpath(out, args.output_dir): s for out, s in members},
        left_out=[os.path.relpath(os.path.dirname(d), args.output_dir) for d in left_out],
    )
    if len(chosen) > 1:
        built = save_ensemble(chosen, model_dir, args.dataset, args.offset_correction, args.shape_fusion)
        log.info(
            "ensemble of %d detectors: validation MRE %.3f %s (members: %s)",
            len(chosen),
            built["val_mre"],
            built["unit"],
            ", ".join(f"{m['val_mre']:.3f}" for m in built["members"]["each"]),
        )
        log_calibration(built["calibration"], built["calibration"]["calibration_images"], log)
        summary.update(ensemble=built["members"], best={"val_mre": built["val_mre"], "unit": built["unit"]})
        summary["calibration"] = built["calibration"]
    else:  # one detector left: it is the model
        with atomic_directory(model_dir) as tmp:
            shutil.copytree(chosen[0], tmp, dirs_exist_ok=True)
        chosen_summary = members[dirs.index(chosen[0])][1]
        summary.update(ensemble=None, best=chosen_summary["best"], calibration=chosen_summary["calibration"])
        log.warning("no ensemble: only %s is left; it is saved as %s", chosen[0], model_dir)
    summary["seconds"] = time.perf_counter() - start
    write_json_atomic(summary, os.path.join(args.output_dir, "training_summary.json"))
    return summary


@dataclass
class FinetuneData:
    """The prepared dataset as fine-tuning reads it: its splits, the first training row (the
    landmark names and the dataset) and the spacing the detector's config states."""

    dataset: Any
    train_split: Any
    val_split: Any
    first: dict
    spacing: list | None

    @classmethod
    def load(cls, args: FinetuneArguments) -> FinetuneData:
        dataset = load_prepared(args.dataset)
        train_split = require_split(dataset, "train", args.dataset)
        val_split = require_split(dataset, "validation", args.dataset + " (fine-tuning selects its model on it)")
        first = train_split[0]
        # Only a spacing that every labeled image shares goes in the config (hand: the wrist
        # convention gives each image its own; custom data: the annotation file's, where it is one).
        convention = get_spec(first["dataset"]).unit_convention
        spacing = common_spacing(train_split, val_split) if convention == "spacing" else None
        return cls(dataset, train_split, val_split, first, spacing)

    @property
    def unlabeled(self):
        return self.dataset[UNLABELED] if UNLABELED in self.dataset else None

    def new_model(self, args: FinetuneArguments):
        names = self.first["landmark_names"]
        return build_model(args.model_spec(), len(names), names, self.first["dataset"], self.spacing)


def self_training_plan(args: FinetuneArguments, data: FinetuneData, shape) -> SelfTrainingPlan:
    """The rounds' settings; each round's model is a fresh one from ``--init`` with the shape check."""

    def new_round_model():
        fresh = data.new_model(args)
        fresh.config.set_shape_check(*shape)
        return fresh

    return SelfTrainingPlan(
        rounds=args.self_train,
        keep=args.self_train_keep,
        keep_each=args.self_train_keep_each,
        labeled_share=args.self_train_labeled_share,
        seed=args.seed,
        pool_limit=args.self_train_pool,
        new_model=new_round_model,
        teacher=args.teacher,
        corrections=args.corrections(),
    )


def run_self_training(
    stages: Stages, plan: SelfTrainingPlan, data: FinetuneData, train, pool_idx, record: dict, result: dict
) -> tuple[dict, dict | None]:
    """Self-training on the pool: the training split's unlabeled images (``pool_idx``) and the
    unlabeled split, at most ``--self-train-pool`` of them."""
    pool = self_training_pool(
        data.train_split,
        pool_idx,
        data.unlabeled,
        train.image_size,
        stages.processor.resample,
        stages.fine_size,
        plan.pool_limit,
    )
    if pool[0] is None:
        logger.info("no self-training: every training image is labeled and there is no unlabeled split")
        return result, None
    model_dir = os.path.join(stages.settings.output_dir, "model")
    return self_train(stages, plan, train, SelfTrainingPool(*pool), model_dir, record, result)


def prepare_accelerator(args: FinetuneArguments, model, processor, train_all):
    """The Accelerator at ``--mixed-precision`` (auto: a timed training step of this model at
    this size decides between bf16 and fp32 on a CPU). Returns ``(accelerator, autocast,
    mixed precision, the probe's timings or None)``."""
    n = min(2, args.train_batch_size, len(train_all))  # two images: the probe costs six small training steps
    probe_inputs = {
        "pixel_values": to_pixel_values(train_all.images[:n], processor.pixel_range),
        "labels": train_all.landmarks[:n],
    }
    precision, probe = choose_mixed_precision(args.mixed_precision, training_step_probe(model, probe_inputs))
    accelerator, autocast, mixed_precision = run_accelerator(args, precision)
    if probe:
        logger.info(
            "mixed precision %s: a training step took %.3f s in fp32 and %.3f s in bf16",
            mixed_precision,
            probe["fp32_s"],
            probe["bf16_s"],
        )
    return accelerator, autocast, mixed_precision, probe


def choose_labeled(args: FinetuneArguments, model, processor, train_all) -> list[int]:
    """The labeled training images' indices: ``--subset`` first, random (seeded) or coverage."""
    if args.subset != "coverage":
        seed = args.seed if args.labeled_seed is None else args.labeled_seed
        return few_shot_indices(train_all.image_ids, args.num_labels, args.subset, seed)
    from hf_landmark.selection import choose, pooled_features

    # The pre-trained network, before any fine-tuning, sees the training images as a pool (as hf-landmark select does).
    features = pooled_features(model, train_all.pixel_values(processor.pixel_range))
    chosen = choose("coverage", train_all.image_ids, args.num_labels, features)
    return sorted(chosen, key=lambda i: train_all.image_ids[i])


def calibrate(args: FinetuneArguments, model_dir: str, val, labeled, pool) -> dict:
    """The saved best model's offsets, shape fusion, radii and flag, calibrated on validation (logged)."""
    calibration = calibrate_saved_model(model_dir, val, labeled, args.decoder, pool, args.corrections())
    log_calibration(calibration, len(val))
    return calibration


def log_calibration(calibration: dict, num_val: int, log=logger) -> None:
    """What calibration measured, logged: the offsets' and the shape fusion's effects, the
    radii's level and the flag's."""
    if calibration["offsets"]:
        loo = calibration["offsets"]["leave_one_out"]
        log.info(
            "landmark offsets from %d validation images (shrunk by %g): validation MRE %.3f -> %.3f %s, each image "
            "corrected by the offsets of the others",
            num_val,
            calibration["offsets"]["images"],
            loo["mre_without"],
            loo["mre_with"],
            loo["unit"],
        )
    if calibration.get("shape_fusion"):
        fusion = calibration["shape_fusion"]["held_out"]
        log.info(
            "shape fusion (weight %g, %d shapes): validation MRE %.3f -> %.3f %s, each image fused by a shape model "
            "fitted without its fold (%d folds)",
            calibration["shape_fusion"]["weight"],
            calibration["shape_fusion"]["shapes"],
            fusion["mre_without"],
            fusion["mre_with"],
            fusion["unit"],
            fusion["folds"],
        )
    log.info(
        "calibrated the error radii on %d validation images (alpha %.2f, radii at %.1f %%) and the low-confidence flag "
        "on %d images (false alarms at most %.1f %%)",
        num_val,
        calibration["alpha"],
        100 * calibration["radius_coverage"],
        calibration["flag_calibration_images"],
        100 * calibration["flag_false_alarm_rate"],
    )


def training_summary(args: FinetuneArguments, result: dict, labeled_ids, size: int) -> dict:
    """``OUT/training_summary.json``'s account of the run (the caller adds what it measured)."""
    return {
        "labeled_image_ids": labeled_ids,
        "num_labels": args.num_labels,
        "seed": args.seed,
        "init": args.init,
        "recipe": args.recipe,
        "recipe_defaults": args.resolved_recipe.as_dict(),
        "loss": args.loss,
        "learning_rate": args.learning_rate,
        "resolution": size,
        "steps": result["steps"],
        "best": result["best"],
        "first_stage": result["first_stage"],
        "refine": result["refine"],
        "history": result["history"],
    }


def training_record(args: FinetuneArguments, dataset_name: str, train_ids, val_count: int) -> dict:
    """What a card must say about how a detector was trained: data, labels, initialisation."""
    return {
        "dataset": dataset_name,
        "dataset_repo_id": None if os.path.exists(args.dataset) else args.dataset,
        "num_labels": len(train_ids),
        "labeled_image_ids": list(train_ids),
        "validation_images": val_count,
        "subset": args.subset,
        "seed": args.seed,
        "recipe": args.recipe,
        "recipe_defaults": args.resolved_recipe.as_dict(),
        "loss": args.loss,
        "learning_rate": args.learning_rate,
        "ema_decay": args.ema_decay,
        "augment": ",".join(f"{v:g}" for v in args.augmentation),
        "offset_correction": args.offset_correction,
        "shape_fusion": args.shape_fusion,
        "init": init_record(args.model_spec()),
    }


def main(argv=None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--show-recipe" in argv:  # the defaults a label count gets, without training
        return show_recipe(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return finetune(parse_arguments(parser(), FinetuneArguments, argv))


def show_recipe(argv: list[str]) -> None:
    """``hf-landmark finetune --show-recipe N [--recipe paper]``: print the resolved recipe."""
    import argparse

    p = argparse.ArgumentParser(prog="hf-landmark finetune --show-recipe", allow_abbrev=False)
    p.add_argument("--show-recipe", type=int, required=True, metavar="NUM_LABELS")
    p.add_argument("--recipe", default="default", choices=list(RECIPE_NAMES))
    args, _ = p.parse_known_args(argv)
    print(describe_recipe(resolve_recipe(args.recipe, args.show_recipe)), end="")


if __name__ == "__main__":
    main()
