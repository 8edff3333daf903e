"""The annotation file and what to annotate: the CSV saved one image at a time (locked,
atomic), a project of images (a folder, a prepared dataset, or a visitor's uploads), and the
export in each tool's format."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import numpy as np

from ..errors import UserInputError

SKIPPED_COLUMN = "skipped"


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
        from ..fileio import write_text_atomic

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
        from ..data.formats import read_annotation_file

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
        from ..data.formats import coordinate_cell

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


def _folder_images(images: str):
    """``(root, its image files relative to it, the prepared dataset's record or {})`` of
    ``--images``: an image folder, or a prepared dataset (the folder it was prepared from)."""
    from ..data.custom import _image_files
    from ..data.prepared import INFO_FILE, dataset_info

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
    return root, folder_files, info


def _file_then_folder(out: str, listed: list[str], root: Path, folder_files: list[str]):
    """The annotation file's images first, in its order (select's choice); the folder's others
    after them, so that a later round (a model's worst predictions) goes to the same file."""
    missing = [f for f in listed if not (root / f).is_file()]
    if missing:
        raise UserInputError(
            f"{out}: {len(missing)} listed image(s) not found under {root}: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    listed_set = set(listed)
    rest = [f for f in folder_files if f not in listed_set]
    files = listed + rest
    note = f"the {len(listed)} images listed in {Path(out).name}" + (
        f", then the {len(rest)} others under {root}" if rest else ""
    )
    return files, note


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
    if not images:
        raise UserInputError("--images: give the image folder (or a prepared dataset) to annotate")
    if not out:
        raise UserInputError("--out: give the annotation CSV to write (an existing one is continued)")
    root, folder_files, info = _folder_images(images)
    out_path = Path(out)
    if out_path.suffix.lower() != ".csv":
        raise UserInputError(
            f"--out {out}: the annotation file is a CSV (name it .csv); predict --format and prepare custom convert others"
        )
    file_names = None
    if out_path.exists():
        from ..data.formats import read_annotation_file

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
        files, note = _file_then_folder(out, listed, root, folder_files)
    else:
        if not folder_files:
            raise UserInputError(f"--images {images}: no images (PNG, JPEG, BMP, TIFF, DICOM) found")
        files, note = folder_files, f"the {len(folder_files)} images under {root}"
    if features:
        from ..errors import resolve_folder_or_repo

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

    from ..preprocessing import IMAGE_EXTENSIONS

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

    from ..data.formats import labelstudio_config_path, write_annotations
    from ..preprocessing import image_size

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
    from ..pipeline_landmark import detection_pipeline as landmark_pipeline

    return list(landmark_pipeline(model).model.config.landmark_names or [])
