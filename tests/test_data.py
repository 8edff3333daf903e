import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_landmark.data import (
    DatasetFormatError,
    few_shot_indices,
    load_prepared,
    load_tensors,
    prepare,
    random_affine,
    read_ceph,
    read_chest,
    read_custom,
    read_hand,
)
from hf_landmark.preprocessing import ImageReadError, original_to_model, read_image

from .conftest import REALDATA


def _write_img(path: Path, w: int, h: int, dot=None, mode="L"):
    arr = np.zeros((h, w), dtype=np.uint8)
    if dot is not None:
        x, y = dot
        arr[y - 2 : y + 3, x - 2 : x + 3] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)


def test_ceph_reader_on_synthetic_isbi_layout(synth_raw):
    records, names, report = read_ceph(synth_raw)
    assert len(records) == 24 and report.images_found == 24 and len(names) == 19 and names[0] == "Sella"
    assert [r.split for r in records].count("train") == 24  # 130/20/rest over 24 images
    senior = np.loadtxt(synth_raw / "AnnotationsByMD/400_senior/001.txt", delimiter=",")
    junior = np.loadtxt(synth_raw / "AnnotationsByMD/400_junior/001.txt", delimiter=",")
    assert np.allclose(records[0].landmarks, (senior + junior) / 2)
    assert np.allclose(read_ceph(synth_raw, annotator="senior")[0][0].landmarks, senior)
    assert records[0].spacing == (0.1, 0.1)


def test_ceph_reader_flat_layout_extra_lines_and_errors(tmp_path):
    for i in (1, 2, 3):
        _write_img(tmp_path / "images" / f"{i:03d}.bmp", 40, 50)
    for who in ("senior", "junior"):
        d = tmp_path / f"400_{who}"
        d.mkdir()
        for i in (1, 2, 4):  # 003 has no annotation, 004 has no image
            lines = [f"{j},{j + 1}" for j in range(19)] + ["3", "1", "2"]  # classification lines after the 19
            (d / f"{i:03d}.txt").write_text("\n".join(lines))
    records, _, report = read_ceph(tmp_path)
    assert [r.image_id for r in records] == ["001", "002"]
    assert records[0].landmarks[5].tolist() == [5.0, 6.0]
    assert report.images_without_annotations == ["003"] and report.annotations_without_images == ["004"]
    (tmp_path / "400_senior" / "002.txt").write_text("1,2\n3,4\n")
    with pytest.raises(DatasetFormatError, match="002.txt: 2 coordinate lines, expected 19"):
        read_ceph(tmp_path)
    records, _, report = read_ceph(tmp_path, skip_bad=True)
    assert [r.image_id for r in records] == ["001"] and "002.txt" in report.wrong_coordinate_counts[0]


def test_hand_reader(tmp_path):
    rows = []
    for k, image_id in enumerate(["3001", "3002", "3003"]):
        lm = np.tile(np.array([[10.0, 10.0]]), (37, 1)) + k
        lm[4] = lm[0] + [60.0, 80.0]  # wrist width 100 px -> 0.5 mm/px
        rows.append(image_id + "," + ",".join(f"{v:g}" for v in lm.ravel()))
        if image_id != "3003":  # 3003: a row without an image
            _write_img(tmp_path / "jpg" / f"{image_id}.jpg", 120, 150)
    _write_img(tmp_path / "jpg" / "9999.jpg", 120, 150)  # an image without a row
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "all.csv").write_text("\n".join(rows) + "\n")
    records, names, report = read_hand(tmp_path)
    assert [r.image_id for r in records] == ["3001", "3002"] and len(names) == 37
    assert records[0].spacing == pytest.approx((0.5, 0.5))
    assert report.images_without_annotations == ["9999"] and report.annotations_without_images == ["3003"]
    (tmp_path / "labels" / "all.csv").write_text(rows[0] + "\n3002,1,2,3\n")
    with pytest.raises(DatasetFormatError, match=r"all.csv:2 \(3002\): 3 values, expected 74"):
        read_hand(tmp_path)


