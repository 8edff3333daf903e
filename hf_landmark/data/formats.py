"""Landmark annotation files in and out: our CSV and JSON, and the exports of the tools people
annotate with (CVAT, Label Studio, labelme, COCO Keypoints).

Coordinates: hf-landmark puts pixel *centres* at integers (pixel ``(i, j)`` spans
``[i - 0.5, i + 0.5)``). CVAT, Label Studio and labelme measure from the image's top-left
*corner* (pixel ``i`` spans ``[i, i + 1)``, its centre at ``i + 0.5``), so
``ours = theirs - 0.5`` on read and ``theirs = ours + 0.5`` on write. COCO's origin is
ambiguous between tools (``coco_origin``: ``corner`` or ``center``; never guessed).

Formats as read from the tools' own exporters (the versions the README names): CVAT for
images 1.1 XML (``<points>``, and ``<skeleton>`` points, ``outside="1"`` = missing), Label
Studio's JSON export (tasks whose ``annotations[].result[]`` are ``keypointlabels`` with
``x``/``y`` in percent of ``original_width``/``original_height``), labelme (a folder of
per-image JSON files, ``shape_type: point``), COCO Keypoints (``categories[].keypoints``
names, ``annotations[].keypoints`` as ``[x, y, v]`` triplets, ``v = 0`` = not labeled).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .annotation_base import (  # noqa: F401 (Entry, CORNER, COCO_ORIGINS: part of this module's interface)
    COCO_ORIGINS,
    CORNER,
    Entry,
    _entries,
    _load_json,
    _nan_points,
    _number,
    _points,
    _spacing_value,
    _write_text,
)
from .prepared import SPLITS, DatasetFormatError
from .tool_formats import (  # noqa: F401 (the tools' readers and writers, as this module gave them)
    _read_coco,
    _read_cvat,
    _read_labelme,
    _read_labelstudio,
    labelstudio_config,
    labelstudio_config_path,
    write_coco,
    write_cvat,
    write_labelme,
    write_labelstudio,
)

#: The formats ``predict --format`` writes and ``prepare custom`` reads.
FORMATS = ("csv", "json", "cvat", "coco", "labelstudio", "labelme")


def detect_format(path: Path) -> str:
    """The format of an annotation file (or labelme folder), by its content."""
    return _sniff(Path(path))[0]


def _sniff(path: Path):
    """``(format, parsed JSON or None)``: a JSON file is parsed once, here, for its reader too."""
    if path.is_dir():
        return "labelme", None
    try:
        head = path.read_bytes()[:4096].lstrip()
    except OSError as err:
        raise DatasetFormatError(f"{path}: cannot read ({err})") from err
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head.startswith(b"<"):
        return "cvat", None
    if not head.startswith((b"{", b"[")):
        return "csv", None
    data = _load_json(path)
    if isinstance(data, list):
        return "labelstudio", data
    if isinstance(data, dict) and "categories" in data and "annotations" in data:
        return "coco", data
    if isinstance(data, dict) and "shapes" in data:
        return "labelme", None
    return "json", data


def read_annotation_file(
    path,
    root=None,
    landmarks: Sequence[str] | None = None,
    coco_origin: str | None = None,
    accept_predictions: bool = False,
):
    """``(entries, landmark names)`` of any supported annotation file or labelme folder.
    ``root``: the image folder that relative names refer to. ``landmarks``: the names, in
    order, when the file's own are not wanted (a subset or another order)."""
    path = Path(path)
    kind, data = _sniff(path)
    if kind == "csv":
        entries, names = _read_csv(path)
    elif kind == "json":
        entries, names = _read_json(path, data)
    elif kind == "cvat":
        entries, names = _read_cvat(path)
    elif kind == "labelstudio":
        entries, names = _read_labelstudio(path, data, Path(root) if root else None, accept_predictions)
    elif kind == "labelme":
        entries, names = _read_labelme(path, Path(root) if root else path)
    else:
        entries, names = _read_coco(path, data, coco_origin)
    if landmarks:
        entries, names = _reorder(entries, names, list(landmarks), path)
    return entries, names


def _reorder(entries, names, wanted, path):
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise DatasetFormatError(
            f"{path}: --landmarks names {', '.join(map(repr, unknown))} that the file lacks (it has {', '.join(names)})"
        )
    idx = [names.index(n) for n in wanted]
    for e in entries:
        if e.landmarks is not None:
            e.landmarks = e.landmarks[idx]
    return entries, wanted


# --- ours: CSV and JSON -------------------------------------------------------------------


def _read_csv(path: Path):
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if not header or header[0] != "image":
            raise DatasetFormatError(f"{path}: first column must be 'image'")
        coord_cols = [c for c in header[1:] if c.endswith(("_x", "_y")) and not c.startswith("spacing")]
        if len(coord_cols) % 2 or any(
            not a.endswith("_x") or b != a[:-2] + "_y" for a, b in zip(coord_cols[::2], coord_cols[1::2])
        ):
            raise DatasetFormatError(f"{path}: landmark columns must come in <name>_x,<name>_y pairs")
        if not coord_cols:
            raise DatasetFormatError(f"{path}: no landmark columns (<name>_x,<name>_y)")
        names = [c[:-2] for c in coord_cols[::2]]
        entries = []
        for lineno, row in enumerate(reader, start=2):
            file = (row.get("image") or "").strip()
            where = f"{path}:{lineno}" + (f" ({file})" if file else "")
            if None in row:
                raise DatasetFormatError(f"{where}: more cells than the header has columns")
            if not file:
                raise DatasetFormatError(f"{where}: the 'image' cell is empty")
            lm = _nan_points(len(names))
            for j, n in enumerate(names):
                x, y = (row.get(f"{n}_x") or "").strip(), (row.get(f"{n}_y") or "").strip()
                if bool(x) != bool(y):  # half a point is a typo, never "missing"
                    raise DatasetFormatError(f"{where}: landmark {n!r} has no {'y' if x else 'x'} coordinate")
                if x:
                    lm[j] = (_number(x, where, f"landmark {n!r} x"), _number(y, where, f"landmark {n!r} y"))
            spacing = None
            if (row.get("spacing_x") or "").strip():
                spacing = _spacing_value([row["spacing_x"], row.get("spacing_y") or row["spacing_x"]], where)
            entries.append(Entry(where, file, lm, spacing, (row.get("split") or "").strip() or None))
    return entries, names


