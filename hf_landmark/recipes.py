"""The fine-tuning recipes, as data: every default of ``hf-landmark finetune`` that depends on
the recipe and on the number of labels, one frozen :class:`Recipe` per regime, and
:func:`resolve_recipe` to pick one. ``FinetuneArguments`` fills every argument left unset from
it, the training record stores it, ``hf-landmark finetune --show-recipe N`` prints it, and the
table in ``docs/design.md`` is :func:`recipe_table`'s (a test keeps them equal).

Why the default recipe differs below 5 labels, as measured on ISBI (``docs/evidence.md``):
the stronger augmentation gains there (its self-training rounds are kept) and the weight
average loses (the rounds lose to the first pass with it), while from 5 labels up the average
gains and the stronger augmentation does not; a second round's pseudo-labels are much better
than the first's when the first pass is weak; each landmark's own best 40 % of pseudo-labels
gives the landmarks the model is least sure of some too; the refinement prior's factor was 1
at 1 label and flat from 1.5 to 2 at 10; the landmark offsets gain at every label count, most
at 1 label, where the one template's displacement is the largest; the shape fusion gains at
every label count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from .errors import UserInputError

#: The default recipe's regimes split here: below it the few-label regime.
FEW_LABELS_BELOW = 5


@dataclass(frozen=True)
class Recipe:
    """One regime's defaults (see ``hf-landmark finetune --help`` for each argument)."""

    name: str
    #: AdamW learning rate from a pre-trained network, and from scratch
    learning_rate: float
    scratch_learning_rate: float
    loss: str
    #: the heatmap target's sigma at 256 px (scaled to the model's side)
    sigma_256: float
    train_batch_size: int
    gradient_accumulation_steps: int
    #: the first stage's length: steps, or epochs (the paper's)
    max_steps: int | None
    max_epochs: int | None
    #: validate every N steps (None: every epoch)
    eval_steps: int | None
    early_stopping_patience: int
    plateau_patience: int
    #: the weights validated and saved: their moving average with this decay (0: the raw weights)
    ema_decay: float
    #: DEG,SCALE,SHIFT[,GAMMA]
    augment: str
    shape_check: float
    self_train: int
    self_train_keep_each: float
    refine_prior: float
    offset_correction: float
    #: the shape fusion's weight (0: off)
    shape_fusion: float
    #: detectors fine-tuned with seeds SEED, SEED+1, ... on the same labels and saved as their ensemble
    ensemble: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


#: ``--recipe paper``: the paper's fine-tuning, for every label count.
PAPER = Recipe(
    name="paper",
    learning_rate=1e-5,
    scratch_learning_rate=1e-4,
    loss="paper",
    sigma_256=5.0,
    train_batch_size=2,
    gradient_accumulation_steps=8,
    max_steps=None,
    max_epochs=200,
    eval_steps=None,
    early_stopping_patience=20,
    plateau_patience=10,
    ema_decay=0.0,
    augment="2,0.02,0.02",
    shape_check=0.0,
    self_train=0,
    self_train_keep_each=0.0,
    refine_prior=0.0,
    offset_correction=0.0,
    shape_fusion=0.0,
)
#: ``--recipe default`` from :data:`FEW_LABELS_BELOW` labels up.
DEFAULT = Recipe(
    name=f"default, {FEW_LABELS_BELOW} labels or more",
    learning_rate=1e-4,
    scratch_learning_rate=1e-4,
    loss="contour",
    sigma_256=6.0,
    train_batch_size=4,
    gradient_accumulation_steps=1,
    max_steps=600,
    max_epochs=None,
    eval_steps=25,
    early_stopping_patience=8,
    plateau_patience=4,
    ema_decay=0.99,
    augment="2,0.02,0.02",
    shape_check=2.5,
    self_train=1,
    self_train_keep_each=0.0,
    refine_prior=2.0,
    offset_correction=10.0,
    shape_fusion=0.25,
)
#: ``--recipe default`` below :data:`FEW_LABELS_BELOW` labels.
DEFAULT_FEW = replace(
    DEFAULT,
    name=f"default, fewer than {FEW_LABELS_BELOW} labels",
    ema_decay=0.0,
    augment="12,0.12,0.06,0.3",
    self_train=2,
    self_train_keep_each=0.4,
    refine_prior=1.0,
)

#: ``--recipe long``: the default recipe three times with three seeds, saved as their ensemble
#: (landmarks averaged): three times the fine-tuning time for 6-9 % lower error than its members on held-out
#: images at 1, 5 and 10 labels (``docs/evidence.md``).
LONG = replace(DEFAULT, name=f"long, {FEW_LABELS_BELOW} labels or more", ensemble=3)
LONG_FEW = replace(DEFAULT_FEW, name=f"long, fewer than {FEW_LABELS_BELOW} labels", ensemble=3)

RECIPE_NAMES = ("default", "long", "paper")


def resolve_recipe(name: str, num_labels: int) -> Recipe:
    """The defaults of recipe ``name`` (``default``, ``long`` or ``paper``) for ``num_labels`` labels."""
    if name == "paper":
        return PAPER
    if name == "default":
        return DEFAULT_FEW if num_labels < FEW_LABELS_BELOW else DEFAULT
    if name == "long":
        return LONG_FEW if num_labels < FEW_LABELS_BELOW else LONG
    raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPE_NAMES)}")


def recipe_fields() -> list[str]:
    """The argument names a recipe gives defaults for (``name`` aside)."""
    return [f.name for f in fields(Recipe) if f.name != "name"]


def _cell(value) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def recipe_table() -> str:
    """The regimes side by side, as a Markdown table (``docs/design.md`` holds it); the long
    recipe is the default's with ``ensemble`` 3."""
    regimes = (DEFAULT_FEW, DEFAULT, PAPER)
    lines = ["| argument | " + " | ".join(r.name for r in regimes) + " |", "|---" * (len(regimes) + 1) + "|"]
    for key in recipe_fields():
        lines.append(f"| `{key}` | " + " | ".join(_cell(getattr(r, key)) for r in regimes) + " |")
    return "\n".join(lines) + "\n"


def describe_recipe(recipe: Recipe) -> str:
    """``--show-recipe``: one line per value."""
    width = max(map(len, recipe_fields()))
    return f"recipe: {recipe.name}\n" + "".join(
        f"  {k.ljust(width)}  {_cell(getattr(recipe, k))}\n" for k in recipe_fields()
    )


def parse_augment(text: str) -> tuple[float, float, float, float]:
    """``--augment 'DEG,SCALE,SHIFT[,GAMMA]'`` → ``(deg, scale, shift, gamma)``: rotation in ±DEG
    degrees, scale in 1 ± SCALE, shift in ± SHIFT x the side, an intensity power in
    [1/(1+GAMMA), 1+GAMMA]. Below 5 labels the default recipe's is six times the paper's: the
    detector otherwise sees its one to four images in nearly one pose, and the pool it
    pseudo-labels varies more."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (3, 4) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise UserInputError(
            f"--augment: 'DEG,SCALE,SHIFT[,GAMMA]', three or four numbers >= 0 (e.g. 2,0.02,0.02), got {text!r}"
        )
    deg, scale, shift, gamma = values + [0.0] * (4 - len(values))
    if deg > 45 or scale >= 0.5 or shift >= 0.5:
        raise UserInputError(f"--augment: at most 45 degrees and a scale and shift below 0.5, got {text!r}")
    return deg, scale, shift, gamma
