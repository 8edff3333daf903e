"""Model cards rendered with ``huggingface_hub.ModelCard`` from templates and real numbers."""

from __future__ import annotations

import os
from importlib import resources

from huggingface_hub import ModelCard, ModelCardData

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
    return ModelCard.from_template(data, template_str=_template("ddpm_card.md"), info=info, citation=PAPER_CITATION)


def write_card(card: ModelCard, folder: str | os.PathLike) -> str:
    path = os.path.join(os.fspath(folder), "README.md")
    tmp = path + ".tmp"
    card.save(tmp)
    os.replace(tmp, path)
    return path
