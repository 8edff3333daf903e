"""``hf-landmark evaluate`` and ``predict``: a detector on a prepared split or on images (dispatched by :mod:`hf_landmark.cli`)."""

from __future__ import annotations

import math
import os
import sys

from .errors import UserInputError


def cmd_evaluate(args) -> int:

    from .calibration import correction_stage
    from .data import load_prepared, load_tensors
    from .data.prepared import require_split
    from .evaluation import (
        compute_metrics,
        markdown_table,
        predict_split,
        save_cumulative_error_plot,
        save_overlays,
        save_reliability_plot,
        uncertainty_metrics,
    )
    from .fileio import write_json_atomic, write_text_atomic
    from .pipeline_landmark import load_detector

    split = require_split(load_prepared(args.dataset), args.split, args.dataset)
    model, processor = load_detector(args.model)
    _switch_off(args, model, processor)
    data = load_tensors(split, processor.size, processor.resample, 0 if args.no_refine else processor.refine_size)
    if args.exclude_training_labels:
        data = without_training_labels(data, args)
    pred = predict_split(
        model, processor, data, args.decoder, batch_size=args.batch_size, refine=False if args.no_refine else None
    )
    thresholds = None
    if args.thresholds:
        try:
            thresholds = [float(t) for t in args.thresholds.split(",")]
        except ValueError as err:
            raise UserInputError(f"--thresholds: expected comma-separated numbers, got {args.thresholds!r}") from err
    mode = "paper" if args.paper_compatible else "physical"
    metrics = compute_metrics(pred["coords"], data, model.config, mode, thresholds)
    if data.fine_images is not None:
        metrics["first_stage"] = compute_metrics(pred["first_stage_coords"], data, model.config, mode, thresholds)
        metrics["first_stage"].pop("errors")
    uncertainty = uncertainty_metrics(pred, data, processor, model.config)
    metrics.update(
        model=os.fspath(args.model),
        dataset=os.fspath(args.dataset),
        split=args.split,
        decoder=args.decoder or processor.decoder,
        mean_score=float(pred["scores"].mean()),
        uncertainty=uncertainty,
        shape_moved=int(pred["shape_moved"].sum()),
        # The shape fusion reads the stage it was calibrated on: --no-refine leaves a refined one off.
        shape_fusion=processor.fuses(correction_stage(model, data)),
        predictions={i: p.tolist() for i, p in zip(data.image_ids, pred["coords"])},
    )
    write_json_atomic(metrics, args.output)
    stem = os.path.splitext(args.output)[0]
    table = markdown_table(metrics, f"{args.model} on {args.dataset} ({args.split}, {mode})")
    write_text_atomic(table, stem + ".md")
    written = [
        args.output,
        stem + ".md",
        save_cumulative_error_plot(
            {os.path.basename(os.path.normpath(args.model)): metrics["errors"]}, metrics["unit"], stem + "_ced.png"
        ),
    ]
    if uncertainty.get("reliability"):
        written.append(
            save_reliability_plot(
                uncertainty["reliability"], stem + "_reliability.png", f"{args.split}, {len(data)} images"
            )
        )
    if args.overlay_dir:
        save_overlays(
            data, pred["coords"], args.overlay_dir, image_dir=args.image_dir, radii=processor.radii(pred["spread"])
        )
    print(table)
    print_evaluation(metrics, uncertainty, model.config, pred["coords"].shape[:2])
    print("wrote " + ", ".join(written))
    return 0


def _switch_off(args, model, processor) -> None:
    """``evaluate``'s ``--no-*`` switches: the same weights without a post-processing step."""
    for detector in model.detectors():  # an ensemble's members each hold their own
        if args.no_shape_check:
            detector.config.set_shape_check(None, None)
        if args.no_refine_prior:
            detector.config.set_refine_prior(None)
    if args.no_offset_correction:
        processor.set_landmark_offsets(None)
    if args.no_shape_fusion:
        processor.set_shape_model(None)


def without_training_labels(data, args):
    """``data`` less the images the model was trained on (its training record names them)."""
    import json

    record = os.path.join(args.model, "hf_landmark_training.json")
    if not os.path.isfile(record):
        raise UserInputError(
            f"{args.model}: leaving out the images the model was fine-tuned on needs its training record "
            "hf_landmark_training.json"
        )
    with open(record, encoding="utf-8") as fh:
        labeled = set(json.load(fh)["labeled_image_ids"])
    data = data.subset([i for i, image_id in enumerate(data.image_ids) if image_id not in labeled])
    if len(data) == 0:
        raise UserInputError(
            f"{args.dataset}: every {args.split} image was a training label; nothing is left to evaluate"
        )
    return data


