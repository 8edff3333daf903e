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
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import UserInputError, hub_load_error, resolve_folder_or_repo
from ..fileio import atomic_directory, json_text
from ..preprocessing import ImageReadError, read_image, resize_image, to_uint16

SPLITS = ("train", "validation", "test")
#: The split of images without landmarks: the pool pre-training and selection read, never
#: fine-tuning or evaluation.
UNLABELED = "unlabeled"
OUTSIDE_IMAGE_POLICIES = ("error", "keep", "clamp")
INFO_FILE = "hf_landmark_dataset.json"


def features(num_landmarks: int | None = None, labeled: bool = True):
    """The columns of a prepared split; the ``unlabeled`` split (``labeled=False``) has all
    but ``landmarks``."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    columns = {
        "image": ImageFeature(),
        "landmarks": List(List(Value("float32"), length=2), length=num_landmarks if num_landmarks else -1),
        "original_size": List(Value("int32"), length=2),
        "spacing": List(Value("float32"), length=2),
        "landmark_names": List(Value("string")),
        "image_id": Value("string"),
        "dataset": Value("string"),
    }
    if not labeled:
        del columns["landmarks"]
    return Features(columns)


@dataclass
class Record:
    """One radiograph before conversion. ``landmarks``: ``[N, 2]`` original pixels, or
    ``None`` for an image of the unlabeled pool (split ``unlabeled``)."""

    image_path: str
    image_id: str
    landmarks: np.ndarray | None
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
    clamped_at_border: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    #: images kept out of every split to test on later (``prepare images --holdout``), or test
    #: rows of an annotation file that are not annotated yet (left out, never the pool)
    held_out: list[str] = field(default_factory=list)
    #: annotated rows without a split in a file that gives splits (a later round's labels)
    split_to_train: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        lines = [
            f"dataset: {self.dataset}",
            f"images found: {self.images_found}"
            + (f" (expected {self.expected_images})" if self.expected_images else ""),
        ]
        lines.append(f"annotated images used: {self.annotated}")
        for key in (
            "images_without_annotations",
            "annotations_without_images",
            "wrong_coordinate_counts",
            "outside_image",
            "clamped_at_border",
            "incomplete",
            "skipped",
            "excluded",
            "held_out",
            "split_to_train",
        ):
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


def check_landmarks(
    lm: np.ndarray,
    size: tuple[int, int],
    names: Sequence[str],
    where: str,
    policy: str,
    report: ConversionReport,
    image_id: str,
):
    """``lm`` ``[N, 2]`` (original pixels, pixel centres at integers) checked against a
    ``size`` ``(w, h)`` image: a point within one pixel beyond the pixel edges (a tool that puts the
    last row's bottom edge at ``y = H``, as JSRT's chest contours do) is inside the picture a
    user sees and is clamped to the nearest pixel centre, counted in the report; a point
    farther out follows ``policy`` (``error``, ``keep`` or ``clamp``)."""
    w, h = size
    lo_x, hi_x, lo_y, hi_y = -0.5, w - 0.5, -0.5, h - 0.5
    outside = (lm[:, 0] < lo_x) | (lm[:, 0] > hi_x) | (lm[:, 1] < lo_y) | (lm[:, 1] > hi_y)
    far = (lm[:, 0] < lo_x - 1) | (lm[:, 0] > hi_x + 1) | (lm[:, 1] < lo_y - 1) | (lm[:, 1] > hi_y + 1)
    near = outside & ~far
    if near.any():
        listed = ", ".join(f"{names[j]!r} at ({lm[j, 0]:g}, {lm[j, 1]:g})" for j in np.flatnonzero(near))
        report.clamped_at_border.append(f"{image_id}: {listed}")
        lm = lm.copy()
        lm[near, 0] = lm[near, 0].clip(0, w - 1)
        lm[near, 1] = lm[near, 1].clip(0, h - 1)
    if far.any():
        listed = ", ".join(f"{names[j]!r} at ({lm[j, 0]:g}, {lm[j, 1]:g})" for j in np.flatnonzero(far))
        if policy == "error":
            raise DatasetFormatError(
                f"{where}: landmark {listed} outside the {w}x{h} image; fix the annotation, or pass --outside-image keep (or clamp)"
            )
        report.outside_image.append(f"{image_id}: {listed}" + (" (clamped)" if policy == "clamp" else ""))
        if policy == "clamp":
            lm = np.stack([lm[:, 0].clip(0, w - 1), lm[:, 1].clip(0, h - 1)], axis=1)
    return lm


@dataclass(frozen=True)
class ImagePolicy:
    """What preparing does with a bad image or landmark: ``skip_bad`` lists an unreadable image
    in the report instead of stopping; ``outside_image`` is what a landmark farther than a
    pixel outside its image gets (:data:`OUTSIDE_IMAGE_POLICIES`: ``error``, ``keep`` or ``clamp``)."""

    skip_bad: bool = False
    outside_image: str = "error"

    def __post_init__(self):
        if self.outside_image not in OUTSIDE_IMAGE_POLICIES:
            raise ValueError(f"outside_image must be one of {OUTSIDE_IMAGE_POLICIES}, got {self.outside_image!r}")


def build_dataset_dict(
    records: Sequence[Record],
    landmark_names: Sequence[str],
    dataset: str,
    image_size: int = 256,
    report: ConversionReport | None = None,
    policy: ImagePolicy | None = None,
    cache_dir: str | None = None,
):
    """Read, resize and encode ``records`` into a ``DatasetDict`` (splits in :data:`SPLITS`
    order, empty splits omitted). A record without landmarks (``landmarks is None``) goes to
    the ``unlabeled`` split, whose rows have the same columns but ``landmarks``.

    Images are read one at a time and streamed into Arrow files (in ``cache_dir``, else the
    ``datasets`` cache), so a pool of any size is prepared without holding it in memory.
    Unreadable images raise :class:`ImageReadError` unless ``policy.skip_bad``, which lists
    them in ``report.skipped``. A non-finite coordinate is always an error; landmarks on or
    just beyond the border are clamped and counted, and farther out follow
    ``policy.outside_image`` (see :func:`check_landmarks`)."""
    policy = policy or ImagePolicy()
    from datasets import Dataset, DatasetDict

    report = report or ConversionReport(dataset=dataset)
    names = list(landmark_names)
    failure: list[BaseException] = []  # an error inside the generator, re-raised as it is (datasets would wrap it)

    def rows(split: str, progress):
        for rec in records:
            if rec.split != split or failure:
                continue
            try:
                row = _encode_record(rec, names, dataset, image_size, report, policy)
            except Exception as err:  # noqa: BLE001 - every error is re-raised below, unchanged
                failure.append(err)
                return
            progress.update(1)
            if row is not None:
                yield row

    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from tqdm.auto import tqdm

    out = DatasetDict()
    bars = not are_progress_bars_disabled()
    disable_progress_bars()  # datasets' own bar names every split "train"; ours counts the images of each
    try:
        for split in (*SPLITS, UNLABELED):
            count = sum(r.split == split for r in records)
            if not count:
                continue
            feats = features(len(names), labeled=split != UNLABELED)
            # Shown where datasets would show its own (HF_DATASETS_DISABLE_PROGRESS_BARS hides both).
            with tqdm(total=count, desc=f"preparing {split}", unit="image", disable=count < 2 or not bars) as progress:
                # A fresh fingerprint: every call really reads the images (the report is filled as they are read).
                part = Dataset.from_generator(
                    rows,
                    features=feats,
                    gen_kwargs={"split": split, "progress": progress},
                    cache_dir=cache_dir,
                    keep_in_memory=False,
                    split=split,
                    fingerprint=uuid.uuid4().hex,
                )
            if failure:
                raise failure[0]
            if len(part):
                out[split] = part
    finally:
        if bars:
            enable_progress_bars()
    report.split_sizes = {
        s: len(out[s]) if s in out else 0 for s in (*SPLITS, UNLABELED) if s != UNLABELED or s in out
    }
    report.annotated = sum(len(out[s]) for s in SPLITS if s in out)
    return out


def _encode_record(rec: Record, names, dataset, image_size, report, policy: ImagePolicy) -> dict | None:
    try:
        image = read_image(rec.image_path)
    except ImageReadError as err:
        if not policy.skip_bad:
            raise
        report.skipped.append(f"{rec.image_path} ({err})")
        return None
    h, w = image.shape
    row = {
        "image": {"bytes": _encode_png(resize_image(image, image_size, "area")), "path": None},
        "original_size": [int(w), int(h)],
        "spacing": list(rec.spacing) if rec.spacing is not None else None,
        "landmark_names": list(names),
        "image_id": rec.image_id,
        "dataset": dataset,
    }
    if rec.landmarks is None:
        return row
    lm = np.asarray(rec.landmarks, dtype=np.float32)
    if lm.shape != (len(names), 2) or not np.all(np.isfinite(lm)):
        raise DatasetFormatError(
            f"{rec.image_path}: landmarks must be {len(names)} finite (x, y) pairs, got {lm.tolist()}"
        )
    row["landmarks"] = check_landmarks(
        lm, (w, h), names, rec.image_path, policy.outside_image, report, rec.image_id
    ).tolist()
    return row


def save_prepared(
    dataset_dict, out_dir: str | os.PathLike, report: ConversionReport | None = None, info: dict | None = None
) -> str:
    """Write a prepared ``DatasetDict`` atomically: into a temporary sibling folder first,
    renamed to ``out_dir`` only when complete. An existing ``out_dir`` is replaced."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    with atomic_directory(out_dir) as tmp:
        dataset_dict.save_to_disk(tmp)
        meta = dict(info or {})
        if report is not None:
            meta["report"] = report.to_dict()
        with open(os.path.join(tmp, INFO_FILE), "w", encoding="utf-8") as fh:
            fh.write(json_text(meta))
    return out_dir


