"""Mistaken command lines, as a new user types them: each is one line naming the argument or
file, exit code 2, no traceback, before any work is done."""

import json

import pytest
from PIL import Image

from hf_landmark import LandmarkConfig, LandmarkDetector, LandmarkImageProcessor
from hf_landmark_cli import main as cli


@pytest.fixture(scope="module")
def places(synth_prepared, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mistakes")
    LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=19, image_size=32)).save_pretrained(
        tmp / "model"
    )
    # b: fine-tuned on other labels than a; c: on a's labels, selected on another validation split
    for name, labels, val in (("a", ["001", "002"], 20), ("b", ["001", "003"], 20), ("c", ["001", "002"], 5)):
        LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=19, image_size=32)).save_pretrained(
            tmp / name
        )
        (tmp / name / "hf_landmark_training.json").write_text(
            json.dumps({"dataset": "ceph", "labeled_image_ids": labels, "validation_images": val, "seed": 0})
        )
    # d: a processor config whose shape model's covariance lost two rows (edited by hand)
    config = LandmarkConfig(backbone_config="tiny", num_landmarks=19, image_size=32)
    LandmarkDetector(config).save_pretrained(tmp / "d")
    processor = LandmarkImageProcessor.from_model_config(config)
    processor.calibration.update(
        shape_model_mean=[[0.0, float(i)] for i in range(19)],
        shape_model_covariance=[[0.0] * 38] * 36,
        shape_model_noise=[1.0] * 19,
        shape_model_stage="first",
    )
    processor.save_pretrained(tmp / "d")
    Image.new("L", (20, 20)).save(tmp / "x.png")
    (tmp / "metrics.json").write_text("{not json")
    return {"DATA": str(synth_prepared), "MODEL": str(tmp / "model"), "IMG": str(tmp / "x.png"), "TMP": str(tmp)}


