"""In-memory tensors of a prepared split at the model's resolution, few-shot subsets and
the paper's training augmentation.

Few-shot training sets are small and even the largest benchmark split fits in memory at
256 px, so a split is decoded once into tensors and batches are drawn by index; the
augmentation runs batched on the training device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..preprocessing import original_to_model, resize_image, to_grayscale01, to_pixel_values
from .prepared import DatasetFormatError


@dataclass
class LandmarkTensors:
    """A split decoded for a model of side ``image_size``.

    Attributes:
        images: ``[M, 1, S, S]`` float32 intensities in [0, 1] (model frame).
        landmarks: ``[M, N, 2]`` (x, y) in model pixels.
        original_landmarks: ``[M, N, 2]`` (x, y) in original pixels.
        original_sizes: ``[M, 2]`` original (W, H).
        spacing: ``[M, 2]`` mm per original pixel (sx, sy); NaN where unknown.
        fine_images: ``[M, 1, F, F]`` the same images at a refinement stage's ``refine_size``
            (what the processor's ``fine_pixel_values`` hold), or ``None``.
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    original_landmarks: torch.Tensor
    original_sizes: torch.Tensor
    spacing: torch.Tensor
    image_ids: list[str]
    landmark_names: list[str]
    dataset: str
    image_size: int
    fine_images: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: Sequence[int]) -> LandmarkTensors:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return replace(
            self,
            images=self.images[idx],
            landmarks=self.landmarks[idx],
            original_landmarks=self.original_landmarks[idx],
            original_sizes=self.original_sizes[idx],
            spacing=self.spacing[idx],
            image_ids=[self.image_ids[i] for i in idx.tolist()],
            fine_images=None if self.fine_images is None else self.fine_images[idx],
        )

    def concat(self, other: LandmarkTensors) -> LandmarkTensors:
        """This split followed by ``other`` (same landmarks, model size and fine size)."""
        if other.landmark_names != self.landmark_names or other.image_size != self.image_size:
            raise ValueError("can only join splits with the same landmarks and model size")
        if (self.fine_images is None) != (other.fine_images is None):
            raise ValueError("can only join splits that both have fine images or both not")
        return replace(
            self,
            images=torch.cat([self.images, other.images]),
            landmarks=torch.cat([self.landmarks, other.landmarks]),
            original_landmarks=torch.cat([self.original_landmarks, other.original_landmarks]),
            original_sizes=torch.cat([self.original_sizes, other.original_sizes]),
            spacing=torch.cat([self.spacing, other.spacing]),
            image_ids=self.image_ids + other.image_ids,
            fine_images=None if self.fine_images is None else torch.cat([self.fine_images, other.fine_images]),
        )

    def with_landmarks(self, original_landmarks) -> LandmarkTensors:
        """The same images with other landmarks ``[M, N, 2]`` (original pixels; NaN = none)."""
        original = torch.as_tensor(original_landmarks, dtype=torch.float32)
        return replace(
            self,
            original_landmarks=original,
            landmarks=original_to_model(original, self.original_sizes[:, None, :], self.image_size).float(),
        )

    @property
    def has_spacing(self) -> bool:
        return bool(torch.isfinite(self.spacing).all())

    def pixel_values(self, pixel_range: Sequence[float]) -> torch.Tensor:
        return to_pixel_values(self.images, pixel_range)

    def fine_pixel_values(self, pixel_range: Sequence[float]) -> torch.Tensor | None:
        return None if self.fine_images is None else to_pixel_values(self.fine_images, pixel_range)