def load_prepared(path: str | os.PathLike):
    """Load a prepared dataset (``DatasetDict``) from disk, or from the Hub by repo id."""
    from datasets import load_dataset, load_from_disk

    path = resolve_folder_or_repo(path, "--dataset", "prepared dataset", "create one with hf-landmark prepare")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "dataset_dict.json")):
            raise DatasetFormatError(
                f"{path}: not a prepared dataset (no dataset_dict.json); create one with hf-landmark prepare"
            )
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


def common_spacing(*splits):
    """The spacing ``[sx, sy]`` (mm per original pixel) that every image of ``splits`` has,
    or ``None`` when one has none or two differ (by more than 1e-6 of it): the one spacing a
    detector trained on them may assume for an image that brings none."""
    found = None
    for split in splits:
        for spacing in split["spacing"]:
            if spacing is None:
                return None
            if found is None:
                found = [float(v) for v in spacing]
            elif not np.allclose(spacing, found, rtol=1e-6, atol=0):
                return None
    return found


def assign_splits(records: list[Record], counts, report: ConversionReport) -> list[Record]:
    """Split ``records`` by sorted id: ``counts`` ``(train, validation, test)`` (:func:`split_by_counts`)."""
    ids = sorted(r.image_id for r in records)
    split = split_by_counts(ids, counts)
    for r in records:
        r.split = split[r.image_id]
    report.split_sizes = {s: sum(r.split == s for r in records) for s in ("train", "validation", "test")}
    return sorted(records, key=lambda r: r.image_id)
