"""Readers for the public on-disk layouts of the three x-ray benchmarks and for custom data.

Each reader returns ``(records, landmark_names, report)``; :func:`prepare` turns them into a
prepared ``DatasetDict`` (see :mod:`hf_landmark.data.prepared`). Coordinates are ``(x, y)``
in original image pixels.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..metrics import wrist_spacing
from ..preprocessing import IMAGE_EXTENSIONS
from .custom import CustomOptions, read_custom, read_images  # noqa: F401 (CustomOptions: read_custom's options)
from .prepared import (
    SPLITS,
    UNLABELED,
    ConversionReport,
    DatasetFormatError,
    ImagePolicy,
    Record,
    assign_splits,
    build_dataset_dict,
)
from .specs import DATASETS

CEPH, HAND, CHEST = DATASETS["ceph"], DATASETS["hand"], DATASETS["chest"]
CEPH_LANDMARKS = list(CEPH.landmark_names)
#: Images the paper's code drops from the chest set (its split then has 41 test images).
CHEST_CODE_EXCLUSIONS = tuple(f"CHNCXR_{n:04d}_0" for n in (59, 178, 228, 267, 295, 310, 285, 276, 303))


def _images_by_stem(folders: Sequence[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                found.setdefault(p.stem, p)
    return found


# --- Cephalometric, ISBI 2015 ------------------------------------------------------------


def read_isbi_annotation(path: Path, num_landmarks: int = 19) -> np.ndarray:
    """Read the first ``num_landmarks`` ``x,y`` lines of an ISBI annotation file (later lines,
    e.g. classification labels, are ignored)."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError as err:
        raise DatasetFormatError(f"{path}: cannot read annotation ({err})") from err
    points = []
    for ln in lines[:num_landmarks]:
        parts = ln.replace(" ", "").split(",")
        try:
            points.append([float(parts[0]), float(parts[1])])
        except (ValueError, IndexError) as err:
            raise DatasetFormatError(f"{path}: line {ln!r} is not 'x,y'") from err
        if not np.all(np.isfinite(points[-1])):
            raise DatasetFormatError(
                f"{path}: line {len(points)} ({CEPH_LANDMARKS[len(points) - 1] if num_landmarks == 19 else ''}) {ln!r} is not finite"
            )
    if len(points) != num_landmarks:
        raise DatasetFormatError(f"{path}: {len(points)} coordinate lines, expected {num_landmarks}")
    return np.asarray(points, dtype=np.float32)


def read_ceph(
    root: str | os.PathLike, annotator: str = "mean", skip_bad: bool = False, split_counts=CEPH.split_counts
):
    """ISBI 2015 cephalograms: ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.{bmp,jpg,png}``
    (or all images in one folder: ``RawImage/``, ``images/`` or the root) and
    ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt`` (or those two folders at the root).

    ``annotator``: ``"mean"`` (default, the usual ground truth), ``"senior"`` or ``"junior"``.
    Splits: sorted ids, 130 / 20 / rest (the paper's 130 / 20 / 250). Spacing 0.1 mm/px.
    """
    root = Path(root)
    if annotator not in ("mean", "senior", "junior"):
        raise ValueError(f"annotator must be mean, senior or junior, got {annotator!r}")
    raw = root / "RawImage"
    folders = [raw / "TrainingData", raw / "Test1Data", raw / "Test2Data", raw, root / "images", root]
    images = _images_by_stem(folders)
    ann_root = root / "AnnotationsByMD" if (root / "AnnotationsByMD").is_dir() else root
    ann_dirs = {who: ann_root / f"400_{who}" for who in ("senior", "junior")}
    needed = ("senior", "junior") if annotator == "mean" else (annotator,)
    for who in needed:
        if not ann_dirs[who].is_dir():
            raise DatasetFormatError(
                f"{ann_dirs[who]}: annotation folder not found (expected the ISBI 2015 layout under {root})"
            )
    report = ConversionReport(dataset="ceph", expected_images=CEPH.expected_images, images_found=len(images))
    ann_ids = sorted({p.stem for who in needed for p in ann_dirs[who].glob("*.txt")})
    report.annotations_without_images = [i for i in ann_ids if i not in images]
    records = []
    for image_id in sorted(images):
        files = [ann_dirs[who] / f"{image_id}.txt" for who in needed]
        if not all(f.is_file() for f in files):
            report.images_without_annotations.append(image_id)
            continue
        try:
            points = [read_isbi_annotation(f) for f in files]
        except DatasetFormatError as err:
            if not skip_bad:
                raise
            report.wrong_coordinate_counts.append(str(err))
            continue
        records.append(
            Record(str(images[image_id]), image_id, np.mean(points, axis=0), "train", (CEPH.spacing_mm,) * 2)
        )
    return assign_splits(records, split_counts, report), list(CEPH_LANDMARKS), report