def load_tensors(split, image_size: int, resample: str = "area", fine_size: int = 0) -> LandmarkTensors:
    """Decode a prepared split (a ``datasets.Dataset``) at ``image_size`` × ``image_size``,
    resized as the image processor resizes (``resample``), and at ``fine_size`` too for a
    refinement stage (``fine_images``; 0: not).

    With ``area`` and a prepared size that is a multiple of ``image_size``, the images are
    those the processor computes from the original files (see :mod:`hf_landmark.preprocessing`).
    A prepared size below ``image_size`` is refused: the model would train on blurrier images
    than it is given at inference."""
    if len(split) == 0:
        raise DatasetFormatError("the split is empty")
    _check_prepared_size(
        split[0]["image"].size[0], [(image_size, "model's"), (fine_size, "refinement stage's")], resample
    )
    images, fine, lms, sizes, spacing, ids = [], [], [], [], [], []
    for row in split:
        image01 = to_grayscale01(row["image"], source=row["image_id"])
        images.append(resize_image(image01, image_size, resample))
        if fine_size:
            fine.append(resize_image(image01, fine_size, resample))
        # An unlabeled split (the pool) has no landmarks: NaN, which no loss or metric may read.
        lms.append(
            np.asarray(row["landmarks"], dtype=np.float32)
            if "landmarks" in row
            else np.full((len(row["landmark_names"]), 2), np.nan, np.float32)
        )
        sizes.append(row["original_size"])
        spacing.append(row["spacing"] if row["spacing"] is not None else [math.nan, math.nan])
        ids.append(row["image_id"])
    original = torch.from_numpy(np.stack(lms))
    sizes_t = torch.tensor(sizes, dtype=torch.float32)
    return LandmarkTensors(
        images=torch.from_numpy(np.stack(images))[:, None],
        landmarks=original_to_model(original, sizes_t[:, None, :], image_size).float(),
        original_landmarks=original,
        original_sizes=sizes_t,
        spacing=torch.tensor(spacing, dtype=torch.float32),
        image_ids=ids,
        landmark_names=list(split[0]["landmark_names"]),
        dataset=split[0]["dataset"],
        image_size=image_size,
        fine_images=torch.from_numpy(np.stack(fine))[:, None] if fine_size else None,
    )


def _check_prepared_size(prepared: int, sizes, resample: str) -> None:
    """Refuse a prepared size below a wanted one (a model would train on blurrier images than
    it is given at inference); warn where resizing does not compose exactly."""
    for size, what in sizes:
        if size and prepared < size:
            raise DatasetFormatError(
                f"the dataset was prepared at {prepared} px, below the {what} {size} px; "
                f"prepare it again with --image-size {size} (or a multiple)"
                + (" or use the first stage alone (--no-refine)" if what == "refinement stage's" else "")
            )
        if size and (prepared % size or resample != "area"):
            warnings.warn(
                f"prepared images ({prepared} px) reach the {what} {size} px by {resample} resizing that does not compose "
                "exactly; evaluation can differ slightly from predictions on the original files",
                stacklevel=3,
            )


def few_shot_indices(image_ids: Sequence[str], num_labels: int, mode: str = "first", seed: int = 0) -> list[int]:
    """Indices of a few-shot subset: ``first`` the first ``num_labels`` sorted ids (the
    paper's code: 1-shot ceph is image 001), ``random`` a seeded sample."""
    if num_labels < 1 or num_labels > len(image_ids):
        raise ValueError(f"num_labels must be in 1..{len(image_ids)}, got {num_labels}")
    order = sorted(range(len(image_ids)), key=lambda i: image_ids[i])
    if mode == "first":
        return order[:num_labels]
    if mode == "random":
        rng = np.random.default_rng(seed)
        return sorted(rng.choice(order, size=num_labels, replace=False).tolist(), key=lambda i: image_ids[i])
    raise ValueError(f"subset mode must be 'first' or 'random', got {mode!r}")


