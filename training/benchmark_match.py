"""Matching as a one-shot detector, measured: the first sorted training image (or ``--template``)
is the annotated template; every image of ``--split`` (default validation) is matched with a
pre-trained DDPM's features (:mod:`hf_landmark.matching`), and the errors are printed as
``evaluate`` prints them: over all landmarks, over the cycle-consistent ones, per landmark,
and the share above ``--tail`` (mm or px).

``--templates K`` matches from each of the first K sorted training images (the images
``finetune --num-labels K`` labels) and takes the median of their matches (consistent: in
more than half of them). ``--detector MODEL [MODEL ...]`` measures matching as a check on a detector's
landmarks: how well the distance between each landmark and the matches finds the detector's
errors beyond ``--tail``, against its own heatmap spread, over all landmarks and among the
``--keep`` share with the smallest spread (those self-training would keep as pseudo-labels),
and what vetoing the landmarks farther than a few distances from the matches would remove.

    python training/benchmark_match.py --dataset data/ceph --features ddpm/checkpoint-8000
    python training/benchmark_match.py --dataset data/ceph --features ddpm/checkpoint-8000 \
        --templates 5 --split test --detector ft/model
"""

from __future__ import annotations

import argparse

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    from hf_landmark.matching import DEFAULT_TIMESTEP

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--features", required=True, help="pre-trained DDPM checkpoint")
    p.add_argument("--split", default="validation")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--template", help="template image id (default: the first sorted training id)")
    which.add_argument("--templates", type=int, default=1, help="match from the first K sorted training images")
    p.add_argument("--timestep", type=int, default=DEFAULT_TIMESTEP)
    p.add_argument("--cycle-radius", type=float, default=1.5)
    p.add_argument("--tail", type=float, default=4.0)
    p.add_argument("--detector", nargs="+", default=[], help="saved detectors whose landmarks the matches check")
    p.add_argument("--keep", type=float, default=0.4, help="with --detector: the share of landmarks kept by spread")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.templates < 1:
        p.error(f"--templates {args.templates}: at least one template")
    if not 0 < args.keep <= 1:
        p.error(f"--keep {args.keep:g}: a share in (0, 1]")
    args.error = p.error
    return args


def main(argv=None) -> dict:
    from hf_landmark.data import load_prepared, load_tensors
    from hf_landmark.data.prepared import require_split
    from hf_landmark.errors import UserInputError, resolve_folder_or_repo
    from hf_landmark.evaluation import compute_metrics
    from hf_landmark.fileio import write_json_atomic
    from hf_landmark.matching import FeatureExtractor, match_images
    from hf_landmark.modeling_landmark import LandmarkDetector
    from hf_landmark.pipeline_landmark import load_detector
    from hf_landmark.preprocessing import to_grayscale01

    args = parse_args(argv)
    try:  # before the matching's minutes: a wrong folder is said at once
        detectors = {p: load_detector(resolve_folder_or_repo(p, "--detector", "model")) for p in args.detector}
    except UserInputError as err:
        args.error(str(err))

    dataset = load_prepared(args.dataset)
    train = require_split(dataset, "train", args.dataset)
    ids = list(train["image_id"])
    if args.template and args.template not in ids:
        args.error(f"--template {args.template}: no training image of {args.dataset} has that id")
    if args.templates > len(ids):
        args.error(f"--templates {args.templates}: {args.dataset} has {len(ids)} training images")
    order = [int(i) for i in np.argsort(ids)]
    t_rows = [ids.index(args.template)] if args.template else order[: args.templates]
    template = train[t_rows[0]]
    target_split = require_split(dataset, args.split, args.dataset)
    if args.split == "train":  # the other training images: a template matched into itself says nothing
        target_split = target_split.select([i for i in range(len(target_split)) if i not in t_rows])
    extractor = FeatureExtractor.from_ddpm(args.features, timestep=args.timestep)
    targets = [to_grayscale01(row["image"]) for row in target_split]
    # The prepared images are stored smaller than the originals: coordinates scale with them.
    scale = np.stack([np.array(row["original_size"], float) / np.array(row["image"].size) for row in target_split])
    preds, consistents = [], []
    for t in t_rows:
        row = train[t]
        scale_t = np.array(row["original_size"], dtype=np.float64) / np.array(row["image"].size)
        results = match_images(
            extractor, to_grayscale01(row["image"]), np.asarray(row["landmarks"]) / scale_t, targets, args.cycle_radius
        )
        preds.append(np.stack([r["xy"] for r in results]) * scale[:, None, :])
        consistents.append(np.stack([r["consistent"] for r in results]))
    pred = np.median(np.stack(preds), axis=0)
    consistent = np.mean(consistents, axis=0) > 0.5
    data = load_tensors(target_split, 64)
    config = LandmarkDetector.config_class(
        num_landmarks=pred.shape[1],
        landmark_names=list(template["landmark_names"]),
        image_size=64,
        dataset_name=template["dataset"],
    )
    metrics = compute_metrics(pred, data, config)
    about = (",".join(ids[t] for t in t_rows), len(targets), list(template["landmark_names"]))
    out = summarise(metrics, consistent, args, about)
    print(
        f"template {out['template']}, {len(targets)} {args.split} images: MRE {out['mre']:.2f} {out['unit']}, SDR "
        + ", ".join(f"{k}: {v:.1f} %" for k, v in out["sdr"].items())
    )

    print(
        f"cycle-consistent: {100 * out['consistent_share']:.1f} % of landmarks, MRE {_num(out['mre_consistent'], 2)} vs "
        f"{_num(out['mre_inconsistent'], 2)} for the others; > {args.tail:g} {out['unit']}: {100 * out['tail_share']:.1f} % of landmarks, "
        f"{100 * out['tail_error_share']:.1f} % of the error"
    )
    if args.detector:
        out["detectors"] = {path: check_detector(path, *d, target_split, pred, args) for path, d in detectors.items()}
    if args.output:
        write_json_atomic(out, args.output)
    return out


