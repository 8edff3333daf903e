"""The Gradio inference demo (``space/app.py`` runs it as a Hugging Face Space)."""

from __future__ import annotations

import functools
import json
import os
import tempfile

import numpy as np

from .errors import UserInputError


@functools.lru_cache(maxsize=4)
def _pipeline(model: str):
    from transformers import pipeline

    from .pipeline_landmark import load_detector

    detector, processor = load_detector(model)
    return pipeline("landmark-detection", model=detector, image_processor=processor)


def predict(image_path: str, model: str, decoder: str = "centroid"):
    """Landmarks on one uploaded x-ray: (overlay image, table rows, JSON file path)."""
    from .preprocessing import load_image
    from .visualization import draw_landmarks

    if not image_path:
        raise UserInputError("upload an x-ray image first")
    if not model:
        raise UserInputError("choose a model folder or Hub repo")
    preds = _pipeline(model)(image_path, decoder=decoder)
    overlay = draw_landmarks(load_image(image_path)[0], np.asarray([[p["x"], p["y"]] for p in preds]))
    rows = [[i + 1, p["label"], round(p["x"], 1), round(p["y"], 1), _mm(p.get("x_mm")), _mm(p.get("y_mm")), round(p["score"], 3)]
            for i, p in enumerate(preds)]  # fmt: skip
    fd, path = tempfile.mkstemp(prefix="landmarks-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"image": os.path.basename(image_path), "model": model, "landmarks": preds}, fh, indent=2)
    return overlay, rows, path


def _mm(value):
    return "" if value is None else round(value, 2)


def build_demo(default_model: str | None = None):
    import gradio as gr

    from .heatmaps import DECODERS

    def run_predict(image_path, model, decoder):
        # Gradio shows only gr.Error messages; anything else becomes a bare "Error".
        try:
            return predict(image_path, model, decoder)
        except UserInputError as err:
            raise gr.Error(str(err)) from err

    with gr.Blocks(title="hf-landmark: x-ray landmark detection") as demo:
        gr.Markdown("# X-ray landmark detection\nUpload a radiograph, choose a model (a local folder or a Hub repo) "
                    "and get its landmarks. Research use only, not a medical device.")  # fmt: skip
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="x-ray", image_mode="L")
                model = gr.Textbox(value=default_model or os.environ.get("HF_LANDMARK_MODEL", ""), label="model folder or Hub repo")
                decoder = gr.Dropdown(list(DECODERS), value="centroid", label="decoder")
                run = gr.Button("Detect landmarks", variant="primary")
            with gr.Column():
                overlay = gr.Image(type="pil", format="png", label="landmarks (red)")
                table = gr.Dataframe(headers=["#", "landmark", "x (px)", "y (px)", "x (mm)", "y (mm)", "score"],
                                     label="coordinates (# is the number on the picture)")  # fmt: skip
                download = gr.File(label="JSON")
        run.click(run_predict, inputs=[image, model, decoder], outputs=[overlay, table, download], api_name="predict")
    return demo