def test_chest_reader_fractions_and_code_split(tmp_path):
    for n in (1, 59):
        name = f"CHNCXR_{n:04d}_0"
        _write_img(tmp_path / "pngs" / f"{name}.png", 200, 100)
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{name}.txt").write_text("6\n" + "\n".join("0.25 0.5" for _ in range(6)) + "\n")
    records, names, report = read_chest(tmp_path)
    assert len(records) == 2 and records[0].spacing is None and len(names) == 6
    assert records[0].landmarks[0].tolist() == [50.0, 50.0]
    records, _, report = read_chest(tmp_path, split="code")
    assert [r.image_id for r in records] == ["CHNCXR_0001_0"] and report.excluded == ["CHNCXR_0059_0"]
    # Other split counts over the sorted ids (a handful of images: one to train, one to validate).
    records, _, _ = read_chest(tmp_path, split_counts=(1, 1, 0))
    assert [(r.image_id, r.split) for r in records] == [("CHNCXR_0001_0", "train"), ("CHNCXR_0059_0", "validation")]


def test_custom_csv_and_json(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _write_img(tmp_path / name, 32, 32)
    (tmp_path / "lm.csv").write_text(
        "image,tip_x,tip_y,base_x,base_y,spacing_x,spacing_y,split\n"
        "a.png,1,2,3,4,0.2,0.3,train\nb.png,5,6,7,8,,,validation\n"
    )
    records, names, report = read_custom(tmp_path, tmp_path / "lm.csv")
    assert names == ["tip", "base"] and records[0].landmarks.tolist() == [[1, 2], [3, 4]]
    assert records[0].spacing == (0.2, 0.3) and records[1].spacing is None and records[1].split == "validation"
    assert report.images_without_annotations == ["c.png"]
    (tmp_path / "lm.json").write_text(
        json.dumps(
            {
                "landmark_names": ["p"],
                "images": [
                    {"file": "a.png", "landmarks": [[1, 1]], "spacing": 0.5},
                    {"file": "missing.png", "landmarks": [[2, 2]]},
                ],
            }
        )
    )
    with pytest.raises(
        DatasetFormatError, match=r"lm.json: images\[1\] \(missing.png\): image .*missing.png not found"
    ):
        read_custom(tmp_path, tmp_path / "lm.json", split_counts=(1, 0, 0))
    records, names, report = read_custom(tmp_path, tmp_path / "lm.json", split_counts=(1, 0, 0), skip_bad=True)
    assert names == ["p"] and records[0].spacing == (0.5, 0.5) and report.annotations_without_images == ["missing.png"]


def test_prepared_dataset_features_and_frames(tmp_path):
    # A 200 x 100 (W x H) chest image with a bright dot at (150, 30): after resizing to 64 px
    # the dot must sit on the landmark mapped through the preprocessing.
    name = "CHNCXR_0001_0"
    _write_img(tmp_path / "pngs" / f"{name}.png", 200, 100, dot=(150, 30))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / f"{name}.txt").write_text("6\n" + "\n".join("0.75 0.3" for _ in range(6)) + "\n")
    prepare("chest", tmp_path, tmp_path / "out", image_size=64, allow_empty_splits=True)
    dd = load_prepared(tmp_path / "out")
    row = dd["train"][0]
    assert row["original_size"] == [200, 100] and row["spacing"] is None and row["image"].size == (64, 64)
    t = load_tensors(dd["train"], 64)
    img = t.images[0, 0].numpy()
    ys, xs = np.mgrid[0:64, 0:64]
    centroid = np.array([(img * xs).sum(), (img * ys).sum()]) / img.sum()
    assert np.allclose(t.landmarks[0, 0].numpy(), centroid, atol=0.5)
    assert np.allclose(
        t.landmarks[0, 0].numpy(), original_to_model(np.array([150.0, 30.0]), (200, 100), 64), atol=1e-4
    )


def test_bad_image_names_the_file_and_leaves_no_output(tmp_path):
    _write_img(tmp_path / "pngs" / "CHNCXR_0001_0.png", 20, 20)
    (tmp_path / "pngs" / "CHNCXR_0002_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "labels").mkdir()
    for n in (1, 2):
        (tmp_path / "labels" / f"CHNCXR_000{n}_0.txt").write_text("6\n" + "0.5 0.5\n" * 6)
    with pytest.raises(DatasetFormatError, match="CHNCXR_0002_0.png: cannot read image"):
        prepare("chest", tmp_path, tmp_path / "out", allow_empty_splits=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))
    _, report = prepare("chest", tmp_path, tmp_path / "out", skip_bad=True, allow_empty_splits=True)
    assert len(load_prepared(tmp_path / "out")["train"]) == 1 and "CHNCXR_0002_0" in report.skipped[0]
    with pytest.raises(ImageReadError, match="nothing.png: file not found"):
        read_image(tmp_path / "nothing.png")


