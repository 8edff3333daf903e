"""The prepared dataset format: a ``datasets.DatasetDict`` with ``train``/``validation``/``test``.

Features (one row per radiograph):

- ``image``: ``datasets.Image``, 16-bit grayscale PNG **pre-resized** (exact area averaging)
  to ``image_size`` × ``image_size`` (decoding 1935×2400 originals every epoch is ~100×
  slower). A model whose input size divides ``image_size`` sees, up to 16-bit rounding, the
  same pixels from these images as the pipeline computes from the original files.
- ``landmarks``: ``[N, 2]`` float32, ``(x, y)`` in **original** image pixels.
- ``original_size``: ``(W, H)`` of the original image in pixels.
- ``spacing``: ``(sx, sy)`` mm per original pixel, or null when unknown (chest).
- ``landmark_names``: the N names, in order.
- ``image_id``: the id in the source dataset (file stem).
- ``dataset``: ``"ceph"``, ``"hand"``, ``"chest"``, ``"synthetic"`` or the custom name.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import UserInputError, hub_load_error, resolve_folder_or_repo
from ..fileio import atomic_directory
from ..preprocessing import ImageReadError, read_image, resize_image, to_uint16

SPLITS = ("train", "validation", "test")
OUTSIDE_IMAGE_POLICIES = ("error", "keep", "clamp")
INFO_FILE = "hf_landmark_dataset.json"


def features(num_landmarks: int | None = None):
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            "image": ImageFeature(),
            "landmarks": List(List(Value("float32"), length=2), length=num_landmarks if num_landmarks else -1),
            "original_size": List(Value("int32"), length=2),
            "spacing": List(Value("float32"), length=2),
            "landmark_names": List(Value("string")),
            "image_id": Value("string"),
            "dataset": Value("string"),
        }
    )


@dataclass
class Record:
    """One annotated radiograph before conversion. ``landmarks``: ``[N, 2]`` original pixels."""

    image_path: str
    image_id: str
    landmarks: np.ndarray
    split: str
    spacing: tuple[float, float] | None = None


@dataclass
class ConversionReport:
    """What a reader found: counts and every problem, by file."""

    dataset: str
    expected_images: int | None = None
    images_found: int = 0
    annotated: int = 0
    images_without_annotations: list[str] = field(default_factory=list)
    annotations_without_images: list[str] = field(default_factory=list)
    wrong_coordinate_counts: list[str] = field(default_factory=list)
    outside_image: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        lines = [f"dataset: {self.dataset}", f"images found: {self.images_found}" + (f" (expected {self.expected_images})" if self.expected_images else "")]
        lines.append(f"annotated images used: {self.annotated}")
        for key in ("images_without_annotations", "annotations_without_images", "wrong_coordinate_counts", "outside_image", "skipped", "excluded"):
            items = getattr(self, key)
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                lines.append(f"{key.replace('_', ' ')}: {len(items)}: {shown}")
        lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in self.split_sizes.items()))
        return "\n".join(lines)


class DatasetFormatError(UserInputError):
    """Raised for missing or malformed dataset files; the message names the file."""


def _encode_png(image01: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint16(image01)).save(buf, format="PNG")  # uint16 -> 16-bit grayscale
    return buf.getvalue()


def build_dataset_dict(
    records: Sequence[Record],
    landmark_names: Sequence[str],
    dataset: str,
    image_size: int = 256,
    report: ConversionReport | None = None,
    skip_bad: bool = False,
    outside_image: str = "error",
):
    """Read, resize and encode ``records`` into a ``DatasetDict`` (splits in :data:`SPLITS`
    order, empty splits omitted). Unreadable images raise :class:`ImageReadError` unless
    ``skip_bad``, which lists them in ``report.skipped``. A non-finite coordinate is always
    an error; a landmark outside its image (beyond the pixel edges) is an error naming the
    image and the landmark unless ``outside_image`` is ``keep`` or ``clamp`` (to the image),
    which list it in ``report.outside_image``."""
    if outside_image not in OUTSIDE_IMAGE_POLICIES:
        raise ValueError(f"outside_image must be one of {OUTSIDE_IMAGE_POLICIES}, got {outside_image!r}")
    from datasets import Dataset, DatasetDict

    report = report or ConversionReport(dataset=dataset)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for rec in records:
        try:
            image = read_image(rec.image_path)
        except ImageReadError as err:
            if not skip_bad:
                raise
            report.skipped.append(f"{rec.image_path} ({err})")
            continue
        h, w = image.shape
        lm = np.asarray(rec.landmarks, dtype=np.float32)
        if lm.shape != (len(landmark_names), 2) or not np.all(np.isfinite(lm)):
            raise DatasetFormatError(f"{rec.image_path}: landmarks must be {len(landmark_names)} finite (x, y) pairs, got {lm.tolist()}")
        outside = (lm[:, 0] < -0.5) | (lm[:, 0] > w - 0.5) | (lm[:, 1] < -0.5) | (lm[:, 1] > h - 0.5)
        if outside.any():
            listed = ", ".join(f"{landmark_names[j]!r} at ({lm[j, 0]:g}, {lm[j, 1]:g})" for j in np.flatnonzero(outside))
            if outside_image == "error":
                raise DatasetFormatError(
                    f"{rec.image_path}: landmark {listed} outside the {w}x{h} image; fix the annotation, "
                    "or pass --outside-image keep (or clamp)"
                )
            report.outside_image.append(f"{rec.image_id}: {listed}" + (" (clamped)" if outside_image == "clamp" else ""))
            if outside_image == "clamp":
                lm = np.stack([lm[:, 0].clip(0, w - 1), lm[:, 1].clip(0, h - 1)], axis=1)
        rows[rec.split].append(
            {
                "image": {"bytes": _encode_png(resize_image(image, image_size, "area")), "path": None},
                "landmarks": lm.tolist(),
                "original_size": [int(w), int(h)],
                "spacing": list(rec.spacing) if rec.spacing is not None else None,
                "landmark_names": list(landmark_names),
                "image_id": rec.image_id,
                "dataset": dataset,
            }
        )
    feats = features(len(landmark_names))
    out = DatasetDict()
    for split in SPLITS:
        if rows[split]:
            out[split] = Dataset.from_list(rows[split], features=feats)
    report.annotated = sum(len(v) for v in rows.values())
    report.split_sizes = {s: len(rows[s]) for s in SPLITS}
    return out


def save_prepared(dataset_dict, out_dir: str | os.PathLike, report: ConversionReport | None = None, info: dict | None = None) -> str:
    """Write a prepared ``DatasetDict`` atomically: into a temporary sibling folder first,
    renamed to ``out_dir`` only when complete. An existing ``out_dir`` is replaced."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    with atomic_directory(out_dir) as tmp:
        dataset_dict.save_to_disk(tmp)
        meta = dict(info or {})
        if report is not None:
            meta["report"] = report.to_dict()
        with open(os.path.join(tmp, INFO_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
    return out_dir


def load_prepared(path: str | os.PathLike):
    """Load a prepared dataset (``DatasetDict``) from disk, or from the Hub by repo id."""
    from datasets import load_dataset, load_from_disk

    path = resolve_folder_or_repo(path, "--dataset", "prepared dataset", "create one with hf-landmark prepare")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "dataset_dict.json")):
            raise DatasetFormatError(f"{path}: not a prepared dataset (no dataset_dict.json); create one with hf-landmark prepare")
        return load_from_disk(path)
    try:
        return load_dataset(path)
    except Exception as err:  # offline, unknown repo, no access: all mean "not found" here
        raise hub_load_error(path, "--dataset", "prepared dataset", err) from err


def require_split(dataset_dict, split: str, where: str):
    """``dataset_dict[split]``, or a :class:`DatasetFormatError` naming the splits there are."""
    if split not in dataset_dict or len(dataset_dict[split]) == 0:
        raise DatasetFormatError(f"{where}: no {split!r} split (has {', '.join(dataset_dict) or 'none'})")
    return dataset_dict[split]


def dataset_info(path: str | os.PathLike) -> dict:
    file = os.path.join(os.fspath(path), INFO_FILE)
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as fh:
        return json.load(fh)


def split_by_counts(ids: Sequence[str], counts: Iterable[int | None]) -> dict[str, str]:
    """Assign sorted ids to splits by counts (``None``: the rest), e.g. (130, 20, None)."""
    out: dict[str, str] = {}
    start = 0
    for split, count in zip(SPLITS, counts):
        end = len(ids) if count is None else min(len(ids), start + count)
        for i in ids[start:end]:
            out[i] = split
        start = end
    return out
