"""How well the review queue puts the worst predictions first, measured on labeled images that
chose nothing: a detector predicts every image of ``--split`` through the same pipeline the
annotation page uses, each image's true mean radial error is computed, and the Spearman rank
correlation between that error and each candidate ordering is printed: the queue's
(:func:`hf_landmark.annotation.review_scores`, the mean relative radius), the largest radius,
the mean radius, and one minus the mean heatmap score. Also the share of the worst quarter of
images that the queue's first quarter holds, and the radii's coverage.

    python training/benchmark_review.py --model ft/model --dataset data/ceph --split test \\
        --image-dir ISBI2015/RawImage/TrainingData
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    from scipy.stats import spearmanr

    from hf_landmark.annotation import review_scores
    from hf_landmark.app import landmark_pipeline
    from hf_landmark.data import load_prepared
    from hf_landmark.data.prepared import require_split
    from hf_landmark.fileio import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument(
        "--image-dir", required=True, help="the original images, <image_id>.<ext> (what the annotation page opens)"
    )
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)

    split = require_split(load_prepared(args.dataset), args.split, args.dataset)
    detector = landmark_pipeline(args.model)
    errors, radii, scores, sizes, covered = [], [], [], [], []
    for row in split.remove_columns("image"):
        path = next(Path(args.image_dir).glob(row["image_id"] + ".*"))
        preds = detector(str(path))
        xy = np.array([[q["x"], q["y"]] for q in preds])
        truth = np.asarray(row["landmarks"], dtype=np.float64)
        spacing = np.asarray(row["spacing"] or (1.0, 1.0), dtype=np.float64)
        err = np.hypot(*((xy - truth) * spacing).T)
        errors.append(err.mean())
        r = np.array([np.nan if q.get("radius") is None else q["radius"] for q in preds])
        radii.append(r)
        covered.append(np.hypot(*(xy - truth).T) <= r)
        scores.append([q["score"] for q in preds])
        sizes.append(row["original_size"])
    errors, radii, scores = np.array(errors), np.array(radii), np.array(scores)
    candidates = {
        "queue (mean relative radius)": review_scores(radii, sizes, scores),
        "largest radius": np.nanmax(radii, axis=1),
        "mean radius": np.nanmean(radii, axis=1),
        "1 - mean heatmap score": 1.0 - scores.mean(axis=1),
    }
    out = {
        "images": len(errors),
        "split": args.split,
        "mre": float(errors.mean()),
        "coverage": float(np.mean(covered)),
        "spearman": {},
        "worst_quarter_in_first_quarter": {},
    }
    q = max(1, len(errors) // 4)
    worst = set(np.argsort(-errors)[:q].tolist())
    for name, score in candidates.items():
        rho = float(spearmanr(score, errors).statistic)
        first = set(np.argsort(-score, kind="stable")[:q].tolist())
        out["spearman"][name], out["worst_quarter_in_first_quarter"][name] = rho, len(first & worst) / q
        print(
            f"{name}: Spearman {rho:+.3f} with the image's MRE; its first quarter holds {len(first & worst)} of the {q} worst images"
        )
    print(
        f"{len(errors)} {args.split} images, MRE {out['mre']:.2f}, radii cover {100 * out['coverage']:.1f} % of the landmarks"
    )
    if args.output:
        write_json_atomic(out, args.output)
    return out


if __name__ == "__main__":
    main()