def test_augmentation_keeps_a_drawn_dot_on_its_landmark():
    size = 64
    lm = torch.tensor([[[20.3, 41.7]], [[40.0, 12.5]], [[31.5, 31.5]]])
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = torch.exp(-((xs - lm[:, 0, 0, None, None]) ** 2 + (ys - lm[:, 0, 1, None, None]) ** 2) / (2 * 1.5**2))[
        :, None
    ]
    g = torch.Generator().manual_seed(0)
    # The paper's ±2° / ±2 % / ±2 %, and the default recipe's ±12° / ±12 % / ±6 %.
    for rotation, scale, shift in [(2, 0.02, 0.02)] * 5 + [(12, 0.12, 0.06)] * 5:
        out, moved = random_affine(images, lm, rotation_deg=rotation, scale=scale, translation=shift, generator=g)
        w = out[:, 0]
        centroid = torch.stack([(w * xs).sum((-2, -1)), (w * ys).sum((-2, -1))], -1) / w.sum((-2, -1))[:, None]
        assert (centroid - moved[:, 0]).norm(dim=-1).max() < 0.5
    # Large transforms really move the landmarks (the check above is not vacuous).
    _, far = random_affine(
        images, lm, rotation_deg=0, scale=0, translation=0.1, generator=torch.Generator().manual_seed(1)
    )
    assert (far - lm).abs().max() > 1.0


def test_intensity_augmentation_draws_a_power_within_its_range_and_keeps_black_and_white():
    from hf_landmark.data import random_gamma

    images = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3).repeat(400, 1, 1, 1)
    assert random_gamma(images, 0.0) is images
    out = random_gamma(images, 1.0, generator=torch.Generator().manual_seed(0))  # powers in [1/2, 2]
    assert (out[..., 0] == 0).all() and (out[..., 2] == 1).all()
    mid = out[..., 1].flatten()
    assert mid.min() >= 0.25**2 - 1e-6 and mid.max() <= 0.25**0.5 + 1e-6  # 0.0625 .. 0.5
    assert mid.min() < 0.07 and mid.max() > 0.45  # both ends are drawn, darker and brighter
    assert mid.unique().numel() > 300  # one power per image


