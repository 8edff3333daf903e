"""The Gradio web demo: upload a radiograph, get its landmarks, numbered on the picture.

Standalone on purpose (gradio, numpy and transformers only), so that a Hugging Face Space runs
it without hf_landmark installed: the model repository then brings its own pipeline code
(``trust_remote_code``), which runs only for the models the Space's owner names in
``HF_LANDMARK_MODEL`` / ``HF_LANDMARK_TRUSTED_MODELS``. Where hf_landmark is installed it is
used instead and any local folder or Hub repo can be chosen.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile

TRUSTED_MODELS_ENV = "HF_LANDMARK_TRUSTED_MODELS"
DISPLAY_MIN_SIDE = 720
FILE_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"]


def _package_available() -> bool:
    try:
        import hf_landmark  # noqa: F401  (registers the task and the Auto classes)
    except ImportError:
        return False
    return True


def trusted_models() -> list[str]:
    names = [os.environ.get("HF_LANDMARK_MODEL", "")] + os.environ.get(TRUSTED_MODELS_ENV, "").split(",")
    return [n.strip() for n in names if n.strip()]


@functools.lru_cache(maxsize=4)
def landmark_pipeline(model: str):
    """The ``landmark-detection`` pipeline of a model folder or Hub repo."""
    from transformers import pipeline

    # A public Space (SPACE_ID set) runs only its owner's models, with the package installed or not.
    public = bool(os.environ.get("SPACE_ID"))
    if _package_available() and not (public and model not in trusted_models()):
        from hf_landmark.pipeline_landmark import detection_pipeline

        return detection_pipeline(model)
    if model not in trusted_models():
        raise ValueError(
            f"{model}: this demo runs only its own models ({', '.join(trusted_models()) or 'none set'}), "
            f"because a model's code executes here; add it to {TRUSTED_MODELS_ENV} to allow it"
        )
    return pipeline("landmark-detection", model=model, trust_remote_code=True)


def predict(image_path: str | None, model: str, decoder: str = "centroid", radii: bool = True):
    """Landmarks on one uploaded x-ray: (overlay image, table rows, note, JSON file path)."""
    if not image_path:
        raise ValueError("upload an x-ray image first (PNG, JPEG, BMP, TIFF or DICOM)")
    if not model:
        raise ValueError("choose a model folder or Hub repo")
    pipe = landmark_pipeline(model)
    preds = pipe(image_path, decoder=decoder)
    # Small images are enlarged on screen so that markers and numbers stay readable.
    # Without radii: the same landmarks, drawn as if the model had none.
    drawn = preds if radii else [{k: v for k, v in p.items() if k != "radius"} for p in preds]
    overlay = pipe.draw_overlay(image_path, drawn, min_side=DISPLAY_MIN_SIDE)
    rows = [
        [
            i + 1,
            p["label"],
            round(p["x"], 1),
            round(p["y"], 1),
            _mm(p.get("x_mm")),
            _mm(p.get("y_mm")),
            _mm(p.get("radius_mm", p.get("radius"))),
            round(p["score"], 3),
        ]
        for i, p in enumerate(preds)
    ]
    notes = []
    if preds and preds[0].get("flag") == "low_confidence":
        notes.append(
            "**Low confidence: this image is unlike the model's training images** (another anatomy, a blank or a "
            "tiny image?), **or its landmarks draw a shape unlike theirs** (too small, too large, distorted). "
            "Do not use these coordinates without checking every one."
        )
    moved = [str(i + 1) for i, p in enumerate(preds) if p.get("shape_moved")]
    if moved:
        notes.append(
            f"Landmark{'s' if len(moved) > 1 else ''} {', '.join(moved)}: the first guess lay far from where the other "
            "landmarks put it (another structure?), so the model read it again near there. Check it."
        )
    if preds and "radius" in preds[0] and radii:
        notes.append(
            "Circles: calibrated error radii; the true landmark lies inside with the stated probability "
            "(see the model card). A large circle means: look twice."
        )
    note = ""
    if any(p.get("spacing_assumed") for p in preds):
        note = (
            "The file carries no pixel spacing: the mm columns assume the spacing of the model's training data. "
            "Check it against your scanner before using them."
        )
    elif not any("x_mm" in p for p in preds):
        note = "No pixel spacing is known for this image or model: coordinates are in pixels only."
    note = "\n\n".join(notes + ([note] if note else []))
    fd, path = tempfile.mkstemp(prefix="landmarks-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        # Strict JSON: a radius that does not exist is null, never Infinity.
        json.dump(
            {"image": os.path.basename(image_path), "model": model, "landmarks": preds}, fh, indent=2, allow_nan=False
        )
    return overlay, rows, note, path


def _mm(value):
    return "" if value is None else round(value, 2)


def _detect_tab(gr, default_model: str | None, examples: list[str] | None):
    """The *Detect* tab's controls: the x-ray, the model, the decoder and the result."""
    from types import SimpleNamespace

    ui = SimpleNamespace()
    with gr.Row():
        with gr.Column():
            ui.image = gr.File(label="x-ray", file_types=FILE_TYPES, type="filepath")
            ui.model = gr.Textbox(
                value=default_model or os.environ.get("HF_LANDMARK_MODEL", ""),
                label="model folder or Hub repo",
            )
            ui.decoder = gr.Dropdown(["centroid", "argmax", "soft_argmax"], value="centroid", label="decoder")
            ui.radii = gr.Checkbox(value=True, label="draw the error radii")
            ui.run = gr.Button("Detect landmarks", variant="primary")
            if examples:
                gr.Examples(
                    examples=[[e] for e in examples],
                    inputs=[ui.image],
                    label="examples (synthetic cephalograms)",
                )
        with gr.Column():
            ui.overlay = gr.Image(type="pil", format="png", label="landmarks (red, numbered as in the table)")
            ui.table = gr.Dataframe(
                headers=[
                    "#",
                    "landmark",
                    "x (px)",
                    "y (px)",
                    "x (mm)",
                    "y (mm)",
                    "radius (mm, else px)",
                    "score",
                ],
                label="coordinates",
            )
            ui.note = gr.Markdown()
            ui.download = gr.File(label="JSON")
    return ui


