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
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .prepared import SPLITS, DatasetFormatError

#: The formats ``predict --format`` writes and ``prepare custom`` reads.
FORMATS = ("csv", "json", "cvat", "coco", "labelstudio", "labelme")
COCO_ORIGINS = ("corner", "center")
CORNER = 0.5  # a corner-convention coordinate minus this is ours


class Entry:
    """One image of an annotation file: ``landmarks`` ``[N, 2]`` ours (NaN for a missing
    landmark) or ``None`` (not annotated), with ``where`` it was read for error messages."""

    def __init__(self, where: str, file: str, landmarks: np.ndarray | None, spacing=None, split: str | None = None):
        self.where, self.file, self.landmarks, self.spacing, self.split = where, file, landmarks, spacing, split


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


def _read_cvat(path: Path):
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DatasetFormatError(f"{path}: not readable CVAT XML ({err})") from err
    if root.tag != "annotations":
        raise DatasetFormatError(f"{path}: not a CVAT for images export (root <{root.tag}>, expected <annotations>)")
    # Names in the order of the task's (or project's) labels: points labels, or a skeleton's sub-labels.
    labels = root.findall("./meta//labels/label")
    names = [
        lab.findtext("name")
        for lab in labels
        if (lab.findtext("type") or "points") == "points" and lab.findtext("name")
    ]
    entries = []
    for image in root.iter("image"):
        file = image.get("name")
        where = f"{path}: <image id={image.get('id')!r} name={file!r}>"
        if not file:
            raise DatasetFormatError(f"{where}: no name attribute")
        found: dict[str, tuple[float, float] | None] = {}
        for pts in image.iter("points"):
            label = pts.get("label")
            if not label:
                raise DatasetFormatError(f"{where}: <points> without a label")
            if pts.get("outside") == "1":
                found.setdefault(label, None)  # a skeleton point marked absent
                continue
            raw = (pts.get("points") or "").split(";")
            if len(raw) != 1:
                raise DatasetFormatError(
                    f"{where}: <points label={label!r}> holds {len(raw)} points; one per landmark label is expected"
                )
            xy = raw[0].split(",")
            if len(xy) != 2:
                raise DatasetFormatError(
                    f"{where}: <points label={label!r}> points={pts.get('points')!r} is not 'x,y'"
                )
            if found.get(label) is not None:
                raise DatasetFormatError(f"{where}: landmark {label!r} is placed twice")
            found[label] = (
                _number(xy[0], where, f"{label!r} x") - CORNER,
                _number(xy[1], where, f"{label!r} y") - CORNER,
            )
        for label in found:
            if label not in names:
                names.append(label)  # a file without <meta> labels: the order of first appearance
        entries.append((where, file, found))
    return _entries(entries, names), names