def _read_json(path: Path, data):
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(f"{path}: expected a JSON object with an 'images' list")
    names = data.get("landmark_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise DatasetFormatError(f"{path}: 'landmark_names' must be a list of strings")
    entries = []
    for k, item in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(item, dict):
            raise DatasetFormatError(f"{where}: expected an object with 'file' and 'landmarks'")
        for key in ("file", "landmarks"):
            if key not in item:
                raise DatasetFormatError(f"{where}: no {key!r} key")
        file = item["file"]
        where = f"{path}: images[{k}] ({file})"
        points = item["landmarks"]
        lm = None
        if points is not None:
            if not isinstance(points, list) or not all(
                p is None or (isinstance(p, (list, tuple)) and len(p) == 2) for p in points
            ):
                raise DatasetFormatError(f"{where}: 'landmarks' must be a list of [x, y] pairs")
            if names is None:
                names = [f"L{i}" for i in range(len(points))]
            if len(points) != len(names):
                expected = "landmark_names lists" if data.get("landmark_names") else "the first image has"
                raise DatasetFormatError(f"{where}: {len(points)} landmarks, but {expected} {len(names)}")
            lm = _nan_points(len(names))
            for j, (n, p) in enumerate(zip(names, points)):
                if p is None or (p[0] is None and p[1] is None):
                    continue  # a landmark not placed yet
                for axis, v in zip("xy", p):
                    if v is None:
                        raise DatasetFormatError(f"{where}: landmark {n!r} has no {axis} coordinate")
                lm[j] = (_number(p[0], where, f"landmark {n!r} x"), _number(p[1], where, f"landmark {n!r} y"))
        split = item.get("split")
        entries.append(
            Entry(
                where, str(file), lm, _spacing_value(item.get("spacing"), where), str(split).strip() if split else None
            )
        )
    return entries, list(names or [])


# --- CVAT for images 1.1 ----------------------------------------------------------------


# --- Label Studio ----------------------------------------------------------------------------


# --- labelme -----------------------------------------------------------------------------


# --- COCO Keypoints --------------------------------------------------------------------------


# --- writing -------------------------------------------------------------------------------


def coordinate_cell(v: float) -> str:
    """A coordinate as our CSV writes it: 4 decimals, an empty cell where there is none."""
    return f"{v:.4f}" if np.isfinite(v) else ""


def write_csv(items, names: Sequence[str], path) -> None:
    """The CSV ``prepare custom`` reads; an image without landmarks is a row of empty cells;
    ``spacing_x`` / ``spacing_y`` and ``split`` columns where an item has them."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    with_split = any(item.get("split") for item in items)
    with_spacing = any(item.get("spacing") is not None for item in items)
    writer.writerow(
        [
            "image",
            *[f"{n}_{a}" for n in names for a in "xy"],
            *(["spacing_x", "spacing_y"] if with_spacing else []),
            *(["split"] if with_split else []),
        ]
    )
    for item in items:
        lm = item.get("landmarks")
        cells = [""] * (2 * len(names)) if lm is None else [coordinate_cell(v) for p in lm for v in p]
        spacing = [f"{v:g}" for v in item["spacing"]] if item.get("spacing") is not None else ["", ""]
        writer.writerow(
            [
                item["file"],
                *cells,
                *(spacing if with_spacing else []),
                *([item.get("split") or ""] if with_split else []),
            ]
        )
    _write_text(buf.getvalue(), path)


def write_json(items, names: Sequence[str], path) -> None:
    doc = {
        "landmark_names": list(names),
        "images": [
            {
                "file": it["file"],
                "landmarks": None
                if it.get("landmarks") is None
                else [[float(x), float(y)] for x, y in it["landmarks"]],
            }
            for it in items
        ],
    }
    _write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", path)


def write_annotations(
    kind: str, items, names: Sequence[str], path, image_root=".", coco_origin: str | None = None
) -> None:
    """Write ``items`` (``{"file": path relative to image_root, "width", "height", "landmarks":
    [N, 2] ours, or None for an image to annotate}``) in format ``kind`` (:data:`FORMATS`) to
    ``path`` (a folder for labelme)."""
    if kind == "csv":
        write_csv(items, names, path)
    elif kind == "json":
        write_json(items, names, path)
    elif kind == "cvat":
        write_cvat(items, names, path)
    elif kind == "coco":
        write_coco(items, names, path, coco_origin)
    elif kind == "labelstudio":
        write_labelstudio(items, names, path)
    elif kind == "labelme":
        write_labelme(items, names, path, image_root)
    else:
        raise ValueError(f"unknown annotation format {kind!r}; choose one of {', '.join(FORMATS)}")


__all__ = ["FORMATS", "SPLITS", "Entry", "detect_format", "read_annotation_file", "write_annotations"]


def read_landmark_names(text: str) -> list[str]:
    """``--landmarks``: a text file with one name per line, or comma-separated names."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as fh:
            names = [ln.strip() for ln in fh if ln.strip()]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise UserInputError(
            f"--landmarks: expected distinct names (comma-separated or one per line in a file), got {text!r}"
        )
    return names