def cmd_calibrate(args) -> int:
    """Re-calibrate a detector's error radii on labeled images that chose nothing (the images it
    was fine-tuned on are left out), from the site it will run on; its processor config is
    rewritten in place, and the coverage before and after on those images printed."""
    from .data import load_prepared, load_tensors
    from .data.prepared import require_split
    from .evaluation import predict_split, prediction_errors, uncertainty_metrics
    from .fileio import atomic_file
    from .image_processing_landmark import PROCESSOR_FILE
    from .pipeline_landmark import load_detector

    if args.alpha is not None and not 0 < args.alpha < 1:
        raise UserInputError(f"--alpha: a miscoverage between 0 and 1 (0.1: radii at 90 %), got {args.alpha}")
    if not os.path.isfile(os.path.join(args.model, PROCESSOR_FILE)):
        raise UserInputError(
            f"{args.model}: not a detector folder ({PROCESSOR_FILE} missing); calibrate rewrites a local folder"
        )
    split = require_split(load_prepared(args.dataset), args.split, args.dataset)
    model, processor = load_detector(args.model)
    data = load_tensors(split, processor.size, processor.resample, processor.refine_size)
    data = without_training_labels(data, args)
    complete = data.landmarks.isfinite().all(-1).sum(0)  # per landmark, the images that have it
    if int(complete.min()) == 0:
        raise UserInputError(
            f"{args.dataset}: the {args.split} split has no labels to calibrate on (some landmark is never annotated)"
        )
    if args.alpha is not None:
        processor.alpha = args.alpha
    pred = predict_split(model, processor, data)
    before = uncertainty_metrics(pred, data, processor, model.config) if processor.calibration_scores else None
    processor.calibrate(pred["spread"], prediction_errors(pred, data, model.config)["errors_px"])
    processor.calibration_source = (
        f"{len(data)} images of {os.path.basename(os.path.normpath(args.dataset))} ({args.split})"
    )
    after = uncertainty_metrics(pred, data, processor, model.config)
    with atomic_file(os.path.join(args.model, PROCESSOR_FILE)) as tmp:
        processor.to_json_file(tmp)
    if before is not None and before.get("coverage") is not None:
        print(
            f"before: radii at {100 * before['radius_coverage']:.1f} % covered {100 * before['coverage']:.1f} % of these "
            f"images' landmarks (mean radius {before['mean_radius']:.2f} {before['unit']})"
        )
    print(describe_radii(after, len(model.config.landmark_names or []) or data.landmarks.shape[1]))
    print(f"calibrated the radii of {args.model} on {processor.calibration_source}")
    return 0


def print_evaluation(metrics: dict, uncertainty: dict, config, shape: tuple[int, int]) -> None:
    """The console summary of ``evaluate`` below its table; ``shape``: (images, landmarks) predicted."""
    num_images, num_landmarks = shape
    if "first_stage" in metrics:
        print(
            f"first stage: MRE {metrics['first_stage']['mre']:.3f} ± {metrics['first_stage']['mre_std']:.3f} {metrics['unit']}"
        )
    print(f"MRE {metrics['mre']:.3f} ± {metrics['mre_std']:.3f} {metrics['unit']} over {metrics['num_images']} images")
    if config.reference_shape is not None:
        print(
            f"shape check: {metrics['shape_moved']} of {num_images * num_landmarks} first-stage landmarks "
            "were read again near where the other landmarks put them"
        )
    if metrics.get("shape_fusion"):
        print(
            "shape fusion: each landmark weighed against where the image's other landmarks put it "
            "(--no-shape-fusion: without)"
        )
    if "radius_alpha" in uncertainty:
        print(describe_radii(uncertainty, len(config.landmark_names or []) or num_landmarks))
    if "flag_calibration_images" in uncertainty:
        print(
            f"low-confidence flag: {uncertainty['flagged_images']} of {num_images} images flagged; calibrated on "
            f"{uncertainty['flag_calibration_images']} images for an expected false-alarm rate of at most "
            f"{100 * uncertainty['flag_false_alarm_rate']:.1f} % on images like them"
        )
    elif uncertainty["flagged_images"]:
        print(
            f"{uncertainty['flagged_images']} of {num_images} images flagged low_confidence (unlike the training images, or an unlikely shape)"
        )


def describe_radii(uncertainty: dict, num_landmarks: int) -> str:
    """One line on the calibrated radii: the level they hold at (and why, when the calibration
    images were too few for the requested one), their coverage and size where they exist."""
    n, level = uncertainty["calibration_images"], 100 * uncertainty["radius_coverage"]
    asked = 100 * (1 - uncertainty["alpha"])
    text = f"error radii at {level:.1f} % ({n} calibration images"
    if uncertainty["radius_alpha"] > uncertainty["alpha"] + 1e-12:
        needed = math.ceil(1 / uncertainty["alpha"] - 1 - 1e-9)
        text += f"; {asked:.0f} % needs at least {needed}"
    text += ")"
    k = uncertainty["landmarks_with_radius"]
    if not k:
        return text + ": no landmark has a finite radius"
    text += (
        f": coverage {100 * uncertainty['coverage']:.1f} %, mean radius {uncertainty['mean_radius']:.2f} {uncertainty['unit']} "
        f"over {k} of {num_landmarks} landmarks"
    )
    if k < num_landmarks:
        text += f" ({num_landmarks - k} have no radius: too few calibration images)"
    return text + (
        f"; Spearman(score, error) {uncertainty['spearman_score_error']:+.2f}, "
        f"Spearman(spread, error) {uncertainty['spearman_spread_error']:+.2f}"
    )