def write_cvat(items, names: Sequence[str], path) -> None:
    """CVAT for images 1.1 XML: one ``<points>`` per landmark label, which CVAT imports into a
    task whose labels are ``names`` (point labels)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    labels = ET.SubElement(ET.SubElement(ET.SubElement(root, "meta"), "task"), "labels")
    for n in names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = n
        ET.SubElement(label, "type").text = "points"
    for k, item in enumerate(items):
        image = ET.SubElement(
            root, "image", id=str(k), name=item["file"], width=str(item["width"]), height=str(item["height"])
        )
        for n, (x, y) in zip(names, _points(item)):
            ET.SubElement(
                image,
                "points",
                label=n,
                source="auto",
                occluded="0",
                points=f"{x + CORNER:.4f},{y + CORNER:.4f}",
                z_order="0",
            )
    ET.indent(root)
    _write_text('<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n", path)


# --- Label Studio ----------------------------------------------------------------------------


_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def _labelstudio_file(task: dict, root: Path | None) -> str | None:
    """The image a task refers to, relative to ``root``: Label Studio stores uploads as
    ``/data/upload/<project>/<8 hex>-<name>`` and local files as ``/data/local-files/?d=<path>``."""
    data = task.get("data") or {}
    url = next((v for v in data.values() if isinstance(v, str)), None)
    if not url:
        return None
    from urllib.parse import parse_qs, unquote, urlparse

    parsed = urlparse(url)
    candidates = []
    if "d" in parse_qs(parsed.query):
        candidates.append(unquote(parse_qs(parsed.query)["d"][0]))
    name = unquote(parsed.path.rsplit("/", 1)[-1])
    candidates += [name, _UPLOAD_PREFIX.sub("", name)]
    if task.get("file_upload"):
        candidates.append(_UPLOAD_PREFIX.sub("", task["file_upload"]))
    if root is not None:
        for c in candidates:
            for tail in (c, os.path.basename(c)):
                if (root / tail).is_file():
                    return tail
    return candidates[-1] if candidates else None


def _read_labelstudio(path: Path, tasks: list, root: Path | None, accept_predictions: bool = False):
    """Label Studio's JSON export. A task's last submitted annotation counts; its predictions
    (pre-annotations a person has not submitted) count only with ``accept_predictions``, and
    a file that holds predictions and no annotation at all is refused without it, saying how
    to go on: such a file is ``predict --format labelstudio``'s, not yet corrected."""
    names: list[str] = []
    parsed = []
    annotated = sum(
        bool([a for a in t.get("annotations") or [] if not a.get("was_cancelled")])
        for t in tasks
        if isinstance(t, dict)
    )
    predicted = sum(bool(t.get("predictions")) for t in tasks if isinstance(t, dict))
    if not annotated and predicted and not accept_predictions:
        raise DatasetFormatError(
            f"{path}: its {predicted} task(s) hold only a model's predictions (pre-annotations), no annotation a person "
            f"submitted: import it into Label Studio with the labeling config {labelstudio_config_path(path)} (predict writes "
            "it beside the tasks), correct and submit each task, export JSON and give that export; or pass "
            "--accept-predictions to take the predictions as they are"
        )
    for k, task in enumerate(tasks):
        where = f"{path}: task[{k}] (id {task.get('id')})" if isinstance(task, dict) else f"{path}: task[{k}]"
        if not isinstance(task, dict):
            raise DatasetFormatError(f"{where}: expected a task object")
        file = _labelstudio_file(task, root)
        if not file:
            raise DatasetFormatError(f"{where}: no image in 'data'")
        where = f"{where} ({file})"
        # The last submitted annotation counts; skipped (cancelled) ones and predictions do not.
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations and accept_predictions:
            annotations = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
        found: dict[str, tuple[float, float]] = {}
        if annotations:
            for r, result in enumerate(annotations[-1].get("result") or []):
                if result.get("type") != "keypointlabels":
                    continue
                rw = f"{where}: result[{r}]"
                for key in ("original_width", "original_height"):
                    if key not in result:
                        raise DatasetFormatError(
                            f"{rw}: no {key!r} (needed to turn Label Studio's percentages into pixels)"
                        )
                value = result.get("value") or {}
                label = (value.get("keypointlabels") or [None])[0]
                if label is None:
                    raise DatasetFormatError(f"{rw}: a keypoint without a keypointlabels label")
                if label in found:
                    raise DatasetFormatError(f"{rw}: landmark {label!r} is placed twice")
                w, h = (
                    _number(result["original_width"], rw, "original_width"),
                    _number(result["original_height"], rw, "original_height"),
                )
                found[label] = (
                    _number(value.get("x"), rw, "x") / 100.0 * w - CORNER,
                    _number(value.get("y"), rw, "y") / 100.0 * h - CORNER,
                )
                if label not in names:
                    names.append(label)
        parsed.append((where, file, found))
    return _entries(parsed, names), names


