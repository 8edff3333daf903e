"""The work of each ``hf-landmark`` command (its parser is :mod:`hf_landmark_cli`).

A user's mistake (a bad file, a missing folder, a wrong value) is printed as one line,
``error: <file or argument>: <what is wrong and what to do>``, with exit code 2;
``hf-landmark --debug ...`` or ``HF_LANDMARK_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import math
import os
import sys

from .errors import UserInputError


def _cmd_synth(args) -> int:
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


def _cmd_prepare(args) -> int:
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


def _cmd_evaluate(args) -> int:
    import json

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
    if args.no_shape_check:
        model.config.set_shape_check(None, None)
    if args.no_refine_prior:
        model.config.set_refine_prior(None)
    if args.no_offset_correction:
        processor.set_landmark_offsets(None)
    data = load_tensors(split, processor.size, processor.resample, 0 if args.no_refine else processor.refine_size)
    if args.exclude_training_labels:
        record = os.path.join(args.model, "hf_landmark_training.json")
        if not os.path.isfile(record):
            raise UserInputError(
                f"{args.model}: --exclude-training-labels needs the training record hf_landmark_training.json"
            )
        with open(record, encoding="utf-8") as fh:
            labeled = set(json.load(fh)["labeled_image_ids"])
        data = data.subset([i for i, image_id in enumerate(data.image_ids) if image_id not in labeled])
        if len(data) == 0:
            raise UserInputError(
                f"{args.dataset}: every {args.split} image was a training label; nothing is left to evaluate"
            )
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
    if "first_stage" in metrics:
        print(
            f"first stage: MRE {metrics['first_stage']['mre']:.3f} ± {metrics['first_stage']['mre_std']:.3f} {metrics['unit']}"
        )
    print(f"MRE {metrics['mre']:.3f} ± {metrics['mre_std']:.3f} {metrics['unit']} over {metrics['num_images']} images")
    if model.config.reference_shape is not None:
        print(
            f"shape check: {metrics['shape_moved']} of {pred['coords'].shape[0] * pred['coords'].shape[1]} first-stage landmarks "
            "were read again near where the other landmarks put them"
        )
    if "radius_alpha" in uncertainty:
        print(describe_radii(uncertainty, len(model.config.landmark_names or []) or pred["coords"].shape[1]))
    if "flag_calibration_images" in uncertainty:
        print(
            f"low-confidence flag: {uncertainty['flagged_images']} of {len(data)} images flagged; calibrated on "
            f"{uncertainty['flag_calibration_images']} images for an expected false-alarm rate of at most "
            f"{100 * uncertainty['flag_false_alarm_rate']:.1f} % on images like them"
        )
    elif uncertainty["flagged_images"]:
        print(
            f"{uncertainty['flagged_images']} of {len(data)} images flagged low_confidence (unlike the training images)"
        )
    print("wrote " + ", ".join(written))
    return 0


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


def _cmd_predict(args) -> int:
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
            f"{len(low)} image(s) flagged low_confidence (unlike the training images; check them by hand): "
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


def _cmd_match(args) -> int:
    from pathlib import Path

    import numpy as np
    from tqdm.auto import tqdm

    from .data.formats import read_annotation_file
    from .errors import resolve_folder_or_repo
    from .fileio import write_json_atomic
    from .matching import FeatureExtractor, match_images
    from .preprocessing import ImageReadError, load_image

    if args.format == "coco" and not args.coco_origin:
        raise UserInputError("--coco-origin: COCO does not say where pixel (0, 0) is; pass corner or center")
    template = Path(args.template)
    if not template.is_file():
        raise UserInputError(f"--template {template}: no such image")
    entries, names = read_annotation_file(Path(args.landmarks), root=template.parent, coco_origin=args.coco_origin)
    annotated = [e for e in entries if e.landmarks is not None and np.isfinite(e.landmarks).all()]
    entry = next((e for e in annotated if Path(e.file).name == template.name), None) or (
        annotated[0] if len(annotated) == 1 else None
    )
    if entry is None:
        raise UserInputError(
            f"--landmarks {args.landmarks}: no complete row for {template.name} (and not exactly one annotated image)"
        )
    files = image_inputs(args.images)
    features = resolve_folder_or_repo(args.features, "--features", "pre-trained DDPM")
    try:
        extractor = FeatureExtractor.from_ddpm(features)
    except OSError as err:
        raise UserInputError(f"--features {args.features}: not a pre-trained DDPM checkpoint ({err})") from err
    template01 = load_image(str(template))[0]
    results, errors = {}, {}
    for path in tqdm(files, desc="matching", disable=len(files) < 2):
        try:
            target = load_image(str(path))[0]
        except ImageReadError as err:
            errors[str(path)] = str(err)
            print(f"error: {err}", file=sys.stderr)
            continue
        m = match_images(extractor, template01, entry.landmarks, [target], cycle_radius=args.cycle_radius)[0]
        results[str(path)] = [
            {
                "label": n,
                "x": float(x),
                "y": float(y),
                "score": float(s),
                "cycle_error": float(c),
                "consistent": bool(ok),
            }
            for n, (x, y), s, c, ok in zip(names, m["xy"], m["similarity"], m["cycle_error"], m["consistent"])
        ]
    consistent = [p["consistent"] for preds in results.values() for p in preds]
    write_json_atomic(
        {"template": str(template), "features": os.fspath(args.features), "predictions": results, "errors": errors},
        args.output,
    )
    if args.format:
        written = write_predictions_for_tool(args, results)
        print(
            f"wrote the matches as {args.format} to {written}; correct them (hf-landmark annotate, or the tool), then prepare custom"
        )
    share = 100 * sum(consistent) / max(len(consistent), 1)
    print(
        f"{len(results)} images matched to {template.name}, {len(errors)} failed; {share:.1f} % of the landmarks cycle-consistent "
        f"(the others' matches did not map back to the template's landmark: check them first); wrote {args.output}"
    )
    return 1 if errors and not args.skip_bad else 0


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


def feature_model(path: str):
    """``(model, processor)`` whose backbone embeds images for ``select``: a detector folder,
    or a pre-trained DDPM (its U-Net, with a one-channel head that is never read)."""
    from .errors import resolve_folder_or_repo
    from .image_processing_landmark import LandmarkImageProcessor
    from .modeling_landmark import LandmarkDetector
    from .pipeline_landmark import load_detector

    path = resolve_folder_or_repo(path, "--features", "pre-trained DDPM or detector")
    if os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isdir(os.path.join(path, "unet")):
        model = LandmarkDetector.from_ddpm(path, 1)
        return model.eval(), LandmarkImageProcessor.from_model_config(model.config)
    return load_detector(path)


def _cmd_select(args) -> int:
    import numpy as np

    from .data import dataset_info, load_prepared, load_tensors
    from .data.formats import read_landmark_names, write_annotations, write_csv
    from .data.prepared import require_split
    from .evaluation import predict_split
    from .pipeline_landmark import load_detector
    from .selection import choose, contact_sheet, coverage_score, pool_outliers, pooled_features, represented

    if args.num < 1:
        raise UserInputError(f"--num: must be at least 1, got {args.num}")
    if args.split == "test":
        raise UserInputError("--split: the test split is never a pool to choose from")
    dataset = load_prepared(args.dataset)
    pool_split = require_split(
        dataset,
        args.split,
        args.dataset + " (prepare custom puts the images without annotations there, "
        "prepare images all of them; --split train hides the training labels instead)",
    )
    info = dataset_info(args.dataset)
    model = processor = features = uncertainty = None
    if args.strategy == "coverage":
        if not args.features:
            raise UserInputError(
                "--features: the coverage strategy embeds the pool with a pre-trained DDPM (hf-landmark pretrain) or a detector"
            )
        model, processor = feature_model(args.features)
    if args.strategy == "uncertainty":
        if not args.model:
            raise UserInputError(
                "--model: the uncertainty strategy ranks the pool by a fine-tuned detector's confidence"
            )
        model, processor = load_detector(args.model)
    ids = list(pool_split["image_id"])
    # Only coverage and uncertainty look at every pool image; first and random need their ids.
    data = load_tensors(pool_split, processor.size) if processor else None
    if args.strategy == "coverage":
        features = pooled_features(model, data.pixel_values(processor.pixel_range))
    if args.strategy == "uncertainty":
        pred = predict_split(model, processor, data, refine=False)
        radii = processor.radii(pred["spread"])
        radius = (radii if radii is not None else pred["spread"]).mean(axis=1)
        uncertainty = (np.array([f != "ok" for f in pred["flags"]]), radius)
    outliers = pool_outliers(features, data.images[:, 0].numpy()) if features is not None else {}
    chosen = choose(args.strategy, ids, args.num, features, args.seed, uncertainty, excluded=outliers)
    names = (
        (read_landmark_names(args.landmarks) if args.landmarks else None)
        or (model.config.landmark_names if args.strategy == "uncertainty" else None)
        or info.get("landmark_names")
        or []
    )
    if not names:
        raise UserInputError(
            "--landmarks: name the landmarks to annotate (comma-separated or a file with one per line)"
        )
    files = info.get("files", {})
    shown = pool_split.select(chosen)
    items = [
        {"file": files.get(ids[i], ids[i]), "landmarks": None, "width": w, "height": h}
        for i, (w, h) in zip(chosen, shown["original_size"])
    ]
    # The split of each row, in the template: the last --validation chosen images validate (the
    # first chosen represent the pool best), the images prepare images held out test.
    n_val = _validation_count(args.validation, len(items))
    for k, item in enumerate(items):  # (with none to validate, prepare custom --split-counts splits them)
        item["split"] = ("validation" if k >= len(items) - n_val else "train") if n_val else None
    held_out = list(info.get("held_out") or [])
    rows = items + [{"file": f, "landmarks": None, "split": "test"} for f in held_out]
    if args.spacing:
        from .training_utils import parse_float_pair

        try:
            spacing = parse_float_pair(args.spacing if "," in args.spacing else f"{args.spacing},{args.spacing}")
        except UserInputError as err:
            raise UserInputError(
                f"--spacing: expected mm per pixel, one number or SX,SY, got {args.spacing!r}"
            ) from err
        if not all(v > 0 for v in spacing):
            raise UserInputError(f"--spacing: mm per pixel must be positive, got {args.spacing!r}")
        for row in rows:
            row["spacing"] = spacing
    write_csv(rows, names, args.out)
    # The same list for each tool, to import the images to annotate there.
    stem = os.path.splitext(args.out)[0]
    tool_files = {
        "cvat": stem + ".cvat.xml",
        "labelstudio": stem + ".labelstudio.json",
        "coco": stem + ".coco.json",
        "labelme": stem + "_labelme",
    }
    for kind, path in tool_files.items():
        write_annotations(kind, items, names, path, image_root=info.get("root", "."))
    # The contact sheet shows the chosen images as prepared (their full stored size), not the model's small copies.
    why = [f"represents {r} of {len(ids)}" for r in represented(features, chosen)] if features is not None else None
    sheet = contact_sheet(
        load_tensors(shown, shown[0]["image"].size[0]).images,
        [it["file"] for it in items],
        os.path.splitext(args.out)[0] + "_sheet.png",
        notes=why,
    )
    where = f" (under {info['root']})" if info.get("root") else ""
    print(f"chose {len(chosen)} of {len(ids)} {args.split} images by {args.strategy}{where}:")
    for k, item in enumerate(items):
        print(
            f"  {k + 1}. {item['file']}"
            + (f" ({item['split']})" if item["split"] else "")
            + (f": the closest chosen image to {why[k][11:]} pool images" if why else "")
        )
    for i, reason in outliers.items():
        print(
            f"  not chosen: {files.get(ids[i], ids[i])}: {reason}"
            + (" (taken only because nothing else was left)" if i in chosen else "")
        )
    if held_out:
        print(
            f"  and the {len(held_out)} images held out by prepare images, as split test (annotate them too, to test on)"
        )
    if features is not None:
        first = choose("first", ids, args.num)
        print(
            f"coverage of the pool (mean similarity to the closest chosen image): {coverage_score(features, chosen):.4f}, "
            f"first {args.num} sorted: {coverage_score(features, first):.4f}"
        )
    print(
        f"wrote the annotation template {args.out} ({len(names)} landmarks), the same list for the tools "
        f"({', '.join(tool_files.values())}) and the contact sheet {sheet}"
    )
    return 0


def _validation_count(asked: int | None, chosen: int) -> int:
    """How many chosen images validate: ``asked``, else a quarter (at least one from 3 images on)."""
    if asked is None:
        return int(chosen / 4 + 0.5) if chosen >= 3 else 0
    if not 0 <= asked < chosen:
        raise UserInputError(f"--validation: {asked} of {chosen} chosen images would leave none to train on")
    return asked


def _cmd_annotate(args) -> int:
    from .data.formats import read_landmark_names

    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise UserInputError("annotate: the page needs gradio; pip install 'hf-landmark[demo]'") from err
    from .annotation import open_project
    from .app import build_demo

    names = read_landmark_names(args.landmarks) if args.landmarks else None
    project = open_project(
        args.images, args.out, names, args.model, args.features
    )  # a mistake is reported here, before serving
    demo = build_demo(
        args.model,
        annotate={
            "images": args.images,
            "out": args.out,
            "landmarks": project.names,
            "model": args.model,
            "features": args.features,
        },
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: --host {args.host}: anyone who reaches this address can open and write files on this machine as you"
        )
    print(
        f"annotating {project.note} ({len(project.names)} landmarks), saving to {args.out}; "
        f"open http://{args.host}:{args.port}/ (Ctrl+C stops)"
    )
    demo.launch(server_name=args.host, server_port=args.port, inbrowser=not args.no_browser, quiet=True)
    return 0


def _cmd_card(args) -> int:
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
                "level": 1.0 - processor.radius_alpha,
                "flags": processor.ood_threshold is not None,
                "flag_images": processor.flag_calibration_images,
                "flag_false_alarm_rate": processor.flag_false_alarm_rate,
            }
    repo_id = args.repo_id or os.path.basename(os.path.normpath(args.model_dir))
    path = write_card(
        detector_card(config, metrics, repo_id, training=record, calibration=calibration), args.model_dir
    )
    print(f"wrote {path}")
    return 0


def _cmd_push(args) -> int:
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


def _cmd_space(args) -> int:
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
    "synth": _cmd_synth,
    "prepare": _cmd_prepare,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "match": _cmd_match,
    "select": _cmd_select,
    "annotate": _cmd_annotate,
    "card": _cmd_card,
    "push": _cmd_push,
    "space": _cmd_space,
}


def run_command(args) -> int:
    """Run the parsed command ``args.command``."""
    return int(COMMANDS[args.command](args) or 0)
