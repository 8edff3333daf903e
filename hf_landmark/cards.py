"""Model cards rendered with ``huggingface_hub.ModelCard`` from templates and real numbers."""

from __future__ import annotations

import os
from importlib import resources

from huggingface_hub import ModelCard, ModelCardData

from .errors import is_repo_id
from .fileio import atomic_file

PAPER_CITATION = """@article{divia2024selfsupervised,
  title   = {Self-supervised pre-training with diffusion model for few-shot landmark detection in x-ray images},
  author  = {Di Via, Roberto and Odone, Francesca and Pastore, Vito Paolo},
  journal = {arXiv preprint arXiv:2407.18125},
  year    = {2024}
}"""


def _template(name: str) -> str:
    return resources.files("hf_landmark").joinpath("templates", name).read_text(encoding="utf-8")


def ddpm_card(info: dict, repo_id: str | None = None) -> ModelCard:
    """Card of a pre-trained DDPM U-Net checkpoint; ``info`` is its pre-training record
    (dataset, preset, resolution, step, recipe, number of images)."""
    data = ModelCardData(
        license="apache-2.0",
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=["hf-landmark", "ddpm", "x-ray", "medical-imaging", "self-supervised"],
        model_name=repo_id or "ddpm-landmark-backbone",
    )
    return ModelCard.from_template(
        data,
        template_str=_template("ddpm_card.md"),
        info=info,
        citation=PAPER_CITATION,
        model_name=data.model_name,
        dataset_title=_title(info.get("dataset_name")),
    )


SSL_TITLES = {"mocov3": "MoCo v3", "simclrv2": "SimCLR v2", "dino": "DINO"}


def ssl_card(info: dict, repo_id: str | None = None) -> ModelCard:
    """Card of a self-supervised encoder checkpoint (``hf-landmark pretrain-ssl``); ``info``
    is its pre-training record."""
    data = ModelCardData(
        license="apache-2.0",
        library_name="hf-landmark",
        tags=["hf-landmark", info["method"], "x-ray", "medical-imaging", "self-supervised"],
        model_name=repo_id or f"{info['method']}-{info['encoder_name']}",
    )
    return ModelCard.from_template(
        data,
        template_str=_template("ssl_card.md"),
        info=info,
        citation=PAPER_CITATION,
        model_name=data.model_name,
        dataset_title=_title(info.get("dataset_name")),
        method_title=SSL_TITLES.get(info["method"], info["method"]),
    )


def _initialisation(training: dict | None, base: str | None) -> str:
    """One sentence on where the weights started, with no local paths."""
    init = (training or {}).get("init") or {}
    if init.get("kind") == "scratch":
        return f"random (the `{init.get('preset')}` {'encoder U-Net' if init.get('backbone') == 'smp_unet' else 'U-Net'} trained from scratch)"
    name = base or init.get("repo_id")
    info = init.get("pretraining") or {}
    what = ""
    if init.get("kind") == "imagenet":
        what = "the encoder's ImageNet weights (decoder and head from scratch)"
    elif init.get("kind") == "ssl" and info.get("num_images"):
        what = (
            f"an encoder pre-trained with {SSL_TITLES.get(info.get('method'), info.get('method'))} without labels on "
            f"{info['num_images']} {_title(info.get('dataset_name')) or ''} images ({info.get('resolution')} px, {info.get('step')} steps)"
        )
    elif info.get("num_images"):
        what = (
            f"a DDPM pre-trained without labels on {info['num_images']} {_title(info.get('dataset_name')) or ''} images "
            f"({info.get('preset')} U-Net, {info.get('resolution')} px, {info.get('step')} steps)"
        )
    if name:
        return f"[{name}](https://huggingface.co/{name})" + (f": {what}" if what else "")
    return (
        (what + " (a local checkpoint, not published)")
        if what
        else "a DDPM pre-trained with hf-landmark (not published)"
    )


def _title(dataset: str | None) -> str | None:
    """The dataset record's title; a custom dataset's own name as it is."""
    from .data.specs import DATASETS

    return DATASETS[dataset].title if dataset in DATASETS and dataset != "custom" else dataset


def detector_card(
    config,
    metrics: dict,
    repo_id: str,
    license: str = "apache-2.0",
    training: dict | None = None,
    calibration: dict | None = None,
) -> ModelCard:
    """Card of a fine-tuned detector, with a ``model-index`` filled from a real
    ``metrics.json`` written by ``hf-landmark evaluate`` and, when given, the training record
    fine-tuning saved beside the weights (data, label count, initialisation)."""
    from huggingface_hub import EvalResult

    from .evaluation import markdown_table

    dataset = config.dataset_name or "custom"
    unit = metrics["unit"]
    common = {
        "task_type": "keypoint-detection",
        "dataset_type": dataset,
        "dataset_name": _title(dataset),
        "dataset_split": metrics.get("split", "test"),
    }
    results = [
        EvalResult(
            metric_type="mre",
            metric_name=f"MRE ({unit}, {metrics['mode']})",
            metric_value=round(metrics["mre"], 4),
            **common,
        )
    ]
    for t, v in metrics["sdr"].items():
        results.append(
            EvalResult(
                metric_type=f"sdr_{t}{unit}", metric_name=f"SDR {t} {unit} (%)", metric_value=round(v, 2), **common
            )
        )
    base = getattr(config, "base_model", None)
    if base and (os.path.exists(base) or not is_repo_id(base)):
        base = None  # a local folder is no name for a reader of the card; the training record describes it
    data = ModelCardData(
        license=license,
        library_name="hf-landmark",
        pipeline_tag="keypoint-detection",
        model_name=repo_id,
        tags=["hf-landmark", "landmark-detection", "x-ray", "medical-imaging"]
        + (
            [config.backbone_config.get("encoder_name", "smp_unet")]
            if getattr(config, "backbone", "unet2d") == "smp_unet"
            else ["ddpm"]
        ),
        eval_results=results,
        base_model=base,
    )
    return ModelCard.from_template(
        data,
        template_str=_template("detector_card.md"),
        metrics=metrics,
        config=config,
        repo_id=repo_id,
        model_name=repo_id,
        metrics_table=markdown_table(metrics),
        dataset_title=_title(dataset),
        base_model=base,
        citation=PAPER_CITATION,
        training=training,
        initialisation=_initialisation(training, base),
        calibration=calibration,
        uncertainty=metrics.get("uncertainty"),
    )


def write_card(card: ModelCard, folder: str | os.PathLike) -> str:
    path = os.path.join(os.fspath(folder), "README.md")
    with atomic_file(path) as tmp:
        card.save(tmp)
    return path
