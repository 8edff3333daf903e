"""Do the error radii hold on images that chose nothing? A fine-tuned detector predicts each
split through the evaluation path (its offsets, shape check and refinement prior), and the
coverage of its calibrated radii (the share of landmarks whose true position lies within the
radius) is printed beside the MRE, at several nominal levels, on:

- ``validation``: the images that calibrated the radii, and also chose the checkpoint, the
  self-training rounds and the offsets (in-sample: optimistic by construction);
- ``train``: the training images the detector was not fine-tuned on (its training record
  names the labeled ones), whose labels chose nothing;
- ``test``: the test split, which chose nothing either.

For each split that chose nothing it also prints the coverage of radii calibrated **on that
split** by two-fold cross-fitting (calibrate on one half, measure on the other, and the
reverse) and their mean size: how large the radii would be had their calibration chosen
nothing, beside those the validation images gave.

    python training/benchmark_radii.py --model ft/model --dataset data/ceph --output radii.json
"""

from __future__ import annotations

import argparse
import copy

import numpy as np

LEVELS = (0.8, 0.9, 0.95)


def split_predictions(model, processor, split, args) -> dict:
    """Predictions' errors (:func:`hf_landmark.evaluation.prediction_errors`) and heatmap
    spreads on one prepared split, less the images the detector was fine-tuned on."""
    from hf_landmark.cli_predict import without_training_labels
    from hf_landmark.data import load_tensors
    from hf_landmark.evaluation import predict_split, prediction_errors

    data = load_tensors(split, processor.size, processor.resample, processor.refine_size)
    data = without_training_labels(data, args)
    pred = predict_split(model, processor, data)
    return {"images": len(data), "spread": pred["spread"], **prediction_errors(pred, data, model.config)}


def coverage(processor, part: dict, alpha: float) -> tuple[float, float] | tuple[None, None]:
    """Share of landmarks within their radius at miscoverage ``alpha``, and the radii's mean
    (in the unit of the errors); ``(None, None)`` where the calibration images are too few
    for ``1 - alpha`` (infinite radii would cover everything)."""
    radii = processor.radii(part["spread"], alpha)
    if not np.isfinite(radii).all():
        return None, None
    return float((part["errors_px"] <= radii).mean()), float((radii * part["px_to_unit"]).mean())


def cross_fit(processor, part: dict, alpha: float, seed: int = 0) -> tuple[float, float] | tuple[None, None]:
    """Two-fold cross-fitted coverage and mean radius on ``part``: the radii calibrated on one
    random half of its images, measured on the other, both ways (images shuffled by ``seed``);
    ``(None, None)`` where a half is too small for ``1 - alpha``."""
    order = np.random.default_rng(seed).permutation(part["images"])
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    hits, sizes = [], []
    for cal, held in (halves, halves[::-1]):
        refit = copy.deepcopy(processor)
        refit.calibrate(part["spread"][cal], part["errors_px"][cal])
        radii = refit.radii(part["spread"][held], alpha)
        if not np.isfinite(radii).all():
            return None, None
        hits.append(part["errors_px"][held] <= radii)
        sizes.append(radii * part["px_to_unit"][held])
    return float(np.concatenate(hits).mean()), float(np.concatenate(sizes).mean())


def split_report(processor, part: dict, chose_nothing: bool, landmark_names) -> dict:
    """One split's accuracy and the coverage of its radii at each of :data:`LEVELS`."""
    e = part["errors"]
    out = {
        "images": part["images"],
        "unit": part["unit"],
        "mre": float(e.mean()),
        "sdr_2": float(100 * (e <= 2).mean()),
        "beyond_4": float(100 * (e > 4).mean()),
        "beyond_4_error_share": float(100 * e[e > 4].sum() / e.sum()),
        "levels": {},
    }
    for level in LEVELS:
        cov, size = coverage(processor, part, 1 - level)
        row = {"coverage": _percent(cov), "mean_radius": size}
        if chose_nothing:
            cf_cov, cf_size = cross_fit(processor, part, 1 - level)
            row.update(cross_fit_coverage=_percent(cf_cov), cross_fit_mean_radius=cf_size)
        out["levels"][f"{level:g}"] = row
    # Per landmark at the level the radii are given at (90 %, or less with few calibration images).
    per = (part["errors_px"] <= processor.radii(part["spread"])).mean(axis=0)
    out["per_landmark"] = {
        n: {"coverage": 100 * float(c), "mre": float(m)} for n, c, m in zip(landmark_names, per, e.mean(axis=0))
    }
    return out


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def print_report(name: str, rep: dict) -> None:
    u = rep["unit"]
    print(
        f"\n{name}: {rep['images']} images, MRE {rep['mre']:.3f} {u}, {rep['sdr_2']:.1f} % within 2 {u}, "
        f"{rep['beyond_4']:.1f} % beyond 4 {u} ({rep['beyond_4_error_share']:.0f} % of the error)"
    )
    for level, row in rep["levels"].items():
        if row["coverage"] is None:
            print(f"  nominal {100 * float(level):.0f} %: too few calibration images")
            continue
        line = f"  nominal {100 * float(level):.0f} %: coverage {row['coverage']:.1f} %, mean radius {row['mean_radius']:.2f} {u}"
        if row.get("cross_fit_coverage") is not None:
            line += (
                f"; calibrated on this split (two-fold): {row['cross_fit_coverage']:.1f} %, "
                f"mean radius {row['cross_fit_mean_radius']:.2f} {u}"
            )
        print(line)
    hardest = sorted(rep["per_landmark"].items(), key=lambda kv: -kv[1]["mre"])[:3]
    print("  hardest landmarks: " + ", ".join(f"{n} {v['mre']:.2f}" for n, v in hardest))
    worst = sorted(rep["per_landmark"].items(), key=lambda kv: kv[1]["coverage"])[:3]
    print(
        f"  least covered at {100 * rep['radius_coverage']:.1f} %: "
        + ", ".join(f"{n} {v['coverage']:.0f} % (MRE {v['mre']:.2f})" for n, v in worst)
    )


def main(argv=None) -> dict:
    from hf_landmark.data import load_prepared
    from hf_landmark.data.prepared import require_split
    from hf_landmark.fileio import write_json_atomic
    from hf_landmark.pipeline_landmark import load_detector

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a fine-tuned detector folder (with hf_landmark_training.json)")
    p.add_argument("--dataset", required=True, help="its prepared dataset folder")
    p.add_argument("--splits", default="validation,train,test", help="comma-separated (default validation,train,test)")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)

    model, processor = load_detector(args.model)
    if processor.calibration_scores is None:
        raise SystemExit(
            f"{args.model}: the detector's radii were never calibrated (fine-tune it with a validation split)"
        )
    print(f"{args.model}: radii calibrated on {processor.calibration_size} images")
    out = {"model": args.model, "calibration_images": processor.calibration_size, "splits": {}}
    dataset = load_prepared(args.dataset)
    for name in args.splits.split(","):
        args.split = name  # named in without_training_labels' messages
        part = split_predictions(model, processor, require_split(dataset, name, args.dataset), args)
        rep = split_report(processor, part, name != "validation", model.config.landmark_names)
        rep["radius_coverage"] = 1.0 - processor.radius_alpha
        out["splits"][name] = rep
        print_report(name, rep)
    if args.output:
        write_json_atomic(out, args.output)
    return out


if __name__ == "__main__":
    main()