# --- Hand, Digital Hand Atlas ------------------------------------------------------------


def read_hand(
    root: str | os.PathLike,
    wrist_indices: Sequence[int] = HAND.wrist_indices,
    wrist_distance_mm: float = HAND.wrist_distance_mm,
    skip_bad: bool = False,
    split_counts=HAND.split_counts,
):
    """Digital Hand Atlas: ``jpg/<id>.jpg`` and ``labels/all.csv`` (or ``all.csv`` at the
    root; rows ``id,x1,y1,...,x37,y37`` in original pixels, no header). Only images with a
    row are used. Splits: sorted ids, 550 / 59 / rest. Spacing: per image, from
    ``wrist_distance_mm`` between the 0-based ``wrist_indices`` landmarks (default (0, 4), as
    the paper's code; Payer et al. use (1, 5))."""
    root = Path(root)
    csv_path = next((p for p in (root / "labels" / "all.csv", root / "all.csv") if p.is_file()), None)
    if csv_path is None:
        raise DatasetFormatError(f"{root}: no labels/all.csv or all.csv found (Digital Hand Atlas layout)")
    images = _images_by_stem([root / "jpg", root / "images", root])
    report = ConversionReport(dataset="hand", expected_images=HAND.expected_images, images_found=len(images))
    num_landmarks = len(HAND.landmark_names)
    rows: dict[str, np.ndarray] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not row[0].strip():
                continue
            image_id = row[0].strip()
            values = [v for v in row[1:] if v.strip() != ""]
            if len(values) != 2 * num_landmarks:
                msg = f"{csv_path}:{lineno} ({image_id}): {len(values)} values, expected {2 * num_landmarks}"
                if not skip_bad:
                    raise DatasetFormatError(msg)
                report.wrong_coordinate_counts.append(msg)
                continue
            try:
                points = np.asarray(values, dtype=np.float32).reshape(-1, 2)
            except ValueError as err:
                raise DatasetFormatError(f"{csv_path}:{lineno} ({image_id}): non-numeric coordinate") from err
            bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
            if bad.size:
                raise DatasetFormatError(
                    f"{csv_path}:{lineno} ({image_id}): landmark {HAND.landmark_names[bad[0]]!r} is not finite"
                )
            rows[image_id] = points
    report.images_without_annotations = sorted(i for i in images if i not in rows)
    report.annotations_without_images = sorted(i for i in rows if i not in images)
    records = []
    for image_id in sorted(i for i in images if i in rows):
        lm = rows[image_id]
        s = float(wrist_spacing(lm[None], wrist_indices, wrist_distance_mm)[0])
        records.append(Record(str(images[image_id]), image_id, lm, "train", (s, s)))
    return assign_splits(records, split_counts, report), list(HAND.landmark_names), report


# --- Chest, Shenzhen with 6 landmarks ----------------------------------------------------


def read_chest_annotation(path: Path, width: int, height: int) -> np.ndarray:
    """First line the count (6), then ``x y`` fractions of width and height → pixels."""
    lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    try:
        count = int(float(lines[0][0]))
        pts = np.asarray([[float(a), float(b)] for a, b in (ln[:2] for ln in lines[1 : 1 + count])], dtype=np.float32)
    except (ValueError, IndexError) as err:
        raise DatasetFormatError(f"{path}: expected a count line then 'x y' fraction lines") from err
    if count != len(CHEST.landmark_names) or len(pts) != count:
        raise DatasetFormatError(
            f"{path}: {len(pts)} landmarks (count line says {count}), expected {len(CHEST.landmark_names)}"
        )
    # Fractions of the image size, converted as the label files were made: x = f * W.
    return pts * np.asarray([width, height], dtype=np.float32)