def random_affine(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    rotation_deg: float = 2.0,
    scale: float = 0.02,
    translation: float = 0.02,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's augmentation: rotation in ±``rotation_deg``, scale in 1 ± ``scale``,
    translation in ± ``translation`` × image size, about the image centre, applied to
    square images ``[B, C, S, S]`` and their landmarks ``[B, N, 2]`` (model pixels)
    together. Outside the image is filled with 0."""
    b, _, h, w = images.shape
    if h != w:
        raise ValueError("random_affine expects square model inputs")
    dev = images.device

    def uniform(lo, hi):
        return (torch.rand(b, generator=generator) * (hi - lo) + lo).to(dev)

    angle = uniform(-rotation_deg, rotation_deg) * math.pi / 180.0
    s = uniform(1.0 - scale, 1.0 + scale)
    t = (
        torch.stack([uniform(-translation, translation), uniform(-translation, translation)], dim=-1) * 2.0
    )  # normalised units
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [B, 2, 2]
    # In normalised coordinates (align_corners=False; the centre is 0) the forward map is
    # u' = s R u + t; grid_sample needs the inverse: u = R^T (u' - t) / s.
    inv = rot.transpose(1, 2) / s[:, None, None]
    theta = torch.cat([inv, -(inv @ t[..., None])], dim=-1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    u = (2.0 * landmarks + 1.0) / w - 1.0
    u2 = s[:, None, None] * (u @ rot.transpose(1, 2)) + t[:, None, :]
    return out, ((u2 + 1.0) * w - 1.0) / 2.0


def random_gamma(images: torch.Tensor, gamma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Intensity augmentation of images in [0, 1]: each image raised to a power drawn
    log-uniformly in [1 / (1 + ``gamma``), 1 + ``gamma``] (brighter or darker mid-tones; black
    stays black and white white). ``gamma == 0`` returns the images unchanged."""
    if gamma <= 0:
        return images
    span = math.log1p(gamma)
    power = torch.exp((torch.rand(images.shape[0], generator=generator) * 2.0 - 1.0) * span).to(images.device)
    return images.clamp(0.0, 1.0) ** power.view(-1, *([1] * (images.dim() - 1))).to(images.dtype)


#: A pool whose decoded images take more than this is read from its Arrow files batch by batch.
POOL_MEMORY_BYTES = 1 << 30


class ImagePool:
    """The images pre-training reads: the comma-separated ``splits`` of a prepared
    ``DatasetDict`` (those it lacks or has empty are left out) at ``size`` x ``size``, in
    [0, 1], fetched by index (``pool[idx]`` → ``[B, 1, size, size]``).

    A pool whose decoded images fit in ``max_bytes`` (1 GiB: 65,000 images at 64 px, 4,000 at
    256 px) is decoded once into memory; a larger one stays in its memory-mapped Arrow files
    and each batch is decoded when drawn, so memory stays flat however many images a hospital
    brings. Either way a batch holds the same pixels (the same decoding and resizing as
    :func:`load_tensors`), and the caller's sampling of indices (its RNG, hence an exact
    resume) is unchanged. ``name`` (the dataset's path or id) names it in errors."""

    def __init__(self, dataset, splits: str, size: int, name: str, max_bytes: int = POOL_MEMORY_BYTES):
        from datasets import concatenate_datasets

        from ..errors import UserInputError

        wanted = [s for s in splits.split(",") if s]
        parts = {s: dataset[s] for s in wanted if s in dataset and len(dataset[s])}
        if not parts:
            raise UserInputError(f"{name}: none of the splits {wanted} exist (it has {', '.join(dataset)})")
        self.counts = {s: len(p) for s, p in parts.items()}
        self.size = size
        self.rows = concatenate_datasets([p.select_columns(["image", "image_id"]) for p in parts.values()])
        _check_prepared_size(self.rows[0]["image"].size[0], [(size, "model's")], "area")
        self.in_memory = len(self.rows) * size * size * 4 <= max_bytes
        self.images = self._decode(range(len(self.rows))) if self.in_memory else None

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device) -> ImagePool:
        """Keep the decoded images (when in memory) on ``device``; batches come from there."""
        self.device = torch.device(device)
        if self.images is not None:
            self.images = self.images.to(self.device)
        return self

    def __getitem__(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.images is not None:
            return self.images[idx.to(self.images.device)]
        return self._decode(idx.cpu().tolist()).to(getattr(self, "device", "cpu"))

    def _decode(self, indices) -> torch.Tensor:
        batch = self.rows[list(indices)] if not isinstance(indices, range) else self.rows[:]
        out = [
            resize_image(to_grayscale01(im, source=i), self.size, "area")
            for im, i in zip(batch["image"], batch["image_id"])
        ]
        return torch.from_numpy(np.stack(out))[:, None]


def load_unlabeled_images(dataset, splits: str, size: int, name: str) -> tuple[torch.Tensor, dict[str, int]]:
    """``([M, 1, size, size] images in [0, 1], {split: count})`` of the comma-separated
    ``splits`` of a prepared ``DatasetDict``, all decoded into memory (see :class:`ImagePool`)."""
    pool = ImagePool(dataset, splits, size, name, max_bytes=math.inf)
    return pool.images, pool.counts


def describe_split_counts(counts: dict[str, int]) -> str:
    """``48 images (unlabeled 40, train 6, validation 2)``."""
    return f"{sum(counts.values())} images ({', '.join(f'{s} {n}' for s, n in counts.items())})"
