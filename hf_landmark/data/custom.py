"""Custom data: a folder of images and one annotation file (:func:`read_custom`), or a bare folder
of images (:func:`read_images`). Each returns ``(records, landmark_names, report)`` as the
benchmarks' readers (:mod:`hf_landmark.data.readers`) do."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..preprocessing import IMAGE_EXTENSIONS
from .prepared import SPLITS, UNLABELED, ConversionReport, DatasetFormatError, Record, assign_splits


@dataclass(frozen=True)
class CustomOptions:
    """How :func:`read_custom` reads an annotation file: the split fractions where the file
    gives no splits and no counts are given (default 70 / 10 / 20 %), whether a partly annotated
    image joins the pool (``drop_incomplete``) instead of stopping, the landmark names to keep
    (in their order), the COCO origin (``corner`` or ``center``; never guessed) and whether a
    Label Studio file of predictions alone is read (``accept_predictions``)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    drop_incomplete: bool = False
    landmarks: Sequence[str] | None = None
    coco_origin: str | None = None
    accept_predictions: bool = False


def read_custom(
    root: str | os.PathLike, annotations: str | os.PathLike, split_counts=None, skip_bad: bool = False, **options
):
    """A folder of images plus one annotation file: our CSV or JSON (the format is documented
    in the README, "Your own data"), or an export of CVAT, Label Studio, labelme or COCO
    Keypoints (:mod:`hf_landmark.data.formats`, detected by content).

    CSV: a header ``image,<name1>_x,<name1>_y,...[,spacing_x,spacing_y][,split]``, one row
    per image (``image`` is a path relative to ``root``). JSON: ``{"landmark_names":
    [...], "images": [{"file": ..., "landmarks": [[x, y], ...], "spacing": 0.1 | [sx, sy],
    "split": "train"}]}`` (names, spacing and split optional). Coordinates in original
    pixels, pixel centres at integers. ``split`` is ``train``, ``validation`` or ``test``
    for every annotated image, or for none; without it, sorted ids are split by
    ``split_counts`` or by the fractions (default 70 / 10 / 20 %).

    Every readable image under ``root`` (recursive) is kept: those the file annotates go to
    train / validation / test, the others, and rows with no coordinates at all (an image not
    yet annotated), to the ``unlabeled`` split. A partly annotated image is an error naming
    the missing landmarks unless ``drop_incomplete`` (then it joins the unlabeled pool and is
    listed in the report). Every problem is a :class:`DatasetFormatError` naming the file,
    the row or item and the landmark. An annotated image that does not exist is an error too,
    unless ``skip_bad`` (then it is listed in the report). ``options``: :class:`CustomOptions`.
    """
    from .formats import read_annotation_file

    opts = CustomOptions(**options)
    root, annotations = Path(root), Path(annotations)
    if not annotations.exists():
        raise DatasetFormatError(f"{annotations}: annotation file not found")
    entries, names = read_annotation_file(
        annotations,
        root=root,
        landmarks=opts.landmarks,
        coco_origin=opts.coco_origin,
        accept_predictions=opts.accept_predictions,
    )
    if not entries:
        raise DatasetFormatError(f"{annotations}: no images listed")
    files = _image_files(root)
    report = ConversionReport(dataset="custom", images_found=len(files))
    annotated_entries = _annotated_entries(entries, names, opts.drop_incomplete, report)
    _check_custom_splits(annotated_entries, annotations, report)
    records, listed = _custom_records(entries, root, skip_bad, report)
    unannotated = [p for p in files if p.resolve() not in listed]
    report.images_without_annotations = [p.relative_to(root).as_posix() for p in unannotated]  # the pool
    records += [Record(str(p), _image_id(p, root), None, UNLABELED, _dicom_spacing(p)) for p in unannotated]
    labeled = sorted((r for r in records if r.split != UNLABELED), key=lambda r: r.image_id)
    pool = sorted((r for r in records if r.split == UNLABELED), key=lambda r: r.image_id)
    if labeled and all(r.split for r in labeled):
        report.split_sizes = {s: sum(r.split == s for r in labeled) for s in SPLITS}
        return labeled + pool, names, report
    if split_counts is None:
        total = len(labeled)
        n_test, n_val = int(round(total * opts.test_fraction)), int(round(total * opts.val_fraction))
        split_counts = (total - n_val - n_test, n_val, None)
    return (assign_splits(labeled, split_counts, report) if labeled else []) + pool, names, report


def _annotated_entries(entries, names, drop_incomplete: bool, report: ConversionReport) -> list:
    """The fully annotated entries; a row with no coordinates is not annotated yet (the pool),
    a partly annotated one an error naming the missing landmarks (or the pool, listed, with
    ``drop_incomplete``). A file listed twice is an error."""
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.file in seen:
            raise DatasetFormatError(
                f"{entry.where}: image {entry.file!r} is listed twice (first at {seen[entry.file]})"
            )
        seen[entry.file] = entry.where
    annotated_entries = []
    for entry in entries:
        missing = (
            [] if entry.landmarks is None else [n for n, p in zip(names, entry.landmarks) if not np.isfinite(p).all()]
        )
        if entry.landmarks is None or len(missing) == len(names):
            entry.landmarks = None  # not annotated yet: the pool
        elif missing:
            if not drop_incomplete:
                raise DatasetFormatError(
                    f"{entry.where}: landmark{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                    "missing; annotate them, or pass --drop-incomplete to put the image in the unlabeled pool"
                )
            report.incomplete.append(f"{entry.file} (missing {', '.join(missing)})")
            entry.landmarks = None
        else:
            annotated_entries.append(entry)
    return annotated_entries