def test_prepare_refuses_a_split_that_would_be_empty(synth_raw, tmp_path):
    # 24 images with the paper's 130 / 20 / rest: no validation and no test image.
    with pytest.raises(
        DatasetFormatError, match="validation and test splits would be empty .train 24, validation 0, test 0"
    ):
        prepare("ceph", synth_raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    dd, _ = prepare("ceph", synth_raw, tmp_path / "out", image_size=32, allow_empty_splits=True)
    assert list(dd) == ["train"]


def test_synthetic_landmarks_stay_inside_the_image():
    from hf_landmark.data.synthetic import SYNTH_SIZE, synthetic_landmarks

    rng = np.random.default_rng(0)
    pts = np.stack([synthetic_landmarks(rng) for _ in range(400)])
    w, h = SYNTH_SIZE
    assert pts.min() >= 2.0 and pts[..., 0].max() <= w - 3 and pts[..., 1].max() <= h - 3


def test_few_shot_subsets():
    ids = ["005", "001", "003", "002", "004"]
    assert [ids[i] for i in few_shot_indices(ids, 2)] == ["001", "002"]
    a = few_shot_indices(ids, 3, "random", seed=7)
    assert a == few_shot_indices(ids, 3, "random", seed=7) and len(set(a)) == 3
    assert any(few_shot_indices(ids, 3, "random", seed=s) != a for s in range(5))
    with pytest.raises(ValueError):
        few_shot_indices(ids, 6)


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata not present")
def test_real_data_prepares_with_correct_counts_frames_and_spacing(tmp_path):
    dd, report = prepare("ceph", REALDATA / "isbi2015_ceph", tmp_path / "ceph", image_size=64, allow_empty_splits=True)
    assert report.images_found == 150 and report.annotated == 150
    assert (len(dd["train"]), len(dd["validation"])) == (130, 20)
    row = dd["train"][0]
    assert (
        row["original_size"] == [1935, 2400]
        and row["spacing"] == pytest.approx([0.1, 0.1])
        and len(row["landmarks"]) == 19
    )
    senior = np.loadtxt(REALDATA / "isbi2015_ceph/AnnotationsByMD/400_senior/001.txt", delimiter=",")[:19]
    junior = np.loadtxt(REALDATA / "isbi2015_ceph/AnnotationsByMD/400_junior/001.txt", delimiter=",")[:19]
    t = load_tensors(dd["train"], 64)
    assert np.allclose(t.landmarks[0].numpy(), original_to_model((senior + junior) / 2, (1935, 2400), 64), atol=1e-3)
    hand, report = prepare("hand", REALDATA / "hand", tmp_path / "hand", image_size=64, allow_empty_splits=True)
    rows = [ln for ln in (REALDATA / "hand/labels/all.csv").read_text().splitlines() if ln.strip()]
    assert report.annotated == 9 and len(report.annotations_without_images) == len(rows) - 9
    assert all(s[0] > 0 for s in hand["train"]["spacing"])
    chest, report = prepare("chest", REALDATA / "chest", tmp_path / "chest", image_size=64, allow_empty_splits=True)
    assert report.annotated == 11 and chest["train"][0]["spacing"] is None


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    from hf_landmark.fileio import atomic_file, write_json_atomic

    target = tmp_path / "out" / "metrics.json"
    write_json_atomic({"mre": 1.5}, target)
    assert json.loads(target.read_text()) == {"mre": 1.5}
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        with open(tmp, "w") as fh:
            fh.write('{"mre": 2')  # a writer that fails half-way
        raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"mre": 1.5}  # the previous file, untouched
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]  # no temporary left behind
    write_json_atomic({"mre": 2.0}, target)
    assert json.loads(target.read_text()) == {"mre": 2.0}


def test_replacing_a_folder_keeps_only_the_new_one(tmp_path):
    from hf_landmark.fileio import replace_directory

    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "old.txt").write_text("old")
    (tmp_path / ".staged").mkdir()
    (tmp_path / ".staged" / "new.txt").write_text("new")
    replace_directory(tmp_path / ".staged", tmp_path / "checkpoint-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8"]  # no staging or set-aside folder left
    assert [p.name for p in (tmp_path / "checkpoint-8").iterdir()] == ["new.txt"]


def test_pretraining_reads_the_named_splits_and_names_a_dataset_without_them(synth_prepared):
    from hf_landmark.data import load_prepared, load_unlabeled_images
    from hf_landmark.errors import UserInputError

    dataset = load_prepared(synth_prepared)
    images, counts = load_unlabeled_images(dataset, "train,validation,nosuch", 32, "my-data")
    assert images.shape == (14 + 5, 1, 32, 32) and 0 <= images.min() and images.max() <= 1  # 14 train + 5 validation
    assert counts == {"train": 14, "validation": 5}
    with pytest.raises(
        UserInputError, match=r"my-data: none of the splits \['nosuch'\] exist \(it has train, validation, test\)"
    ):
        load_unlabeled_images(dataset, "nosuch", 32, "my-data")


def test_a_pool_too_large_for_memory_streams_the_same_pixels(synth_prepared):
    """Pre-training's image pool: decoded into memory when it fits, else read batch by batch
    from the memory-mapped Arrow files; both give the pixels load_tensors gives."""
    import torch

    from hf_landmark.data import ImagePool, load_prepared, load_tensors

    dataset = load_prepared(synth_prepared)
    in_memory = ImagePool(dataset, "unlabeled,train,validation", 32, "d")
    streamed = ImagePool(dataset, "unlabeled,train,validation", 32, "d", max_bytes=0)
    assert in_memory.in_memory and not streamed.in_memory and streamed.images is None
    assert len(streamed) == 19 and streamed.counts == {
        "train": 14,
        "validation": 5,
    }  # no unlabeled split here: skipped
    idx = torch.tensor([18, 0, 7, 7])
    assert torch.equal(streamed[idx], in_memory[idx])
    reference = torch.cat([load_tensors(dataset["train"], 32).images, load_tensors(dataset["validation"], 32).images])
    assert torch.equal(in_memory[idx], reference[idx])