def build_demo(
    default_model: str | None = None,
    examples: list[str] | None = None,
    annotate: dict | None = None,
    annotate_uploads: bool | None = None,
):
    """The web app: *Detect* (any image, any model); with ``annotate`` (the arguments of
    :func:`hf_landmark.annotation.build_annotate_tabs`, which needs hf_landmark) also
    *Annotate* and *Review*, and the page opens on *Annotate*. ``annotate_uploads`` (default:
    where hf_landmark is installed and no ``annotate`` is given) adds *Annotate* for the
    visitor's own uploads, in a temporary folder of their session, downloaded when done."""
    import gradio as gr

    if annotate_uploads is None:
        annotate_uploads = annotate is None and _package_available()
    if annotate_uploads and annotate is None:
        annotate = {"uploads": True, "model": default_model or None}

    def run_predict(image_path, model, decoder, radii=True):
        # Gradio shows only gr.Error messages to the user; anything else becomes a bare "Error".
        try:
            return predict(image_path, model, decoder, radii)
        except (ValueError, OSError) as err:
            # Name the upload as the user knows it, not by the server's temporary path.
            message = str(err).replace(image_path, os.path.basename(image_path)) if image_path else str(err)
            raise gr.Error(message) from err

    with gr.Blocks(title="hf-landmark: x-ray landmark detection") as demo:
        gr.Markdown(
            "# X-ray landmark detection\nUpload a radiograph (PNG, JPEG, BMP, TIFF or DICOM), choose a model "
            "(a local folder or a Hub repo) and get its landmarks, numbered on the picture and listed in the "
            "table. Research use only, not a medical device."
        )
        # Tabs only beside the annotation page; the demo alone is one page, as it always was.
        tabbed = annotate is not None
        with (
            gr.Tabs(selected="detect" if annotate_uploads else "annotate")
            if tabbed
            else contextlib.nullcontext() as tabs
        ):
            with gr.Tab("Detect", id="detect") if tabbed else contextlib.nullcontext():
                detect = _detect_tab(gr, default_model, examples)
            if tabbed:
                # Annotation reads and writes files where the page runs: only on the page
                # hf-landmark annotate serves (on this machine by default), never in a public demo.
                from hf_landmark.annotation import AnnotateSource, build_annotate_tabs

                start = {k: v for k, v in annotate.items() if k != "uploads"}
                build_annotate_tabs(gr, demo, tabs, AnnotateSource(**start), bool(annotate.get("uploads")))
        outputs = [detect.overlay, detect.table, detect.note, detect.download]
        # The previous result (its picture, its notes) is cleared first, so that a failed
        # prediction never shows the last image's warnings beside the error.
        clear = detect.run.click(
            lambda: (None, None, "", None), outputs=outputs, queue=False, api_visibility="private"
        )
        inputs = [detect.image, detect.model, detect.decoder, detect.radii]
        clear.then(run_predict, inputs=inputs, outputs=outputs, api_name="predict")
    return demo
