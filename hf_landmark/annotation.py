"""Annotating landmarks in the browser, and reviewing a model's predictions.

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

import contextlib
import csv
import io
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import UserInputError

#: The overview's longest side, pixels.
DISPLAY_SIDE = 720
#: The zoom's side, pixels, and the magnifications offered (screen pixels per original pixel).
ZOOM_SIDE = 480
ZOOM_FACTORS = (2, 4, 8)
#: A click this close (overview pixels) to a placed point selects it, once every landmark is placed.
SELECT_RADIUS = 7
SKIPPED_COLUMN = "skipped"
_PLACED, _PROPOSED, _UNSURE, _CURRENT = (60, 220, 90), (255, 150, 0), (255, 60, 200), (255, 235, 0)


# --- geometry ---------------------------------------------------------------------------


def display_scale(width: int, height: int, side: int = DISPLAY_SIDE) -> tuple[tuple[int, int], tuple[float, float]]:
    """The overview's size ``(w, h)`` (longest side ``side``) and its exact per-axis scale."""
    s = side / max(width, height)
    w, h = max(1, round(width * s)), max(1, round(height * s))
    return (w, h), (w / width, h / height)


def click_to_original(index, scale, origin=(0, 0)) -> tuple[float, float]:
    """A Gradio click ``index`` (``[x, y]``) on a picture of the original at ``scale``
    (``(sx, sy)`` or one number) whose top-left pixel is original pixel ``origin``, as the
    original's pixel-centre coordinates."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    return origin[0] + index[0] / sx - 0.5, origin[1] + index[1] / sy - 0.5


def original_to_picture(xy, scale, origin=(0, 0)) -> tuple[float, float]:
    """Where the original's point ``xy`` lies in such a picture (its pixel-centre coordinates)."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    return (xy[0] + 0.5 - origin[0]) * sx - 0.5, (xy[1] + 0.5 - origin[1]) * sy - 0.5


def zoom_origin(centre, factor: int, side: int = ZOOM_SIDE) -> tuple[int, int]:
    """The original pixel at the top-left of the zoom around ``centre``."""
    n = side // factor
    return int(round(centre[0])) - n // 2, int(round(centre[1])) - n // 2


