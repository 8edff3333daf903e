"""Annotation files of the tools people use, read and written with exact coordinates.

Hand-made files as each tool exports them, on 2 x 2 px images: CVAT, Label Studio and labelme
measure from the image's top-left corner (pixel i spans [i, i + 1)), hf-landmark puts pixel
centres at integers, so a point at the centre of pixel (1, 0) is (1.5, 0.5) in the tool and
(1, 0) here."""

import json

import numpy as np
import pytest
from PIL import Image

from hf_landmark.data import load_prepared, prepare
from hf_landmark.data.formats import read_annotation_file, write_annotations
from hf_landmark_cli import main as cli

NAMES = ["tip", "base"]
# ours: tip at the centre of pixel (1, 0), base at the centre of pixel (0, 1); in a corner tool +0.5.
OURS = {"a.png": [[1.0, 0.0], [0.0, 1.0]], "b.png": [[0.25, 0.75], [1.0, 1.0]]}


@pytest.fixture()
def folder(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.array([[0, 255], [128, 64]], np.uint8)).save(tmp_path / name)
    return tmp_path


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><id>7</id><name>ceph</name><size>2</size><mode>annotation</mode><labels>
    <label><name>tip</name><color>#fa3253</color><type>points</type><attributes></attributes></label>
    <label><name>base</name><color>#33ddff</color><type>points</type><attributes></attributes></label>
  </labels></task></meta>
  <image id="0" name="a.png" width="2" height="2">
    <points label="base" source="manual" occluded="0" points="0.50,1.50" z_order="0"></points>
    <points label="tip" source="manual" occluded="0" points="1.50,0.50" z_order="0"></points>
  </image>
  <image id="1" name="b.png" width="2" height="2">
    <skeleton label="ceph" source="manual" z_order="0">
      <points label="tip" source="manual" outside="0" occluded="0" points="0.75,1.25"></points>
      <points label="base" source="manual" outside="0" occluded="0" points="1.50,1.50"></points>
    </skeleton>
  </image>
