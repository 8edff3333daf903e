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
from .prepared import (
    SPLITS,
    UNLABELED,
    ConversionReport,
    DatasetFormatError,
    Record,
    build_dataset_dict,
    split_by_counts,
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


def _assign(records: list[Record], counts, report: ConversionReport) -> list[Record]:
    ids = sorted(r.image_id for r in records)
    split = split_by_counts(ids, counts)
    for r in records:
        r.split = split[r.image_id]
    report.split_sizes = {s: sum(r.split == s for r in records) for s in ("train", "validation", "test")}
    return sorted(records, key=lambda r: r.image_id)


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
    return _assign(records, split_counts, report), list(CEPH_LANDMARKS), report


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
    return _assign(records, split_counts, report), list(HAND.landmark_names), report


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
    return _assign(records, split_counts, report), list(CHEST.landmark_names), report


# --- Custom ------------------------------------------------------------------------------


def read_custom(
    root: str | os.PathLike,
    annotations: str | os.PathLike,
    split_counts=None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    skip_bad: bool = False,
    drop_incomplete: bool = False,
    landmarks: Sequence[str] | None = None,
    coco_origin: str | None = None,
    accept_predictions: bool = False,
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
    unless ``skip_bad`` (then it is listed in the report).
    """
    from .formats import read_annotation_file

    root, annotations = Path(root), Path(annotations)
    if not annotations.exists():
        raise DatasetFormatError(f"{annotations}: annotation file not found")
    entries, names = read_annotation_file(
        annotations, root=root, landmarks=landmarks, coco_origin=coco_origin, accept_predictions=accept_predictions
    )
    if not entries:
        raise DatasetFormatError(f"{annotations}: no images listed")
    files = _image_files(root)
    report = ConversionReport(dataset="custom", images_found=len(files))
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
    _check_custom_splits(annotated_entries, annotations, report)
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
        n_test, n_val = int(round(total * test_fraction)), int(round(total * val_fraction))
        split_counts = (total - n_val - n_test, n_val, None)
    return (_assign(labeled, split_counts, report) if labeled else []) + pool, names, report


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
            skip_bad=skip_bad,
            outside_image=outside_image,
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