def zoom_crop(image01: np.ndarray, centre, factor: int, side: int = ZOOM_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """A ``side``-pixel picture of the original around ``centre`` at ``factor`` picture pixels
    per original pixel (nearest neighbour, so each original pixel is a visible square),
    contrast stretched to the crop (1st-99th percentile); outside the image is black.
    Returns the picture (uint8) and the original pixel at its top-left."""
    n = side // factor
    x0, y0 = zoom_origin(centre, factor, side)
    h, w = image01.shape
    crop = np.zeros((n, n), dtype=np.float32)
    ys, xs = slice(max(0, y0), min(h, y0 + n)), slice(max(0, x0), min(w, x0 + n))
    inside = image01[ys, xs]
    if inside.size:
        lo, hi = np.percentile(inside, (1, 99))
        if hi - lo < 1e-6:
            lo, hi = 0.0, 1.0
        crop[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = np.clip((inside - lo) / (hi - lo), 0, 1)
    big = np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)
    return (big * 255 + 0.5).astype(np.uint8), (x0, y0)


# --- the annotation file ----------------------------------------------------------------


class AnnotationFile:
    """The annotation CSV (``image,<name>_x,<name>_y,...,skipped``), saved one image at a time.

    Other columns of an existing file (``split``, ``spacing_x``...) are kept as they are."""

    def __init__(self, path, names):
        self.path, self.names = Path(path), list(names)

    @contextlib.contextmanager
    def _locked(self):
        try:
            import fcntl
        except ImportError:  # no advisory locks on this system: each save still replaces the file whole
            yield
            return
        lock = self.path.parent / f".{self.path.name}.lock"
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _columns(self) -> list[str]:
        return ["image", *[f"{n}_{a}" for n in self.names for a in "xy"], SKIPPED_COLUMN]

    def _read_raw(self) -> tuple[list[str], list[dict]]:
        if not self.path.exists():
            return self._columns(), []
        with open(self.path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        return header + [c for c in self._columns() if c not in header], rows

    def _write_raw(self, header, rows) -> None:
        from .fileio import write_text_atomic

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
        # Under the lock no other save is half-way: a temporary file here is a killed save's.
        for stale in self.path.parent.glob(f".tmp-????????-{self.path.name}"):
            stale.unlink(missing_ok=True)
        write_text_atomic(buf.getvalue(), self.path, durable=True)

    def create(self, files) -> None:
        """Write the file listing ``files``, none annotated (an existing file is kept)."""
        with self._locked():
            if not self.path.exists():
                self._write_raw(self._columns(), [{"image": f} for f in files])

    def read(self) -> dict[str, tuple[np.ndarray, set[str]]]:
        """Each listed image's points ``[N, 2]`` (NaN where not placed) and skipped names."""
        from .data.formats import read_annotation_file

        entries, names = read_annotation_file(self.path, landmarks=self.names)
        _, rows = self._read_raw()
        skipped = {
            r.get("image", "").strip(): {s for s in (r.get(SKIPPED_COLUMN) or "").split(";") if s} for r in rows
        }
        out = {}
        for e in entries:
            lm = (
                np.full((len(self.names), 2), np.nan)
                if e.landmarks is None
                else np.asarray(e.landmarks, dtype=np.float64)
            )
            out[e.file] = (lm, skipped.get(e.file, set()) & set(names))
        return out

    def save_image(self, file: str, points: np.ndarray, skipped) -> None:
        """Replace ``file``'s row (added if absent) with ``points`` and ``skipped``."""
        from .data.formats import coordinate_cell

        with self._locked():
            header, rows = self._read_raw()
            row = next((r for r in rows if (r.get("image") or "").strip() == file), None)
            if row is None:
                row = {"image": file, **_shared_spacing(header, rows)}
                rows.append(row)
            for n, (x, y) in zip(self.names, points):
                row[f"{n}_x"], row[f"{n}_y"] = coordinate_cell(x), coordinate_cell(y)
            row[SKIPPED_COLUMN] = ";".join(n for n in self.names if n in skipped)
            self._write_raw(header, rows)


def _shared_spacing(header, rows) -> dict:
    """``{"spacing_x": ..., "spacing_y": ...}`` when every row of the file gives the same
    spacing (an image added later comes from the same scanner), else nothing."""
    cells = {(r.get("spacing_x") or "").strip() + "," + (r.get("spacing_y") or "").strip() for r in rows}
    if "spacing_x" not in header or len(cells) != 1 or cells == {","}:
        return {}
    x, y = cells.pop().split(",")
    return {"spacing_x": x, "spacing_y": y}


# --- what to annotate -------------------------------------------------------------------


class Project:
    """The images to annotate (paths relative to ``root``), the landmark names, the file."""

    def __init__(
        self,
        root: Path,
        files: list[str],
        names: list[str],
        store: AnnotationFile,
        model: str | None,
        note: str,
        features: str | None = None,
    ):
        self.root, self.files, self.names, self.store, self.model, self.note = root, files, names, store, model, note
        self.features = features


def open_project(
    images: str, out: str, landmarks=None, model: str | None = None, features: str | None = None
) -> Project:
    """``images``: an image folder (every image under it) or a prepared dataset (its images,
    under the folder it was prepared from). ``out``: the annotation CSV; if it exists
    (``select``'s template, or an earlier session) its images come first, in its order, and
    the folder's others after them (a row is written for an image once it is touched).
    Landmark names: ``landmarks`` (a list), else the file's, the model's or the dataset's.
    ``features``: a pre-trained DDPM; without a model, images start from the landmarks of the
    first finished image, matched into them (:mod:`hf_landmark.matching`)."""
    from .data.prepared import INFO_FILE, dataset_info
    from .data.readers import _image_files

    if not images:
        raise UserInputError("--images: give the image folder (or a prepared dataset) to annotate")
    if not out:
        raise UserInputError("--out: give the annotation CSV to write (an existing one is continued)")
    path = Path(images)
    info = {}
    if path.is_file():
        raise UserInputError(
            f"--images {images}: give the image folder; a template CSV (from hf-landmark select) is --out"
        )
    if not path.is_dir():
        raise UserInputError(f"--images {images}: no such folder")
    if (path / INFO_FILE).is_file():
        info = dataset_info(path)
        if not info.get("root") or not Path(info["root"]).is_dir():
            raise UserInputError(
                f"--images {images}: this prepared dataset does not record an image folder that exists here "
                f"({info.get('root') or 'none'}); give the image folder itself"
            )
        root = Path(info["root"])
        folder_files = sorted(info.get("files", {}).values())
    else:
        root = path
        folder_files = [p.relative_to(root).as_posix() for p in _image_files(root)]
    out_path = Path(out)
    if out_path.suffix.lower() != ".csv":
        raise UserInputError(
            f"--out {out}: the annotation file is a CSV (name it .csv); predict --format and prepare custom convert others"
        )
    file_names = None
    if out_path.exists():
        from .data.formats import read_annotation_file

        entries, file_names = read_annotation_file(out_path)
        listed = [e.file for e in entries]
    model_names = _model_names(model)  # loads the model: a wrong one is reported now
    names = list(landmarks or []) or file_names or model_names or list(info.get("landmark_names") or [])
    if not names:
        raise UserInputError("--landmarks: name the landmarks to place (comma-separated, or a file with one per line)")
    if model_names and names != model_names:
        raise UserInputError(
            f"--model {model}: its landmarks ({', '.join(model_names)}) are not the ones to place ({', '.join(names)})"
        )
    if file_names and names != file_names:
        raise UserInputError(
            f"{out}: its landmarks ({', '.join(file_names)}) are not --landmarks ({', '.join(names)})"
        )
    if out_path.exists():
        missing = [f for f in listed if not (root / f).is_file()]
        if missing:
            raise UserInputError(
                f"{out}: {len(missing)} listed image(s) not found under {root}: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
        # The file's images first, in its order (select's choice); the others after them, so that
        # a later round (a model's worst predictions) goes to the same file.
        listed_set = set(listed)
        rest = [f for f in folder_files if f not in listed_set]
        files = listed + rest
        note = f"the {len(listed)} images listed in {out_path.name}" + (
            f", then the {len(rest)} others under {root}" if rest else ""
        )
    else:
        if not folder_files:
            raise UserInputError(f"--images {images}: no images (PNG, JPEG, BMP, TIFF, DICOM) found")
        files, note = folder_files, f"the {len(folder_files)} images under {root}"
    if features:
        from .errors import resolve_folder_or_repo

        features = resolve_folder_or_repo(features, "--features", "pre-trained DDPM")
    store = AnnotationFile(out_path, names)
    store.create(files)
    return Project(root, files, names, store, model or None, note, features or None)


#: What the upload box takes (the image formats :func:`hf_landmark.preprocessing.load_image` reads).
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"]
#: The temporary folders of upload sessions start with this.
UPLOAD_PREFIX = "hf-landmark-annotate-"


def uploads_project(files, names: list[str], model: str | None = None) -> Project:
    """A project of a visitor's uploaded images: copied into a new temporary folder of their
    own (each under its own name; two uploads of one name are numbered), annotated into
    ``annotations.csv`` there. ``names``: the landmarks to place."""
    import shutil
    import tempfile

    from .preprocessing import IMAGE_EXTENSIONS

    if not files:
        raise UserInputError("upload the x-rays to annotate first")
    if not names:
        raise UserInputError("name the landmarks to place, in order, separated by commas")
    if len(set(names)) != len(names):
        raise UserInputError("each landmark needs its own name")
    folder = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))
    try:
        taken: set[str] = set()
        for f in files:
            source = Path(f if isinstance(f, (str, Path)) else getattr(f, "name", f))
            if source.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UserInputError(f"{source.name}: not an image this page reads (PNG, JPEG, BMP, TIFF, DICOM)")
            name, k = source.name, 1
            while name.lower() in taken:
                k += 1
                name = f"{source.stem}-{k}{source.suffix}"
            taken.add(name.lower())
            shutil.copyfile(source, folder / name)
        return open_project(str(folder), str(folder / "annotations.csv"), names, model=model)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


#: Each page session's upload projects, to delete when the visitor leaves (``demo.unload``);
#: the session state's own delete callback is the backstop (Gradio drops closed sessions' state
#: an hour later).
_UPLOAD_SESSIONS: dict[str, list] = {}


def _forget_uploads(session) -> None:
    """Delete an upload session's temporary folder (its images, its file, its exports)."""
    import shutil
    import tempfile

    root = getattr(getattr(session, "project", None), "root", None)
    if root is not None and root.name.startswith(UPLOAD_PREFIX) and root.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(root, ignore_errors=True)


def export_annotations(project: Project) -> list[str]:
    """The project's annotation CSV, and the same in each tool's format, in ``export/`` beside
    it: complete images with their landmarks, the others as images to annotate (the CSV keeps
    every placed point and the landmarks marked missing)."""
    import shutil

    from .data.formats import labelstudio_config_path, write_annotations
    from .preprocessing import image_size

    out = project.store.path.parent / "export"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    saved = project.store.read()
    items = []
    for f in project.files:
        points = saved.get(f, (np.full((len(project.names), 2), np.nan), set()))[0]
        w, h = image_size(project.root / f)
        items.append(
            {"file": f, "width": int(w), "height": int(h), "landmarks": points if np.isfinite(points).all() else None}
        )
    shutil.copyfile(project.store.path, out / "annotations.csv")
    written = [out / "annotations.csv"]
    for kind, name in (
        ("cvat", "annotations.cvat.xml"),
        ("coco", "annotations.coco.json"),
        ("labelstudio", "annotations.labelstudio.json"),
        ("json", "annotations.json"),
    ):
        write_annotations(kind, items, project.names, out / name, image_root=project.root, coco_origin="corner")
        written.append(out / name)
        if kind == "labelstudio":
            written.append(labelstudio_config_path(out / name))
    write_annotations("labelme", items, project.names, out / "labelme", image_root=project.root)
    written.append(Path(shutil.make_archive(str(out / "annotations_labelme"), "zip", out / "labelme")))
    return [str(p) for p in written]


def _model_names(model: str | None) -> list[str]:
    if not model:
        return []
    from .pipeline_landmark import detection_pipeline as landmark_pipeline

    return list(landmark_pipeline(model).model.config.landmark_names or [])


def review_scores(radii, sizes, scores) -> np.ndarray:
    """How likely each image's predictions are wrong, to review the worst first: the mean over
    its landmarks of the calibrated radius relative to the image's size and to that landmark's
    median over the images (so every landmark weighs alike, whatever its usual radius); for a
    model without radii, one minus the mean heatmap score. ``radii`` ``[M, N]`` original
    pixels (NaN: none), ``sizes`` ``[M, 2]`` (W, H), ``scores`` ``[M, N]``."""
    radii = np.asarray(radii, dtype=np.float64)
    if radii.size and np.isfinite(radii).any():
        relative = radii / np.asarray(sizes, dtype=np.float64).max(axis=1, keepdims=True)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            typical = np.nanmedian(relative, axis=0, keepdims=True)
            score = np.nanmean(relative / np.where(typical > 0, typical, np.nan), axis=1)
        return np.nan_to_num(score, nan=0.0)
    return 1.0 - np.asarray(scores, dtype=np.float64).mean(axis=1)


def review_order(scores, finished) -> list[int]:
    """Images in the order to review them: those with work left first, the highest
    :func:`review_scores` first; finished images last, in the same order."""
    return sorted(range(len(scores)), key=lambda i: (bool(finished[i]), -float(scores[i]), i))


# --- one page's work ----------------------------------------------------------------------


class ImageState:
    def __init__(self, points: np.ndarray, skipped: set[str]):
        self.points = points.copy()
        self.placed = np.isfinite(points).all(axis=1)  # by the annotator (or accepted), saved
        self.skipped = set(skipped)
        self.proposals = None  # the model's (or matched) points [N, 2], its radii [N] and its flag
        self.radii = None
        self.unsure = None  # matched proposals that are not cycle-consistent [N]
        self.flag = False
        self.undo: list[tuple[int, np.ndarray, bool, bool]] = []


class AnnotationSession:
    """What one browser page is doing: which image, which landmark, the zoom."""

    def __init__(self, project: Project):
        self.project = project
        self.names = project.names
        saved = project.store.read()
        self.states = [
            ImageState(*saved.get(f, (np.full((len(self.names), 2), np.nan), set()))) for f in project.files
        ]
        self.order = list(range(len(project.files)))
        self.review = None  # rows of the review queue once ranked
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._predictions: dict[int, list[dict]] = {}
        self.zoom_factor = ZOOM_FACTORS[1]
        self.use_zoom, self.show_radii = True, True
        self.message = ""
        self.extractor = None  # the DDPM's features, for proposals matched from a finished image
        # Continue where the file stops: the first image with work left.
        self.pos = next((k for k, i in enumerate(self.order) if not self.complete(i)), 0)
        self._enter()

    # state
    @property
    def index(self) -> int:
        return self.order[self.pos]

    @property
    def state(self) -> ImageState:
        return self.states[self.index]

    def complete(self, i: int) -> bool:
        """Every landmark placed: what ``prepare custom`` takes as an annotated image."""
        return bool(self.states[i].placed.all())

    def finished(self, i: int) -> bool:
        """Nothing left to do on the image: every landmark placed or marked missing."""
        s = self.states[i]
        return all(s.placed[k] or n in s.skipped for k, n in enumerate(self.names))

    def image(self, i: int | None = None) -> np.ndarray:
        from .preprocessing import load_image

        i = self.index if i is None else i
        if i not in self._images:
            self._images[i] = load_image(str(self.project.root / self.project.files[i]))[0]
            while len(self._images) > 4:
                self._images.popitem(last=False)
        self._images.move_to_end(i)
        return self._images[i]

    def predictions(self, i: int) -> list[dict] | None:
        if not self.project.model:
            return None
        if i not in self._predictions:
            from .pipeline_landmark import detection_pipeline as landmark_pipeline

            self._predictions[i] = landmark_pipeline(self.project.model)(
                str(self.project.root / self.project.files[i])
            )
        return self._predictions[i]

    def _enter(self) -> None:
        """Arrive at the current image: the model's proposals, the first landmark to do."""
        st = self.state
        preds = self.predictions(self.index)
        if preds is not None and st.proposals is None:
            st.proposals = np.array([[p["x"], p["y"]] for p in preds], dtype=np.float64)
            st.radii = np.array([np.nan if p.get("radius") is None else p["radius"] for p in preds], dtype=np.float64)
            st.flag = preds[0].get("flag") == "low_confidence"
        elif preds is None and self.project.features and st.proposals is None and not self.complete(self.index):
            self._matched_proposals()
        self.current = self._next_todo(-1)
        self.zoom_centre = None
        self._follow()

    def _follow(self) -> None:
        """With the model's proposals, the zoom opens on the current landmark's proposal:
        one click there moves it, Enter accepts it."""
        st = self.state
        if (
            self.use_zoom
            and st.proposals is not None
            and not st.placed[self.current]
            and np.isfinite(st.proposals[self.current]).all()
        ):
            self.zoom_centre = tuple(st.proposals[self.current])

    def _matched_proposals(self) -> None:
        """Proposals from the first finished image, its landmarks matched into this one; a
        match that does not map back to its landmark (not cycle-consistent) is not proposed."""
        from .matching import FeatureExtractor, match_images

        st = self.state
        ref = next(
            (
                i
                for i in range(len(self.states))
                if i != self.index and self.complete(i) and self.states[i].placed.all()
            ),
            None,
        )
        if ref is None:
            return
        if self.extractor is None:
            self.extractor = FeatureExtractor.from_ddpm(self.project.features)
        m = match_images(self.extractor, self.image(ref), self.states[ref].points, [self.image()])[0]
        # Only a match that maps back to its landmark is shown: a far-off proposal is worse than none.
        consistent = np.asarray(m["consistent"], bool)
        st.proposals = np.where(consistent[:, None], m["xy"], np.nan)
        st.unsure = np.zeros(len(consistent), bool)
        self.message = (
            f"Proposals matched from {self.project.files[ref]} for {int(consistent.sum())} of {len(consistent)} landmarks; "
            f"the other {int((~consistent).sum())} did not map back to their landmark and are not shown: place them."
        )

    def _next_todo(self, after: int) -> int:
        st, n = self.state, len(self.names)
        for k in list(range(after + 1, n)) + list(range(0, after + 1)):
            if not st.placed[k] and self.names[k] not in st.skipped:
                return k
        return min(max(after, 0), n - 1)

    def shown_points(self) -> np.ndarray:
        """Placed points, else the proposals (the model's or matched), else NaN."""
        st = self.state
        pts = st.points.copy()
        if st.proposals is not None:
            todo = ~st.placed & np.array([n not in st.skipped for n in self.names])
            pts[todo] = st.proposals[todo]
        return pts

    def _save(self) -> None:
        st = self.state
        self.project.store.save_image(
            self.project.files[self.index], np.where(st.placed[:, None], st.points, np.nan), st.skipped
        )

    def _remember(self, k: int) -> None:
        st = self.state
        st.undo.append((k, st.points[k].copy(), bool(st.placed[k]), self.names[k] in st.skipped))

    # actions
    def place(self, x: float, y: float) -> None:
        h, w = self.image().shape
        if not (-0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5):
            self.message = "That click is outside the image."
            return
        k, st = self.current, self.state
        self._remember(k)
        st.points[k], st.placed[k] = (x, y), True
        st.skipped.discard(self.names[k])
        self._save()
        self.message = f"Placed {k + 1} {self.names[k]} at ({x:.1f}, {y:.1f})."
        self.current = self._next_todo(k)
        self._follow()

    def click_overview(self, index) -> None:
        (_, _), scale = display_scale(*self.image().shape[::-1])
        x, y = click_to_original(index, scale)
        st = self.state
        if self.complete(self.index) or st.placed[self.current]:
            # Every landmark is placed: a click on one selects it, to move it.
            pts = (self.shown_points() + 0.5) * np.asarray(scale) - 0.5
            d = np.hypot(pts[:, 0] - (index[0] - 0.5), pts[:, 1] - (index[1] - 0.5))
            if np.isfinite(d).any() and np.nanmin(d) <= SELECT_RADIUS:
                self.current = int(np.nanargmin(d))
                self.message = f"Moving {self.current + 1} {self.names[self.current]}: click its new position."
                self.zoom_centre = tuple(self.shown_points()[self.current]) if self.use_zoom else None
                return
        if self.use_zoom:
            self.zoom_centre = (x, y)
            self.message = f"Click the exact position of {self.current + 1} {self.names[self.current]} in the zoom."
        else:
            self.place(x, y)

    def click_zoom(self, index) -> None:
        if self.zoom_centre is None:
            self.message = "Click the overview first; the zoom opens there."
            return
        self.place(*click_to_original(index, self.zoom_factor, zoom_origin(self.zoom_centre, self.zoom_factor)))

    def undo(self) -> None:
        st = self.state
        if not st.undo:
            self.message = "Nothing to undo on this image."
            return
        k, point, placed, skipped = st.undo.pop()
        st.points[k], st.placed[k] = point, placed
        (st.skipped.add if skipped else st.skipped.discard)(self.names[k])
        self._save()
        self.current = k
        self.message = f"Undone: {k + 1} {self.names[k]}."

    def skip(self) -> None:
        k, st = self.current, self.state
        self._remember(k)
        st.points[k], st.placed[k] = np.nan, False
        st.skipped.add(self.names[k])
        self._save()
        self.message = f"Marked {k + 1} {self.names[k]} missing on this image."
        self.current = self._next_todo(k)
        self._follow()

    def accept_one(self) -> None:
        """Accept the model's proposal for the current landmark."""
        st, k = self.state, self.current
        if (
            st.proposals is None
            or st.placed[k]
            or self.names[k] in st.skipped
            or not np.isfinite(st.proposals[k]).all()
        ):
            self.message = "No proposal to accept for this landmark."
            return
        self._remember(k)
        st.points[k], st.placed[k] = st.proposals[k], True
        self._save()
        self.message = f"Accepted {k + 1} {self.names[k]}."
        self.current = self._next_todo(k)
        self._follow()

    def accept(self) -> None:
        st = self.state
        if st.proposals is None:
            self.message = "No model proposals to accept (open with a model)."
            return
        todo = [
            k
            for k in range(len(self.names))
            if not st.placed[k] and self.names[k] not in st.skipped and np.isfinite(st.proposals[k]).all()
        ]
        for k in todo:
            self._remember(k)
            st.points[k], st.placed[k] = st.proposals[k], True
        self._save()
        self.message = f"Accepted {len(todo)} proposed landmark(s)."
        self.current = self._next_todo(self.current)

    def select_landmark(self, k: int) -> None:
        self.current = k
        pt = self.shown_points()[k]
        # The zoom follows the chosen landmark: on its point, else closed until the overview is clicked.
        self.zoom_centre = tuple(pt) if self.use_zoom and np.isfinite(pt).all() else None
        where = "click its new position" if np.isfinite(pt).all() else "click near it on the image"
        self.message = f"{k + 1} {self.names[k]}: {where}" + (
            " (then the exact position in the zoom)." if self.use_zoom else "."
        )

    def next_landmark(self) -> None:
        self.current = (self.current + 1) % len(self.names)
        self._follow()

    def go(self, step: int) -> None:
        self.pos = min(max(self.pos + step, 0), len(self.order) - 1)
        self.message = ""
        self._enter()

    def rank(self, progress=None) -> list[list]:
        """Predict every image and order the pages worst first (the review queue)."""
        if not self.project.model:
            raise UserInputError("the review queue needs a model: open the images with one")
        n = len(self.project.files)
        flags, radii, sizes, scores = [], [], [], []
        for i in range(n):
            if progress is not None:
                progress((i, n), desc="predicting")
            preds = self.predictions(i)
            flags.append(preds[0].get("flag") == "low_confidence")
            radii.append([np.nan if p.get("radius") is None else p["radius"] for p in preds])
            scores.append([p["score"] for p in preds])
            sizes.append(self.image_size(i))
        badness = review_scores(radii, sizes, scores)
        finished = [self.finished(i) for i in range(n)]
        self.order = review_order(badness, finished)
        self.pos = 0
        self._enter()
        todo = n - sum(finished)
        self.message = (
            f"Review order: the {todo} image(s) with work left, the least certain predictions first (mean relative "
            f"radius), then the {n - todo} finished."
        )
        self.review = [
            [
                k + 1,
                self.project.files[i],
                self.progress_label(i),
                _round(badness[i]),
                "low confidence" if flags[i] else "",
            ]
            for k, i in enumerate(self.order)
        ]
        return self.review

    def progress_label(self, i: int) -> str:
        """``done`` (every landmark placed), ``in progress`` (some placed or marked missing) or empty."""
        st = self.states[i]
        return "done" if self.complete(i) else "in progress" if st.placed.any() or st.skipped else ""

    def image_size(self, i: int) -> tuple[int, int]:
        from .preprocessing import image_size

        w, h = image_size(self.project.root / self.project.files[i])
        return int(w), int(h)

    def thumbnail(self, i: int, side: int = 160) -> np.ndarray:
        """Image ``i`` small, with the model's proposals (or the placed points) drawn on it."""
        from .preprocessing import resize_image, to_uint8

        img = self.image(i)
        size, scale = display_scale(img.shape[1], img.shape[0], side=side)
        rgb = Image.fromarray(to_uint8(resize_image(img, size)), mode="L").convert("RGB")
        draw = ImageDraw.Draw(rgb)
        preds = self.predictions(i) or []
        st = self.states[i]
        pts = np.where(st.placed[:, None], st.points, np.array([[p["x"], p["y"]] for p in preds]) if preds else np.nan)
        for k, p in enumerate(pts):
            if np.isfinite(p).all():
                px, py = original_to_picture(p, scale)
                draw.ellipse(
                    [px - 2, py - 2, px + 2, py + 2], fill=_PLACED if st.placed[k] else _PROPOSED, outline=(0, 0, 0)
                )
        return np.asarray(rgb)

    # what the page shows
    def status(self) -> str:
        st, k = self.state, self.current
        placed = int(st.placed.sum())
        done = sum(self.complete(i) for i in range(len(self.states)))
        order = " (review order: worst predictions first)" if self.review else ""
        lines = [
            f"**Image {self.pos + 1} of {len(self.order)}**{order} · `{self.project.files[self.index]}` · "
            f"{placed} of {len(self.names)} landmarks placed"
            + (f", {len(st.skipped)} missing" if st.skipped else "")
            + f" · {done} of {len(self.states)} images complete",
            f"### Landmark {k + 1} of {len(self.names)}: {self.names[k]}",
        ]
        if self.complete(self.index):
            lines[1] += " · every landmark done here: **→** for the next image, or click a point to move it"
        elif self.finished(self.index):
            lines[1] += (
                " · nothing left to place, but a landmark marked missing leaves the image incomplete: prepare custom "
                "refuses it (or puts it in the pool with --drop-incomplete); **z** or the list to place it after all"
            )
        if st.flag:
            lines.append("**The model flags this image as unlike its training images: check every proposal.**")
        if self.message:
            lines.append(self.message)
        return "\n\n".join(lines)

    def table(self) -> list[list]:
        st = self.state
        rows = []
        for k, n in enumerate(self.names):
            if st.placed[k]:
                x, y, what = *st.points[k], "placed"
            elif n in st.skipped:
                x, y, what = np.nan, np.nan, "missing"
            elif st.proposals is not None and np.isfinite(st.proposals[k]).all():
                x, y, what = (
                    *st.proposals[k],
                    "proposed (unsure)" if st.unsure is not None and st.unsure[k] else "proposed",
                )
            else:
                x, y, what = np.nan, np.nan, ""
            radius = st.radii[k] if st.radii is not None else np.nan
            rows.append([k + 1, n, _round(x), _round(y), what, _round(radius)])
        return rows

    def overview(self) -> np.ndarray:
        from .preprocessing import resize_image, to_uint8

        img = self.image()
        size, scale = display_scale(img.shape[1], img.shape[0])
        small = resize_image(img, size, method="area" if size[0] <= img.shape[1] else "bilinear")
        rgb = Image.fromarray(to_uint8(small), mode="L").convert("RGB")
        return np.asarray(self._draw(rgb, scale, (0, 0)))

    def zoom(self) -> np.ndarray | None:
        if self.zoom_centre is None:
            return None
        pic, origin = zoom_crop(self.image(), self.zoom_centre, self.zoom_factor)
        rgb = Image.fromarray(pic, mode="L").convert("RGB")
        return np.asarray(self._draw(rgb, self.zoom_factor, origin, cross=True))

    def _draw(self, rgb: Image.Image, scale, origin, cross: bool = False) -> Image.Image:
        st, pts = self.state, self.shown_points()
        layer = Image.new("RGBA", rgb.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        font = ImageFont.load_default(size=16)
        sx = scale if np.isscalar(scale) else scale[0]
        for k, p in enumerate(pts):
            if not np.isfinite(p).all():
                continue
            px, py = original_to_picture(p, scale, origin)
            if not (-40 <= px <= rgb.width + 40 and -40 <= py <= rgb.height + 40):
                continue
            colour = _PLACED if st.placed[k] else _UNSURE if st.unsure is not None and st.unsure[k] else _PROPOSED
            if self.show_radii and not st.placed[k] and st.radii is not None and np.isfinite(st.radii[k]):
                r = st.radii[k] * sx  # two-tone: a dark halo under a light line reads on bone and on air alike
                draw.ellipse([px - r, py - r, px + r, py + r], outline=(0, 0, 0, 200), width=4)
                draw.ellipse([px - r + 1, py - r + 1, px + r - 1, py + r - 1], outline=(*_PROPOSED, 255), width=2)
            r = 4
            if cross:  # a crosshair with a gap, so the pixel itself stays visible
                for a, b in (
                    ((px - 12, py), (px - 3, py)),
                    ((px + 3, py), (px + 12, py)),
                    ((px, py - 12), (px, py - 3)),
                    ((px, py + 3), (px, py + 12)),
                ):
                    draw.line([a, b], fill=(*colour, 255), width=1)
            elif st.placed[k]:
                draw.ellipse([px - r, py - r, px + r, py + r], fill=(*colour, 230), outline=(0, 0, 0, 255))
            else:
                draw.ellipse([px - r, py - r, px + r, py + r], outline=(*colour, 255), width=2)
            if k == self.current:
                draw.ellipse([px - 9, py - 9, px + 9, py + 9], outline=(*_CURRENT, 255), width=2)
            draw.text(
                (px + 7, py - 20),
                str(k + 1),
                fill=(255, 255, 255, 255),
                font=font,
                stroke_width=2,
                stroke_fill=(0, 0, 0, 255),
            )
        if cross and self.zoom_centre is not None:  # where the overview was clicked
            cx, cy = original_to_picture(np.round(self.zoom_centre), scale, origin)
            m = scale / 2 + 3  # around the pixel, never over it
            draw.rectangle([cx - m, cy - m, cx + m, cy + m], outline=(80, 160, 255, 160), width=1)
        return Image.alpha_composite(rgb.convert("RGBA"), layer).convert("RGB")

    def reference(self) -> np.ndarray | None:
        """Where the current landmark is on the first complete image (another than this one)."""
        from .preprocessing import resize_image, to_uint8

        k = self.current
        ref = next(
            (i for i in range(len(self.states)) if i != self.index and self.states[i].placed[k] and self.complete(i)),
            None,
        )
        if ref is None:
            return None
        img = self.image(ref)
        size, scale = display_scale(img.shape[1], img.shape[0], side=240)
        rgb = Image.fromarray(to_uint8(resize_image(img, size)), mode="L").convert("RGB")
        draw = ImageDraw.Draw(rgb)
        px, py = original_to_picture(self.states[ref].points[k], scale)
        draw.ellipse([px - 7, py - 7, px + 7, py + 7], outline=_CURRENT, width=2)
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=_CURRENT)
        self.image()  # keep the current image the most recent in the cache
        return np.asarray(rgb)


def _round(v):
    return None if v is None or not np.isfinite(v) else round(float(v), 2)


# --- the page -----------------------------------------------------------------------------

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
        from .data.formats import read_landmark_names

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