def read_chest(root: str | os.PathLike, split: str = "paper", skip_bad: bool = False, split_counts=CHEST.split_counts):
    """Shenzhen chest x-rays with 6 landmarks: ``pngs/CHNCXR_NNNN_0.png`` and
    ``labels/CHNCXR_NNNN_0.txt``. ``split``: ``"paper"`` (195 / 34 / rest) or ``"code"`` (the
    paper's code: the same after dropping 9 listed images); ``split_counts`` other counts over
    the sorted ids. No spacing: pixels."""
    from PIL import Image

    if split not in ("paper", "code"):
        raise ValueError(f"chest split must be 'paper' or 'code', got {split!r}")
    root = Path(root)
    labels_dir = root / "labels"
    if not labels_dir.is_dir():
        raise DatasetFormatError(f"{labels_dir}: label folder not found (Shenzhen chest layout)")
    images = _images_by_stem([root / "pngs", root / "images", root])
    report = ConversionReport(dataset="chest", expected_images=CHEST.expected_images, images_found=len(images))
    labels = {p.stem: p for p in sorted(labels_dir.glob("*.txt"))}
    report.images_without_annotations = sorted(i for i in images if i not in labels)
    report.annotations_without_images = sorted(i for i in labels if i not in images)
    records = []
    for image_id in sorted(i for i in images if i in labels):
        if split == "code" and image_id in CHEST_CODE_EXCLUSIONS:
            report.excluded.append(image_id)
            continue
        try:
            with Image.open(images[image_id]) as im:
                w, h = im.size
        except Exception as err:
            if not skip_bad:
                raise DatasetFormatError(f"{images[image_id]}: cannot read image ({err})") from err
            report.skipped.append(str(images[image_id]))
            continue
        try:
            lm = read_chest_annotation(labels[image_id], w, h)
        except DatasetFormatError as err:
            if not skip_bad:
                raise
            report.wrong_coordinate_counts.append(str(err))
            continue
        records.append(Record(str(images[image_id]), image_id, lm, "train", None))
    return assign_splits(records, split_counts, report), list(CHEST.landmark_names), report


READERS = {"ceph": read_ceph, "hand": read_hand, "chest": read_chest, "custom": read_custom, "images": read_images}


def prepare(
    kind: str,
    root,
    out_dir=None,
    image_size: int = 256,
    skip_bad: bool = False,
    allow_empty_splits: bool = False,
    outside_image: str = "error",
    **reader_kwargs,
):
    """Read a benchmark (``ceph``, ``hand``, ``chest``), custom data (``custom``: a folder
    and an annotation file; its images without annotations form the ``unlabeled`` split) or
    a bare folder of images (``images``: only an ``unlabeled`` split), and build its prepared
    ``DatasetDict``; saved atomically to ``out_dir`` when given. Returns ``(dd, report)``.

    A split that comes out empty (e.g. 40 images with the paper's 130 / 20 / rest) is refused
    with a :class:`DatasetFormatError` unless ``allow_empty_splits`` (then it is omitted).
    ``outside_image``: what to do with a landmark outside its image: ``error`` (default),
    ``keep`` or ``clamp`` to the image (both listed in the report)."""
    import shutil
    import tempfile

    from .prepared import load_prepared, save_prepared

    if kind not in READERS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {sorted(READERS)}")
    layout = DATASETS[kind].layout if kind in DATASETS else "a folder of images"
    if not Path(root).is_dir():
        raise DatasetFormatError(f"{root}: folder not found (expected the {kind} layout: {layout})")
    records, names, report = READERS[kind](root, skip_bad=skip_bad, **reader_kwargs)
    labeled = [r for r in records if r.split != UNLABELED]
    if kind == "images":
        if not records:
            raise DatasetFormatError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    elif not labeled:
        raise DatasetFormatError(
            f"{root}: no annotated images found for {kind} (expected {layout}); "
            f"for a folder without annotations use hf-landmark prepare images\n{report.summary()}"
        )
    empty = [s for s in SPLITS if not any(r.split == s for r in labeled)]
    if labeled and empty and not allow_empty_splits:
        sizes = ", ".join(f"{s} {sum(r.split == s for r in labeled)}" for s in SPLITS)
        raise DatasetFormatError(
            f"{root}: the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} would be empty ({sizes} of {len(labeled)} "
            "annotated images); give --split-counts TRAIN,VAL[,TEST] (e.g. 26,6,8) or --allow-empty-splits"
            + (
                f" ({len(report.held_out)} test rows of the file are not annotated yet: annotate them to test on)"
                if report.held_out
                else ""
            )
        )
    dataset_name = "custom" if kind in ("custom", "images") else kind
    cache = tempfile.mkdtemp(prefix="hf-landmark-prepare-")
    try:
        dd = build_dataset_dict(
            records,
            names,
            dataset_name,
            image_size=image_size,
            report=report,
            policy=ImagePolicy(skip_bad, outside_image),
            cache_dir=cache,
        )
        if out_dir is None:
            return dd.map(keep_in_memory=True), report  # detached from the temporary cache
        info = {"kind": kind, "image_size": image_size, "landmark_names": names}
        if kind in ("custom", "images"):  # where each image came from, for annotation templates (hf-landmark select)
            info.update(
                root=str(Path(root).resolve()),
                files={r.image_id: Path(r.image_path).relative_to(root).as_posix() for r in records},
            )
            info["held_out"] = list(report.held_out)
        save_prepared(dd, out_dir, report, info=info)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return load_prepared(out_dir), report
