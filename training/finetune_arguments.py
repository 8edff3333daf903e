"""The arguments of ``hf-landmark finetune`` (:class:`FinetuneArguments`), grouped by concern in
``--help``. Constructing them validates the values given; :meth:`FinetuneArguments.resolved`
fills every value left to the recipe (:mod:`hf_landmark.recipes`) and resolves the paths, at the
start of :func:`hf_landmark.training.finetune.finetune`."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Literal

from hf_landmark.backbones import resolve_ddpm_folder
from hf_landmark.configuration_landmark import UNET_PRESETS
from hf_landmark.errors import UserInputError, resolve_folder_or_repo
from hf_landmark.heatmaps import DECODERS
from hf_landmark.initialisation import REFINE_INIT_HINT, ModelSpec, parse_init
from hf_landmark.losses import LOSSES
from hf_landmark.recipes import Recipe, parse_augment, resolve_recipe
from hf_landmark.training_loop import StageSettings
from hf_landmark.training_utils import MIXED_PRECISION_CHOICES, MIXED_PRECISION_HELP, argument_parser, check_choice

if TYPE_CHECKING:
    from hf_landmark.calibration import Corrections

#: Arguments whose unset value is the recipe's own field of the same name (the learning rate,
#: the first stage's length and the target sigma are resolved with a rule of their own).
ARGUMENT_RECIPE_FIELDS = (
    "loss", "train_batch_size", "gradient_accumulation_steps", "early_stopping_patience", "plateau_patience",
    "shape_check", "augment", "self_train", "self_train_keep_each", "refine_prior", "offset_correction", "shape_fusion",
    "ema_decay",
    "eval_steps", "ensemble",
)  # fmt: skip


@dataclass
class FinetuneArguments:
    """Arguments of :func:`finetune`; ``None`` means the recipe's value."""

    dataset: str = field(metadata={"help": "prepared dataset folder (hf-landmark prepare) or Hub dataset id"})
    output_dir: str = field(metadata={"help": "where OUT/model, logs and training_summary.json go"})
    num_labels: int = field(metadata={"help": "labeled training images (the first N sorted ids)"})
    init: str = field(
        metadata={
            "aliases": ["--pretrained"],
            "help": "'scratch'; a pre-trained DDPM: a checkpoint-<step> folder (DDPMPipeline; the pre-training's --output-dir means its "
            "newest checkpoint), a Hub repo, or an older unet_ema folder; "
            "or a baseline encoder: 'imagenet[=FOLDER_OR_REPO]', 'mocov3=PATH', 'simclrv2=PATH', 'dino=PATH' (hf-landmark pretrain-ssl)",
        }
    )
    backbone: Literal["unet2d", "smp_unet"] = field(
        default="unet2d",
        metadata={
            "help": "network for --init scratch: unet2d (the DDPM's diffusers U-Net, --preset) or smp_unet (the baselines' encoder U-Net, --encoder)",
        },
    )
    encoder: str = field(
        default="densenet161",
        metadata={"help": "smp_unet encoder (scratch and imagenet; an SSL checkpoint names its own)"},
    )
    subset: Literal["first", "random", "coverage"] = field(
        default="first",
        metadata={
            "aliases": ["--selection"],
            "help": "which training images are labeled: first N sorted ids (the paper), a seeded random sample, or coverage: the N "
            "that best represent the training split by the --init network's features (hf-landmark select; needs a pre-trained --init)",
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the head initialisation, augmentation and batch sampling"})
    preset: str = field(
        default="base", metadata={"help": f"U-Net preset for --init scratch: {', '.join(sorted(UNET_PRESETS))}"}
    )
    recipe: Literal["default", "long", "paper"] = field(
        default="default", metadata={"help": "see the description above"}
    )
    ensemble: int | None = field(
        default=None,
        metadata={
            "help": "fine-tune K detectors on the same labels with seeds SEED .. SEED+K-1 (OUT/members) and save their "
            "ensemble, which averages their landmarks, to OUT/model: K times the time (recipe: 1; long: 3)"
        },
    )
    loss: str | None = field(
        default=None,
        metadata={
            "help": f"heatmap loss: {', '.join(LOSSES)} (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    resolution: int | None = field(
        default=None, metadata={"help": "model input size (default: the checkpoint's, else 256)"}
    )
    sigma: float | None = field(
        default=None, metadata={"help": "target sigma in model pixels (default: the recipe's sigma at 256 px, scaled)"}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "AdamW learning rate (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    train_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "images per step (default: the recipe's; hf-landmark finetune --show-recipe N prints it; never more than the labels)"
        },
    )
    gradient_accumulation_steps: int | None = field(
        default=None,
        metadata={
            "help": "batches per optimiser step (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimiser steps (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"},
    )
    max_epochs: int | None = field(
        default=None,
        metadata={
            "help": "epochs over the labeled images (paper recipe) (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "validate every N optimiser steps (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "evaluations without improvement (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    plateau_patience: int | None = field(
        default=None,
        metadata={
            "help": "evaluations without improvement before the learning rate drops (default: the recipe's; hf-landmark finetune --show-recipe N prints it)"
        },
    )
    plateau_factor: float = field(default=0.5, metadata={"help": "learning-rate factor at a plateau"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "validate and save an exponential moving average of each stage's weights with this decay (warmed up as "
            "(1 + step) / (10 + step)); 0: the raw weights (default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm clipping (0: none)"})
    decoder: str = field(default="centroid", metadata={"help": f"decoder for validation: {', '.join(DECODERS)}"})
    augment: str | None = field(
        default=None,
        metadata={
            "help": "training augmentation 'DEG,SCALE,SHIFT[,GAMMA]': rotation in ±DEG degrees, scale in 1 ± SCALE, shift in ± SHIFT "
            "x the side, and an intensity power in [1/(1+GAMMA), 1+GAMMA] (default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    no_augment: bool = field(default=False, metadata={"help": "no training augmentation (--augment 0,0,0)"})
    shape_check: float | None = field(
        default=None,
        metadata={
            "help": "the shape check's tolerance as a multiple of the 90th percentile of how far the validation images' true landmarks "
            "sit from the labeled images' mean shape mapped onto them by a similarity: a first-stage landmark farther than that from "
            "where the others put it is read again near there (0: off; default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    offset_correction: float | None = field(
        default=None,
        metadata={
            "help": "subtract from every prediction each landmark's mean error on the validation images, shrunk toward none as if "
            "this many more images had measured none (n validation images keep n/(n+K) of it): the detector's systematic "
            "displacement, e.g. toward where its first stage puts an ambiguous landmark (0: off; default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    shape_fusion: float | None = field(
        default=None,
        metadata={
            "help": "weigh each predicted landmark against where the image's other landmarks put it: a shape model of the "
            "labeled and validation images' landmarks and the first stage's on the pool; each landmark's noise variance is "
            "this weight times the square of its heatmap spread times its median error per unit of spread on validation, so "
            "an unsure landmark moves toward the shape and a sure one stays (0: off; default: the recipe's; hf-landmark "
            "finetune --show-recipe N prints it)",
        },
    )
    mixed_precision: str = field(default="auto", metadata={"help": MIXED_PRECISION_HELP})
    report_to: str = field(default="tensorboard", metadata={"help": "any Accelerate tracker, 'all' or 'none'"})
    pixel_range: str | None = field(
        default=None,
        metadata={
            "help": "'lo,hi' model intensity range for --init scratch (default -1,1) and imagenet (default: ImageNet's normalisation)"
        },
    )
    no_refine: bool = field(default=False, metadata={"help": "train the first stage only (no refinement stage)"})
    refine_init: str = field(
        default="scratch",
        metadata={
            "help": "the refinement stage's U-Net: 'scratch', or a DDPM pre-trained on crops (hf-landmark pretrain --crop-from): a "
            "checkpoint-<step> folder, or the pre-training's --output-dir for its newest checkpoint",
        },
    )
    refine_size: int | None = field(
        default=None,
        metadata={
            "help": "side of the fine image the refiner crops (default: the prepared images' side divided down to at most 8x "
            "the model's; none when that is below 4x; prepare ISBI at 512 for ~0.4 mm pixels with a 64-px model)",
        },
    )
    refine_crop: int | None = field(
        default=None, metadata={"help": "crop side in fine pixels (default: the crop DDPM's resolution, else 64)"}
    )
    refine_preset: str | None = field(
        default=None, metadata={"help": "U-Net preset of a scratch refiner (default: --preset)"}
    )
    refine_sigma: float | None = field(
        default=None, metadata={"help": "refiner target sigma in fine pixels (default 2)"}
    )
    refine_prior: float | None = field(
        default=None,
        metadata={
            "help": "each refiner map is multiplied by a Gaussian around the first-stage estimate whose sigma is this factor x the "
            "first stage's root-mean-square validation error of that landmark (the errors the refiner trains to undo), so that "
            "the refiner moves a landmark far only where it is much surer there (0: off; default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    refine_max_steps: int = field(
        default=1200,
        metadata={
            "help": "refiner optimiser steps: the learning rate's cosine decay spans them, and early stopping (--early-stopping-patience "
            "evaluations without a better refiner) ended it at 350-650 on ISBI with a patience of 4",
        },
    )
    refine_batch_size: int = field(default=16, metadata={"help": "crops per refiner step"})
    refine_learning_rate: float = field(
        default=3e-4, metadata={"help": "refiner AdamW peak learning rate (cosine decay to 0)"}
    )
    self_train: int | None = field(
        default=None,
        metadata={
            "help": "rounds of self-training on the pool (the unlabeled rest of the training split and the unlabeled split; never "
            "validation or test): the best model predicts it, corrected by the run's landmark offsets and shape fusion fitted on validation, the landmarks whose expected error is smallest become pseudo-labels, "
            "and both stages are fine-tuned again on the labels plus them; a round's model is kept only if better on validation, and the first round that is not ends it (0: off; default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    self_train_keep: float = field(
        default=0.4,
        metadata={
            "help": "share of the pool's predicted landmarks kept as pseudo-labels each round: those with the smallest expected error "
            "(heatmap spread times the landmark's median error-to-spread ratio on validation, over the image diagonal)",
        },
    )
    self_train_keep_each: float | None = field(
        default=None,
        metadata={
            "help": "besides the shared threshold, each landmark keeps at least this share of its own pool predictions (those "
            "with the smallest expected error), so that the landmarks the model is least sure of get pseudo-labels too (0: off; "
            "default: the recipe's; hf-landmark finetune --show-recipe N prints it)",
        },
    )
    self_train_labeled_share: float = field(
        default=0.5, metadata={"help": "share of each batch drawn from the labeled images during self-training"}
    )
    self_train_pool: int = field(
        default=500, metadata={"help": "at most this many pool images are predicted each round (evenly spaced)"}
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "a detector or ensemble fine-tuned on the same labels of this dataset (e.g. OUT/model of finetune "
            "--ensemble 3): the first self-training round's pseudo-labels are its predictions, the later rounds' this "
            "run's best model's (at 1 label on ISBI, an ensemble of three as teacher gave each detector 1-5 %% lower error)",
        },
    )

    #: Derived by :meth:`resolved`, never given: the augmentation's numbers and where ``--init`` points.
    augmentation: tuple | None = field(default=None, init=False)
    init_kind: str | None = field(default=None, init=False)
    init_source: str | None = field(default=None, init=False)
    #: An ensemble member's: the seed that drew the labeled images (the ensemble's), not its own.
    labeled_seed: int | None = field(default=None, init=False)

    def __post_init__(self):
        """Validates the values given; those left to the recipe are the recipe's (valid by construction)."""
        check_choice("--preset", self.preset, UNET_PRESETS)
        check_choice("--decoder", self.decoder, DECODERS)
        check_choice("--mixed-precision", self.mixed_precision, MIXED_PRECISION_CHOICES)
        if self.loss is not None:
            check_choice("--loss", self.loss, LOSSES)
        if self.augment is not None:
            parse_augment(self.augment)
        if self.subset == "coverage" and self.init == "scratch":
            raise UserInputError(
                "--selection: coverage chooses the images by a pre-trained network's features; give --init a DDPM or encoder"
            )
        if self.num_labels < 1:
            raise UserInputError(f"--num-labels: must be at least 1, got {self.num_labels}")
        if self.resolution is not None and self.resolution % 8:
            raise UserInputError(f"--resolution: must be a multiple of 8, got {self.resolution}")
        if self.refine_preset is not None:
            check_choice("--refine-preset", self.refine_preset, UNET_PRESETS)
        self._check_ranges()
        recipe = self.resolved_recipe
        self_train = recipe.self_train if self.self_train is None else self.self_train
        if self_train and (self.loss or recipe.loss) == "paper":
            raise UserInputError(
                "--self-train: the 'paper' loss (a softmax across landmark channels) cannot leave out the "
                "rejected pseudo-labels; use --loss contour (the default recipe's) or bce"
            )
        if self.teacher is not None and not self_train:
            raise UserInputError(
                "--teacher: its predictions are the first self-training round's pseudo-labels, and --self-train 0 runs no round"
            )

    def _check_ranges(self) -> None:
        def check(name: str, ok, message: str) -> None:
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise UserInputError(f"--{name.replace('_', '-')}: {message}, got {value}")

        check("ema_decay", lambda v: 0 <= v < 1, "a decay in [0, 1)")
        check("self_train", lambda v: v >= 0, "rounds must be 0 (off) or more")
        check("shape_check", lambda v: math.isfinite(v) and v >= 0, "a factor of 0 (off) or more")
        check("offset_correction", lambda v: math.isfinite(v) and v >= 0, "a number of images of 0 (off) or more")
        check("shape_fusion", lambda v: math.isfinite(v) and v >= 0, "a weight of 0 (off) or more")
        check("refine_prior", lambda v: math.isfinite(v) and v >= 0, "a factor of 0 (off) or more")
        check("self_train_keep", lambda v: 0 < v <= 1, "a share in (0, 1]")
        check("self_train_keep_each", lambda v: 0 <= v <= 1, "a share in [0, 1]")
        check("self_train_labeled_share", lambda v: 0 < v < 1, "a share in (0, 1)")
        check("self_train_pool", lambda v: v >= 1, "at least 1 image")
        check("ensemble", lambda v: 1 <= v <= 16, "between 1 (one detector) and 16 members")
        if self.teacher is not None and not os.path.isfile(os.path.join(self.teacher, "config.json")):
            raise UserInputError(f"--teacher {self.teacher}: not a detector folder (no config.json)")
        if self.teacher is not None and os.path.realpath(self.teacher).startswith(
            os.path.join(os.path.realpath(self.output_dir), "")
        ):
            raise UserInputError(
                f"--teacher {self.teacher}: inside --output-dir {self.output_dir}, which this run overwrites; "
                "give the teacher's own folder another output"
            )

    @property
    def resolved_recipe(self) -> Recipe:
        """The recipe's defaults for this many labels (:func:`hf_landmark.recipes.resolve_recipe`)."""
        return resolve_recipe(self.recipe, self.num_labels)

    def resolved(self) -> FinetuneArguments:
        """A copy with every value left unset taken from the resolved recipe, the augmentation
        parsed, ``--init`` parsed and the dataset and checkpoint paths resolved (a pre-training's
        output folder means its newest checkpoint)."""
        args = copy.copy(self)
        recipe = self.resolved_recipe
        for key in ARGUMENT_RECIPE_FIELDS:
            if getattr(args, key) is None:
                setattr(args, key, getattr(recipe, key))
        if self.learning_rate is None:
            args.learning_rate = recipe.scratch_learning_rate if self.init == "scratch" else recipe.learning_rate
        if self.max_steps is None and self.max_epochs is None:
            args.max_steps, args.max_epochs = recipe.max_steps, recipe.max_epochs
        args.augmentation = parse_augment("0,0,0" if args.no_augment else args.augment)
        args.dataset = resolve_folder_or_repo(
            args.dataset, "--dataset", "prepared dataset", "create one with hf-landmark prepare"
        )
        args.init_kind, args.init_source = parse_init(args.init)
        if args.init_kind == "ddpm":
            args.init_source = resolve_ddpm_folder(args.init_source, "--init")
        if args.refine_init != "scratch":
            args.refine_init = resolve_ddpm_folder(
                resolve_folder_or_repo(args.refine_init, "--refine-init", "pre-trained DDPM", REFINE_INIT_HINT),
                "--refine-init",
            )
        return args

    def corrections(self) -> Corrections:
        """What calibration fits to the predictions (of resolved arguments): offsets, shape fusion."""
        from hf_landmark.calibration import Corrections

        return Corrections(offset_images=self.offset_correction, shape_fusion=self.shape_fusion)

    def model_spec(self) -> ModelSpec:
        """The network to build (of resolved arguments)."""
        keys = [f.name for f in fields(ModelSpec) if f.name != "sigma_256"]
        return ModelSpec(**{k: getattr(self, k) for k in keys}, sigma_256=self.resolved_recipe.sigma_256)

    def stage_settings(self) -> StageSettings:
        """Both stages' schedule (of resolved arguments): a scratch refiner takes ``--preset`` when
        the whole run is from scratch, and a target sigma of 2 fine pixels unless given."""
        values = {f.name: getattr(self, f.name) for f in fields(StageSettings)}
        values["refine_preset"] = self.refine_preset or (self.preset if self.init == "scratch" else None)
        values["refine_sigma"] = self.refine_sigma if self.refine_sigma is not None else 2.0
        return StageSettings(**values)


#: ``--help``'s sections: each argument of :class:`FinetuneArguments` by concern.
ARGUMENT_GROUPS = {
    "data and labels": ("dataset", "output_dir", "num_labels", "subset", "seed", "ensemble"),
    "initialisation and network": ("init", "backbone", "encoder", "preset", "resolution", "pixel_range"),
    "recipe and loss": ("recipe", "loss", "sigma", "decoder"),
    "first stage": (
        "learning_rate", "train_batch_size", "gradient_accumulation_steps", "max_steps", "max_epochs", "eval_steps",
        "early_stopping_patience", "plateau_patience", "plateau_factor", "weight_decay", "ema_decay", "max_grad_norm",
        "augment", "no_augment", "mixed_precision", "report_to",
    ),
    "refinement stage": (
        "no_refine", "refine_init", "refine_size", "refine_crop", "refine_preset", "refine_sigma", "refine_prior",
        "refine_max_steps", "refine_batch_size", "refine_learning_rate",
    ),
    "self-training": ("self_train", "self_train_keep", "self_train_keep_each", "self_train_labeled_share", "self_train_pool", "teacher"),
    "calibration and checks": ("shape_check", "offset_correction", "shape_fusion"),
}  # fmt: skip


def make_parser(description: str | None = None):
    """``hf-landmark finetune``'s parser: every field a flag, ``--help`` in :data:`ARGUMENT_GROUPS`."""
    return argument_parser(FinetuneArguments, "hf-landmark finetune", description, ARGUMENT_GROUPS)