def write_labelstudio(items, names: Sequence[str], path, model_version: str = "hf-landmark") -> None:
    """Label Studio tasks with the predictions as ``predictions`` (pre-annotations: Label
    Studio shows them to correct; the annotator's submission becomes the annotation). The
    labeling config needs ``<KeyPointLabels name="kp" toName="image">`` with these labels and
    ``<Image name="image" value="$image">``; ``data.image`` is the path, for local files
    storage (``/data/local-files/?d=...``)."""
    tasks = []
    for item in items:
        result = [
            {
                "original_width": item["width"],
                "original_height": item["height"],
                "image_rotation": 0,
                "value": {
                    "x": (x + CORNER) / item["width"] * 100.0,
                    "y": (y + CORNER) / item["height"] * 100.0,
                    "width": 0.5,
                    "keypointlabels": [n],
                },
                "id": f"kp{j}",
                "from_name": "kp",
                "to_name": "image",
                "type": "keypointlabels",
                "origin": "prediction",
            }
            for j, (n, (x, y)) in enumerate(zip(names, _points(item)))
        ]
        task = {"data": {"image": "/data/local-files/?d=" + item["file"]}}
        if result:  # an image to annotate from scratch is a bare task
            task["predictions"] = [{"model_version": model_version, "score": item.get("score"), "result": result}]
        tasks.append(task)
    _write_text(json.dumps(tasks, indent=2, allow_nan=False) + "\n", path)
    _write_text(labelstudio_config(names), labelstudio_config_path(path))


def labelstudio_config_path(tasks_path) -> Path:
    """Where the labeling config of a Label Studio tasks file goes: ``<stem>.config.xml`` beside it."""
    tasks_path = Path(tasks_path)
    return tasks_path.with_name(tasks_path.stem + ".config.xml")


def labelstudio_config(names: Sequence[str]) -> str:
    """The labeling config (Settings → Labeling Interface → Code) that the tasks' results
    refer to: ``from_name="kp"``, ``to_name="image"``, one label per landmark."""
    from xml.sax.saxutils import quoteattr

    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in names)
    return (
        '<View>\n  <Image name="image" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <KeyPointLabels name="kp" toName="image" smart="false">\n{labels}\n  </KeyPointLabels>\n</View>\n'
    )


# --- labelme -----------------------------------------------------------------------------


def _read_labelme(path: Path, root: Path):
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise DatasetFormatError(f"{path}: no labelme JSON files in the folder")
    names: list[str] = []
    parsed = []
    for f in files:
        data = _load_json(f)
        if not isinstance(data, dict) or "shapes" not in data or "imagePath" not in data:
            raise DatasetFormatError(f"{f}: not a labelme file (no 'shapes' and 'imagePath')")
        image = (f.parent / data["imagePath"]).resolve()
        try:
            file = image.relative_to(root.resolve()).as_posix()
        except ValueError:
            file = os.path.basename(data["imagePath"])
        where = f"{f} ({file})"
        found: dict[str, tuple[float, float]] = {}
        for s, shape in enumerate(data["shapes"]):
            if shape.get("shape_type", "polygon") != "point":
                continue
            label, points = shape.get("label"), shape.get("points")
            if not label or not isinstance(points, list) or len(points) != 1 or len(points[0]) != 2:
                raise DatasetFormatError(f"{where}: shapes[{s}] is not one labelled point")
            if label in found:
                raise DatasetFormatError(f"{where}: shapes[{s}]: landmark {label!r} is placed twice")
            found[label] = (
                _number(points[0][0], where, f"{label!r} x") - CORNER,
                _number(points[0][1], where, f"{label!r} y") - CORNER,
            )
            if label not in names:
                names.append(label)
        parsed.append((where, file, found))
    return _entries(parsed, names), names


def write_labelme(items, names: Sequence[str], folder, image_root) -> None:
    """One labelme JSON per image in ``folder`` (what labelme saves: ``shape_type: point``,
    ``imagePath`` relative to the JSON file, no embedded image data), named after the image's
    path (``sub/a.png`` → ``sub__a.json``, so that images of different folders never collide)."""
    os.makedirs(folder, exist_ok=True)
    for item in items:
        image = Path(image_root) / item["file"]
        shapes = [
            {
                "label": n,
                "points": [[x + CORNER, y + CORNER]],
                "group_id": None,
                "description": "",
                "shape_type": "point",
                "flags": {},
                "mask": None,
            }
            for n, (x, y) in zip(names, _points(item))
        ]
        doc = {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": os.path.relpath(image, folder),
            "imageData": None,
            "imageHeight": item["height"],
            "imageWidth": item["width"],
        }
        _write_text(
            json.dumps(doc, indent=2, allow_nan=False) + "\n",
            os.path.join(folder, Path(item["file"].replace("/", "__")).with_suffix(".json").name),
        )


