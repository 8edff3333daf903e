"""Ensembles of fine-tuned detectors: K detectors of one recipe, fine-tuned on the same labels
with different seeds, saved as one detector folder that runs each and averages their landmarks
(:meth:`LandmarkDetector.ensemble`), then calibrated as one model on the validation split: its
landmark offsets, error radii and low-confidence flag are measured on the ensemble's own
predictions. ``hf-landmark finetune --ensemble K`` (and ``--recipe long``) trains the members in
turn and calls :func:`save_ensemble`; ``hf-landmark ensemble`` assembles detectors already
trained."""

from __future__ import annotations

import json
import os

from .errors import UserInputError

#: A member's training record's keys that are its own (its selection, rounds and checks).
MEMBER_RECORD_KEYS = ("best_step", "val_mre", "self_training", "shape_check", "precision_probe", "seed")
#: Where ``finetune --ensemble K`` puts its members: ``OUT/members/seed-<seed>/model``.
MEMBERS_DIR = "members"


def read_training_record(model_dir: str) -> dict:
    """A detector folder's training record (``hf_landmark_training.json``), or a
    :class:`UserInputError` naming the folder."""
    from .training_loop import TRAINING_RECORD

    path = os.path.join(model_dir, TRAINING_RECORD)
    if not os.path.isfile(path):
        raise UserInputError(
            f"{model_dir}: no {TRAINING_RECORD}, the record of the labels and data a detector hf-landmark "
            "fine-tuned learned from"
        )
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


#: The training-record keys detectors must share to join one ensemble or teach one another, and
#: what each names in an error.
SHARED_RECORD_KEYS = {"dataset": "data", "labeled_image_ids": "labels", "validation_images": "validation images"}


def differing_record_key(record: dict, other: dict, keys) -> str | None:
    """The first of ``keys`` whose value differs between two training records, or None."""
    return next((key for key in keys if record.get(key) != other.get(key)), None)


def ensemble_record(records: list[dict], sources: list[str]) -> dict:
    """The ensemble's training record: the first member's (the labels, the data, the recipe
    they share), with ``seed`` the members' seeds and ``ensemble`` naming each member. Members
    fine-tuned on other labels, other data or another validation split
    (:data:`SHARED_RECORD_KEYS`) are a :class:`UserInputError`: the ensemble is calibrated on
    one validation split, which must be the one every member was selected on."""
    first = records[0]
    for record, source in zip(records[1:], sources[1:]):
        if key := differing_record_key(record, first, SHARED_RECORD_KEYS):
            raise UserInputError(
                f"{source}: fine-tuned on other {SHARED_RECORD_KEYS[key]} than {sources[0]} "
                f"({key}: {record.get(key)} against {first.get(key)}); an ensemble's members share their labels "
                "and their validation images"
            )
    seeds = [r.get("seed") for r in records]
    members = [
        {
            "seed": r.get("seed"),
            "val_mre": r.get("val_mre"),
            "best_step": r.get("best_step"),
            "source": os.path.basename(os.path.dirname(os.path.abspath(s))) or s,
        }
        for r, s in zip(records, sources)
    ]
    # What each member measured for itself stays in its own record.
    record = {k: v for k, v in first.items() if k not in MEMBER_RECORD_KEYS}
    return dict(record, seed=seeds, ensemble={"members": len(records), "seeds": seeds, "each": members})


def save_ensemble(
    member_dirs: list[str],
    output_dir: str,
    dataset: str,
    offset_correction: float | None = None,
    shape_fusion: float | None = None,
) -> dict:
    """Assemble the detectors in ``member_dirs`` into one ensemble detector at ``output_dir``
    (written whole or not at all) and calibrate it on ``dataset``'s validation split as
    fine-tuning calibrates one detector (:func:`hf_landmark.calibration.calibrate_saved_model`;
    ``offset_correction``: the offsets' shrinkage in images, ``shape_fusion``: the shape
    fusion's weight, each by default the first member's, 0 for a member trained without it).
    Returns ``{"members", "calibration", "val_mre", "unit"}``."""
    from .calibration import Corrections, calibrate_on_dataset
    from .fileio import atomic_directory, write_json_atomic
    from .modeling_landmark import LandmarkDetector
    from .pipeline_landmark import load_detector
    from .training_loop import TRAINING_RECORD, write_model_files

    if len(member_dirs) < 2:
        raise UserInputError(f"an ensemble needs at least 2 detectors, got {len(member_dirs)}")
    loaded = [load_detector(d) for d in member_dirs]
    records = [read_training_record(d) for d in member_dirs]
    record = ensemble_record(records, member_dirs)
    try:
        model = LandmarkDetector.ensemble([m for m, _ in loaded])
    except ValueError as err:
        raise UserInputError(f"{', '.join(member_dirs)}: {err}") from err
    first = loaded[0][1]
    processor = type(first).from_model_config(
        model.config,
        resample=first.resample,
        decoder=first.decoder,
        alpha=first.alpha,
        false_alarm_rate=first.false_alarm_rate,
        min_image_side=first.min_image_side,
    )
    corrections = Corrections(
        offset_images=_member_setting(records[0], "offset_correction", offset_correction),
        shape_fusion=_member_setting(records[0], "shape_fusion", shape_fusion),
    )
    record.update(offset_correction=corrections.offset_images, shape_fusion=corrections.shape_fusion)
    # Saved, calibrated and recorded in a temporary folder that becomes output_dir only when whole.
    with atomic_directory(output_dir) as tmp:
        write_model_files(model, processor, tmp, record)
        calibration, val_metrics = calibrate_on_dataset(
            tmp, dataset, record["labeled_image_ids"], processor.decoder, corrections
        )
        record.update(val_mre=val_metrics["mre"], unit=val_metrics["unit"])
        write_json_atomic(record, os.path.join(tmp, TRAINING_RECORD))
    return {
        "members": record["ensemble"],
        "calibration": calibration,
        "val_mre": val_metrics["mre"],
        "unit": val_metrics["unit"],
    }


def _member_setting(record: dict, key: str, given: float | None) -> float:
    """``given``, else the member's training record's ``key``, else its recipe's, else 0."""
    if given is not None:
        return float(given)
    value = record.get(key, (record.get("recipe_defaults") or {}).get(key))
    return 0.0 if value is None else float(value)


def differing_fields(a: str, b: str) -> list[str]:
    """The shared configuration fields in which the detectors at ``a`` and ``b`` differ."""
    from .configuration_landmark import LandmarkConfig
    from .modeling_landmark import differing_shared_fields

    return differing_shared_fields(LandmarkConfig.from_pretrained(a), LandmarkConfig.from_pretrained(b))


def compatible_members(member_dirs: list[str], val_mres: list[float]) -> tuple[list[str], list[str]]:
    """The members that can form one ensemble: the largest group of one architecture (ties: the
    group with the best validation MRE), and the others. On little data a member's refinement
    stage may lose to its first stage on validation, and then it has none while others do."""
    from .configuration_landmark import LandmarkConfig
    from .modeling_landmark import shared_fields

    groups: dict[str, list[int]] = {}
    for i, d in enumerate(member_dirs):
        groups.setdefault(json.dumps(shared_fields(LandmarkConfig.from_pretrained(d)), sort_keys=True), []).append(i)
    best = max(groups.values(), key=lambda g: (len(g), -min(val_mres[i] for i in g)))
    return [member_dirs[i] for i in best], [d for i, d in enumerate(member_dirs) if i not in best]
