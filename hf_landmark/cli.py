"""The work of each ``hf-landmark`` command (its parser is :mod:`hf_landmark_cli`).

A user's mistake (a bad file, a missing folder, a wrong value) is printed as one line,
``error: <file or argument>: <what is wrong and what to do>``, with exit code 2;
``hf-landmark --debug ...`` or ``HF_LANDMARK_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os

from .cli_annotate import cmd_annotate, cmd_match, cmd_select
from .cli_predict import cmd_calibrate, cmd_evaluate, cmd_predict
from .errors import UserInputError


def cmd_ensemble(args) -> int:
    from .ensembles import save_ensemble

    if len(args.models) < 2:
        raise UserInputError(f"ensemble: two or more detector folders are needed, got {len(args.models)}")
    if os.path.abspath(args.output) in {os.path.abspath(m) for m in args.models}:
        raise UserInputError(f"--output: {args.output} is one of the members; write the ensemble to a new folder")
    if args.offset_correction is not None and not args.offset_correction >= 0:
        raise UserInputError(
            f"--offset-correction: a number of images of 0 (off) or more, got {args.offset_correction}"
        )
    if args.shape_fusion is not None and not args.shape_fusion >= 0:
        raise UserInputError(f"--shape-fusion: a weight of 0 (off) or more, got {args.shape_fusion}")
    built = save_ensemble(args.models, args.output, args.dataset, args.offset_correction, args.shape_fusion)
    each = ", ".join(f"{m['val_mre']:.3f}" for m in built["members"]["each"])
    cal = built["calibration"]
    print(
        f"wrote an ensemble of {len(args.models)} detectors to {args.output}: validation MRE {built['val_mre']:.3f} "
        f"{built['unit']} (members {each}); radii at {100 * cal['radius_coverage']:.1f} % calibrated on "
        f"{cal['calibration_images']} validation images"
    )
    if cal["offsets"]:
        loo = cal["offsets"]["leave_one_out"]
        print(
            f"landmark offsets: validation MRE {loo['mre_without']:.3f} -> {loo['mre_with']:.3f} {loo['unit']}, "
            "each image corrected by the offsets of the others"
        )
    if cal["shape_fusion"]:
        held = cal["shape_fusion"]["held_out"]
        print(
            f"shape fusion: validation MRE {held['mre_without']:.3f} -> {held['mre_with']:.3f} {held['unit']}, "
            "each image fused by a shape model fitted without its fold"
        )
    return 0


def cmd_synth(args) -> int:
    from .data.synthetic import write_synthetic_isbi

    if args.num_images < 1:
        raise UserInputError(f"--num-images: must be at least 1, got {args.num_images}")
    if not args.variability >= 0:
        raise UserInputError(f"--variability: must be a number >= 0, got {args.variability}")
    out = write_synthetic_isbi(
        args.out, num_images=args.num_images, seed=args.seed, image_format=args.format, variability=args.variability
    )
    print(f"wrote {args.num_images} synthetic cephalograms in the ISBI 2015 layout to {out}")
    return 0


def cmd_prepare(args) -> int:
    from .data import prepare
    from .data.formats import read_landmark_names
    from .training_utils import parse_int_list

    kwargs = {}
    if args.kind == "ceph":
        kwargs["annotator"] = args.annotator
    if args.kind == "hand":
        kwargs["wrist_indices"] = tuple(parse_int_list(args.wrist_indices))
    if args.kind == "chest":
        kwargs["split"] = args.chest_split
    if args.kind == "custom":
        if not args.annotations:
            raise UserInputError(
                "--annotations: prepare custom needs the landmark file (CSV, JSON, a tool's export); "
                "for a folder without annotations use prepare images"
            )
        kwargs.update(
            annotations=args.annotations,
            drop_incomplete=args.drop_incomplete,
            coco_origin=args.coco_origin,
            accept_predictions=args.accept_predictions,
            landmarks=read_landmark_names(args.landmarks) if args.landmarks else None,
        )
    elif args.annotations or args.landmarks or args.drop_incomplete or args.coco_origin:
        raise UserInputError(
            f"--annotations, --landmarks, --drop-incomplete and --coco-origin are for prepare custom, not {args.kind}"
        )
    if args.split_counts and args.kind == "images":
        raise UserInputError("--split-counts: prepare images makes only an unlabeled split")
    if args.holdout and args.kind != "images":
        raise UserInputError(
            "--holdout is for prepare images (prepare custom keeps the rows whose split is test out of the pool)"
        )
    if args.kind == "images":
        kwargs.update(holdout=args.holdout, seed=args.seed)
    if args.split_counts:
        try:
            counts = [int(v) if v.strip() not in ("", "rest") else None for v in args.split_counts.split(",")]
        except ValueError as err:
            raise UserInputError(
                f"--split-counts: expected TRAIN,VAL[,TEST] integers (or 'rest'), got {args.split_counts!r}"
            ) from err
        kwargs["split_counts"] = tuple(counts + [None] * (3 - len(counts)))
    dd, report = prepare(
        args.kind,
        args.root,
        args.out,
        image_size=args.image_size,
        skip_bad=args.skip_bad,
        allow_empty_splits=args.allow_empty_splits,
        outside_image=args.outside_image,
        **kwargs,
    )
    print(report.summary())
    print(f"saved to {args.out}")
    if args.push_to_hub:
        dd.push_to_hub(args.push_to_hub, private=args.private)
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


def cmd_card(args) -> int:
    import json

    from transformers import AutoConfig

    from .cards import detector_card, write_card

    try:
        config = AutoConfig.from_pretrained(args.model_dir)
    except OSError as err:
        raise UserInputError(f"{args.model_dir}: not a detector folder ({err})") from err
    try:
        with open(args.metrics, encoding="utf-8") as fh:
            metrics = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(
            f"{args.metrics}: cannot read the metrics file ({err}); write one with hf-landmark evaluate"
        ) from err
    record_file = os.path.join(args.model_dir, "hf_landmark_training.json")
    record = None
    if os.path.isfile(record_file):
        with open(record_file, encoding="utf-8") as fh:
            record = json.load(fh)
    calibration = None
    if os.path.isfile(os.path.join(args.model_dir, "preprocessor_config.json")):
        from .image_processing_landmark import LandmarkImageProcessor

        processor = LandmarkImageProcessor.from_pretrained(args.model_dir)
        if processor.calibration_scores:
            calibration = {
                "alpha": processor.alpha,
                "images": processor.calibration_size,
                "source": processor.calibration_source,
                "level": 1.0 - processor.radius_alpha,
                "flags": processor.ood_threshold is not None,
                "flag_images": processor.flag_calibration_images,
                "flag_false_alarm_rate": processor.flag_false_alarm_rate,
                "shape_fusion": processor.shape_model_mean is not None,
            }
    repo_id = args.repo_id or os.path.basename(os.path.normpath(args.model_dir))
    path = write_card(
        detector_card(config, metrics, repo_id, training=record, calibration=calibration), args.model_dir
    )
    print(f"wrote {path}")
    return 0


def cmd_push(args) -> int:
    from huggingface_hub import HfApi

    if not os.path.isdir(args.model_dir):
        raise UserInputError(f"{args.model_dir}: no such folder")
    api = HfApi()
    kind = "space" if args.space else "model"
    if args.space and not os.path.isfile(os.path.join(args.model_dir, "app.py")):
        raise UserInputError(
            f"{args.model_dir}: not a Space folder (no app.py); write one with hf-landmark space --out DIR"
        )
    api.create_repo(
        args.repo_id, private=args.private, exist_ok=True, repo_type=kind, space_sdk="gradio" if args.space else None
    )
    # A pre-training checkpoint's state/ holds Accelerate's pickles: never published.
    api.upload_folder(
        folder_path=args.model_dir,
        repo_id=args.repo_id,
        repo_type=kind,
        commit_message=args.message,
        ignore_patterns=["state/*", ".*", "logs/*"],
    )
    print(f"pushed {args.model_dir} to https://huggingface.co/{'spaces/' if args.space else ''}{args.repo_id}")
    return 0


def cmd_space(args) -> int:
    from .space import build_space

    written = build_space(args.out, args.model)
    print(
        f"wrote the Space to {args.out} ({len(written)} files, the package as {next(f for f in written if f.endswith('.whl'))}); "
        f"upload it with hf-landmark push {args.out} --repo-id ORG/NAME --space"
    )
    return 0


#: Each subcommand's handler, for the parser (:mod:`hf_landmark_cli`) to dispatch to; the training
#: commands run their own files' ``main``.
COMMANDS = {
    "synth": cmd_synth,
    "prepare": cmd_prepare,
    "evaluate": cmd_evaluate,
    "calibrate": cmd_calibrate,
    "ensemble": cmd_ensemble,
    "predict": cmd_predict,
    "match": cmd_match,
    "select": cmd_select,
    "annotate": cmd_annotate,
    "card": cmd_card,
    "push": cmd_push,
    "space": cmd_space,
}


def run_command(args) -> int:
    """Run the parsed command ``args.command``."""
    return int(COMMANDS[args.command](args) or 0)
