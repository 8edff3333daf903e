"""What one page is doing, testable without Gradio: which image and landmark, the zoom,
the model's or matched proposals, every action (place, undo, missing, accept), the review
queue's order, and the pictures the page shows."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import UserInputError
from .geometry import (
    _CURRENT,
    _PLACED,
    _PROPOSED,
    SELECT_RADIUS,
    ZOOM_FACTORS,
    click_to_original,
    display_scale,
    original_to_picture,
    zoom_crop,
    zoom_origin,
)
from .review import review_order, review_scores
from .store import Project


class ImageState:
    def __init__(self, points: np.ndarray, skipped: set[str]):
        self.points = points.copy()
        self.placed = np.isfinite(points).all(axis=1)  # by the annotator (or accepted), saved
        self.skipped = set(skipped)
        self.proposals = None  # the model's (or matched) points [N, 2], its radii [N] and its flag
        self.radii = None
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
        from ..preprocessing import load_image

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
            from ..pipeline_landmark import detection_pipeline as landmark_pipeline

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
        from ..matching import FeatureExtractor, match_images

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
        from ..preprocessing import image_size

        w, h = image_size(self.project.root / self.project.files[i])
        return int(w), int(h)

    def thumbnail(self, i: int, side: int = 160) -> np.ndarray:
        """Image ``i`` small, with the model's proposals (or the placed points) drawn on it."""
        from ..preprocessing import resize_image, to_uint8

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
                x, y, what = *st.proposals[k], "proposed"
            else:
                x, y, what = np.nan, np.nan, ""
            radius = st.radii[k] if st.radii is not None else np.nan
            rows.append([k + 1, n, _round(x), _round(y), what, _round(radius)])
        return rows

    def overview(self) -> np.ndarray:
        from ..preprocessing import resize_image, to_uint8

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
            colour = _PLACED if st.placed[k] else _PROPOSED
            r = 4  # the marker's radius
            ring = st.radii[k] * sx if self.show_radii and not st.placed[k] and st.radii is not None else np.nan
            # The radius, unless the marker covers it; two-tone: a dark halo under a light line
            # reads on bone and on air alike.
            if ring > r:
                draw.ellipse([px - ring, py - ring, px + ring, py + ring], outline=(0, 0, 0, 200), width=4)
                box = [px - ring + 1, py - ring + 1, px + ring - 1, py + ring - 1]
                draw.ellipse(box, outline=(*_PROPOSED, 255), width=2)
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
        from ..preprocessing import resize_image, to_uint8

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
