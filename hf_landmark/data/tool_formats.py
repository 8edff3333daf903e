"""The annotation tools' exports in and out: CVAT for images 1.1 XML, Label Studio's JSON tasks
(and their labeling config), labelme's per-image JSON files and COCO Keypoints. The coordinate
conventions and the versions read are in :mod:`hf_landmark.data.formats`."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .annotation_base import (
    COCO_ORIGINS,
    CORNER,
    Entry,
    _entries,
    _load_json,
    _nan_points,
    _number,
    _points,
    _write_text,
)
from .prepared import DatasetFormatError


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