FT = "finetune --dataset DATA --output-dir TMP/ft --num-labels 2 --report-to none"
MISTAKES = [
    # (command line, words the one error line must contain)
    (FT + " --init runs/nope/checkpoint-10", ["--init", "runs/nope/checkpoint-10", "no such"]),
    (FT + " --init ./typo-folder", ["--init", "./typo-folder", "no such"]),
    (FT + " --init ~/no-such-ddpm-folder", ["--init", "~/no-such-ddpm-folder", "no such"]),
    (FT + " --init typo-folder", ["--init", "typo-folder", "no such"]),
    (FT + " --init mocov3=./nope", ["--init", "./nope", "no such mocov3 checkpoint folder"]),
    (FT + " --init mocov3=", ["--init", "mocov3= needs a folder"]),
    (FT + " --init scratch --refine-init ./nope", ["--refine-init", "./nope", "no such"]),
    (
        FT + " --init scratch --refine-init TMP",
        ["--refine-init", "not a pre-trained DDPM folder", "checkpoint-<step>"],
    ),
    (FT + " --init DATA", ["--init", "not a pre-trained DDPM folder"]),
    (
        "finetune --dataset ./nope --output-dir TMP/ft --num-labels 2 --init scratch",
        ["--dataset", "./nope", "no such prepared dataset"],
    ),
    (FT + " --init scratch --num-labels 0", ["--num-labels", "at least 1"]),
    (FT + " --init scratch --resolution 30", ["--resolution", "multiple of 8"]),
    (FT + " --init scratch --preset huge", ["--preset", "'huge'"]),
    (FT + " --init scratch --loss nope", ["--loss", "'nope'"]),
    (
        FT + " --init scratch --pixel-range 1 --preset tiny --resolution 32",
        ["--pixel-range", "two comma-separated numbers"],
    ),
    (FT + " --init scratch --num-labels 99 --preset tiny --resolution 32", ["--num-labels", "99 labels asked"]),
    (FT + " --init scratch --self-train -1", ["--self-train", "0 (off) or more"]),
    (FT + " --init scratch --self-train-keep 1.5", ["--self-train-keep", "(0, 1]", "1.5"]),
    (FT + " --init scratch --self-train-keep-each -0.1", ["--self-train-keep-each", "[0, 1]", "-0.1"]),
    (FT + " --init scratch --ema-decay 1", ["--ema-decay", "[0, 1)", "got 1"]),
    (FT + " --init scratch --augment 12,0.12", ["--augment", "DEG,SCALE,SHIFT[,GAMMA]", "'12,0.12'"]),
    (FT + " --init scratch --augment 90,0.1,0.1", ["--augment", "at most 45 degrees", "'90,0.1,0.1'"]),
    (FT + " --init scratch --self-train-labeled-share 1", ["--self-train-labeled-share", "(0, 1)"]),
    (FT + " --init scratch --shape-check -1", ["--shape-check", "0 (off) or more", "-1"]),
    (FT + " --init scratch --refine-prior nan", ["--refine-prior", "0 (off) or more", "nan"]),
    (FT + " --init scratch --shape-fusion -0.5", ["--shape-fusion", "a weight of 0 (off) or more", "-0.5"]),
    (FT + " --init scratch --recipe paper --self-train 1", ["--self-train", "'paper' loss", "--loss contour"]),
    ("pretrain --dataset DATA --output-dir TMP/pt --splits train,test", ["--splits", "test split"]),
    ("pretrain --dataset DATA --output-dir TMP/pt --resolution 30", ["--resolution", "multiple of 8"]),
    (
        "pretrain --dataset DATA --output-dir TMP/pt --resume-from-checkpoint ./runs/checkpoint-3",
        ["--resume-from-checkpoint", "./runs/checkpoint-3", "no such folder"],
    ),
    ("pretrain --dataset ./nope --output-dir TMP/pt", ["--dataset", "./nope"]),
    ("benchmark --dataset DATA --output-dir TMP/b --init bogus=runs/nope", ["runs/nope", "no such"]),
    ("benchmark --dataset DATA --output-dir TMP/b --init scratch --labels 1,x", ["--labels", "'1,x'"]),
    ("evaluate --model ./nope --dataset DATA", ["--model", "./nope", "no such model folder"]),
    ("evaluate --model MODEL --dataset ./nope", ["--dataset", "./nope"]),
    ("evaluate --model MODEL --dataset DATA --split tset", ["DATA", "no 'tset' split"]),
    ("evaluate --model MODEL --dataset DATA --thresholds a,b", ["--thresholds", "'a,b'"]),
    ("calibrate --model MODEL --dataset DATA --alpha 2", ["--alpha", "between 0 and 1", "got 2.0"]),
    ("calibrate --model ./nope --dataset DATA", ["./nope", "not a detector folder", "preprocessor_config.json"]),
    ("ensemble MODEL --dataset DATA --output TMP/e", ["two or more detector folders", "got 1"]),
    (
        "ensemble MODEL TMP/a --dataset DATA --output TMP/e --shape-fusion -1",
        ["--shape-fusion", "0 (off) or more", "-1"],
    ),
    ("ensemble MODEL TMP/a --dataset DATA --output TMP/a", ["--output", "TMP/a", "one of the members"]),
    ("ensemble ./nope MODEL --dataset DATA --output TMP/e", ["--model", "./nope", "no such model folder"]),
    ("ensemble MODEL TMP/a --dataset DATA --output TMP/e", ["MODEL", "no hf_landmark_training.json"]),
    ("ensemble TMP/a TMP/b --dataset DATA --output TMP/e", ["TMP/b", "other labels than TMP/a"]),
    (
        "ensemble TMP/a TMP/c --dataset DATA --output TMP/e",
        ["TMP/c", "other validation images than TMP/a", "validation_images: 5 against 20"],
    ),
    (FT + " --init scratch --ensemble 0", ["--ensemble", "between 1 (one detector) and 16", "got 0"]),
    (FT + " --init scratch --teacher ./nope", ["--teacher", "./nope", "not a detector folder"]),
    (
        "finetune --dataset DATA --output-dir TMP --num-labels 2 --init scratch --teacher TMP/a",
        ["--teacher", "TMP/a", "inside --output-dir", "overwrites"],
    ),
    (FT + " --init scratch --teacher MODEL --self-train 0", ["--teacher", "--self-train 0 runs no round"]),
    (FT + " --init scratch --preset tiny --resolution 32 --teacher MODEL", ["MODEL", "no hf_landmark_training.json"]),
    (FT + " --init scratch --preset tiny --resolution 32 --teacher TMP/b", ["--teacher", "TMP/b", "other labels"]),
    ("predict IMG --model ./nope", ["--model", "./nope", "no such model folder"]),
    ("predict TMP/missing.png --model MODEL", ["missing.png", "no such file"]),
    ("synth --out TMP/s --num-images -3", ["--num-images", "at least 1", "-3"]),
    ("prepare custom --root TMP --out TMP/p", ["--annotations"]),
    ("prepare hand --root TMP/nope --out TMP/p", ["TMP/nope", "folder not found"]),
    ("prepare ceph --root TMP --out TMP/p --split-counts a,b", ["--split-counts", "'a,b'"]),
    ("card MODEL --metrics TMP/metrics.json", ["metrics.json", "cannot read the metrics file"]),
    ("predict IMG --model MODEL --format coco", ["--coco-origin", "corner or center"]),
    ("prepare images --root TMP --out TMP/p --split-counts 3,1", ["--split-counts", "only an unlabeled split"]),
    ("prepare ceph --root TMP --out TMP/p --annotations x.csv", ["--annotations", "for prepare custom, not ceph"]),
    (
        "prepare custom --root TMP --out TMP/p --annotations TMP/x.png --landmarks a,a",
        ["--landmarks", "distinct names"],
    ),
    ("annotate --images TMP/nope --out TMP/a.csv --landmarks a,b", ["--images", "TMP/nope", "no such folder"]),
    ("annotate --images TMP --out TMP/a.txt --landmarks a,b", ["--out", "a.txt", "a CSV"]),
    ("annotate --images TMP --out TMP/new.csv", ["--landmarks", "name the landmarks"]),
    ("annotate --images TMP --out TMP/new.csv --model ./nope", ["--model", "./nope", "no such model folder"]),
    ("annotate --images TMP --out TMP/new.csv --model MODEL --landmarks a,b", ["--model", "its landmarks", "(a, b)"]),
    (
        "match --template TMP/nope.png --landmarks TMP/x.csv --images TMP --features MODEL",
        ["--template", "TMP/nope.png", "no such image"],
    ),
    (
        "predict IMG --model TMP/d --output TMP/p.json",
        ["TMP/d/preprocessor_config.json", "a covariance [2N, 2N]", "got (19, 2), (36, 38) and (19,)"],
    ),
    ("select --dataset DATA --num 0 --features MODEL", ["--num", "at least 1"]),
    ("select --dataset DATA --num 2 --features ./nope --split train", ["--features", "./nope", "no such"]),
    ("select --dataset DATA --num 2 --features MODEL", ["DATA", "no 'unlabeled' split", "--split train"]),
    ("select --dataset DATA --num 99 --features MODEL --split train", ["--num", "99 images asked", "the pool has 14"]),
    ("select --dataset DATA --num 2 --split train", ["--features", "coverage strategy"]),
    ("select --dataset DATA --num 2 --split test --strategy first", ["--split", "test split is never a pool"]),
]


