"""The README's journey, end to end on synthetic radiographs: a folder of x-rays -> prepare
images -> pretrain -> select -> annotate the chosen images -> prepare custom -> finetune ->
predict --format cvat -> read back through prepare custom."""

import numpy as np
import pytest

from hf_landmark.data import CEPH_LANDMARKS, load_prepared, write_synthetic_isbi
from hf_landmark.data.readers import read_isbi_annotation
from hf_landmark_cli import main as cli

pytestmark = pytest.mark.slow


def test_a_folder_of_xrays_to_a_detector_and_back_to_the_annotation_tool(tmp_path, capsys):
    raw = write_synthetic_isbi(tmp_path / "synth", num_images=12, seed=5)
    xrays = raw / "RawImage" / "TrainingData"
    pool, ddpm = tmp_path / "pool", tmp_path / "ddpm"
    assert cli(["prepare", "images", "--root", str(xrays), "--out", str(pool), "--image-size", "64"]) == 0
    assert {s: len(d) for s, d in load_prepared(pool).items()} == {"unlabeled": 12}
    assert (
        cli(
            [
                "pretrain",
                "--dataset",
                str(pool),
                "--output-dir",
                str(ddpm),
                "--preset",
                "tiny",
                "--resolution",
                "32",
                "--max-steps",
                "4",
                "--save-steps",
                "4",
                "--train-batch-size",
                "4",
                "--gradient-accumulation-steps",
                "1",
                "--num-samples",
                "0",
                "--report-to",
                "none",
            ]
        )
        == 0
    )
    (tmp_path / "names.txt").write_text("\n".join(CEPH_LANDMARKS) + "\n")
    choose = tmp_path / "choose.csv"
    assert (
        cli(
            [
                "select",
                "--dataset",
                str(pool),
                "--num",
                "6",
                "--features",
                str(ddpm / "checkpoint-4"),
                "--landmarks",
                str(tmp_path / "names.txt"),
                "--out",
                str(choose),
            ]
        )
        == 0
    )
    # The annotator fills the template for the chosen images (here: with the synthetic truth).
    lines = choose.read_text().splitlines()
    filled = [lines[0]]
    for row in lines[1:]:
        name = row.split(",")[0]
        truth = (
            read_isbi_annotation(raw / "AnnotationsByMD" / "400_senior" / name.replace(".bmp", ".txt"))
            + read_isbi_annotation(raw / "AnnotationsByMD" / "400_junior" / name.replace(".bmp", ".txt"))
        ) / 2
        filled.append(name + "," + ",".join(f"{v:g}" for v in truth.ravel()))
    choose.write_text("\n".join(filled) + "\n")
    mine = tmp_path / "mine"
    assert (
        cli(
            [
                "prepare",
                "custom",
                "--root",
                str(xrays),
                "--annotations",
                str(choose),
                "--out",
                str(mine),
                "--image-size",
                "64",
                "--split-counts",
                "4,2,0",
                "--allow-empty-splits",
            ]
        )
        == 0
    )
    dd = load_prepared(mine)
    assert {s: len(d) for s, d in dd.items()} == {"train": 4, "validation": 2, "unlabeled": 6}
    chosen = sorted(ln.split(",")[0].removesuffix(".bmp") for ln in filled[1:])
    assert sorted([*dd["train"]["image_id"], *dd["validation"]["image_id"]]) == chosen
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(mine),
                "--init",
                str(ddpm / "checkpoint-4"),
                "--num-labels",
                "4",
                "--max-steps",
                "2",
                "--eval-steps",
                "1",
                "--no-refine",
                "--report-to",
                "none",
                "--output-dir",
                str(tmp_path / "ft"),
            ]
        )
        == 0
    )
    assert (
        cli(
            [
                "predict",
                str(xrays),
                "--model",
                str(tmp_path / "ft" / "model"),
                "--output",
                str(tmp_path / "p.json"),
                "--format",
                "cvat",
                "--format-output",
                str(tmp_path / "pre.xml"),
            ]
        )
        == 0
    )
    import json

    predicted = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert (
        cli(
            [
                "prepare",
                "custom",
                "--root",
                str(xrays),
                "--annotations",
                str(tmp_path / "pre.xml"),
                "--out",
                str(tmp_path / "again"),
                "--image-size",
                "64",
                "--split-counts",
                "8,2,2",
            ]
        )
        == 0
    )
    again = load_prepared(tmp_path / "again")
    assert sum(len(d) for d in again.values()) == 12 and "unlabeled" not in again
    for split in again.values():
        for row in split:
            expected = [[p["x"], p["y"]] for p in predicted[str(xrays / (row["image_id"] + ".bmp"))]]
            assert np.abs(np.array(row["landmarks"]) - np.array(expected)).max() < 1e-4
