"""The annotation page, driven as a person drives it: ``hf-landmark annotate`` in a real
headless browser (Debian's chromium through Playwright), clicks at screen positions computed
from what the page shows, and the saved CSV checked against the true coordinates."""

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_landmark.annotation import AnnotationFile, click_to_original, review_order, zoom_crop
from hf_landmark.data.formats import read_annotation_file

NAMES = ["Sella", "Nasion", "Orbitale", "Porion", "Menton"]
# Each image: a flat grey field with one bright pixel per landmark inside a black ring, far
# enough apart that a zoom shows one of them; positions differ per image.
BASE = np.array([[40, 50], [200, 40], [125, 150], [45, 250], [205, 262]])
W, H = 250, 300
ZOOM = 4  # the page's default magnification


def truth(i: int) -> np.ndarray:
    return BASE + np.array([[3 * i, 2 * i]] * 5) + np.array([[k % 3, (k * 2 + i) % 5] for k in range(5)])


def write_images(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((H, W), 128, np.uint8)
        for x, y in truth(i):
            img[y - 1 : y + 2, x - 1 : x + 2] = 0
            img[y, x] = 255
        Image.fromarray(img).save(folder / f"case{i}.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, None
    return shutil.which("chromium"), sync_playwright


needs_browser = pytest.mark.skipif(
    None in _browser(), reason="needs Debian's chromium and the playwright package (.ci/run installs both)"
)


def serve(args, port):
    """``hf-landmark annotate ARGS --port PORT``, running, and its process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf_landmark_cli", "annotate", *args, "--port", str(port), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("annotate exited: " + proc.stdout.read()[-3000:])
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("annotate did not start in 120 s")


class Page:
    """The annotation page, as a user sees it."""

    def __init__(self, page, port):
        self.page, self.port = page, port

    def status(self) -> str:
        return self.page.locator("#annot-status").inner_text()

    def wait_status(self, text: str, timeout=30000) -> None:
        self.page.wait_for_function(
            "(t) => { const e = document.querySelector('#annot-status'); return e && e.innerText.includes(t); }",
            arg=text,
            timeout=timeout,
        )

    def open(self, proc, text: str) -> None:
        """Load the page and wait until its status shows ``text`` (the first load runs the
        server's first image: with a model, its proposals). A page that does not fails the test
        with what the page shows and what the server said (its traceback)."""
        self.page.goto(f"http://127.0.0.1:{self.port}/")
        try:
            self.wait_status(text, timeout=60000)
        except Exception as err:
            seen = self.page.locator("body").inner_text()[-1500:]
            stop(proc)
            said = proc.stdout.read()[-3000:]
            raise AssertionError(f"the page never showed {text!r}; it shows: {seen}\nthe server said: {said}") from err

    def rows(self, elem_id: str, containing: str) -> list[str]:
        """The rows of the table ``elem_id`` (header left out), once one contains ``containing``."""
        js = (
            f"() => Array.from(document.querySelectorAll('#{elem_id} [role=row]')).filter(r => r.getAttribute('aria-rowindex') !== '1')"
            ".map(r => r.innerText.replace(/\\s+/g, ' ').trim())"
        )
        self.page.wait_for_function(f"() => ({js})().some(r => r.includes({containing!r}))", timeout=60000)
        return self.page.evaluate(js)

    def picture(self, elem_id: str):
        """The picture shown in ``elem_id``: (its box on screen, its pixels)."""
        loc = self.page.locator(f"#{elem_id} img")
        loc.scroll_into_view_if_needed()
        self.page.wait_for_function(
            f"() => {{ const i = document.querySelector('#{elem_id} img'); return i && i.complete && i.naturalWidth > 0; }}"
        )
        left, top, w, h, nw, nh, src = self.page.evaluate(
            f"() => {{ const i = document.querySelector('#{elem_id} img'); const r = i.getBoundingClientRect(); "
            "return [r.left, r.top, r.width, r.height, i.naturalWidth, i.naturalHeight, i.src]; }"
        )
        pixels = np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(src).read())).convert("RGB"))
        assert pixels.shape[:2] == (nh, nw)
        return (left, top, w, h, nw, nh), pixels, src

    def click_picture(self, elem_id: str, corner_xy) -> None:
        """Click the picture at ``corner_xy``, its own corner coordinates (pixel i spans [i, i + 1))."""
        (left, top, w, h, nw, nh), _, _ = self.picture(elem_id)
        r = min(w / nw, h / nh, 1.0)  # shown like CSS object-fit: contain, never enlarged
        self.page.mouse.click(left + (w - nw * r) / 2 + corner_xy[0] * r, top + (h - nh * r) / 2 + corner_xy[1] * r)

    def click_overview_at(self, xy) -> None:
        """Click the overview where the original's pixel centre ``xy`` is shown."""
        _, pixels, _ = self.picture("annot-overview")
        nh, nw = pixels.shape[:2]
        self.click_picture("annot-overview", ((xy[0] + 0.5) * nw / W, (xy[1] + 0.5) * nh / H))

    def click_bright_pixel_in_zoom(self, old_src: str | None) -> None:
        """Find the landmark's bright pixel in the zoom (a square of white picture pixels) and
        click the middle of that square."""
        if old_src is not None:
            self.page.wait_for_function(
                "(s) => { const i = document.querySelector('#annot-zoom img'); return i && i.src !== s; }", arg=old_src
            )
        _, pixels, _ = self.picture("annot-zoom")
        white, black = (pixels == 255).all(axis=2), (pixels == 0).all(axis=2)
        z, found = ZOOM, []
        for y, x in zip(*np.nonzero(white)):
            block = white[y : y + z, x : x + z]
            sides = [
                black[y : y + z, x - z : x],
                black[y : y + z, x + z : x + 2 * z],
                black[y - z : y, x : x + z],
                black[y + z : y + 2 * z, x : x + z],
            ]
            # The bright original pixel: a z x z white square in its ring of black pixels (drawn numbers are neither).
            if block.shape == (z, z) and block.all() and sum(b.size == z * z and b.mean() >= 0.5 for b in sides) >= 3:
                found.append((x, y))
        assert len(found) == 1, f"expected one {z} x {z} white square in a black ring in the zoom, found {found}"
        x, y = found[0]
        self.click_picture("annot-zoom", (x + z / 2, y + z / 2))

    def zoom_src(self):
        return self.page.evaluate(
            "() => { const i = document.querySelector('#annot-zoom img'); return i ? i.src : null; }"
        )

    def place(self, xy, name: str) -> None:
        """Place the landmark asked for at the original's ``xy``: overview, then zoom."""
        old = self.zoom_src()
        self.click_overview_at(xy)
        self.wait_status("in the zoom")
        self.click_bright_pixel_in_zoom(old)
        self.wait_status(f"Placed {NAMES.index(name) + 1} {name} at")


@contextlib.contextmanager
def annotation_page(args):
    """``hf-landmark annotate ARGS`` served, and a headless browser on it: ``(page, ui)``; the
    page has loaded and shows an image."""
    chromium, sync_playwright = _browser()
    port = _free_port()
    proc = serve(args, port)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            ui = Page(page, port)
            ui.open(proc, "Landmark 1 of 5: Sella")  # the first landmark, asked for by its name
            yield page, ui
            browser.close()
    finally:
        stop(proc)


def stop(proc) -> None:
    """Ctrl+C, as a user stops the page; a server still shutting down a minute later is killed
    (what the page saved is on disk already: every action is saved at once)."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


@needs_browser
def test_annotate_three_images_by_clicking(tmp_path):
    images, out = tmp_path / "xrays", tmp_path / "ann.csv"
    write_images(images)
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    with annotation_page(["--images", str(images), "--landmarks", str(tmp_path / "names.txt"), "--out", str(out)]) as (
        page,
        ui,
    ):
        # The page opens on the first image and asks for the first landmark by name.
        assert "Image 1 of 3" in ui.status() and "case0.png" in ui.status()
        t0 = truth(0)
        for k in range(3):
            ui.place(t0[k], NAMES[k])
        assert "Landmark 4 of 5: Porion" in ui.status()  # advanced automatically
        # A wrong Porion (on Sella's side), undone with the key, then placed right.
        old = ui.zoom_src()
        ui.click_overview_at((100, 100))
        ui.wait_status("in the zoom")
        page.wait_for_function("(s) => document.querySelector('#annot-zoom img').src !== s", arg=old)
        ui.click_picture("annot-zoom", (240.5, 240.5))
        ui.wait_status("Placed 4 Porion at")
        page.keyboard.press("z")
        ui.wait_status("Undone: 4 Porion")
        assert np.isnan(AnnotationFile(out, NAMES).read()["case0.png"][0][3]).all()  # the file forgot it too
        ui.place(t0[3], "Porion")
        ui.place(t0[4], "Menton")
        assert "1 of 3 images complete" in ui.status()
        page.keyboard.press("ArrowRight")
        ui.wait_status("Image 2 of 3")
        t1 = truth(1)
        ui.place(t1[0], "Sella")
        ui.place(t1[1], "Nasion")
        # Reload mid-way: the page continues where the file stops.
        page.reload()
        ui.wait_status("Landmark 3 of 5: Orbitale", timeout=60000)
        assert "Image 2 of 3" in ui.status() and "2 of 5 landmarks placed" in ui.status()
        for k in range(2, 5):
            ui.place(t1[k], NAMES[k])
        page.get_by_role("button", name="Next image →").click()
        ui.wait_status("Image 3 of 3")
        # Without the zoom: one click on the overview places the landmark.
        page.locator("#annot-use-zoom input").click()
        t2 = truth(2)
        for k in range(5):
            ui.click_overview_at(t2[k])
            ui.wait_status(f"Placed {k + 1} {NAMES[k]} at")
        ui.wait_status("3 of 3 images complete")
        page.screenshot(path=str(tmp_path / "annotate.png"), full_page=True)

    entries, names = read_annotation_file(out)
    assert names == NAMES and [e.file for e in entries] == ["case0.png", "case1.png", "case2.png"]
    got = {e.file: e.landmarks for e in entries}
    # With the zoom (4 screen px per original px) within 0.5 px; without it within the overview's scale.
    assert np.abs(got["case0.png"] - truth(0)).max() <= 0.5
    assert np.abs(got["case1.png"] - truth(1)).max() <= 0.5
    assert np.abs(got["case2.png"] - truth(2)).max() <= max(W, H) / 720
    # The file is what prepare custom reads, and a detector trains on it.
    from hf_landmark_cli import main as cli

    assert (
        cli(
            [
                "prepare",
                "custom",
                "--root",
                str(images),
                "--annotations",
                str(out),
                "--out",
                str(tmp_path / "mine"),
                "--image-size",
                "64",
                "--split-counts",
                "2,1,0",
                "--allow-empty-splits",
            ]
        )
        == 0
    )
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(tmp_path / "mine"),
                "--init",
                "scratch",
                "--preset",
                "tiny",
                "--resolution",
                "32",
                "--num-labels",
                "2",
                "--max-steps",
                "2",
                "--eval-steps",
                "1",
                "--no-refine",
                "--report-to",
                "none",
                "--output-dir",
                str(tmp_path / "ft"),
            ]
        )
        == 0
    )
    assert (tmp_path / "ft" / "model" / "model.safetensors").is_file()


def make_model(folder: Path) -> Path:
    """A small untrained detector for the five landmarks, with calibrated radii."""
    from hf_landmark import LandmarkConfig, LandmarkDetector
    from hf_landmark.image_processing_landmark import processor_for_model

    model = LandmarkDetector(
        LandmarkConfig(backbone_config="tiny", num_landmarks=5, image_size=32, landmark_names=NAMES)
    )
    model.save_pretrained(folder)
    processor = processor_for_model(model)
    processor.calibration_scores = [[0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]] * 5
    processor.save_pretrained(folder)
    return folder


@needs_browser
def test_model_proposals_corrections_and_the_review_queue(tmp_path):
    images, out = tmp_path / "xrays", tmp_path / "ann.csv"
    write_images(images, n=2)
    # A 12 x 12 image is too small for the model: flagged low confidence, so reviewed first.
    Image.fromarray(np.full((12, 12), 100, np.uint8)).save(images / "tiny.png")
    model = make_model(tmp_path / "model")
    from hf_landmark.app import landmark_pipeline

    proposed = {
        f: np.array([[p["x"], p["y"]] for p in landmark_pipeline(str(model))(str(images / f))])
        for f in ("case0.png", "case1.png")
    }
    with annotation_page(["--images", str(images), "--out", str(out), "--model", str(model)]) as (
        page,
        ui,
    ):  # names: the model's
        assert "case0.png" in ui.status()
        rows = ui.rows("annot-table", "proposed")
        assert len(rows) == 5 and all(
            "proposed" in r for r in rows
        )  # every landmark starts from the model's prediction
        # Move Sella to where it is; the file holds that one point, the proposals are not saved yet.
        ui.place(truth(0)[0], "Sella")
        saved = AnnotationFile(out, NAMES).read()["case0.png"][0]
        assert np.abs(saved[0] - truth(0)[0]).max() <= 0.5 and np.isnan(saved[1:]).all()
        # The zoom has moved on to Nasion's proposal: Enter accepts it, a accepts the other three.
        page.keyboard.press("Enter")
        ui.wait_status("Accepted 2 Nasion")
        assert np.abs(AnnotationFile(out, NAMES).read()["case0.png"][0][1] - proposed["case0.png"][1]).max() < 1e-3
        page.keyboard.press("a")
        ui.wait_status("Accepted 3 proposed landmark(s)")
        saved = AnnotationFile(out, NAMES).read()["case0.png"][0]
        assert np.abs(saved[1:] - proposed["case0.png"][1:]).max() < 1e-3
        # case1 in progress: one landmark placed.
        page.keyboard.press("ArrowRight")
        ui.wait_status("case1.png")
        ui.place(truth(1)[0], "Sella")
        # The review queue: images with work left first, the least certain first; finished ones last.
        page.get_by_role("tab", name="Review").click()
        page.get_by_role("button", name="Rank the images, worst predictions first").click()
        rows = ui.rows("annot-queue", "done")
        assert "case0.png" in rows[-1] and "done" in rows[-1]  # complete images go last
        assert any("case1.png" in r and "in progress" in r for r in rows[:2]) and any(
            "tiny.png" in r and "low confidence" in r for r in rows
        )
        page.wait_for_selector("#annot-thumbnails img")
        assert page.locator("#annot-thumbnails img").count() == 3
        page.get_by_role("tab", name="Annotate").click()
        ui.wait_status("Review order")
        assert "Image 1 of 3" in ui.status() and rows[0].split()[1] in ui.status()
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)


def test_review_order():
    from hf_landmark.annotation import review_scores

    # Two landmarks on three 100-px images and one 200-px image. Landmark 1's radii are usually 10x
    # landmark 0's; relative to each landmark's median, image 2 is the least certain: (2 + 1) / 2.
    radii = [[1.0, 10.0], [1.0, 10.0], [2.0, 10.0], [2.0, 20.0]]
    sizes = [[100, 80], [100, 90], [100, 100], [200, 150]]
    np.testing.assert_allclose(review_scores(radii, sizes, np.zeros((4, 2))), [1.0, 1.0, 1.5, 1.0])
    # A NaN radius counts as none; a model without radii ranks by its heatmap scores.
    np.testing.assert_allclose(
        review_scores([[np.nan, 10.0], [1.0, 10.0]], [[100, 100]] * 2, np.zeros((2, 2))), [1.0, 1.0]
    )
    np.testing.assert_allclose(review_scores([[np.nan] * 2] * 2, [[10, 10]] * 2, [[0.9, 0.7], [0.2, 0.4]]), [0.2, 0.7])
    # Work left first, the least certain first; finished images last.
    assert review_order([1.0, 3.0, 2.0, 5.0], [False, False, False, True]) == [1, 2, 0, 3]


def test_clicks_map_to_original_pixels():
    # Overview at 2.4 screen px per original px: Gradio reports the rounded picture corner
    # coordinate, so picture pixel 100 is the corner between original pixels 41 and 42 (x = 41.17 - 0.5).
    assert click_to_original([100, 12], (2.4, 2.4)) == pytest.approx((100 / 2.4 - 0.5, 12 / 2.4 - 0.5))
    # Zoom x4 of the 120-px crop around (41, 41): its top-left original pixel is (-19, -19).
    _, origin = zoom_crop(np.zeros((300, 250), np.float32), (41.2, 40.7), 4)
    assert origin == (-19, -19)
    # The middle of the white 4 x 4 square of original pixel (40, 40) is picture corner coordinate 4 * 59 + 2.
    assert click_to_original([238, 238], 4, origin) == (40.0, 40.0)


def test_a_killed_save_leaves_a_readable_file(tmp_path):
    """SIGKILL the saving process at random moments: the file is always whole and readable."""
    out = tmp_path / "ann.csv"
    files = [f"img{i:03d}.png" for i in range(200)]
    AnnotationFile(out, NAMES).create(files)
    code = (
        "import sys, numpy as np\n"
        "from hf_landmark.annotation import AnnotationFile\n"
        f"store = AnnotationFile({str(out)!r}, {NAMES!r})\n"
        "rng = np.random.default_rng(int(sys.argv[1]))\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        f"    store.save_image('img%03d.png' % rng.integers(200), rng.random((5, 2)) * 100, set())\n"
    )
    rng = np.random.default_rng(0)
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", code, str(attempt)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + rng.random() * 0.5)
        proc.kill()
        proc.wait()
        entries, names = read_annotation_file(out)
        assert names == NAMES and [e.file for e in entries] == files
    assert sum(e.landmarks is not None for e in entries) > 10  # the saves really ran
    # A temporary file a killed save left behind is swept by the next save.
    AnnotationFile(out, NAMES).save_image("img000.png", np.ones((5, 2)), {"Menton"})
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".ann.csv.lock")) == ["ann.csv"]
    row = AnnotationFile(out, NAMES).read()["img000.png"]
    assert row[0].tolist() == [[1, 1]] * 5 and row[1] == {"Menton"}


def test_open_a_prepared_dataset_a_template_and_continue(tmp_path):
    from hf_landmark.annotation import AnnotationSession, open_project
    from hf_landmark_cli import main as cli

    images = tmp_path / "xrays"
    write_images(images)
    # A prepared pool: its images, under the folder it was prepared from.
    assert (
        cli(["prepare", "images", "--root", str(images), "--out", str(tmp_path / "pool"), "--image-size", "64"]) == 0
    )
    project = open_project(str(tmp_path / "pool"), str(tmp_path / "all.csv"), NAMES)
    assert project.root == images.resolve() and project.files == ["case0.png", "case1.png", "case2.png"]
    listed = read_annotation_file(tmp_path / "all.csv")[0]
    assert len(listed) == 3 and all(np.isnan(e.landmarks).all() for e in listed)  # listed, none annotated yet
    # select's template: its images first, in its order, then the folder's others; its names are the landmarks.
    (tmp_path / "choose.csv").write_text(
        "image," + ",".join(f"{n}_x,{n}_y" for n in NAMES) + "\ncase2.png" + "," * 10 + "\ncase0.png" + "," * 10 + "\n"
    )
    session = AnnotationSession(open_project(str(images), str(tmp_path / "choose.csv")))
    assert session.project.files == ["case2.png", "case0.png", "case1.png"] and session.names == NAMES
    session.place(10.0, 20.0)
    session.skip()
    # Reopened, it continues at the first landmark left on the first image with work left.
    again = AnnotationSession(open_project(str(images), str(tmp_path / "choose.csv")))
    assert (again.index, again.current) == (0, 2) and again.state.skipped == {"Nasion"}
    assert again.state.points[0].tolist() == [10.0, 20.0]


def test_two_pages_on_one_file_keep_each_others_images(tmp_path):
    from hf_landmark.annotation import AnnotationSession, open_project

    images = tmp_path / "xrays"
    write_images(images)
    a = AnnotationSession(open_project(str(images), str(tmp_path / "ann.csv"), NAMES))
    b = AnnotationSession(open_project(str(images), str(tmp_path / "ann.csv"), NAMES))
    b.go(+1)
    a.place(1.0, 2.0)  # page a on case0
    b.place(3.0, 4.0)  # page b on case1, opened before a saved
    a.place(5.0, 6.0)
    saved = AnnotationFile(tmp_path / "ann.csv", NAMES).read()
    assert saved["case0.png"][0][:2].tolist() == [[1.0, 2.0], [5.0, 6.0]] and saved["case1.png"][0][0].tolist() == [
        3.0,
        4.0,
    ]
    # On the same image the last save wins.
    b.go(-1)
    b.place(7.0, 8.0)  # b's case0 was read when b opened: Sella only, now at (7, 8)
    saved = AnnotationFile(tmp_path / "ann.csv", NAMES).read()
    assert saved["case0.png"][0][0].tolist() == [7.0, 8.0] and np.isnan(saved["case0.png"][0][1]).all()


def test_a_landmark_marked_missing_leaves_the_image_incomplete_as_prepare_custom_sees_it(tmp_path):
    from hf_landmark.annotation import AnnotationSession, open_project

    images = tmp_path / "xrays"
    write_images(images, n=2)
    session = AnnotationSession(open_project(str(images), str(tmp_path / "a.csv"), NAMES))
    for k in range(4):
        session.place(*truth(0)[k])
    session.skip()  # Menton: missing on this image
    assert session.finished(0) and not session.complete(0)
    assert "leaves the image incomplete" in session.status() and "0 of 2 images complete" in session.status()
    # A reload opens on it, as prepare custom would refuse it.
    again = AnnotationSession(open_project(str(images), str(tmp_path / "a.csv"), NAMES))
    assert again.index == 0 and again.states[0].skipped == {"Menton"}


def test_choosing_a_landmark_from_the_list_moves_the_instruction_and_the_zoom(tmp_path):
    from hf_landmark.annotation import AnnotationSession, open_project

    images = tmp_path / "xrays"
    write_images(images, n=1)
    session = AnnotationSession(open_project(str(images), str(tmp_path / "a.csv"), NAMES))
    session.click_overview([50, 60])  # the zoom opens there for Sella
    assert session.zoom_centre is not None and "1 Sella" in session.message
    session.select_landmark(4)  # Menton, not placed: the zoom closes and the page asks for Menton
    assert session.current == 4 and session.zoom_centre is None
    assert (
        session.message.startswith("5 Menton: click near it on the image")
        and "### Landmark 5 of 5: Menton" in session.status()
    )
    session.place(*truth(0)[4])
    session.select_landmark(4)  # placed: the zoom opens on it, to move it
    assert np.allclose(session.zoom_centre, truth(0)[4]) and "click its new position" in session.message


def test_radii_are_drawn_in_two_tones_to_read_on_bone_and_on_air(tmp_path):
    from hf_landmark.annotation import AnnotationSession, open_project

    for grey in (0, 255):  # a black and a white image: the ring shows on both
        images = tmp_path / f"g{grey}"
        images.mkdir()
        Image.fromarray(np.full((300, 300), grey, np.uint8)).save(images / "x.png")
        session = AnnotationSession(open_project(str(images), str(tmp_path / f"a{grey}.csv"), NAMES))
        session.state.proposals = np.array([[150.0, 150.0]] * 5)
        session.state.radii = np.array([60.0] * 5)
        picture = session.overview().astype(int)
        # At 720 / 300 = 2.4 overview px per original px: the centre at (150 + 0.5) * 2.4 - 0.5 = 360.7,
        # the ring 60 * 2.4 = 144 px to its right, about x = 505 on row 361.
        ring = picture[361, 495:515].sum(axis=1)
        assert ring.min() <= 200 and ring.max() >= 350, (grey, ring)  # a dark halo beside a light (orange) line


def test_a_radius_smaller_than_the_marker_opens_the_image(tmp_path):
    """A model sure to within a fraction of a picture pixel (a radius of 0.3 original px is
    0.7 overview px here): the image opens, and no ring is drawn where the marker covers it."""
    from hf_landmark.annotation import AnnotationSession, open_project

    images = tmp_path / "x"
    images.mkdir()
    Image.fromarray(np.full((300, 300), 0, np.uint8)).save(images / "x.png")
    session = AnnotationSession(open_project(str(images), str(tmp_path / "a.csv"), NAMES))
    session.state.proposals = np.array([[150.0, 150.0]] * 5)
    session.state.radii = None
    without = session.overview()
    for radius in (0.3, 0.0, 1.5):  # 0.72, 0 and 3.6 overview px: all inside the 4-px marker
        session.state.radii = np.array([radius] * 5)
        assert np.array_equal(session.overview(), without), radius
    session.state.radii = np.array([3.0] * 5)  # 7.2 px: outside the marker, a ring
    assert not np.array_equal(session.overview(), without)
