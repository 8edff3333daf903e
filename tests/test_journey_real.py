"""The README's own-data journey, walked literally on real chest radiographs, annotated in a
real headless browser: prepare images (with a hold-out) -> pretrain -> select -> annotate
(clicks at the true landmarks; the server killed mid-image and restarted) -> prepare custom ->
finetune -> evaluate in mm -> annotate --model (the review queue; proposals accepted) ->
prepare custom -> finetune (the long recipe: an ensemble) -> calibrate the radii on the held-out images -> predict with mm, in
every tool format, each read back.

The commands are the README's block "Your own x-rays, start to finish", read from the README;
only paths, image counts, sizes and training steps are made small. The images are read from
``../shared/realdata/chest`` (never copied into the repository); without them, or without
chromium, the test is skipped and says why."""

import json
import re
import shlex
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from hf_landmark.annotation import AnnotationFile
from hf_landmark.data import load_prepared
from hf_landmark.data.readers import read_chest_annotation
from hf_landmark_cli import main as cli

from .test_annotation_page import Page, _browser, _free_port, serve, stop

pytestmark = pytest.mark.slow

CHEST = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "chest"
README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = [f"chest_{i}" for i in range(6)]
#: The README's commands, made small: its counts for 11 images, and few training steps (argparse
#: takes the last value of a flag given twice, so these only add to the README's text).
SMALL = {
    "--holdout 8": "--holdout 2",
    "--num 10": "--num 4",
    "--num-labels 7": "--num-labels 3",
    "--num-labels 9": "--num-labels 4",
}
FAST = {
    "prepare": "--image-size 128".split(),
    "pretrain": "--preset tiny --resolution 32 --max-steps 4 --save-steps 4 --train-batch-size 4 --gradient-accumulation-steps 1 "
    "--num-samples 0 --report-to none".split(),
    "finetune": "--max-steps 3 --eval-steps 1 --refine-max-steps 3 --self-train 1 --report-to none".split(),
}


def readme_commands() -> list[str]:
    """The ``hf-landmark`` lines of the README's block "Your own x-rays, start to finish"."""
    text = README.read_text()
    section = text[text.index("## Your own x-rays, start to finish") :]
    block = section[section.index("```bash") + 7 : section.index("```", section.index("```bash") + 7)]
    return [ln.split(" #")[0].strip() for ln in block.splitlines() if ln.strip().startswith("hf-landmark ")]


def test_the_readme_block_is_the_journey_this_test_walks():
    kinds = [" ".join(c.split()[1:3]) if c.split()[1] == "prepare" else c.split()[1] for c in readme_commands()]
    assert kinds == [
        "prepare images",
        "pretrain",
        "select",
        "annotate",
        "prepare custom",
        "finetune",
        "evaluate",
        "annotate",
        "prepare custom",
        "finetune",
        "calibrate",
        "predict",
        "finetune",
    ]
    assert all(small in " ".join(readme_commands()) for small in SMALL)


def truth(name: str, size) -> np.ndarray:
    return read_chest_annotation(CHEST / "labels" / name.replace(".png", ".txt"), *size)


class Journey:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.paths = {
            "xrays/": str(CHEST / "pngs") + "/",
            "data/pool": str(tmp / "pool"),
            "data/mine": str(tmp / "mine"),
            "ddpm/checkpoint-10000": str(tmp / "ddpm" / "checkpoint-4"),
            "names.txt": str(tmp / "names.txt"),
            "choose.csv": str(tmp / "choose.csv"),
            "metrics.json": str(tmp / "metrics.json"),
            "preds.json": str(tmp / "preds.json"),
            "pre.xml": str(tmp / "pre.xml"),
        }

    def argv(self, command: str) -> list[str]:
        for big, small in SMALL.items():
            command = command.replace(big, small)
        args = []
        for word in shlex.split(command)[1:]:
            for name, real in self.paths.items():
                if word == name or word.startswith(name.rstrip("/") + "/") and name.endswith("/"):
                    word = real + word[len(name) :]
                    break
            else:
                word = re.sub(r"^(ddpm|ft[23]?)(/|$)", lambda m, t=self.tmp: str(t / m.group(1)) + m.group(2), word)
            args.append(word)
        return args + FAST.get(args[0], [])

    def run(self, command: str) -> None:
        assert cli(self.argv(command)) == 0, command