def check_detector(model_path: str, model, processor, split, matched: np.ndarray, args) -> dict:
    """The detector's (``model`` and its ``processor``) landmarks on ``split`` checked against the
    ``matched`` ones ``[M, N, 2]`` (original pixels): :func:`veto_summary` of its errors, spread
    and distance to the matches, printed."""
    from hf_landmark.data import load_tensors
    from hf_landmark.evaluation import physical_errors, predict_split

    data = load_tensors(split, processor.size, processor.resample, processor.refine_size)
    # As self-training predicts its pool: the embedding test alone flags an image.
    out = predict_split(model, processor, data, spread_check=False)
    errors, unit = physical_errors(out["coords"], data, model.config)
    distance, _ = physical_errors(out["coords"], data.with_landmarks(matched), model.config)
    res = veto_summary(errors, out["spread"], distance, args.tail, args.keep)
    kept = res["kept"]
    print(
        f"detector {model_path}: MRE {errors.mean():.3f} {unit}, beyond {args.tail:g}: {100 * res['tail_share']:.1f} %; "
        f"the errors beyond {args.tail:g} found by (AUC) its spread {_num(res['auc_spread'])}, "
        f"the distance to the matches {_num(res['auc_distance'])}"
    )
    print(
        f"the {100 * args.keep:.0f} % with the smallest spread: MRE {kept['mre']:.3f}, {kept['tail']} beyond "
        f"{args.tail:g}, AUC of the distance {_num(kept['auc_distance'])}"
    )
    for v in kept["vetoes"]:
        print(
            f"  veto beyond {v['distance']:g} {unit} from the matches: removes {v['removed']} "
            f"({v['removed_tail']} of the {kept['tail']} beyond {args.tail:g}), MRE of the rest {_num(v['mre_rest'])}"
        )
    return {"unit": unit, "mre": float(errors.mean()), **res}


def _num(value, digits: int = 3) -> str:
    """A figure as printed, or "none" where there is none (no error beyond the tail, nothing left)."""
    return "none" if value is None else f"{value:.{digits}f}"


def auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """The chance that a random positive scores above a random negative (ties count half): the
    area under the ROC curve, by the Mann-Whitney U statistic. None without both classes."""
    from scipy.stats import mannwhitneyu

    score, positive = np.ravel(score), np.ravel(positive).astype(bool)
    if positive.all() or not positive.any():
        return None
    u = mannwhitneyu(score[positive], score[~positive], alternative="two-sided").statistic
    return float(u / (positive.sum() * (~positive).sum()))


def veto_summary(errors, spread, distance, tail: float, keep: float, vetoes=(3.0, 4.0, 5.0, 6.0)) -> dict:
    """How well ``distance`` (each landmark's to a second opinion) finds the ``errors`` beyond
    ``tail``, against ``spread``, all ``[M, N]``: over all landmarks and among the ``keep`` share
    with the smallest spread, and for each of ``vetoes`` what leaving out the kept landmarks
    farther than it would remove."""
    errors, spread, distance = (np.asarray(a, np.float64) for a in (errors, spread, distance))
    bad = errors > tail
    kept = spread <= np.quantile(spread, keep)
    rows = []
    for v in vetoes:
        removed = kept & (distance > v)
        rest = kept & ~removed
        rows.append(
            {
                "distance": v,
                "removed": int(removed.sum()),
                "removed_tail": int((removed & bad).sum()),
                "mre_rest": float(errors[rest].mean()) if rest.any() else None,
            }
        )
    return {
        "tail_share": float(bad.mean()),
        "auc_spread": auc(spread, bad),
        "auc_distance": auc(distance, bad),
        "kept": {
            "share": keep,
            "count": int(kept.sum()),
            "mre": float(errors[kept].mean()),
            "tail": int((bad & kept).sum()),
            "auc_distance": auc(distance[kept], bad[kept]),
            "vetoes": rows,
        },
    }


def summarise(metrics: dict, consistent: np.ndarray, args, about: tuple) -> dict:
    """The benchmark's record: ``metrics`` of the matches, how many were cycle-consistent and how
    good those were, the tail beyond ``--tail``, per landmark; ``about``: (template id, images, names)."""
    template_id, num_images, names = about
    errors = np.asarray(metrics["errors"])
    tail = errors > args.tail
    return {
        "template": template_id,
        "split": args.split,
        "images": num_images,
        "timestep": args.timestep,
        "unit": metrics["unit"],
        "mre": metrics["mre"],
        "sdr": metrics["sdr"],
        "consistent_share": float(consistent.mean()),
        "mre_consistent": float(errors[consistent].mean()) if consistent.any() else None,
        "mre_inconsistent": float(errors[~consistent].mean()) if (~consistent).any() else None,
        # What the annotation page shows as a proposal (the consistent matches alone): its spread too.
        "consistent_median": float(np.median(errors[consistent])) if consistent.any() else None,
        "consistent_p90": float(np.quantile(errors[consistent], 0.9)) if consistent.any() else None,
        "consistent_max": float(errors[consistent].max()) if consistent.any() else None,
        "tail_share": float(tail.mean()),
        "tail_error_share": float(errors[tail].sum() / errors.sum()),
        "per_landmark": {
            n: {
                "mre": float(errors[:, j].mean()),
                "tail_share": float(tail[:, j].mean()),
                "consistent": float(consistent[:, j].mean()),
            }
            for j, n in enumerate(names)
        },
    }


if __name__ == "__main__":
    main()
