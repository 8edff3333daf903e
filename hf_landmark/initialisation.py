"""Where a fine-tuned detector starts: ``--init`` parsed (:func:`parse_init`), the detector built
from it (:func:`build_model`) and what its card says about it (:func:`init_record`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .backbones import IMAGENET_PIXEL_RANGE, SSL_METHODS, read_pretraining_info
from .configuration_landmark import LandmarkConfig
from .data.specs import unit_config
from .errors import UserInputError, hub_load_error, require_folder_or_repo, resolve_folder_or_repo
from .modeling_landmark import LandmarkDetector
from .training_utils import parse_float_pair

INIT_HINT = "--init takes 'scratch', a checkpoint-<step> folder of hf-landmark pretrain (or pretrain-ssl), a Hub repo, or imagenet"
REFINE_INIT_HINT = "--refine-init takes 'scratch' or a checkpoint-<step> folder of hf-landmark pretrain --crop-from"


@dataclass(frozen=True)
class ModelSpec:
    """The network a fine-tuning run builds: ``init_kind`` and ``init_source`` (:func:`parse_init`),
    the scratch network (``backbone``, ``preset``, ``encoder``), the input ``resolution`` (None: the
    checkpoint's, else 256), ``pixel_range`` ("LO,HI" or None), the ``loss`` and the target
    ``sigma`` (None: ``sigma_256`` scaled to the size)."""

    init_kind: str
    init_source: str | None
    backbone: str
    preset: str
    encoder: str
    resolution: int | None
    pixel_range: str | None
    loss: str
    sigma: float | None
    sigma_256: float

    def sigma_at(self, size: int) -> float:
        return self.sigma if self.sigma is not None else self.sigma_256 * size / 256


def parse_init(init: str) -> tuple[str, str | None]:
    """``--init`` → ``(kind, source)``: ``("scratch", None)``, ``("imagenet", None or
    FOLDER_OR_REPO)``, ``(method, PATH)`` for an SSL checkpoint, ``("ddpm", PATH)``. A bare
    PATH is an SSL checkpoint when its record names a method, else a DDPM (checked later)."""
    if init == "scratch":
        return "scratch", None
    if init == "imagenet":
        return "imagenet", None
    kind, sep, source = init.partition("=")
    if sep and kind in ("imagenet", "ddpm", *SSL_METHODS):
        if not source:
            raise UserInputError(f"--init: {kind}= needs a folder or Hub repo, got {init!r}")
        what = {"imagenet": "ImageNet weights", "ddpm": "pre-trained DDPM"}.get(kind, f"{kind} checkpoint")
        return kind, resolve_folder_or_repo(source, "--init", what, INIT_HINT)
    init = resolve_folder_or_repo(init, "--init", "pre-trained DDPM", INIT_HINT)
    method = read_pretraining_info(init).get("method") if os.path.isdir(init) else None
    return (method, init) if method in SSL_METHODS else ("ddpm", init)


def build_model(spec: ModelSpec, num_landmarks: int, landmark_names, dataset_name: str, spacing) -> LandmarkDetector:
    """A detector initialised as ``spec`` says, its config carrying the dataset's facts. A
    Hub id that cannot be downloaded (offline, unknown) is one error naming ``--init``."""
    try:
        return _build_model(spec, num_landmarks, landmark_names, dataset_name, spacing)
    except OSError as err:
        source = spec.init_source or "imagenet"
        if spec.init_kind == "scratch" or os.path.isdir(source):
            raise
        raise hub_load_error(source, "--init", "pre-trained weights", err) from err


def _build_model(spec: ModelSpec, num_landmarks: int, landmark_names, dataset_name: str, spacing) -> LandmarkDetector:
    common = {
        "landmark_names": landmark_names,
        "loss": spec.loss,
        "dataset_name": dataset_name,
        **unit_config(dataset_name, spacing),
    }
    kind, source = spec.init_kind, spec.init_source
    pixel_range = parse_float_pair(spec.pixel_range, "--pixel-range") if spec.pixel_range else None
    if kind == "ddpm":
        size = spec.resolution or read_pretraining_info_any(source).get("resolution") or 256
        return LandmarkDetector.from_ddpm(source, num_landmarks, image_size=size, sigma=spec.sigma_at(size), **common)
    if kind == "imagenet":
        size = spec.resolution or 256
        return LandmarkDetector.from_encoder(
            source or "imagenet",
            num_landmarks,
            image_size=size,
            encoder_name=spec.encoder,
            sigma=spec.sigma_at(size),
            pixel_range=pixel_range or IMAGENET_PIXEL_RANGE,
            **common,
        )
    if kind in SSL_METHODS:
        info = read_ssl_info(source, kind)
        size = spec.resolution or info.get("resolution") or 256
        return LandmarkDetector.from_encoder(
            source, num_landmarks, image_size=size, sigma=spec.sigma_at(size), **common
        )
    size = spec.resolution or 256
    backbone_config = spec.preset if spec.backbone == "unet2d" else {"encoder_name": spec.encoder}
    try:
        config = LandmarkConfig(
            backbone=spec.backbone,
            backbone_config=backbone_config,
            num_landmarks=num_landmarks,
            image_size=size,
            sigma=spec.sigma_at(size),
            pixel_range=pixel_range or (-1.0, 1.0),
            **common,
        )
    except ValueError as err:
        raise UserInputError(f"--resolution: {err}") from err
    return LandmarkDetector(config)


def read_pretraining_info_any(path: str) -> dict:
    """The pre-training record of a DDPM checkpoint in either layout (root or ``unet/``)."""
    require_folder_or_repo(path, "pre-trained DDPM", INIT_HINT, arg="--init")
    return read_pretraining_info(path) or read_pretraining_info(path, "unet")


def read_ssl_info(path: str, method: str) -> dict:
    """The record of an ``hf-landmark pretrain-ssl`` checkpoint, checked to be ``method``'s."""
    require_folder_or_repo(
        path,
        f"{method} checkpoint",
        f"--init {method}=PATH takes a checkpoint-<step> folder of hf-landmark pretrain-ssl",
        arg="--init",
    )
    info = read_pretraining_info(path)
    if info.get("method") != method:
        found = (
            f"a {info['method']} checkpoint"
            if info.get("method")
            else "not an hf-landmark pretrain-ssl checkpoint (no method in its record)"
        )
        raise UserInputError(f"{path}: --init {method}= expects a {method} checkpoint; this is {found}")
    return info


#: What a card states about the pre-training a detector started from.
PRETRAINING_FACTS = (
    "dataset_name", "num_images", "preset", "num_parameters", "resolution", "step", "effective_batch_size", "method",
    "encoder_name",
)  # fmt: skip


def init_record(spec: ModelSpec) -> dict:
    """The training record's ``init``: what a card must say about where the detector started."""
    kind, source = spec.init_kind, spec.init_source
    if kind == "scratch":
        preset = spec.preset if spec.backbone == "unet2d" else spec.encoder
        return {"kind": "scratch", "backbone": spec.backbone, "preset": preset}
    if kind == "imagenet":
        from .backbones import IMAGENET_WEIGHTS

        source = source or IMAGENET_WEIGHTS.get(spec.encoder)
        return {"kind": "imagenet", "encoder": spec.encoder, "repo_id": None if os.path.exists(source) else source}
    info = read_ssl_info(source, kind) if kind in SSL_METHODS else read_pretraining_info_any(source)
    return {
        "kind": "ssl" if kind in SSL_METHODS else "ddpm",
        "repo_id": None if os.path.exists(source) else source,
        "pretraining": {k: info.get(k) for k in PRETRAINING_FACTS},
    }
