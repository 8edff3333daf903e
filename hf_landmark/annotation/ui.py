"""The Gradio tabs: *Annotate* (a folder on this machine, or a visitor's uploads) and
*Review*, wired to an :class:`~hf_landmark.annotation.session.AnnotationSession` per page."""

from __future__ import annotations

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


def build_annotate_tabs(
    gr,
    demo,
    tabs,
    images: str | None = None,
    out: str | None = None,
    landmarks=None,
    model: str | None = None,
    features: str | None = None,
    uploads: bool = False,
):
    """The *Annotate* and *Review* tabs, inside ``demo`` (a ``gr.Blocks``) and its ``tabs``.
    With ``images`` and ``out`` given, each page load opens them (continuing the file).

    ``uploads``: for a public page (the web demo, a Space): the visitor uploads their own images
    into a temporary folder of their session, names the landmarks, and downloads the
    annotation file (CSV and each tool's format); no path on the server is ever typed, and no
    visitor sees another's images or file. The folder is deleted when the session ends. With
    ``model`` (the page owner's), the visitor may start from its predictions."""
    with gr.Tab("Annotate", id="annotate"):
        # inside a tab: anything else directly in gr.Tabs upsets its tab list
        state = gr.State(None, delete_callback=_forget_uploads if uploads else None)
        if uploads:
            with gr.Accordion("Your x-rays and the landmarks to place", open=True):
                with gr.Row():
                    u_files = gr.File(
                        file_count="multiple",
                        file_types=UPLOAD_TYPES,
                        type="filepath",
                        label="x-rays (PNG, JPEG, BMP, TIFF, DICOM); kept only while this page is open",
                        elem_id="annot-uploads",
                    )
                    with gr.Column():
                        u_names = gr.Textbox(
                            value=",".join(landmarks or []),
                            label="landmarks, in order (comma-separated)",
                            elem_id="annot-names",
                        )
                        u_model = gr.Checkbox(
                            value=False,
                            visible=bool(model),
                            elem_id="annot-use-model",
                            label=f"start each image from the model's predictions ({model})",
                        )
                        open_button = gr.Button("Start annotating", elem_id="annot-open", variant="primary")
        else:
            with gr.Accordion("Images, annotation file, landmarks, model", open=not (images and out)):
                with gr.Row():
                    f_images = gr.Textbox(value=images or "", label="image folder or prepared dataset")
                    f_out = gr.Textbox(
                        value=out or "", label="annotation CSV (continued if it exists; select's template too)"
                    )
                with gr.Row():
                    f_names = gr.Textbox(
                        value=",".join(landmarks or []),
                        label="landmarks (comma-separated or a file; default: the CSV's or the model's)",
                    )
                    f_model = gr.Textbox(value=model or "", label="model (optional: proposals, radii, review queue)")
                    f_features = gr.Textbox(
                        value=features or "",
                        label="pre-trained DDPM (optional, without a model: proposals matched "
                        "from the first finished image)",
                    )
                open_button = gr.Button("Open", elem_id="annot-open")
        status = gr.Markdown(
            "Upload your x-rays and name the landmarks to start." if uploads else "Open an image folder to start.",
            elem_id="annot-status",
        )
        with gr.Row():
            with gr.Column(scale=3):
                overview = gr.Image(
                    label="image (click near the landmark)",
                    type="numpy",
                    format="png",
                    interactive=False,
                    height=760,
                    buttons=[],
                    elem_id="annot-overview",
                )
            with gr.Column(scale=2):
                # Beside the image, so that choosing a landmark never scrolls the image away.
                landmark = gr.Radio([], label="landmark", elem_id="annot-landmark")
                zoom = gr.Image(
                    label="zoom (click the exact position)",
                    type="numpy",
                    format="png",
                    interactive=False,
                    height=500,
                    buttons=[],
                    elem_id="annot-zoom",
                )
                with gr.Row():
                    undo = gr.Button("Undo (z)", elem_id="annot-undo", size="sm")
                    skip = gr.Button("Missing (s)", elem_id="annot-skip", size="sm")
                    next_landmark = gr.Button("Next landmark (n)", elem_id="annot-next-landmark", size="sm")
                with gr.Row():
                    accept_one = gr.Button("Accept this proposal (Enter)", elem_id="annot-accept-one", size="sm")
                    accept = gr.Button("Accept all proposals (a)", elem_id="annot-accept", size="sm")
                with gr.Row():
                    prev_image = gr.Button("← Previous image", elem_id="annot-prev-image", size="sm")
                    next_image = gr.Button("Next image →", elem_id="annot-next-image", size="sm")
                with gr.Row():
                    use_zoom = gr.Checkbox(value=True, label="zoom before placing", elem_id="annot-use-zoom")
                    factor = gr.Radio(
                        [str(f) for f in ZOOM_FACTORS],
                        value=str(ZOOM_FACTORS[1]),
                        label="zoom ×",
                        elem_id="annot-factor",
                    )
                    radii = gr.Checkbox(value=True, label="radii (r)", elem_id="annot-radii")
                reference = gr.Image(
                    label="where it is on a finished image",
                    type="numpy",
                    format="png",
                    interactive=False,
                    height=260,
                    buttons=[],
                    elem_id="annot-reference",
                )
                gr.Markdown(_HELP, elem_id="annot-help")
        table = gr.Dataframe(
            headers=["#", "landmark", "x (px)", "y (px)", "status", "radius (px)"],
            label="this image",
            interactive=False,
            elem_id="annot-table",
        )
        if uploads:
            with gr.Row():
                export = gr.Button("Download the annotations", elem_id="annot-export")
                exported = gr.File(
                    label="annotations.csv and the same in each tool's format (CVAT XML, COCO Keypoints with "
                    "corner origin, Label Studio tasks and config, labelme zip, JSON)",
                    file_count="multiple",
                    elem_id="annot-exported",
                )
    with gr.Tab("Review", id="review"):
        gr.Markdown(
            "The model predicts every image; the queue puts the images with work left first, the least certain "
            "predictions first (each landmark's calibrated radius relative to its usual one, averaged), and the "
            "finished images last. The Annotate tab then walks the images in this order: accept or move each "
            "proposal, and the corrections go to the same file, ready for prepare custom and finetune again."
        )
        rank = gr.Button("Rank the images, worst predictions first", elem_id="annot-rank")
        queue = gr.Dataframe(
            headers=["#", "image", "status", "uncertainty (1 = typical)", "flag"],
            label="review queue",
            interactive=False,
            elem_id="annot-queue",
        )
        thumbnails = gr.Gallery(
            label="the queue, with the model's proposals (orange) and placed points (green)",
            columns=6,
            height=420,
            elem_id="annot-thumbnails",
            allow_preview=False,
        )

    outputs = [state, status, overview, zoom, reference, landmark, table]

    def view(session):
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

    def guarded(fn):
        def run(session, *args):
            if session is None:
                raise gr.Error("Open an image folder first.")
            try:
                fn(session, *args)
            except (UserInputError, ValueError, OSError) as err:
                raise gr.Error(str(err)) from err
            return view(session)

        return run

    def do_open(images, out, names, model, features):
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
        return view(session)

    def do_upload(files, names, use_model, previous, request):
        names = [n.strip() for n in (names or "").split(",") if n.strip()]  # never a file on the server
        try:
            session = AnnotationSession(uploads_project(files or [], names, model if use_model else None))
        except (UserInputError, ValueError, OSError) as err:
            raise gr.Error(str(err)) from err
        _forget_uploads(previous)
        _UPLOAD_SESSIONS.setdefault(request.session_hash, []).append(session)
        session.message = (
            f"Annotating your {len(session.project.files)} image(s); every click is saved on the server only while this "
            "page is open: **Download the annotations** below keeps your work."
        )
        return view(session)

    def do_export(session):
        if session is None:
            raise gr.Error("Upload your x-rays and start annotating first.")
        return export_annotations(session.project)

    def on_overview(session, evt: gr.SelectData):
        return guarded(lambda s: s.click_overview(evt.index))(session)

    def on_zoom(session, evt: gr.SelectData):
        return guarded(lambda s: s.click_zoom(evt.index))(session)

    def on_options(session, use, f, show):
        if session is not None:
            session.use_zoom, session.zoom_factor, session.show_radii = bool(use), int(f), bool(show)
        return view(session)

    def on_rank(session, progress=gr.Progress()):  # noqa: B008  (how Gradio passes a progress bar)
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
        return (*view(session), rows, pictures)

    def on_queue(session, evt: gr.SelectData):
        def pick(s):
            s.pos = int(
                evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            )  # a table row or a thumbnail
            s._enter()

        return (*guarded(pick)(session), gr.Tabs(selected="annotate"))

    # Gradio passes the click to a parameter annotated gr.SelectData (the annotation itself,
    # not this module's postponed string).
    for fn in (on_overview, on_zoom, on_queue):
        fn.__annotations__["evt"] = gr.SelectData
    do_upload.__annotations__["request"] = gr.Request

    def on_leave(request):
        """A visitor closed the page: their uploads and their file go at once."""
        for session in _UPLOAD_SESSIONS.pop(request.session_hash, []):
            _forget_uploads(session)

    on_leave.__annotations__["request"] = gr.Request
    if uploads:
        open_button.click(do_upload, [u_files, u_names, u_model, state], outputs)
        export.click(do_export, [state], [exported])
        demo.unload(on_leave)
    else:
        open_button.click(do_open, [f_images, f_out, f_names, f_model, f_features], outputs)
    overview.select(on_overview, [state], outputs)
    zoom.select(on_zoom, [state], outputs)
    undo.click(guarded(lambda s: s.undo()), [state], outputs)
    skip.click(guarded(lambda s: s.skip()), [state], outputs)
    accept.click(guarded(lambda s: s.accept()), [state], outputs)
    accept_one.click(guarded(lambda s: s.accept_one()), [state], outputs)
    next_landmark.click(guarded(lambda s: s.next_landmark()), [state], outputs)
    prev_image.click(guarded(lambda s: s.go(-1)), [state], outputs)
    next_image.click(guarded(lambda s: s.go(+1)), [state], outputs)
    landmark.input(guarded(lambda s, k: s.select_landmark(int(k))), [state, landmark], outputs)
    for box in (use_zoom, factor, radii):
        box.input(on_options, [state, use_zoom, factor, radii], outputs)
    rank.click(on_rank, [state], [*outputs, queue, thumbnails])
    queue.select(on_queue, [state], [*outputs, tabs])
    thumbnails.select(on_queue, [state], [*outputs, tabs])
    demo.load(None, js=KEYBOARD_JS)
    if images and out and not uploads:
        demo.load(do_open, [f_images, f_out, f_names, f_model, f_features], outputs)