def cmd_predict(args) -> int:
    import csv

    from tqdm.auto import tqdm
    from transformers import pipeline

    from .fileio import atomic_file, write_json_atomic, write_text_atomic
    from .pipeline_landmark import load_detector
    from .preprocessing import ImageReadError
    from .visualization import legend_lines

    if args.format == "coco" and not args.coco_origin:
        raise UserInputError("--coco-origin: COCO does not say where pixel (0, 0) is; pass corner or center")
    files = image_inputs(args.inputs)
    model, processor = load_detector(args.model)
    pipe = pipeline("landmark-detection", model=model, image_processor=processor)
    results, errors = {}, {}
    for path in tqdm(files, desc="predicting", disable=len(files) < 2):
        try:
            results[str(path)] = pipe(str(path), decoder=args.decoder, refine=False if args.no_refine else None)
        except ImageReadError as err:  # one bad file never loses the others' results
            errors[str(path)] = str(err)
            print(f"error: {err}", file=sys.stderr)
            continue
        if args.overlay_dir:
            with atomic_file(os.path.join(args.overlay_dir, path.stem + ".png")) as tmp:
                pipe.draw_overlay(str(path), results[str(path)]).save(tmp)
    if args.overlay_dir and results:
        write_text_atomic(
            "\n".join(legend_lines(processor.landmark_names or [])) + "\n",
            os.path.join(args.overlay_dir, "legend.txt"),
        )
    flags = {image: preds[0]["flag"] for image, preds in results.items() if preds}
    write_json_atomic(
        {"model": os.fspath(args.model), "predictions": results, "flags": flags, "errors": errors}, args.output
    )
    if args.csv:
        with atomic_file(args.csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            columns = [
                "label",
                "x",
                "y",
                "score",
                "radius",
                "x_mm",
                "y_mm",
                "radius_mm",
                "spacing_assumed",
                "flag",
                "shape_moved",
            ]
            writer.writerow(["image", "number", *columns])
            for image, preds in results.items():
                for i, p in enumerate(preds):
                    writer.writerow([image, i + 1, *(p.get(c, "") for c in columns)])
    if args.format:
        written = write_predictions_for_tool(args, results)
        if args.format == "labelstudio":
            from .data.formats import labelstudio_config_path

            print(
                f"wrote the predictions as Label Studio tasks to {written} and their labeling config to "
                f"{labelstudio_config_path(written)}: paste the config into the project (Settings > Labeling Interface > "
                "Code), import the tasks, correct and submit each, export JSON, then prepare custom --annotations <export>"
            )
        else:
            print(
                f"wrote the predictions as {args.format} to {written}; correct them in the tool, then prepare custom --annotations {written}"
            )
    low = sorted(image for image, flag in flags.items() if flag != "ok")
    if low:
        print(
            f"{len(low)} image(s) flagged low_confidence (unlike the training images, or an unlikely shape; check them by hand): "
            + ", ".join(low[:10])
        )
    print(f"{len(results)} images predicted, {len(errors)} failed; wrote {args.output}")
    return 1 if errors and not args.skip_bad else 0


def image_inputs(inputs) -> list:
    """The image files named, and those directly in the folders named (sorted)."""
    from pathlib import Path

    from .preprocessing import IMAGE_EXTENSIONS

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise UserInputError(f"{path}: no such file or folder")
        files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if path.is_dir() else [path]
    if not files:
        raise UserInputError(f"{', '.join(map(str, inputs))}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return files


def write_predictions_for_tool(args, results: dict) -> str:
    """``predict --format``: the predictions as an annotation file of that tool (or ours),
    image names relative to ``--image-root``; returns where it was written."""
    from pathlib import Path

    from .data.formats import write_annotations
    from .preprocessing import image_size

    paths = [Path(p).resolve() for p in results]
    root = (
        Path(args.image_root).resolve()
        if args.image_root
        else Path(os.path.commonpath([p.parent for p in paths]))
        if paths
        else Path(".")
    )
    ext = {"csv": ".csv", "cvat": ".xml", "labelme": ""}.get(args.format, ".json")
    out = args.format_output or (
        os.path.splitext(args.output)[0] + ("_labelme" if args.format == "labelme" else "") + ext
    )
    items = []
    for path, preds in zip(paths, results.values()):
        try:
            name = path.relative_to(root).as_posix()
        except ValueError as err:
            raise UserInputError(f"--image-root: {path} is not under {root}") from err
        w, h = image_size(path)
        items.append(
            {
                "file": name,
                "width": int(w),
                "height": int(h),
                "landmarks": [(p["x"], p["y"]) for p in preds],
                "score": float(sum(p["score"] for p in preds) / max(len(preds), 1)),
            }
        )
    names = [p["label"] for p in next(iter(results.values()), [])]
    write_annotations(args.format, items, names, out, image_root=root, coco_origin=args.coco_origin)
    return out
