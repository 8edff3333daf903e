"""Matching as a one-shot detector, measured: the first sorted training image (or ``--template``)
is the annotated template; every image of ``--split`` (default validation) is matched with a
pre-trained DDPM's features (:mod:`hf_landmark.matching`), and the errors are printed as
``evaluate`` prints them: over all landmarks, over the cycle-consistent ones, per landmark,
and the share above ``--tail`` (mm or px).

    python training/benchmark_match.py --dataset data/ceph --features ddpm/checkpoint-8000
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> dict:
    from hf_landmark.data import load_prepared, load_tensors
    from hf_landmark.data.prepared import require_split
    from hf_landmark.evaluation import compute_metrics
    from hf_landmark.fileio import write_json_atomic
    from hf_landmark.matching import DEFAULT_TIMESTEP, FeatureExtractor, match_images
    from hf_landmark.modeling_landmark import LandmarkDetector
    from hf_landmark.preprocessing import to_grayscale01

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--features", required=True, help="pre-trained DDPM checkpoint")
    p.add_argument("--split", default="validation")
    p.add_argument("--template", help="template image id (default: the first sorted training id)")
    p.add_argument("--timestep", type=int, default=DEFAULT_TIMESTEP)
    p.add_argument("--cycle-radius", type=float, default=1.5)
    p.add_argument("--tail", type=float, default=4.0)
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)

    dataset = load_prepared(args.dataset)
    train = require_split(dataset, "train", args.dataset)
    ids = list(train["image_id"])
    t_idx = ids.index(args.template) if args.template else int(np.argsort(ids)[0])
    template = train[t_idx]
    target_split = require_split(dataset, args.split, args.dataset)
    extractor = FeatureExtractor.from_ddpm(args.features, timestep=args.timestep)
    targets = [to_grayscale01(row["image"]) for row in target_split]
    t_img = to_grayscale01(template["image"])
    # The prepared images are stored smaller than the originals: coordinates scale with them.
    scale_t = np.array(template["original_size"], dtype=np.float64) / np.array(template["image"].size)
    results = match_images(extractor, t_img, np.asarray(template["landmarks"]) / scale_t, targets, args.cycle_radius)
    pred = np.stack(
        [
            r["xy"] * (np.array(row["original_size"]) / np.array(row["image"].size))
            for r, row in zip(results, target_split)
        ]
    )
    consistent = np.stack([r["consistent"] for r in results])
    data = load_tensors(target_split, 64)
    config = LandmarkDetector.config_class(
        num_landmarks=pred.shape[1],
        landmark_names=list(template["landmark_names"]),
        image_size=64,
        dataset_name=template["dataset"],
    )
    metrics = compute_metrics(pred, data, config)
    out = summarise(metrics, consistent, args, (ids[t_idx], len(targets), list(template["landmark_names"])))
    print(
        f"template {out['template']}, {len(targets)} {args.split} images: MRE {out['mre']:.2f} {out['unit']}, SDR "
        + ", ".join(f"{k}: {v:.1f} %" for k, v in out["sdr"].items())
    )

    def mre(v):
        return "none" if v is None else f"{v:.2f}"

    print(
        f"cycle-consistent: {100 * out['consistent_share']:.1f} % of landmarks, MRE {mre(out['mre_consistent'])} vs "
        f"{mre(out['mre_inconsistent'])} for the others; > {args.tail:g} {out['unit']}: {100 * out['tail_share']:.1f} % of landmarks, "
        f"{100 * out['tail_error_share']:.1f} % of the error"
    )
    if args.output:
        write_json_atomic(out, args.output)
    return out


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
