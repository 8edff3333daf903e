"""Annotating landmarks in the browser, and reviewing a model's predictions.

A package of four layers: :mod:`.geometry` (click and zoom coordinates), :mod:`.store` (the
annotation file, the project, the export), :mod:`.session` (one page's work, without Gradio)
and :mod:`.ui` (the Gradio tabs).

The page (``hf-landmark annotate``: the web app with *Annotate* and *Review* tabs) asks for one
named landmark at a time. A click on the overview opens a zoomed crop of the original
around it, where the final click places the landmark; every placed point is saved at once
to the annotation CSV that ``prepare custom`` reads.

Coordinates. Gradio reports a click on an image as ``Math.round(offset / display_scale)``:
the *rounded corner coordinate* in the pixels of the picture it was handed (gradio >= 6.19
also for images shown smaller than their natural size). Pixel ``i`` of a picture made from
the original at scale ``s`` with its top-left corner at original pixel ``origin`` therefore
maps to the original's pixel-centre coordinate ``origin + i / s - 0.5``
(:func:`click_to_original`); the zoom shows ``s >= 2`` screen pixels per original pixel, so a
placed point is within ``0.5 / s`` original pixels of the click.

Saving. The file is rewritten whole for each point (temporary file, ``fsync``, rename):
at every moment it is the previous version or the new one. Writers take an exclusive lock
(``fcntl.flock`` on a hidden ``.<name>.lock`` beside it) and re-read the file under it, so
two pages on the same file never lose each other's images; on the *same* image the last
save wins. Landmarks marked missing ("skip") are listed in a ``skipped`` column, which
``prepare custom`` ignores: an image with a landmark marked missing is incomplete, on the
page (a reload opens on it) as in ``prepare custom`` (an error, or the pool with
``--drop-incomplete``). A row this page adds to a file whose rows all share one spacing
(``spacing_x`` / ``spacing_y``) gets that spacing too.
"""

from __future__ import annotations

from .geometry import (
    DISPLAY_SIDE,
    SELECT_RADIUS,
    ZOOM_FACTORS,
    ZOOM_SIDE,
    click_to_original,
    display_scale,
    original_to_picture,
    zoom_crop,
    zoom_origin,
)
from .review import review_order, review_scores
from .session import AnnotationSession, ImageState
from .store import (
    SKIPPED_COLUMN,
    UPLOAD_PREFIX,
    UPLOAD_TYPES,
    AnnotationFile,
    Project,
    export_annotations,
    open_project,
    uploads_project,
)
from .ui import KEYBOARD_JS, AnnotateSource, build_annotate_tabs

__all__ = [
    "DISPLAY_SIDE", "SELECT_RADIUS", "ZOOM_FACTORS", "ZOOM_SIDE", "click_to_original", "display_scale", "original_to_picture",
    "zoom_crop", "zoom_origin", "AnnotationSession", "ImageState", "review_order", "review_scores", "SKIPPED_COLUMN",
    "UPLOAD_PREFIX", "UPLOAD_TYPES", "AnnotationFile", "Project", "export_annotations", "open_project", "uploads_project",
    "KEYBOARD_JS", "AnnotateSource", "build_annotate_tabs",
]  # fmt: skip