</annotations>
"""


def _labelstudio(task_id, upload, w, h, points):
    result = [
        {
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {"x": x / w * 100, "y": y / h * 100, "width": 0.6, "keypointlabels": [label]},
            "id": f"r{k}",
            "from_name": "kp-1",
            "to_name": "img-1",
            "type": "keypointlabels",
            "origin": "manual",
        }
        for k, (label, (x, y)) in enumerate(points)
    ]
    return {
        "id": task_id,
        "annotations": [
            {
                "id": task_id,
                "completed_by": 1,
                "result": result,
                "was_cancelled": False,
                "ground_truth": False,
                "lead_time": 12.5,
            }
        ],
        "file_upload": upload,
        "drafts": [],
        "predictions": [],
        "data": {"image": f"/data/upload/3/{upload}"},
        "project": 3,
    }


def _labelme(image, points):
    return {
        "version": "5.4.1",
        "flags": {},
        "imagePath": image,
        "imageData": None,
        "imageHeight": 2,
        "imageWidth": 2,
        "shapes": [
            {
                "label": label,
                "points": [[x, y]],
                "group_id": None,
                "description": "",
                "shape_type": "point",
                "flags": {},
                "mask": None,
            }
            for label, (x, y) in points
        ],
    }


def _coco(shift):
    def kp(points):
        return [v for x, y in points for v in (x + shift, y + shift, 2)]

    return {
        "info": {},
        "licenses": [],
        "images": [
            {"id": 1, "file_name": "a.png", "width": 2, "height": 2},
            {"id": 2, "file_name": "b.png", "width": 2, "height": 2},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "keypoints": kp(OURS["a.png"]),
                "num_keypoints": 2,
                "iscrowd": 0,
                "bbox": [0, 0, 2, 2],
                "area": 4,
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 1,
                "keypoints": kp(OURS["b.png"]),
                "num_keypoints": 2,
                "iscrowd": 0,
                "bbox": [0, 0, 2, 2],
                "area": 4,
            },
        ],
        "categories": [{"id": 1, "name": "ceph", "supercategory": "", "keypoints": NAMES, "skeleton": [[1, 2]]}],
    }


def _write_tool_files(folder):
    (folder / "cvat.xml").write_text(CVAT)
    ls = [
        _labelstudio(1, "8f3a2b1c-a.png", 2, 2, [("tip", (1.5, 0.5)), ("base", (0.5, 1.5))]),
        _labelstudio(2, "0d9e4c7a-b.png", 2, 2, [("tip", (0.75, 1.25)), ("base", (1.5, 1.5))]),
    ]
    (folder / "ls.json").write_text(json.dumps(ls))
    (folder / "labelme").mkdir()
    (folder / "labelme" / "a.json").write_text(
        json.dumps(_labelme("../a.png", [("tip", (1.5, 0.5)), ("base", (0.5, 1.5))]))
    )
    (folder / "labelme" / "b.json").write_text(
        json.dumps(_labelme("../b.png", [("tip", (0.75, 1.25)), ("base", (1.5, 1.5))]))
    )
    (folder / "coco_center.json").write_text(json.dumps(_coco(0.0)))
    (folder / "coco_corner.json").write_text(json.dumps(_coco(0.5)))


@pytest.mark.parametrize(
    "file, origin",
    [
        ("cvat.xml", None),
        ("ls.json", None),
        ("labelme", None),
        ("coco_center.json", "center"),
        ("coco_corner.json", "corner"),
    ],
)
def test_each_tool_reads_to_the_exact_coordinates(folder, file, origin):
    _write_tool_files(folder)
    entries, names = read_annotation_file(folder / file, root=folder, coco_origin=origin)
    assert names == NAMES
    assert {e.file: e.landmarks.tolist() for e in entries} == OURS
    # Through prepare custom: a.png and b.png annotated, c.png (not in the file) in the unlabeled pool.
    dd, report = prepare(
        "custom",
        folder,
        folder / f"out-{file}",
        image_size=8,
        annotations=folder / file,
        coco_origin=origin,
        split_counts=(1, 1, 0),
        allow_empty_splits=True,
    )
    assert dd["train"][0]["landmarks"] == OURS["a.png"] and dd["validation"][0]["landmarks"] == OURS["b.png"]
    assert dd["unlabeled"]["image_id"] == ["c"] and "landmarks" not in dd["unlabeled"].column_names


@pytest.mark.parametrize("kind", ["csv", "json", "cvat", "coco", "labelstudio", "labelme"])
def test_each_written_format_reads_back_the_same_coordinates(folder, kind):
    items = [{"file": f, "width": 2, "height": 2, "landmarks": np.array(p) + 0.123456} for f, p in OURS.items()]
    out = folder / ("ls" if kind == "labelme" else f"out.{kind}")
    write_annotations(kind, items, NAMES, out, image_root=folder, coco_origin="corner")
    if kind == "labelstudio":
        # What Label Studio exports once the annotator submits the pre-annotation unchanged.
        tasks = json.loads(out.read_text())
        for k, task in enumerate(tasks):
            task["annotations"] = [{"id": k, "result": task.pop("predictions")[0]["result"], "was_cancelled": False}]
        out.write_text(json.dumps(tasks))
    entries, names = read_annotation_file(out, root=folder, coco_origin="corner")
    assert names == NAMES
    for e, item in zip(entries, items):
        assert e.file == item["file"] and np.abs(e.landmarks - item["landmarks"]).max() < 1e-4


def test_coco_needs_its_origin(folder, capsys):
    _write_tool_files(folder)
    assert (
        cli(
            [
                "prepare",
                "custom",
                "--root",
                str(folder),
                "--annotations",
                str(folder / "coco_center.json"),
                "--out",
                str(folder / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--coco-origin" in err and not (folder / "out").exists()


MALFORMED = [
    ("bad.xml", "<annotations><image name='a.png'><points label='tip' points='1,1'></image>", "not readable CVAT XML"),
    (
        "ls.json",
        json.dumps(
            [
                {
                    "id": 4,
                    "data": {"image": "/data/upload/3/8f3a2b1c-a.png"},
                    "annotations": [
                        {
                            "result": [
                                {
                                    "type": "keypointlabels",
                                    "original_height": 2,
                                    "value": {"x": 10, "y": 10, "keypointlabels": ["tip"]},
                                }
                            ]
                        }
                    ],
                }
            ]
        ),
        "task[0] (id 4) (a.png): result[0]: no 'original_width'",
    ),
    (
        "coco.json",
        json.dumps(
            {**_coco(0.0), "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "keypoints": [1, 1, 2]}]}
        ),
        "annotations[0] (id 9, image_id 1): 3 keypoint values, but the category's 2 keypoints need 6",
    ),
    ("cvat.xml", CVAT.replace('name="b.png"', 'name="missing.png"'), "missing.png not found"),
    (
        "partial.csv",
        "image,tip_x,tip_y,base_x,base_y\na.png,1,0,,\nb.png,0,0,1,1\nc.png,0,1,1,0\n",
        "landmark 'base' missing",
    ),
]


@pytest.mark.parametrize("file, text, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_file_is_one_error_line_and_no_output(folder, capsys, file, text, words):
    (folder / file).write_text(text)
    code = cli(
        [
            "prepare",
            "custom",
            "--root",
            str(folder),
            "--annotations",
            str(folder / file),
            "--out",
            str(folder / "out"),
            "--coco-origin",
            "center",
            "--allow-empty-splits",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and err.count("\n") == 0 and err.startswith("error: ") and str(folder / file) in err and words in err
    ), err
    assert not (folder / "out").exists()


def test_partly_annotated_rows_and_border_points(folder, capsys):
    """An image with no coordinates is the pool; a partly annotated one is dropped into it with
    --drop-incomplete; a point on the pixel edge (x = W, a corner-convention tool's last
    column) is clamped and counted."""
    (folder / "lm.csv").write_text(
        "image,tip_x,tip_y,base_x,base_y\na.png,2,0,0,1\nb.png,1,,,\nc.png,,,,\n".replace("1,,,", "1,0,,")
    )
    assert (
        cli(
            [
                "prepare",
                "custom",
                "--root",
                str(folder),
                "--annotations",
                str(folder / "lm.csv"),
                "--out",
                str(folder / "out"),
                "--drop-incomplete",
                "--split-counts",
                "1,0,0",
                "--allow-empty-splits",
                "--image-size",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    dd = load_prepared(folder / "out")
    assert dd["train"]["landmarks"] == [
        [[1.0, 0.0], [0.0, 1.0]]
    ]  # x = 2 in a 2-px image: clamped to the last centre, 1
    assert dd["unlabeled"]["image_id"] == ["b", "c"]
    assert "clamped at border: 1: a: 'tip' at (2, 0)" in out and "incomplete: 1: b.png (missing base)" in out
    assert "splits: train 1, validation 0, test 0, unlabeled 2" in out


@pytest.mark.parametrize("kind", ["csv", "json", "cvat", "coco", "labelstudio", "labelme"])
def test_predict_in_each_format_reads_back_through_prepare_custom(folder, tmp_path_factory, capsys, kind):
    """predict --format KIND, then exactly the command it prints (Label Studio: its tasks hold
    predictions, which prepare custom refuses as labels unless told, and the labeling config
    beside them names the same from_name / to_name and labels)."""
    from hf_landmark import LandmarkConfig, LandmarkDetector
    from hf_landmark.data.formats import labelstudio_config_path

    model = tmp_path_factory.mktemp("m") / "model"
    LandmarkDetector(
        LandmarkConfig(backbone_config="tiny", num_landmarks=2, image_size=32, landmark_names=NAMES)
    ).save_pretrained(model)
    for name in ("a.png", "b.png"):  # larger images, so that predictions are not on a 2-px grid
        Image.fromarray((np.random.default_rng(len(name)).random((40, 30)) * 255).astype(np.uint8)).save(folder / name)
    written = folder / ("pred_labelme" if kind == "labelme" else f"pred.{kind}")
    assert (
        cli(
            [
                "predict",
                str(folder / "a.png"),
                str(folder / "b.png"),
                "--model",
                str(model),
                "--output",
                str(folder / "p.json"),
                "--format",
                kind,
                "--format-output",
                str(written),
                "--coco-origin",
                "corner",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    predicted = json.loads((folder / "p.json").read_text())["predictions"]
    command = [
        "prepare",
        "custom",
        "--root",
        str(folder),
        "--annotations",
        str(written),
        "--out",
        str(folder / "again"),
        "--image-size",
        "8",
        "--split-counts",
        "1,1,0",
        "--allow-empty-splits",
        "--coco-origin",
        "corner",
    ]
    if kind == "labelstudio":
        config = labelstudio_config_path(written).read_text()
        assert '<KeyPointLabels name="kp" toName="image"' in config and '<Image name="image" value="$image"' in config
        assert (
            '<Label value="tip"/>' in config
            and '<Label value="base"/>' in config
            and str(labelstudio_config_path(written)) in printed
        )
        task = json.loads(written.read_text())[0]["predictions"][0]["result"][0]
        assert (task["from_name"], task["to_name"]) == ("kp", "image")
        assert cli(command) == 2
        err = capsys.readouterr().err
        assert (
            "hold only a model's predictions" in err
            and "--accept-predictions" in err
            and not (folder / "again").exists()
        )
        command.append("--accept-predictions")
    else:
        assert f"prepare custom --annotations {written}" in printed
    assert cli(command) == 0
    dd = load_prepared(folder / "again")
    back = {row["image_id"]: row["landmarks"] for split in ("train", "validation") for row in dd[split]}
    for name in ("a", "b"):
        expected = [[p["x"], p["y"]] for p in predicted[str(folder / f"{name}.png")]]
        assert np.abs(np.array(back[name]) - np.array(expected)).max() < 1e-4
