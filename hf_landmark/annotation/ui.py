"""The Gradio tabs: *Annotate* (a folder on this machine, or a visitor's uploads) and
*Review*, wired to an :class:`~hf_landmark.annotation.session.AnnotationSession` per page."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from ..errors import UserInputError
from .geometry import (
    ZOOM_FACTORS,
)
from .session import AnnotationSession
from .store import (
    _UPLOAD_SESSIONS,
    UPLOAD_TYPES,
    _forget_uploads,
    export_annotations,
    open_project,
    uploads_project,
)

#: Keys (outside text fields): n next landmark, s skip (missing), z undo, Enter accept the
#: model's proposal, a accept all its proposals, arrows or , . previous / next image, r radii on/off.
KEYBOARD_JS = """
() => {
  if (window.__hfLandmarkKeys) return;
  window.__hfLandmarkKeys = true;
  const keys = {n: "annot-next-landmark", s: "annot-skip", z: "annot-undo", a: "annot-accept", Enter: "annot-accept-one",
                ArrowRight: "annot-next-image", ".": "annot-next-image", ArrowLeft: "annot-prev-image", ",": "annot-prev-image"};
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    if (e.key === "r") { const box = document.querySelector("#annot-radii input"); if (box) box.click(); return; }
    const id = keys[e.key] || ((e.ctrlKey || e.metaKey) && e.key === "z" ? "annot-undo" : null);
    const button = id && document.getElementById(id);
    if (button) { e.preventDefault(); button.click(); }
  });
}
"""


_HELP = (
    "Click the overview near the landmark asked for; the zoom opens there, and a click in the zoom places it "
    "(saved at once). Keys: **n** next landmark, **s** missing, **z** undo; with a model, the zoom opens on its "
    "proposal: **Enter** accepts it, **a** accepts all; "
    "**← →** previous / next image, **r** radii on/off. Once every landmark is placed, a click on one selects it to move it; "
    "the list selects any landmark."
)


@dataclass(frozen=True)
class AnnotateSource:
    """What the page opens (``hf-landmark annotate``'s arguments): an image folder or prepared
    dataset, the annotation CSV, the landmark names, a model (proposals, radii, the review
    queue) and a pre-trained DDPM (proposals matched from the first finished image)."""

    images: str | None = None
    out: str | None = None
    landmarks: list | None = None
    model: str | None = None
    features: str | None = None


def build_annotate_tabs(gr, demo, tabs, source: AnnotateSource | None = None, uploads: bool = False):
    """The *Annotate* and *Review* tabs, inside ``demo`` (a ``gr.Blocks``) and its ``tabs``.
    With ``source.images`` and ``source.out`` given, each page load opens them (continuing the file).

    ``uploads``: for a public page (the web demo, a Space): the visitor uploads their own images
    into a temporary folder of their session, names the landmarks, and downloads the
    annotation file (CSV and each tool's format); no path on the server is ever typed, and no
    visitor sees another's images or file. The folder is deleted when the session ends. With
    ``source.model`` (the page owner's), the visitor may start from its predictions."""
    source = source or AnnotateSource()
    with gr.Tab("Annotate", id="annotate"):
        # inside a tab: anything else directly in gr.Tabs upsets its tab list
        ui = SimpleNamespace(state=gr.State(None, delete_callback=_forget_uploads if uploads else None))
        _source_controls(gr, ui, source, uploads)
        ui.status = gr.Markdown(
            "Upload your x-rays and name the landmarks to start." if uploads else "Open an image folder to start.",
            elem_id="annot-status",
        )
        _annotate_controls(gr, ui)
        if uploads:
            with gr.Row():
                ui.export = gr.Button("Download the annotations", elem_id="annot-export")
                ui.exported = gr.File(
                    label="annotations.csv and the same in each tool's format (CVAT XML, COCO Keypoints with "
                    "corner origin, Label Studio tasks and config, labelme zip, JSON)",
                    file_count="multiple",
                    elem_id="annot-exported",
                )
    with gr.Tab("Review", id="review"):
        _review_controls(gr, ui)
    ui.outputs = [ui.state, ui.status, ui.overview, ui.zoom, ui.reference, ui.landmark, ui.table]
    _wire(gr, demo, tabs, ui, source, uploads)


def _source_controls(gr, ui, source: AnnotateSource, uploads: bool) -> None:
    """The visitor's uploads and landmark names, or the folder, file, names, model and DDPM to open."""
    if uploads:
        with gr.Accordion("Your x-rays and the landmarks to place", open=True):
            with gr.Row():
                ui.u_files = gr.File(
                    file_count="multiple",
                    file_types=UPLOAD_TYPES,
                    type="filepath",
                    label="x-rays (PNG, JPEG, BMP, TIFF, DICOM); kept only while this page is open",
                    elem_id="annot-uploads",
                )
                with gr.Column():
                    ui.u_names = gr.Textbox(
                        value=",".join(source.landmarks or []),
                        label="landmarks, in order (comma-separated)",
                        elem_id="annot-names",
                    )
                    ui.u_model = gr.Checkbox(
                        value=False,
                        visible=bool(source.model),
                        elem_id="annot-use-model",
                        label=f"start each image from the model's predictions ({source.model})",
                    )
                    ui.open_button = gr.Button("Start annotating", elem_id="annot-open", variant="primary")
        return
    with gr.Accordion("Images, annotation file, landmarks, model", open=not (source.images and source.out)):
        with gr.Row():
            ui.f_images = gr.Textbox(value=source.images or "", label="image folder or prepared dataset")
            ui.f_out = gr.Textbox(
                value=source.out or "", label="annotation CSV (continued if it exists; select's template too)"
            )
        with gr.Row():
            ui.f_names = gr.Textbox(
                value=",".join(source.landmarks or []),
                label="landmarks (comma-separated or a file; default: the CSV's or the model's)",
            )
            ui.f_model = gr.Textbox(value=source.model or "", label="model (optional: proposals, radii, review queue)")
            ui.f_features = gr.Textbox(
                value=source.features or "",
                label="pre-trained DDPM (optional, without a model: proposals matched from the first finished image)",
            )
        ui.open_button = gr.Button("Open", elem_id="annot-open")


def _annotate_controls(gr, ui) -> None:
    """The image, the landmark list and the zoom beside it, the buttons, the options, the table."""
    images = {"type": "numpy", "format": "png", "interactive": False, "buttons": []}
    with gr.Row():
        with gr.Column(scale=3):
            ui.overview = gr.Image(
                label="image (click near the landmark)", height=760, elem_id="annot-overview", **images
            )
        with gr.Column(scale=2):
            # Beside the image, so that choosing a landmark never scrolls the image away.
            ui.landmark = gr.Radio([], label="landmark", elem_id="annot-landmark")
            ui.zoom = gr.Image(label="zoom (click the exact position)", height=500, elem_id="annot-zoom", **images)
            for row in (
                (("undo", "Undo (z)"), ("skip", "Missing (s)"), ("next_landmark", "Next landmark (n)")),
                (("accept_one", "Accept this proposal (Enter)"), ("accept", "Accept all proposals (a)")),
                (("prev_image", "← Previous image"), ("next_image", "Next image →")),
            ):
                with gr.Row():
                    for name, text in row:
                        element = "annot-" + name.replace("_", "-")
                        setattr(ui, name, gr.Button(text, elem_id=element, size="sm"))
            with gr.Row():
                ui.use_zoom = gr.Checkbox(value=True, label="zoom before placing", elem_id="annot-use-zoom")
                ui.factor = gr.Radio(
                    [str(f) for f in ZOOM_FACTORS], value=str(ZOOM_FACTORS[1]), label="zoom ×", elem_id="annot-factor"
                )
                ui.radii = gr.Checkbox(value=True, label="radii (r)", elem_id="annot-radii")
            ui.reference = gr.Image(
                label="where it is on a finished image", height=260, elem_id="annot-reference", **images
            )
            gr.Markdown(_HELP, elem_id="annot-help")
    ui.table = gr.Dataframe(
        headers=["#", "landmark", "x (px)", "y (px)", "status", "radius (px)"],
        label="this image",
        interactive=False,
        elem_id="annot-table",
    )


def _review_controls(gr, ui) -> None:
    gr.Markdown(
        "The model predicts every image; the queue puts the images with work left first, the least certain "
        "predictions first (each landmark's calibrated radius relative to its usual one, averaged), and the "
        "finished images last. The Annotate tab then walks the images in this order: accept or move each "
        "proposal, and the corrections go to the same file, ready for prepare custom and finetune again."
    )
    ui.rank = gr.Button("Rank the images, worst predictions first", elem_id="annot-rank")
    ui.queue = gr.Dataframe(
        headers=["#", "image", "status", "uncertainty (1 = typical)", "flag"],
        label="review queue",
        interactive=False,
        elem_id="annot-queue",
    )
    ui.thumbnails = gr.Gallery(
        label="the queue, with the model's proposals (orange) and placed points (green)",
        columns=6,
        height=420,
        elem_id="annot-thumbnails",
        allow_preview=False,
    )


def _view(gr, session):
    """What the Annotate tab shows of ``session`` (every handler's outputs)."""
    if session is None:
        return None, "Open an image folder to start.", None, None, None, gr.Radio(choices=[], value=None), []
    choices = [(f"{k + 1} {n}", k) for k, n in enumerate(session.names)]
    return (
        session,
        session.status(),
        session.overview(),
        session.zoom(),
        session.reference(),
        gr.Radio(choices=choices, value=session.current),
        session.table(),
    )


def _guarded(gr, fn):
    """``fn(session, *args)`` as a handler: a user's mistake is a message on the page."""

    def run(session, *args):
        if session is None:
            raise gr.Error("Open an image folder first.")
        try:
            fn(session, *args)
        except (UserInputError, ValueError, OSError) as err:
            raise gr.Error(str(err)) from err
        return _view(gr, session)

    return run


def _open_folder(gr, images, out, names, model, features):
    from ..data.formats import read_landmark_names

    try:
        project = open_project(
            images.strip(),
            out.strip(),
            read_landmark_names(names) if names.strip() else None,
            model.strip() or None,
            features.strip() or None,
        )
        session = AnnotationSession(project)
    except (UserInputError, ValueError, OSError) as err:
        raise gr.Error(str(err)) from err
    session.message = f"Annotating {project.note}; saving to {project.store.path}."
    return _view(gr, session)


def _open_uploads(gr, files, names, model, previous, session_hash):
    names = [n.strip() for n in (names or "").split(",") if n.strip()]  # never a file on the server
    try:
        session = AnnotationSession(uploads_project(files or [], names, model))
    except (UserInputError, ValueError, OSError) as err:
        raise gr.Error(str(err)) from err
    _forget_uploads(previous)
    _UPLOAD_SESSIONS.setdefault(session_hash, []).append(session)
    session.message = (
        f"Annotating your {len(session.project.files)} image(s); every click is saved on the server only while this "
        "page is open: **Download the annotations** below keeps your work."
    )
    return _view(gr, session)


def _rank(gr, session, progress):
    if session is None:
        raise gr.Error("Open an image folder first (with a model).")
    try:
        rows = session.rank(progress)
        pictures = [
            (session.thumbnail(i), f"{k + 1}. {session.project.files[i]} {session.progress_label(i)}".strip())
            for k, i in enumerate(session.order[:60])
        ]
    except (UserInputError, ValueError, OSError) as err:
        raise gr.Error(str(err)) from err
    return (*_view(gr, session), rows, pictures)


def _wire(gr, demo, tabs, ui, source: AnnotateSource, uploads: bool) -> None:
    """The handlers of every control (Gradio passes a click to a parameter annotated
    ``gr.SelectData``, and the visitor's session to one annotated ``gr.Request``)."""
    outputs = ui.outputs

    def do_upload(files, names, use_model, previous, request):
        return _open_uploads(gr, files, names, source.model if use_model else None, previous, request.session_hash)

    def do_open(images, out, names, model, features):
        return _open_folder(gr, images, out, names, model, features)

    def do_export(session):
        if session is None:
            raise gr.Error("Upload your x-rays and start annotating first.")
        return export_annotations(session.project)

    def on_overview(session, evt):
        return _guarded(gr, lambda s: s.click_overview(evt.index))(session)

    def on_zoom(session, evt):
        return _guarded(gr, lambda s: s.click_zoom(evt.index))(session)

    def on_options(session, use, f, show):
        if session is not None:
            session.use_zoom, session.zoom_factor, session.show_radii = bool(use), int(f), bool(show)
        return _view(gr, session)

    def on_rank(session, progress=gr.Progress()):  # noqa: B008  (how Gradio passes a progress bar)
        return _rank(gr, session, progress)

    def on_queue(session, evt):
        def pick(s):
            s.pos = int(evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index)  # a row or a thumbnail
            s._enter()

        return (*_guarded(gr, pick)(session), gr.Tabs(selected="annotate"))

    def on_leave(request):
        """A visitor closed the page: their uploads and their file go at once."""
        for session in _UPLOAD_SESSIONS.pop(request.session_hash, []):
            _forget_uploads(session)

    for fn in (on_overview, on_zoom, on_queue):
        fn.__annotations__["evt"] = gr.SelectData
    do_upload.__annotations__["request"] = on_leave.__annotations__["request"] = gr.Request
    folder = None if uploads else [ui.f_images, ui.f_out, ui.f_names, ui.f_model, ui.f_features]
    if uploads:
        ui.open_button.click(do_upload, [ui.u_files, ui.u_names, ui.u_model, ui.state], outputs)
        ui.export.click(do_export, [ui.state], [ui.exported])
        demo.unload(on_leave)
    else:
        ui.open_button.click(do_open, folder, outputs)
    ui.overview.select(on_overview, [ui.state], outputs)
    ui.zoom.select(on_zoom, [ui.state], outputs)
    for button, action in (
        (ui.undo, lambda s: s.undo()),
        (ui.skip, lambda s: s.skip()),
        (ui.accept, lambda s: s.accept()),
        (ui.accept_one, lambda s: s.accept_one()),
        (ui.next_landmark, lambda s: s.next_landmark()),
        (ui.prev_image, lambda s: s.go(-1)),
        (ui.next_image, lambda s: s.go(+1)),
    ):
        button.click(_guarded(gr, action), [ui.state], outputs)
    ui.landmark.input(_guarded(gr, lambda s, k: s.select_landmark(int(k))), [ui.state, ui.landmark], outputs)
    for box in (ui.use_zoom, ui.factor, ui.radii):
        box.input(on_options, [ui.state, ui.use_zoom, ui.factor, ui.radii], outputs)
    ui.rank.click(on_rank, [ui.state], [*outputs, ui.queue, ui.thumbnails])
    ui.queue.select(on_queue, [ui.state], [*outputs, tabs])
    ui.thumbnails.select(on_queue, [ui.state], [*outputs, tabs])
    demo.load(None, js=KEYBOARD_JS)
    if source.images and source.out and not uploads:
        demo.load(do_open, folder, outputs)