def _custom_records(entries, root: Path, skip_bad: bool, report: ConversionReport):
    """``(records of the listed images that exist, their resolved paths)``; a test row not
    annotated yet is held out (never the pool)."""
    records, listed = [], set()
    for entry in entries:
        path = root / entry.file
        if not path.is_file():
            if entry.landmarks is None:
                continue  # a template row for an image that is not here: nothing lost
            if not skip_bad:
                raise DatasetFormatError(
                    f"{entry.where}: image {path} not found (--skip-bad leaves it out and lists it)"
                )
            report.annotations_without_images.append(entry.file)
            continue
        listed.add(path.resolve())
        if entry.landmarks is None and entry.split == "test":
            report.held_out.append(entry.file)  # kept for testing: never the pool, not annotated yet
            continue
        split = UNLABELED if entry.landmarks is None else entry.split or ""
        records.append(
            Record(str(path), _image_id(path, root), entry.landmarks, split, entry.spacing or _dicom_spacing(path))
        )
    return records, listed


def _check_custom_splits(entries, path: Path, report: ConversionReport) -> None:
    """Check the ``split`` cells of the annotated ``entries``. Where some give one, an annotated
    row whose split is empty joins ``train`` (listed in the report): a later round's labels
    (``annotate --model`` adds such rows) train the next model, and the validation and test
    images stay those of the first round, so that rounds compare."""
    for e in entries:
        if e.split and e.split not in SPLITS:
            raise DatasetFormatError(f"{e.where}: unknown split {e.split!r}; use train, validation or test")
    if any(e.split for e in entries):
        for e in entries:
            if not e.split:
                e.split = "train"
                report.split_to_train.append(e.file)


def read_images(
    root: str | os.PathLike, skip_bad: bool = False, holdout: int | str | os.PathLike | None = None, seed: int = 0
):
    """Every image under ``root`` (recursive; PNG, JPEG, BMP, TIFF, DICOM), all in the
    ``unlabeled`` split: a pool to pre-train on and to choose the images to annotate from.

    ``holdout``: images kept out of the pool from the start, to test on once annotated (no
    pre-training, selection or self-training sees them): a number (drawn at random with
    ``seed``) or a text file listing them (paths under ``root``, one per line). They are
    listed in the report (``held_out``); ``hf-landmark select`` adds them to its template
    with the split ``test``."""
    root = Path(root)
    files = _image_files(root)
    report = ConversionReport(dataset="images", images_found=len(files))
    names = [p.relative_to(root).as_posix() for p in files]
    held = set(_holdout_files(holdout, names, seed))
    report.held_out = sorted(held)
    kept = [p for p, n in zip(files, names) if n not in held]
    return [Record(str(p), _image_id(p, root), None, UNLABELED, _dicom_spacing(p)) for p in kept], [], report


def _holdout_files(holdout, names: list[str], seed: int) -> list[str]:
    """The images ``holdout`` names: a count drawn from ``names`` with ``seed``, or a list file."""
    if holdout is None or holdout == 0:
        return []
    text = str(holdout).strip()
    if text.isdigit():
        count = int(text)
        if count >= len(names):
            raise DatasetFormatError(
                f"--holdout {count}: the folder has only {len(names)} images; keep some for the pool"
            )
        rng = np.random.default_rng(seed)
        return sorted(names[i] for i in rng.choice(len(names), size=count, replace=False))
    path = Path(text)
    if not path.is_file():
        raise DatasetFormatError(f"--holdout {text}: neither a number of images nor a file listing them")
    listed = [
        ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip() and not ln.startswith("#")
    ]
    unknown = [n for n in listed if n not in set(names)]
    if unknown:
        raise DatasetFormatError(
            f"{path}: {len(unknown)} listed image(s) are not under the folder: {', '.join(unknown[:5])}"
        )
    return listed


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden folders and files are left out."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _image_id(path: Path, root: Path) -> str:
    """An image's id: its path under ``root`` without the extension (``sub/img01``; a file at
    the top is its stem)."""
    return path.relative_to(root).with_suffix("").as_posix()


def _dicom_spacing(path: Path):
    """A DICOM file's pixel spacing ``(sx, sy)`` mm (None for other files or without one)."""
    from ..preprocessing import ImageReadError, is_dicom_path, read_dicom

    if not is_dicom_path(path):
        return None
    try:
        return read_dicom(path)[1]
    except ImageReadError:
        return None  # the image itself is read (and refused or skipped) when it is encoded
