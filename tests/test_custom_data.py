"""Your own data, validated at the door: every fault names the file, the row and the landmark,
exits with code 2 without a traceback, and leaves no output folder."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_landmark.data import load_prepared
from hf_landmark_cli import main as cli

HEADER = "image,tip_x,tip_y,base_x,base_y,split\n"


@pytest.fixture()
def images(tmp_path):
    for i in range(6):
        Image.fromarray(np.full((40, 50), 30 * i, np.uint8)).save(tmp_path / f"im{i}.png")  # W 50, H 40
    return tmp_path


def _rows(split=True, override=None):
    splits = ["train", "train", "train", "validation", "test", "test"]
    rows = {i: f"im{i}.png,{10 + i},{5 + i},{20 + i},{30 - i}" + (f",{splits[i]}" if split else "") for i in range(6)}
    rows.update(override or {})
    return (HEADER if split else HEADER.replace(",split", "")) + "\n".join(rows.values()) + "\n"


def _prepare(folder, annotations, *extra):
    return cli(
        [
            "prepare",
            "custom",
            "--root",
            str(folder),
            "--annotations",
            str(annotations),
            "--out",
            str(folder / "out"),
            "--image-size",
            "32",
            *extra,
        ]
    )


def _refused(capsys, folder, *parts):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "Map" not in ln]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert not (folder / "out").exists()


@pytest.mark.parametrize(
    "rows, parts",
    [
        ({2: "im2.png,12,nan,22,28,train"}, ["lm.csv:4 (im2.png)", "landmark 'tip' y = 'nan' is not a finite number"]),
        ({2: "im2.png,12,,22,28,train"}, ["lm.csv:4 (im2.png)", "landmark 'tip' has no y coordinate"]),
        ({3: "im3.png,13,8,abc,27,validation"}, ["lm.csv:5 (im3.png)", "landmark 'base' x = 'abc' is not a number"]),
        ({4: "im4.png,14,9,24,26,val"}, ["lm.csv:6 (im4.png)", "unknown split 'val'"]),
        ({5: "im0.png,15,10,25,25,test"}, ["lm.csv:7 (im0.png)", "listed twice (first at", "lm.csv:2 (im0.png)"]),
        (
            {1: "im1.png,11,6,60,29,train"},
            ["im1.png", "landmark 'base' at (60, 29) outside the 50x40 image", "--outside-image"],
        ),
        ({1: "im1.png,11,6,21,29,train,extra"}, ["lm.csv:3 (im1.png)", "more cells than the header"]),
    ],
)
def test_csv_faults(images, capsys, rows, parts):
    (images / "lm.csv").write_text(_rows(override=rows))
    assert _prepare(images, images / "lm.csv") == 2
    _refused(capsys, images, *parts)


def test_csv_default_split_outside_policies_and_permissions(images, capsys):
    import os

    (images / "lm.csv").write_text(_rows(split=False, override={1: "im1.png,11,6,60,29"}))
    assert _prepare(images, images / "lm.csv", "--outside-image", "clamp", "--split-counts", "4,1,1") == 0
    dd = load_prepared(images / "out")
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [4, 1, 1]
    assert dd["train"][1]["landmarks"][1] == [49.0, 29.0]  # clamped to the last column
    report = json.loads((images / "out" / "hf_landmark_dataset.json").read_text())["report"]
    assert report["outside_image"] == ["im1: 'base' at (60, 29) (clamped)"]
    mode = (images / "out").stat().st_mode & 0o777
    assert mode == 0o777 & ~_umask() and os.access(images / "out", os.R_OK)


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    "items, parts",
    [
        ([{"landmarks": [[1, 2], [3, 4]]}], ["lm.json: images[0]", "no 'file' key"]),
        (
            [{"file": "im0.png", "landmarks": [[1, 2], [3, None]]}],
            ["images[0] (im0.png)", "landmark 'base' has no y coordinate"],
        ),
        (
            [{"file": "im0.png", "landmarks": [[1, 2], [3, 4]]}, {"file": "im1.png", "landmarks": [[1, 2]]}],
            ["images[1] (im1.png)", "1 landmarks, but landmark_names lists 2"],
        ),
        (
            [{"file": "im0.png", "landmarks": [[1, 2], [3, 4]], "spacing": -1}],
            ["images[0] (im0.png)", "spacing -1 must be"],
        ),
    ],
)
def test_json_faults(images, capsys, items, parts):
    (images / "lm.json").write_text(json.dumps({"landmark_names": ["tip", "base"], "images": items}))
    assert _prepare(images, images / "lm.json") == 2
    _refused(capsys, images, *parts)


def test_json_nan_is_refused(images, capsys):
    # json.dumps writes NaN for float("nan"); Python's json reads it back.
    (images / "lm.json").write_text(json.dumps({"images": [{"file": "im0.png", "landmarks": [[1.0, float("nan")]]}]}))
    assert _prepare(images, images / "lm.json", "--allow-empty-splits") == 2
    _refused(capsys, images, "images[0] (im0.png)", "landmark 'L0' y = nan is not a finite number")


def test_a_folder_with_4_of_11_annotated_prepares_a_pool_and_pretraining_uses_it(tmp_path, caplog):
    """11 images of which 4 are annotated: train/validation/test + 7 unlabeled; pre-training
    reads the 7 + train + validation and never the test image."""
    import logging

    import numpy as np
    from PIL import Image

    from hf_landmark.data import load_prepared, prepare
    from hf_landmark.training.pretrain import PretrainArguments, pretrain

    rng = np.random.default_rng(0)
    (tmp_path / "xrays" / "more").mkdir(parents=True)
    for k in range(11):  # 3 of them in a subfolder: the pool is read recursively
        sub = "more/" if k >= 8 else ""
        Image.fromarray((rng.random((40, 36)) * 255).astype(np.uint8)).save(
            tmp_path / "xrays" / f"{sub}img{k:02d}.png"
        )
    rows = [f"img{k:02d}.png,{5 + k},{6 + k},{20 - k},{30 - k}" for k in range(4)]
    (tmp_path / "lm.csv").write_text("image,tip_x,tip_y,base_x,base_y\n" + "\n".join(rows) + "\n")
    _, report = prepare(
        "custom",
        tmp_path / "xrays",
        tmp_path / "prep",
        image_size=32,
        annotations=tmp_path / "lm.csv",
        split_counts=(2, 1, 1),
    )
    dd = load_prepared(tmp_path / "prep")
    assert {s: len(dd[s]) for s in dd} == {"train": 2, "validation": 1, "test": 1, "unlabeled": 7}
    assert sorted(dd["unlabeled"]["image_id"]) == [
        "img04",
        "img05",
        "img06",
        "img07",
        "more/img08",
        "more/img09",
        "more/img10",
    ]
    assert dd["test"]["image_id"] == ["img03"] and report.split_sizes["unlabeled"] == 7
    caplog.set_level(logging.INFO)
    ckpt = pretrain(
        PretrainArguments(
            dataset=str(tmp_path / "prep"),
            output_dir=str(tmp_path / "ddpm"),
            preset="tiny",
            resolution=32,
            max_steps=2,
            save_steps="2",
            train_batch_size=2,
            gradient_accumulation_steps=1,
            num_samples=0,
            report_to="none",
            mixed_precision="no",
        )
    )
    info = json.loads((Path(ckpt) / "hf_landmark_pretraining.json").read_text())
    assert info["num_images"] == 10 and info["split_counts"] == {"unlabeled": 7, "train": 2, "validation": 1}
    assert "pre-training on 10 images (unlabeled 7, train 2, validation 1)" in caplog.text
    # Which of the 7 to annotate: chosen from the pool only, by the DDPM's features and by a detector's.
    from hf_landmark import LandmarkConfig, LandmarkDetector

    capsys_out = []
    for features in (ckpt, None):
        if features is None:
            features = tmp_path / "det"
            LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=2, image_size=32)).save_pretrained(
                features
            )
        out = tmp_path / f"choose-{len(capsys_out)}.csv"
        assert (
            cli(
                [
                    "select",
                    "--dataset",
                    str(tmp_path / "prep"),
                    "--num",
                    "3",
                    "--features",
                    str(features),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        lines = out.read_text().splitlines()
        assert lines[0] == "image,tip_x,tip_y,base_x,base_y,split" and len(lines) == 4
        chosen = [ln.split(",")[0] for ln in lines[1:]]
        assert set(chosen) <= {
            "img04.png",
            "img05.png",
            "img06.png",
            "img07.png",
            "more/img08.png",
            "more/img09.png",
            "more/img10.png",
        }
        # 3 chosen: the last of them validates (a quarter, at least one), the first two train.
        assert [ln.split(",", 1)[1] for ln in lines[1:]] == [",,,,train", ",,,,train", ",,,,validation"]
        assert (tmp_path / f"choose-{len(capsys_out)}_sheet.png").is_file()
        # The same list for each tool: the chosen images, nothing annotated yet.
        from hf_landmark.data.formats import read_annotation_file

        stem = tmp_path / f"choose-{len(capsys_out)}"
        for listed in (f"{stem}.cvat.xml", f"{stem}.labelstudio.json", f"{stem}.coco.json", f"{stem}_labelme"):
            entries, _ = read_annotation_file(Path(listed), root=tmp_path / "xrays", coco_origin="corner")
            assert sorted(e.file for e in entries) == sorted(chosen) and all(e.landmarks is None for e in entries), (
                listed
            )
        capsys_out.append(chosen)
    # The template is the annotation file: filled in, its images are the labeled ones, the rest stay in the pool.
    template = (tmp_path / "choose-0.csv").read_text().splitlines()
    filled = [template[0]] + [row.replace(",,,,", ",3,4,10,12") for row in template[1:]]
    (tmp_path / "choose-0.csv").write_text("\n".join(filled) + "\n")
    dd2, _ = prepare(
        "custom",
        tmp_path / "xrays",
        None,
        image_size=32,
        annotations=tmp_path / "choose-0.csv",
        allow_empty_splits=True,
    )
    assert {s: len(dd2[s]) for s in dd2} == {"train": 2, "validation": 1, "unlabeled": 8}
    chosen_ids = [c.removesuffix(".png") for c in capsys_out[0]]
    assert (
        sorted(dd2["train"]["image_id"]) == sorted(chosen_ids[:2]) and dd2["validation"]["image_id"] == chosen_ids[2:]
    )


def test_facility_location_picks_the_images_that_represent_the_pool():
    """Three groups of 5, 3 and 2 nearly identical images: one image represents its group;
    K = 1 picks from the largest group, K = 3 one from each."""
    import numpy as np

    from hf_landmark.selection import coverage_score, facility_location

    rng = np.random.default_rng(0)
    centres = np.eye(3)
    groups = [0] * 5 + [1] * 3 + [2] * 2
    feats = centres[groups] + 0.01 * rng.normal(size=(10, 3))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    assert groups[facility_location(feats, 1)[0]] == 0
    assert sorted(groups[i] for i in facility_location(feats, 3)) == [0, 1, 2]
    # By hand: orthogonal groups have similarity (1 + 0) / 2 = 0.5, the same group ~1.
    assert coverage_score(feats, facility_location(feats, 3)) == pytest.approx(1.0, abs=1e-3)
    assert coverage_score(feats, [0]) == pytest.approx((5 * 1.0 + 5 * 0.5) / 10, abs=1e-3)


def test_a_later_rounds_rows_without_a_split_train_and_unannotated_test_rows_stay_out_of_the_pool(images, capsys):
    # Round two: im4 was annotated from the model's proposals (its split cell empty); im5 is a
    # held-out test image not annotated yet; validation and test stay what round one made them.
    (images / "lm.csv").write_text(_rows(override={4: "im4.png,14,9,24,26,", 5: "im5.png,,,,,test"}))
    assert _prepare(images, images / "lm.csv") == 2
    _refused(capsys, images, "the test split would be empty", "1 test rows of the file are not annotated yet")
    assert _prepare(images, images / "lm.csv", "--allow-empty-splits") == 0
    out = capsys.readouterr().out
    assert "split to train: 1: im4.png" in out and "held out: 1: im5.png" in out
    dd = load_prepared(images / "out")
    assert {s: sorted(d["image_id"]) for s, d in dd.items()} == {
        "train": ["im0", "im1", "im2", "im4"],
        "validation": ["im3"],
    }


def test_prepare_images_holdout_keeps_images_out_of_the_pool(tmp_path, capsys):
    from hf_landmark.data.readers import read_images

    for i in range(6):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(tmp_path / f"x{i}.png")
    records, _, report = read_images(tmp_path, holdout=2, seed=3)
    assert len(records) == 4 and len(report.held_out) == 2
    assert not {r.image_id + ".png" for r in records} & set(report.held_out)
    assert (
        read_images(tmp_path, holdout=2, seed=3)[2].held_out == report.held_out
    )  # the same seed draws the same images
    (tmp_path / "list.txt").write_text("x1.png\nx4.png\n")
    assert read_images(tmp_path, holdout=tmp_path / "list.txt")[2].held_out == ["x1.png", "x4.png"]
    (tmp_path / "bad.txt").write_text("x9.png\n")
    assert (
        cli(
            [
                "prepare",
                "images",
                "--root",
                str(tmp_path),
                "--out",
                str(tmp_path / "p"),
                "--holdout",
                str(tmp_path / "bad.txt"),
            ]
        )
        == 2
    )
    assert "bad.txt: 1 listed image(s) are not under the folder: x9.png" in capsys.readouterr().err
    assert cli(["prepare", "images", "--root", str(tmp_path), "--out", str(tmp_path / "p"), "--holdout", "6"]) == 2


def test_the_spacing_every_labeled_image_shares_is_the_models():
    from hf_landmark.data.prepared import common_spacing

    assert common_spacing({"spacing": [[0.35, 0.35], [0.35, 0.35]]}, {"spacing": [[0.35, 0.35]]}) == [0.35, 0.35]
    assert common_spacing({"spacing": [[0.35, 0.35], [0.2, 0.2]]}) is None  # two scanners: no one spacing to assume
    assert common_spacing({"spacing": [[0.35, 0.35], None]}) is None


def test_select_does_not_spend_a_label_on_a_washed_out_image():
    from hf_landmark.selection import choose, pool_outliers

    rng = np.random.default_rng(0)
    # 12 alike images; image 5 is washed out (grey 0.79-1.0): coverage would take it for covering itself.
    feats = rng.normal(size=(12, 8)) * 0.05 + 1.0
    feats[5] = rng.normal(size=8)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    images = rng.random((12, 16, 16))
    images[5] = 0.79 + 0.21 * images[5]
    out = pool_outliers(feats, images)
    assert set(out) == {5} and "far from every other image" in out[5] and "low contrast" in out[5]
    assert 5 in choose("coverage", [f"i{k}" for k in range(12)], 2, feats)
    assert 5 not in choose("coverage", [f"i{k}" for k in range(12)], 2, feats, excluded=out)
