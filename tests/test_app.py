"""The web demo: through its API, as a Space without the package, and in a real browser."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_landmark import LandmarkConfig, LandmarkDetector

SPACE = Path(__file__).resolve().parents[1] / "space"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    LandmarkDetector(
        LandmarkConfig(
            backbone_config="tiny",
            num_landmarks=2,
            image_size=32,
            landmark_names=["Sella", "Nasion"],
            spacing=[0.1, 0.1],
        )
    ).save_pretrained(tmp / "m")
    Image.fromarray((np.random.default_rng(0).random((60, 50)) * 255).astype(np.uint8)).save(tmp / "x.png")
    return tmp / "m", tmp / "x.png"


def test_gradio_round_trip(model_and_image):
    from gradio_client import Client, handle_file

    from hf_landmark.app import build_demo

    model, image = model_and_image
    demo = build_demo(str(model))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        overlay, table, note, json_path = client.predict(
            handle_file(str(image)), str(model), "centroid", api_name="/predict"
        )
        assert Image.open(overlay).size == (600, 720)  # the 50 x 60 upload, enlarged for display
        assert [row[:2] for row in table["data"]] == [[1, "Sella"], [2, "Nasion"]]
        assert "assume the spacing of the model's training data" in note  # a PNG has no spacing of its own
        data = json.loads(open(json_path, encoding="utf-8").read())
        assert [p["label"] for p in data["landmarks"]] == ["Sella", "Nasion"] and data["landmarks"][0][
            "spacing_assumed"
        ] is True
    finally:
        demo.close()


def test_space_runs_without_the_package(model_and_image, tmp_path):
    """The Space's app with hf_landmark unimportable: the model folder brings its own code,
    which runs for the Space's own model only."""
    model, image = model_and_image
    code = (
        "import sys; sys.modules['hf_landmark'] = None\n"
        f"sys.path.insert(0, {str(SPACE)!r})\n"
        "import landmark_app\n"
        f"overlay, rows, note, path = landmark_app.predict({str(image)!r}, {str(model)!r})\n"
        "print(overlay.size, [r[1] for r in rows], type(landmark_app.landmark_pipeline("
        + repr(str(model))
        + ")).__module__.split('.')[0])\n"
        "try:\n"
        f"    landmark_app.predict({str(image)!r}, 'someone/else')\n"
        "except ValueError as err:\n"
        "    print('refused:', err)\n"
    )
    env = dict(os.environ, HF_LANDMARK_MODEL=str(model), HF_MODULES_CACHE=str(tmp_path / "modules"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "(600, 720) ['Sella', 'Nasion'] transformers_modules"
    assert lines[-1].startswith("refused: someone/else: this demo runs only its own models")
    assert (SPACE / "landmark_app.py").resolve() == (SPACE.parent / "hf_landmark" / "app.py").resolve()
    assert "hf-landmark" not in (SPACE / "requirements.txt").read_text()  # public packages only


def _browser():
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, None
    return chromium, sync_playwright


@pytest.mark.skipif(
    _browser()[0] is None or _browser()[1] is None,
    reason="needs Debian's chromium and the playwright package (.ci/run installs both)",
)
def test_page_in_a_real_browser(model_and_image, tmp_path):
    from hf_landmark.app import build_demo

    chromium, sync_playwright = _browser()
    model, image = model_and_image
    (tmp_path / "notes.png").write_text("not an image")
    demo = build_demo(str(model), examples=sorted(str(p) for p in (SPACE / "examples").glob("*.png")))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("button", name="Detect landmarks").click()  # nothing uploaded yet
            page.get_by_text("upload an x-ray image first").first.wait_for(timeout=30000)
            page.locator("input[type=file]").first.set_input_files(str(tmp_path / "notes.png"))
            page.get_by_role("button", name="Detect landmarks").click()
            page.get_by_text("notes.png: cannot read image").first.wait_for(timeout=30000)  # the name the user gave it
            page.locator("button[aria-label='Clear']").first.click()
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.get_by_role("button", name="Detect landmarks").click()
            page.locator("text=Nasion >> visible=true").first.wait_for(timeout=60000)
            assert page.get_by_text("assume the spacing of the model's training data").is_visible()
            # A failing upload after a good one: its error stands alone, without the last result's notes.
            page.locator("button[aria-label='Clear']").first.click()
            page.locator("input[type=file]").first.set_input_files(str(tmp_path / "notes.png"))
            page.get_by_role("button", name="Detect landmarks").click()
            page.get_by_text("notes.png: cannot read image").first.wait_for(timeout=30000)
            page.get_by_text("assume the spacing of the model's training data").wait_for(state="hidden", timeout=10000)
            assert not page.locator("text=Nasion >> visible=true").count()
            page.locator("button[aria-label='Clear']").first.click()
            page.get_by_text("synthetic_ceph_2.png").first.click()  # an example
            page.get_by_role("button", name="Detect landmarks").click()
            page.get_by_text("landmarks-").last.wait_for(timeout=60000)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            browser.close()
    finally:
        demo.close()


def test_radii_are_thin_translucent_and_can_be_hidden(tmp_path):
    from hf_landmark.app import predict
    from hf_landmark.image_processing_landmark import processor_for_model
    from hf_landmark.visualization import draw_landmarks

    # The drawing: a radius circle is one pixel wide and blends with the image under it.
    gray = np.full((200, 200), 0.5, np.float32)
    img = np.asarray(draw_landmarks(gray, np.array([[100.0, 100.0]]), radii=np.array([60.0]), numbered=False))
    row = img[100, 100:200].astype(int)  # from the landmark rightwards: the marker, grey, the ring at x = 160, grey
    ring = np.nonzero(np.abs(row - 128).sum(axis=1) > 3)[0]
    ring = ring[ring > 20]
    assert ring.tolist() in ([59], [60], [61])
    assert (
        128 < row[ring[0], 0] < 255 and row[ring[0], 1] < 128
    )  # red blended into the grey, not opaque red (255, 60, 60)
    # The page: radii drawn or not, with their note.
    model = LandmarkDetector(
        LandmarkConfig(backbone_config="tiny", num_landmarks=2, image_size=32, landmark_names=["A", "B"])
    )
    model.save_pretrained(tmp_path / "m")
    processor = processor_for_model(model)
    processor.calibration_scores = [[0.1, 0.2, 0.3]] * 2  # radii well inside the image
    processor.save_pretrained(tmp_path / "m")
    Image.fromarray((np.random.default_rng(1).random((80, 70)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    with_radii, _, note, _ = predict(str(tmp_path / "x.png"), str(tmp_path / "m"), radii=True)
    without, _, note_without, _ = predict(str(tmp_path / "x.png"), str(tmp_path / "m"), radii=False)
    assert "Circles: calibrated error radii" in note and "Circles" not in note_without
    assert (
        np.asarray(with_radii).shape == np.asarray(without).shape
        and (np.asarray(with_radii) != np.asarray(without)).any()
    )


def test_only_the_annotate_command_serves_the_annotation_page(model_and_image, tmp_path):
    """The annotation page on a folder opens and writes files where it runs: never part of the
    public demo, which annotates uploads only."""
    from hf_landmark.app import build_demo

    model, image = model_and_image
    ids = lambda demo: {getattr(b, "elem_id", None) for b in demo.blocks.values()}  # noqa: E731
    public = build_demo(str(model))
    labels = {getattr(b, "label", None) for b in public.blocks.values()}
    # The public demo annotates only the visitor's own uploads: no folder or file of the server to type.
    assert "annot-uploads" in ids(public) and "image folder or prepared dataset" not in labels
    assert not any("annotation CSV" in str(label) for label in labels)
    annotate = {
        "images": str(image.parent),
        "out": str(tmp_path / "a.csv"),
        "landmarks": ["Sella", "Nasion"],
        "model": None,
    }
    assert {"annot-open", "annot-overview", "annot-zoom", "annot-queue"} <= ids(
        build_demo(str(model), annotate=annotate)
    )


def test_the_page_names_the_landmarks_the_shape_check_read_again(tmp_path):
    import torch

    from hf_landmark.app import predict

    torch.manual_seed(0)
    config = LandmarkConfig(backbone_config="tiny", num_landmarks=3, image_size=32, landmark_names=["A", "B", "C"])
    config.set_shape_check(
        [[4.0, 4.0], [28.0, 4.0], [4.0, 28.0]], 1.0
    )  # one pixel: a random model's guesses rarely fit
    LandmarkDetector(config).save_pretrained(tmp_path / "m")
    Image.fromarray((np.random.default_rng(2).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    _, _, note, path = predict(str(tmp_path / "x.png"), str(tmp_path / "m"))
    moved = [str(i + 1) for i, p in enumerate(json.loads(Path(path).read_text())["landmarks"]) if p["shape_moved"]]
    assert moved, "this seed's model has a landmark off the shape"
    assert f"Landmark{'s' if len(moved) > 1 else ''} {', '.join(moved)}: the first guess lay far" in note
