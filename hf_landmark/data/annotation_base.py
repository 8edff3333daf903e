"""What every annotation format shares: one image's entry, the coordinate conventions and the
checks of a number read from a file (:mod:`hf_landmark.data.formats` reads and writes the
formats)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .prepared import DatasetFormatError

COCO_ORIGINS = ("corner", "center")

CORNER = 0.5  # a corner-convention coordinate minus this is ours


class Entry:
    """One image of an annotation file: ``landmarks`` ``[N, 2]`` ours (NaN for a missing
    landmark) or ``None`` (not annotated), with ``where`` it was read for error messages."""

    def __init__(self, where: str, file: str, landmarks: np.ndarray | None, spacing=None, split: str | None = None):
        self.where, self.file, self.landmarks, self.spacing, self.split = where, file, landmarks, spacing, split


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: not readable JSON ({err})") from err


def _nan_points(n: int) -> np.ndarray:
    return np.full((n, 2), np.nan, dtype=np.float32)


def _entries(parsed, names) -> list[Entry]:
    """``(where, file, {name: (x, y) or None})`` per image → entries in the order of ``names``
    (a name an image lacks, or marks absent, is NaN; an image with no points is not annotated)."""
    out = []
    for where, file, found in parsed:
        lm = _nan_points(len(names))
        for j, n in enumerate(names):
            if found.get(n) is not None:
                lm[j] = found[n]
        out.append(Entry(where, file, lm if found else None))
    return out


def _number(value, where: str, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise DatasetFormatError(f"{where}: {what} = {value!r} is not a number") from err
    if not np.isfinite(v):
        raise DatasetFormatError(f"{where}: {what} = {value!r} is not a finite number")
    return v


def _spacing_value(value, where: str):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        pair = (float(value), float(value)) if isinstance(value, (int, float, str)) else tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise DatasetFormatError(f"{where}: spacing {value!r} must be a number or [sx, sy] (mm per pixel)") from err
    if len(pair) != 2 or not all(np.isfinite(v) and v > 0 for v in pair):
        raise DatasetFormatError(
            f"{where}: spacing {value!r} must be one positive number or two [sx, sy] (mm per pixel)"
        )
    return pair


def _points(item) -> list:
    """An item's ``(x, y)`` points; none for an image not annotated yet (a list to annotate)."""
    return [] if item.get("landmarks") is None else list(item["landmarks"])


def _write_text(text: str, path) -> None:
    from ..fileio import write_text_atomic

    write_text_atomic(text, path)