@pytest.mark.parametrize(
    "line, words", MISTAKES, ids=[m[0].split(" --init ")[-1][:40] if "--init" in m[0] else m[0][:40] for m in MISTAKES]
)
def test_a_mistaken_command_line_is_one_error_line(places, line, words, capsys):
    def fill(text):
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    capsys.readouterr()
    assert cli([fill(a) for a in line.split()]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert fill(word) in lines[0], (word, lines[0])


def test_prepare_kind_help_lists_that_kinds_flags(capsys):
    from hf_landmark_cli import main

    assert main(["prepare", "images", "--help"]) == 0
    images = capsys.readouterr().out
    assert (
        images.startswith("usage: hf-landmark prepare images")
        and "--holdout" in images
        and "a folder of images" in images
    )
    assert "--annotations" not in images and "--split-counts" not in images and "--annotator" not in images
    assert main(["prepare", "custom", "-h"]) == 0
    custom = capsys.readouterr().out
    assert (
        "--annotations" in custom
        and "--accept-predictions" in custom
        and "--holdout" not in custom
        and "--wrist-indices" not in custom
    )


def test_pretrain_help_says_it_trains_on_the_unlabeled_split_too():
    import hf_landmark.training.pretrain as pretrain

    assert (
        "unlabeled, train and validation splits" in pretrain.__doc__
        and "Only the train and validation" not in pretrain.__doc__
    )
