"""``hf-landmark match``, ``select`` and ``annotate``: the few-shot user's annotation loop (dispatched by :mod:`hf_landmark.cli`)."""

from __future__ import annotations

import os
import sys

from .cli_predict import image_inputs, write_predictions_for_tool
from .errors import UserInputError


def cmd_match(args) -> int:
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


def cmd_select(args) -> int:

    from .data import dataset_info, load_prepared, load_tensors
    from .data.formats import read_landmark_names, write_annotations, write_csv
    from .data.prepared import require_split
    from .selection import choose, contact_sheet, pool_outliers, represented

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
    ids = list(pool_split["image_id"])
    model, data, features, uncertainty = pool_signals(args, pool_split)
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
        for row in rows:
            row["spacing"] = parse_spacing(args.spacing)
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
    report = {"ids": ids, "chosen": chosen, "items": items, "why": why, "outliers": outliers, "held_out": held_out}
    print_selection(args, info, report, features)
    print(
        f"wrote the annotation template {args.out} ({len(names)} landmarks), the same list for the tools "
        f"({', '.join(tool_files.values())}) and the contact sheet {sheet}"
    )
    return 0


def pool_signals(args, pool_split):
    """What ``select``'s strategy reads of the pool: ``(model, images, features, uncertainty)``;
    coverage embeds it with ``--features``, uncertainty predicts it with ``--model``, first and
    random read nothing (all None)."""
    import numpy as np

    from .data import load_tensors
    from .evaluation import predict_split
    from .pipeline_landmark import load_detector
    from .selection import pooled_features

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
    # Only coverage and uncertainty look at every pool image; first and random need their ids.
    data = load_tensors(pool_split, processor.size) if processor else None
    if args.strategy == "coverage":
        features = pooled_features(model, data.pixel_values(processor.pixel_range))
    if args.strategy == "uncertainty":
        pred = predict_split(model, processor, data, refine=False)
        radii = processor.radii(pred["spread"])
        radius = (radii if radii is not None else pred["spread"]).mean(axis=1)
        uncertainty = (np.array([f != "ok" for f in pred["flags"]]), radius)
    return model, data, features, uncertainty


def parse_spacing(text: str) -> tuple[float, float]:
    """``--spacing``: mm per pixel, one number or SX,SY, positive."""
    from .training_utils import parse_float_pair

    try:
        spacing = parse_float_pair(text if "," in text else f"{text},{text}")
    except UserInputError as err:
        raise UserInputError(f"--spacing: expected mm per pixel, one number or SX,SY, got {text!r}") from err
    if not all(v > 0 for v in spacing):
        raise UserInputError(f"--spacing: mm per pixel must be positive, got {text!r}")
    return spacing


def print_selection(args, info: dict, report: dict, features) -> None:
    """``select``'s account of what it chose and why, and what it left out."""
    from .selection import choose, coverage_score

    ids, chosen, items, why = report["ids"], report["chosen"], report["items"], report["why"]
    outliers, held_out, files = report["outliers"], report["held_out"], info.get("files", {})
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


def _validation_count(asked: int | None, chosen: int) -> int:
    """How many chosen images validate: ``asked``, else a quarter (at least one from 3 images on)."""
    if asked is None:
        return int(chosen / 4 + 0.5) if chosen >= 3 else 0
    if not 0 <= asked < chosen:
        raise UserInputError(f"--validation: {asked} of {chosen} chosen images would leave none to train on")
    return asked


def cmd_annotate(args) -> int:
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