# --- COCO Keypoints --------------------------------------------------------------------------


def _check_coco_origin(origin: str | None, path) -> float:
    if origin not in COCO_ORIGINS:
        raise DatasetFormatError(
            f"{path}: --coco-origin: COCO does not say where pixel (0, 0) is; tools differ. Pass --coco-origin corner "
            "(pixel i spans [i, i+1), e.g. CVAT's COCO export) or center (pixel centres at integers)"
        )
    return CORNER if origin == "corner" else 0.0


def _read_coco(path: Path, data: dict, origin: str | None):
    shift = _check_coco_origin(origin, path)
    categories = [c for c in data.get("categories") or [] if isinstance(c, dict) and c.get("keypoints")]
    if len(categories) != 1:
        raise DatasetFormatError(f"{path}: expected one category with 'keypoints' names, found {len(categories)}")
    names = [str(n) for n in categories[0]["keypoints"]]
    images = {}
    for k, im in enumerate(data.get("images") or []):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DatasetFormatError(f"{path}: images[{k}] needs 'id' and 'file_name'")
        images[im["id"]] = im["file_name"]
    found: dict = {}
    for k, ann in enumerate(data.get("annotations") or []):
        where = f"{path}: annotations[{k}] (id {ann.get('id')}, image_id {ann.get('image_id')})"
        if ann.get("image_id") not in images:
            raise DatasetFormatError(f"{where}: image_id is not in 'images'")
        if ann.get("category_id") != categories[0].get("id"):
            continue
        kp = ann.get("keypoints")
        if not isinstance(kp, list) or len(kp) != 3 * len(names):
            n = len(kp) if isinstance(kp, list) else 0
            raise DatasetFormatError(
                f"{where}: {n} keypoint values, but the category's {len(names)} keypoints need {3 * len(names)} (x, y, v)"
            )
        if ann["image_id"] in found:
            raise DatasetFormatError(f"{where}: a second keypoint annotation for the same image")
        lm = _nan_points(len(names))
        for j in range(len(names)):
            x, y, v = kp[3 * j : 3 * j + 3]
            if v:  # v = 0: not labeled (x = y = 0)
                lm[j] = (_number(x, where, f"{names[j]!r} x") - shift, _number(y, where, f"{names[j]!r} y") - shift)
        found[ann["image_id"]] = (where, lm)
    entries = []
    for image_id, file in images.items():
        where, lm = found.get(image_id, (f"{path}: image {file!r}", None))
        entries.append(Entry(where, file, lm))
    return entries, names


def write_coco(items, names: Sequence[str], path, origin: str | None) -> None:
    """COCO Keypoints: one category whose ``keypoints`` are ``names``, one annotation per image
    (``v = 2``), coordinates with the ``origin`` asked for."""
    # Images to annotate (no landmarks yet) need no origin.
    shift = _check_coco_origin(origin, path) if any(item.get("landmarks") is not None for item in items) else 0.0
    images, annotations = [], []
    for k, item in enumerate(items, start=1):
        images.append({"id": k, "file_name": item["file"], "width": item["width"], "height": item["height"]})
        if item.get("landmarks") is None:
            continue
        pts = np.asarray(item["landmarks"], dtype=np.float64) + shift
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        annotations.append(
            {
                "id": k,
                "image_id": k,
                "category_id": 1,
                "iscrowd": 0,
                "num_keypoints": len(names),
                "keypoints": [float(v) for p in pts for v in (p[0], p[1], 2)],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float((x1 - x0) * (y1 - y0)),
            }
        )
    doc = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "landmarks", "supercategory": "", "keypoints": list(names), "skeleton": []}],
    }
    _write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", path)


# --- writing -------------------------------------------------------------------------------


def _points(item) -> list:
    """An item's ``(x, y)`` points; none for an image not annotated yet (a list to annotate)."""
    return [] if item.get("landmarks") is None else list(item["landmarks"])


def _write_text(text: str, path) -> None:
    from ..fileio import write_text_atomic

    write_text_atomic(text, path)


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