def open_page(proc, port, chromium, pw):
    browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    ui = Page(page, port)
    ui.open(proc, "Landmark ")
    return browser, page, ui


def click_at(ui: Page, xy, size) -> None:
    """Click the overview where the original's pixel centre ``xy`` is shown (no zoom)."""
    _, pixels, _ = ui.picture("annot-overview")
    nh, nw = pixels.shape[:2]
    ui.click_picture("annot-overview", (float((xy[0] + 0.5) * nw / size[0]), float((xy[1] + 0.5) * nh / size[1])))


def no_zoom(page) -> None:
    box = page.locator("#annot-use-zoom input")
    if box.is_checked():
        box.click()
        page.wait_for_timeout(300)


def annotate_image(ui: Page, page, name: str, start: int = 0, stop_after: int | None = None) -> None:
    from PIL import Image

    size = Image.open(CHEST / "pngs" / name).size
    t = truth(name, size)
    for k in range(start, len(NAMES) if stop_after is None else stop_after):
        assert f"Landmark {k + 1} of 6" in ui.status(), ui.status()
        click_at(ui, t[k], size)
        ui.wait_status(f"Placed {k + 1} {NAMES[k]} at")


@pytest.mark.skipif(not CHEST.is_dir(), reason=f"needs the real chest radiographs in {CHEST} (shared/realdata)")
@pytest.mark.skipif(
    None in _browser(), reason="needs Debian's chromium and the playwright package (.ci/run installs both)"
)
def test_the_readme_journey_on_real_chest_radiographs(tmp_path, monkeypatch):
    started = []
    real_serve = serve

    def serve_and_remember(args, port):
        proc = real_serve(args, port)
        started.append(proc)
        return proc

    monkeypatch.setitem(globals(), "serve", serve_and_remember)
    try:
        walk(tmp_path)
    finally:  # a failed step leaves no server behind
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def walk(tmp_path):
    from PIL import Image

    started = time.time()
    chromium, sync_playwright = _browser()
    j = Journey(tmp_path)
    steps = readme_commands()
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")

    # prepare images --holdout: 2 of the 11 images never reach pre-training or selection.
    j.run(steps[0])
    pool = load_prepared(tmp_path / "pool")
    held = json.loads((tmp_path / "pool" / "hf_landmark_dataset.json").read_text())["held_out"]
    assert len(held) == 2 and len(pool["unlabeled"]) == 9
    assert not {h.removesuffix(".png") for h in held} & set(pool["unlabeled"]["image_id"])
    j.run(steps[1])  # pretrain
    j.run(steps[2])  # select: 3 train, 1 validation, then the 2 held out as test, spacing 0.35
    template = AnnotationFile(tmp_path / "choose.csv", NAMES)
    header, rows = template._read_raw()
    assert [r["split"] for r in rows] == ["train", "train", "train", "validation", "test", "test"]
    assert [r["image"] for r in rows[4:]] == held and {r["spacing_x"] for r in rows} == {"0.35"}
    order = [r["image"] for r in rows]

    # annotate, round one, in the browser: every landmark clicked at the truth, no zoom.
    annotate = j.argv(steps[3])[1:]
    port = _free_port()
    proc = serve(annotate, port)
    with sync_playwright() as pw:
        browser, page, ui = open_page(proc, port, chromium, pw)
        no_zoom(page)
        for i, name in enumerate(order[:2]):
            assert f"Image {i + 1} of" in ui.status() and name in ui.status()
            annotate_image(ui, page, name)
            page.keyboard.press("ArrowRight")
            ui.wait_status(f"Image {i + 2} of")
        annotate_image(ui, page, order[2], stop_after=3)  # half of the third image, then the server dies
        page.screenshot(path=str(tmp_path / "annotate.png"))  # what the annotator sees at 1400 x 1000
        before = (tmp_path / "choose.csv").read_bytes()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        browser.close()
        assert (tmp_path / "choose.csv").read_bytes() == before
        proc = serve(annotate, port)
        browser, page, ui = open_page(proc, port, chromium, pw)
        # The restarted page opens where the file stops: the third image, its fourth landmark.
        assert (
            "Image 3 of" in ui.status()
            and "3 of 6 landmarks placed" in ui.status()
            and "Landmark 4 of 6" in ui.status()
        )
        no_zoom(page)
        annotate_image(ui, page, order[2], start=3)
        for i, name in enumerate(order[3:6], start=3):
            page.keyboard.press("ArrowRight")
            ui.wait_status(f"Image {i + 1} of")
            annotate_image(ui, page, name)
        assert "6 of" in ui.status() and "images complete" in ui.status()
        browser.close()
    stop(proc)
    saved = AnnotationFile(tmp_path / "choose.csv", NAMES).read()
    errors = []
    for name in order:
        size = Image.open(CHEST / "pngs" / name).size
        errors.append(np.hypot(*(saved[name][0] - truth(name, size)).T))
    errors = np.concatenate(errors)
    # A click without the zoom lands on an overview pixel (~1 original pixel here, after the
    # browser's own scaling of the 720-px picture): within one and a half pixels of the truth.
    print(f"clicks without the zoom: {errors.mean():.2f} px mean, {errors.max():.2f} px max from the truth")
    assert errors.max() < 1.5, errors.max()

    # prepare custom: the file's splits; the other 5 images are the pool.
    j.run(steps[4])
    mine = load_prepared(tmp_path / "mine")
    assert {s: len(d) for s, d in mine.items()} == {"train": 3, "validation": 1, "test": 2, "unlabeled": 5}
    j.run(steps[5])  # finetune, round one
    config = json.loads((tmp_path / "ft" / "model" / "config.json").read_text())
    assert config["spacing"] == pytest.approx([0.35, 0.35])
    j.run(steps[6])  # evaluate on the held-out test images, in mm
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["unit"] == "mm" and np.isfinite(metrics["mre"])

    # annotate --model, round two: the review queue, then one pool image accepted from the model.
    annotate = j.argv(steps[7])[1:]
    proc = serve(annotate, port)
    with sync_playwright() as pw:
        browser, page, ui = open_page(proc, port, chromium, pw)
        page.get_by_role("tab", name="Review").click()
        page.get_by_role("button", name="Rank the images, worst predictions first").click()
        queue = ui.rows("annot-queue", "done")
        assert len(queue) == 11 and sum(" done " in f" {r} " for r in queue) == 6
        assert all(" done" in r for r in queue[-6:])  # the finished images last
        page.wait_for_selector("#annot-thumbnails img")
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        page.get_by_role("tab", name="Annotate").click()
        ui.wait_status("Review order")
        page.screenshot(path=str(tmp_path / "proposals.png"))
        first = queue[0].split()[1]
        assert first in ui.status() and first not in order
        page.keyboard.press("a")
        ui.wait_status("Accepted 6 proposed landmark(s)")
        browser.close()
    stop(proc)
    header, rows = AnnotationFile(tmp_path / "choose.csv", NAMES)._read_raw()
    added = next(r for r in rows if r["image"] == first)
    assert added["split"] == "" and (added["spacing_x"], added["spacing_y"]) == ("0.35", "0.35")

    # prepare custom again: the new row trains; validation and test are round one's.
    j.run(steps[8])
    again = load_prepared(tmp_path / "mine")
    assert {s: len(d) for s, d in again.items()} == {"train": 4, "validation": 1, "test": 2, "unlabeled": 4}
    assert again["validation"]["image_id"] == mine["validation"]["image_id"]
    assert sorted(again["test"]["image_id"]) == sorted(mine["test"]["image_id"])
    j.run(steps[9])  # finetune, round two, with the long recipe: an ensemble of three seeds
    summary = json.loads((tmp_path / "ft2" / "training_summary.json").read_text())
    assert sorted(summary["members"]) == ["members/seed-0", "members/seed-1", "members/seed-2"]
    assert all(m["labeled_image_ids"] == summary["labeled_image_ids"] for m in summary["members"].values())
    # A member whose refinement stage lost to its first stage (or won where the others' lost) is left out.
    config = json.loads((tmp_path / "ft2" / "model" / "config.json").read_text())
    assert len(config.get("ensemble_members") or [config]) == 3 - len(summary["left_out"])
    # calibrate: round two's radii from the 2 held-out test images (they chose nothing; the 1
    # validation image allows radii at 50 % only, 2 images at 2/3).
    before = json.loads((tmp_path / "ft2" / "model" / "preprocessor_config.json").read_text())["calibration"]
    assert len(before["calibration_scores"][0]) == 1 and before["calibration_source"] is None
    j.run(steps[10])
    after = json.loads((tmp_path / "ft2" / "model" / "preprocessor_config.json").read_text())["calibration"]
    assert [len(s) for s in after["calibration_scores"]] == [2] * 6
    assert after["calibration_source"] == "2 images of mine (test)"

    # predict, in mm, and in every tool's format, each read back through prepare custom.
    j.run(steps[11])
    predicted = json.loads((tmp_path / "preds.json").read_text())["predictions"]
    assert len(predicted) == 11
    for preds in predicted.values():
        assert all(p["spacing_assumed"] and p["x_mm"] == pytest.approx(p["x"] * 0.35, rel=1e-6) for p in preds)
        assert all(p["radius_coverage"] == pytest.approx(2 / 3) for p in preds)
    for kind in ("csv", "json", "cvat", "coco", "labelstudio", "labelme"):
        out = tmp_path / (f"pre_{kind}" if kind == "labelme" else f"pre.{kind}")
        if kind != "cvat":
            argv = j.argv(steps[11])
            argv[argv.index("--format") + 1], argv[argv.index("--format-output") + 1] = kind, str(out)
            assert cli([*argv, "--coco-origin", "corner"]) == 0
        else:
            out = tmp_path / "pre.xml"
        back = [
            "prepare",
            "custom",
            "--root",
            str(CHEST / "pngs"),
            "--annotations",
            str(out),
            "--out",
            str(tmp_path / f"back-{kind}"),
            "--image-size",
            "64",
            "--split-counts",
            "9,1,1",
            "--coco-origin",
            "corner",
        ]
        assert cli(back + (["--accept-predictions"] if kind == "labelstudio" else [])) == 0, kind
        rows = [row for split in load_prepared(tmp_path / f"back-{kind}").values() for row in split]
        assert len(rows) == 11
        for row in rows:
            expected = [[p["x"], p["y"]] for p in predicted[str(CHEST / "pngs" / (row["image_id"] + ".png"))]]
            assert np.abs(np.array(row["landmarks"]) - np.array(expected)).max() < 1e-4, kind
    # One detector taught by the ensemble: its first round learns from the ensemble's pseudo-labels.
    j.run(steps[12])
    taught = json.loads((tmp_path / "ft3" / "training_summary.json").read_text())
    assert taught["self_training"]["rounds"][0]["pseudo_labels_from"] == "teacher"
    record = json.loads((tmp_path / "ft3" / "model" / "hf_landmark_training.json").read_text())
    assert record["teacher"]["members"] == 3 - len(summary["left_out"])
    assert record["labeled_image_ids"] == summary["labeled_image_ids"]
    print(f"the journey on {len(order) + 5} real chest radiographs took {time.time() - started:.0f} s")
