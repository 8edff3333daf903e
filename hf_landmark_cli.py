"""The ``hf-landmark`` command line.

The parser lives in this small top-level module, which imports nothing but the standard
library: ``hf-landmark --help`` (and any subcommand's ``--help`` but the training ones,
whose flags are their arguments dataclasses) answers at once. A command's work is
imported from :mod:`hf_landmark.cli` only once the arguments are parsed.

A user's mistake (a bad file, a missing folder, a wrong value) is printed as one line,
``error: <file or argument>: <what is wrong and what to do>``, with exit code 2;
``hf-landmark --debug ...`` or ``HF_LANDMARK_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

#: ``hf_landmark.data.specs.DATASETS`` and ``hf_landmark.heatmaps.DECODERS`` (a test keeps them equal).
DATASET_KINDS = ("ceph", "hand", "chest", "custom", "images")
#: ``hf_landmark.data.formats.FORMATS`` (a test keeps them equal).
ANNOTATION_FORMATS = ("csv", "json", "cvat", "coco", "labelstudio", "labelme")
DECODER_NAMES = ("centroid", "argmax", "soft_argmax")

#: Subcommands whose flags are a training function's arguments dataclass.
TRAINING = {
    "pretrain": ("pretrain", "DDPM self-supervised pre-training (training/pretrain.py)"),
    "pretrain-ssl": (
        "pretrain_ssl",
        "the baselines' MoCo v3 / SimCLR v2 / DINO encoder pre-training (training/pretrain_ssl.py; hf-landmark[baselines])",
    ),
    "finetune": ("finetune", "few-shot fine-tuning (training/finetune.py)"),
    "benchmark": ("fewshot_benchmark", "the paper's few-shot experiments (training/fewshot_benchmark.py)"),
    "demo": ("demo", "the whole method end to end on synthetic data (training/demo.py)"),
}


#: What ``prepare KIND`` does, for its own ``--help``.
PREPARE_KINDS = {
    "ceph": "the ISBI 2015 cephalometric layout: RawImage/..., AnnotationsByMD/400_senior|400_junior/NNN.txt",
    "hand": "the Digital Hand Atlas layout: jpg/<id>.jpg and labels/all.csv",
    "chest": "the Shenzhen chest layout: pngs/CHNCXR_NNNN_0.png and labels/CHNCXR_NNNN_0.txt",
    "custom": "your images and one annotation file (our CSV/JSON or a CVAT, Label Studio, COCO Keypoints or labelme export): "
    "annotated images go to train / validation / test (the file's split column, else --split-counts over sorted ids), "
    "all the others to the unlabeled split",
    "images": "a folder of images, none annotated: all in the unlabeled split (a pool to pre-train on and select from)",
}


def add_prepare_flags(p: argparse.ArgumentParser, kind: str | None = None) -> None:
    """``prepare``'s flags: every kind's (``kind=None``), or those ``kind`` reads."""

    def on(*kinds: str) -> bool:
        return kind is None or kind in kinds

    labeled = ("ceph", "hand", "chest", "custom")
    p.add_argument(
        "--root", required=True, help="the folder holding the dataset in its public layout (or your images)"
    )
    p.add_argument("--out", required=True, help="the prepared dataset folder to write (replaced atomically)")
    p.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="side the images are stored at; models whose size divides it see exactly the pipeline's pixels",
    )
    if on("ceph"):
        p.add_argument("--annotator", default="mean", choices=["mean", "senior", "junior"], help="ceph ground truth")
    if on("hand"):
        p.add_argument("--wrist-indices", default="0,4", help="hand: 0-based wrist landmarks of the 50 mm convention")
    if on("chest"):
        p.add_argument(
            "--chest-split",
            default="paper",
            choices=["paper", "code"],
            help="chest: the paper's 195/34/rest, or its code's, which first drops 9 listed images",
        )
    if on("custom"):
        p.add_argument(
            "--annotations",
            help="custom: the landmark file: our CSV or JSON, or a CVAT XML, Label Studio JSON "
            "(annotations, or predictions a person accepted), COCO Keypoints JSON export, or a labelme folder (detected by content)",
        )
        p.add_argument(
            "--landmarks",
            help="custom: landmark names, in order (comma-separated, or a text file with one per line); "
            "default: the annotation file's",
        )
        p.add_argument(
            "--coco-origin",
            choices=["corner", "center"],
            help="custom, COCO files: where pixel (0, 0) is (tools differ)",
        )
        p.add_argument(
            "--accept-predictions",
            action="store_true",
            help="custom, Label Studio files: take tasks' predictions (pre-annotations) that no one submitted as labels",
        )
        p.add_argument(
            "--drop-incomplete",
            action="store_true",
            help="custom: a partly annotated image joins the unlabeled pool (listed) instead of being an error",
        )
    if on(*labeled):
        p.add_argument(
            "--split-counts",
            help="train,validation[,test] image counts over sorted ids (default: the paper's; custom: "
            "the file's split column when it has one)",
        )
    if on("images"):
        p.add_argument(
            "--holdout",
            help="images: keep images out of the pool from the start, to test on once annotated: a number "
            "(drawn at random with --seed) or a file listing them; select adds them to its template as split test",
        )
        p.add_argument("--seed", type=int, default=0, help="images: the random draw of --holdout N")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or malformed files (listed in the report)")
    if on(*labeled):
        p.add_argument(
            "--allow-empty-splits", action="store_true", help="keep going when a split comes out empty (it is omitted)"
        )
        p.add_argument(
            "--outside-image",
            default="error",
            choices=["error", "keep", "clamp"],
            help="a landmark outside its image: refuse (default), keep it, or clamp it to the image (both listed in the report)",
        )
    p.add_argument("--push-to-hub", metavar="REPO", help="also push the DatasetDict to the Hub as parquet")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create a private dataset repo")


def prepare_help(kind: str) -> str:
    """``hf-landmark prepare KIND --help``: what KIND reads and only the flags it takes."""
    p = argparse.ArgumentParser(
        prog=f"hf-landmark prepare {kind}", description=PREPARE_KINDS[kind], allow_abbrev=False
    )
    add_prepare_flags(p, kind)
    return p.format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-landmark",
        description="Few-shot x-ray landmark detection with DDPM pre-training. "
        "--debug (first) or HF_LANDMARK_DEBUG=1 shows tracebacks of user errors.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "synth", allow_abbrev=False, help="write a synthetic x-ray landmark dataset in the ISBI 2015 layout"
    )
    p.add_argument("--out", required=True, help="folder to write RawImage/ and AnnotationsByMD/ into")
    p.add_argument("--num-images", type=int, default=60, help="how many cephalograms (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same images")
    p.add_argument(
        "--format", default="bmp", choices=["bmp", "png", "jpg"], help="image file format (the ISBI originals are bmp)"
    )
    p.add_argument(
        "--variability",
        type=float,
        default=1.0,
        help="spread of shape, pose and exposure (1: mild; the demo uses 2.5)",
    )

    p = sub.add_parser(
        "prepare",
        allow_abbrev=False,
        help="convert a benchmark's public layout (or custom data) into a prepared dataset; "
        "hf-landmark prepare KIND --help lists KIND's flags",
    )
    p.add_argument(
        "kind",
        choices=DATASET_KINDS,
        help="the benchmark whose public layout --root holds; custom (your images and an "
        "annotation file; images without annotations form the unlabeled split); or images (a folder, all unlabeled)",
    )
    add_prepare_flags(p)
    for name, (_, text) in TRAINING.items():
        sub.add_parser(name, help=text + "; see hf-landmark " + name + " --help", add_help=False)

    p = sub.add_parser(
        "predict", allow_abbrev=False, help="predict landmarks on images (PNG/JPEG/BMP/TIFF, DICOM with pydicom)"
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="detector folder or Hub repo")
    p.add_argument(
        "--output", default="predictions.json", help="JSON with every image's landmarks and every failed file"
    )
    p.add_argument("--csv", help="also write one row per landmark here")
    p.add_argument(
        "--format",
        choices=ANNOTATION_FORMATS,
        help="also write the predictions for an annotation tool, to correct them "
        "there and read them back with prepare custom: csv/json (ours), cvat (XML), coco, labelstudio (pre-annotations), "
        "labelme (a folder of JSON)",
    )
    p.add_argument(
        "--format-output", help="where --format writes (default: predictions.<ext>, or predictions_labelme/)"
    )
    p.add_argument(
        "--image-root",
        help="with --format: the folder image names are relative to (default: the common folder of the inputs)",
    )
    p.add_argument("--coco-origin", choices=["corner", "center"], help="with --format coco: where pixel (0, 0) is")
    p.add_argument("--overlay-dir", help="write one overlay PNG per image here (original size; numbers in legend.txt)")
    p.add_argument("--decoder", default=None, choices=DECODER_NAMES, help="default: the model's (centroid)")
    p.add_argument(
        "--skip-bad", action="store_true", help="exit 0 even if some files could not be read (they are reported)"
    )
    p.add_argument(
        "--no-refine", action="store_true", help="the first stage only, for a detector with a refinement stage"
    )

    p = sub.add_parser(
        "match",
        allow_abbrev=False,
        help="one annotated image, no training: find its landmarks in other images with a pre-trained DDPM's features",
    )
    p.add_argument("--template", required=True, help="the annotated image")
    p.add_argument(
        "--landmarks",
        required=True,
        help="its annotation file (our CSV/JSON or a tool's export; its row for the template)",
    )
    p.add_argument("--images", nargs="+", required=True, help="image files or folders to find the landmarks in")
    p.add_argument(
        "--features", required=True, help="a pre-trained DDPM checkpoint (hf-landmark pretrain) of such images"
    )
    p.add_argument(
        "--output",
        default="matches.json",
        help="JSON with every image's matches (cycle_error, consistent) and failed files",
    )
    p.add_argument(
        "--cycle-radius",
        type=float,
        default=1.5,
        help="a match is consistent if it maps back within this many feature "
        "pixels of the template's landmark, at every scale (default 1.5)",
    )
    p.add_argument(
        "--format", choices=ANNOTATION_FORMATS, help="also write the matches for correction (as predict --format)"
    )
    p.add_argument("--format-output", help="where --format writes")
    p.add_argument("--image-root", help="with --format: the folder image names are relative to")
    p.add_argument(
        "--coco-origin", choices=["corner", "center"], help="COCO files (read or written): where pixel (0, 0) is"
    )
    p.add_argument("--skip-bad", action="store_true", help="exit 0 even if some files could not be read")

    p = sub.add_parser("select", allow_abbrev=False, help="choose which images of the unlabeled pool to annotate")
    p.add_argument(
        "--dataset",
        required=True,
        help="prepared dataset (prepare images or prepare custom) whose pool to choose from",
    )
    p.add_argument("--num", type=int, required=True, help="how many images to choose")
    p.add_argument(
        "--strategy",
        default="coverage",
        choices=["coverage", "first", "random", "uncertainty"],
        help="coverage (default): the set that best represents the pool; first: the first sorted ids; random; "
        "uncertainty: a fine-tuned detector's least confident images",
    )
    p.add_argument(
        "--features", help="coverage: a pre-trained DDPM checkpoint (hf-landmark pretrain) or a detector folder"
    )
    p.add_argument("--model", help="uncertainty: the fine-tuned detector")
    p.add_argument(
        "--split",
        default="unlabeled",
        help="the pool: unlabeled (default), or train with its labels hidden (experiments)",
    )
    p.add_argument(
        "--landmarks",
        help="landmark names for the template (comma-separated or a file); default: the model's or the dataset's",
    )
    p.add_argument("--seed", type=int, default=0, help="random: the seed")
    p.add_argument(
        "--spacing",
        help="mm per original pixel of these images (one number, or SX,SY), written in the template's "
        "spacing columns, for millimetres after training (PNG and JPEG carry none; DICOM's own is used anyway)",
    )
    p.add_argument(
        "--validation",
        type=int,
        help="how many of the chosen images validate (the template's split column; the "
        "others train): default a quarter, at least 1 from 3 images",
    )
    p.add_argument(
        "--out",
        default="choose.csv",
        help="the annotation template (the CSV prepare custom reads); a contact sheet PNG is written beside it",
    )

    p = sub.add_parser(
        "annotate", allow_abbrev=False, help="annotate landmarks in the browser (and review a model's predictions)"
    )
    p.add_argument(
        "--images", required=True, help="the image folder (every image under it), or a prepared dataset (its images)"
    )
    p.add_argument(
        "--out",
        required=True,
        help="the annotation CSV prepare custom reads; saved at every point, continued if it "
        "exists (select's template: its rows are the images to annotate, in order)",
    )
    p.add_argument(
        "--landmarks",
        help="landmark names, in order (comma-separated, or a file with one per line); "
        "default: the CSV's, the model's or the dataset's",
    )
    p.add_argument(
        "--model",
        help="a detector (folder or Hub repo): each image starts from its predictions, and the Review tab "
        "ranks the images worst first",
    )
    p.add_argument(
        "--features",
        help="without --model: a pre-trained DDPM (hf-landmark pretrain); once one image is finished, "
        "the others start from its landmarks matched into them (hf-landmark match)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")

    p = sub.add_parser(
        "card", allow_abbrev=False, help="write MODEL_DIR/README.md, a model card filled from metrics.json"
    )
    p.add_argument("model_dir", help="the fine-tuned detector folder (OUT/model of hf-landmark finetune)")
    p.add_argument("--metrics", required=True, help="metrics.json from hf-landmark evaluate")
    p.add_argument("--repo-id", help="the Hub name shown in the card")

    p = sub.add_parser("push", allow_abbrev=False, help="upload a detector or DDPM folder to the Hub")
    p.add_argument(
        "model_dir",
        help="a detector folder (OUT/model) or a pre-training checkpoint-<step> (state/ is never uploaded)",
    )
    p.add_argument("--repo-id", required=True, help="the Hub repo, org/name")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--message", default="Upload with hf-landmark", help="the commit message")
    p.add_argument(
        "--space",
        action="store_true",
        help="the folder is a Space (hf-landmark space): create and upload a Gradio Space",
    )

    p = sub.add_parser(
        "space",
        allow_abbrev=False,
        help="write a Hugging Face Space folder: the web page (Detect, and Annotate a "
        "visitor's own uploads) with this package as a wheel its requirements install",
    )
    p.add_argument("--out", required=True, help="the Space folder to write (replaced whole)")
    p.add_argument("--model", help="the default model repo (also set HF_LANDMARK_MODEL in the Space's settings)")

    p = sub.add_parser(
        "ensemble",
        allow_abbrev=False,
        help="save detectors fine-tuned on the same labels (e.g. with other seeds) as one ensemble that averages "
        "their landmarks, calibrated on the dataset's validation split (finetune --ensemble K does this itself)",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="two or more detector folders (OUT/model of finetune)")
    p.add_argument("--dataset", required=True, help="the prepared dataset they were fine-tuned on")
    p.add_argument("--output", required=True, help="the ensemble's detector folder to write")
    p.add_argument(
        "--offset-correction",
        type=float,
        help="the landmark offsets' shrinkage in images (0: none; default: the first member's recipe's)",
    )
    p.add_argument(
        "--shape-fusion",
        type=float,
        help="the shape fusion's weight (0: none; default: the first member's; 0 for members trained without it)",
    )

    p = sub.add_parser(
        "calibrate",
        allow_abbrev=False,
        help="re-calibrate a detector's error radii on labeled images from the site it will run on "
        "(images that chose nothing: not its training labels); rewrites its processor config in place",
    )
    p.add_argument("--model", required=True, help="detector folder (rewritten in place)")
    p.add_argument("--dataset", required=True, help="prepared dataset folder (hf-landmark prepare) or Hub dataset id")
    p.add_argument("--split", default="test", help="the labeled split to calibrate on (default test)")
    p.add_argument("--alpha", type=float, help="miscoverage of the radii (default: the model's, 0.1: 90 %%)")

    p = sub.add_parser("evaluate", allow_abbrev=False, help="evaluate a detector on a prepared split")
    p.add_argument("--model", required=True, help="detector folder or Hub repo")
    p.add_argument("--dataset", required=True, help="prepared dataset folder (hf-landmark prepare) or Hub dataset id")
    p.add_argument("--split", default="test", help="split to evaluate: train, validation or test (default test)")
    p.add_argument(
        "--output",
        default="metrics.json",
        help="metrics JSON; a Markdown table and a cumulative-error plot are written beside it",
    )
    p.add_argument("--decoder", default=None, choices=DECODER_NAMES, help="default: the model's (centroid)")
    p.add_argument("--paper-compatible", action="store_true", help="reproduce the paper code's evaluation")
    p.add_argument("--thresholds", help="SDR thresholds, comma-separated (default: the dataset's)")
    p.add_argument("--overlay-dir", help="write one overlay PNG per image here (original size; numbers in legend.txt)")
    p.add_argument("--image-dir", help="the original images, for overlays on them rather than on the prepared copy")
    p.add_argument(
        "--exclude-training-labels",
        action="store_true",
        help="leave out the images the model was fine-tuned on (from its hf_landmark_training.json)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument(
        "--no-refine",
        action="store_true",
        help="evaluate the first stage only (by default a two-stage detector reports both stages)",
    )
    p.add_argument(
        "--no-shape-check",
        action="store_true",
        help="run a model that has a shape check without it (the same weights, for comparison)",
    )
    p.add_argument(
        "--no-refine-prior",
        action="store_true",
        help="read the refiner's maps without the refinement prior (the same weights, for comparison)",
    )
    p.add_argument(
        "--no-offset-correction",
        action="store_true",
        help="report the landmarks as the maps place them, without the per-landmark offsets measured on validation",
    )
    p.add_argument(
        "--no-shape-fusion",
        action="store_true",
        help="report the landmarks without the shape fusion (the same weights, for comparison)",
    )
    return parser


def _run(argv: list[str]) -> int:
    if argv[:1] == ["prepare"] and len(argv) > 2 and argv[1] in DATASET_KINDS and {"-h", "--help"} & set(argv[2:]):
        print(prepare_help(argv[1]))
        return 0
    if argv and argv[0] in TRAINING:
        import importlib

        # Each training file's main() parses its own flags and calls its library function.
        importlib.import_module(f"hf_landmark.training.{TRAINING[argv[0]][0]}").main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    from hf_landmark.cli import run_command

    return run_command(args)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("HF_LANDMARK_DEBUG", "") not in ("", "0")
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    try:
        return _run(argv)
    except Exception as err:
        from hf_landmark.errors import UserInputError

        if debug or not isinstance(err, UserInputError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
