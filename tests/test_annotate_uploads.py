"""Annotating in the web demo with nothing installed: two visitors side by side in real headless
browsers, each uploading their own x-rays, placing landmarks, and downloading the annotation
file (CSV and each tool's format); neither sees the other's images or file, and no server path
is ever typed."""

import csv
import io
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hf_landmark.data.formats import read_annotation_file

from .test_annotation_page import NAMES, Page, _browser, _free_port, truth, write_images

pytestmark = pytest.mark.skipif(
    None in _browser(), reason="needs Debian's chromium and the playwright package (.ci/run installs both)"
)


def _start(page, files, names) -> Page:
    ui = Page(page, None)
    page.get_by_role("tab", name="Annotate").click()
    page.locator("#annot-uploads input[type=file]").set_input_files([str(f) for f in files])
    page.locator("#annot-uploads").get_by_text(files[-1].stem).first.wait_for(timeout=30000)
    page.locator("#annot-names textarea, #annot-names input").first.fill(",".join(names))
    page.locator("#annot-open").click()
    ui.wait_status(f"Annotating your {len(files)} image(s)")
    return ui


def _download(page) -> dict[str, bytes]:
    page.locator("#annot-export").click()
    page.wait_for_function("() => document.querySelectorAll('#annot-exported a').length >= 7", timeout=60000)
    links = page.evaluate("() => Array.from(document.querySelectorAll('#annot-exported a')).map(a => a.href)")
    return {
        urllib.parse.unquote(href.split("?")[0].rsplit("/", 1)[-1]): urllib.request.urlopen(href).read()
        for href in links
    }


def test_two_visitors_annotate_their_own_uploads_and_download_their_work(tmp_path):
    from hf_landmark.app import build_demo

    chromium, sync_playwright = _browser()
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    write_images(mine, n=2)  # case0.png, case1.png
    write_images(theirs, n=3)
    (theirs / "case2.png").rename(theirs / "other.png")
    before = set(Path(tempfile.gettempdir()).glob("hf-landmark-annotate-*"))
    demo = build_demo(None)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            # Two visitors: two browser contexts, two sessions of the same page.
            a, b = (browser.new_context(viewport={"width": 1400, "height": 1500}).new_page() for _ in range(2))
            for page in (a, b):
                page.goto(f"http://127.0.0.1:{port}/")
                assert not page.get_by_label("image folder or prepared dataset").count()  # no server path to type
            ui_a = _start(a, [mine / "case0.png", mine / "case1.png"], NAMES)
            ui_b = _start(b, [theirs / "other.png"], NAMES)
            assert "case0.png" in ui_a.status() and "other.png" in ui_b.status()
            for k in range(2):  # A places Sella and Nasion on case0, B Sella on its image, interleaved
                ui_a.place(truth(0)[k], NAMES[k])
                if k == 0:
                    ui_b.place(truth(2)[0], NAMES[0])
            files_a, files_b = _download(a), _download(b)
            created = set(Path(tempfile.gettempdir()).glob("hf-landmark-annotate-*")) - before
            assert len(created) == 2  # a folder of each session's own
            browser.close()
        # The sessions' folders go when the visitors leave.
        deadline = time.time() + 120
        while time.time() < deadline and any(p.exists() for p in created):
            time.sleep(1)
        assert not any(p.exists() for p in created), "an upload session's folder outlived its session"
    finally:
        demo.close()
    assert {
        "annotations.csv",
        "annotations.cvat.xml",
        "annotations.coco.json",
        "annotations.labelstudio.json",
        "annotations.labelstudio.config.xml",
        "annotations.json",
        "annotations_labelme.zip",
    } <= set(files_a)
    rows_a = list(csv.DictReader(io.StringIO(files_a["annotations.csv"].decode())))
    rows_b = list(csv.DictReader(io.StringIO(files_b["annotations.csv"].decode())))
    assert [r["image"] for r in rows_a] == ["case0.png", "case1.png"] and [r["image"] for r in rows_b] == ["other.png"]
    # Each visitor's points, where they clicked (the zoom: within half an original pixel).
    got_a = np.array([[float(rows_a[0][f"{n}_x"]), float(rows_a[0][f"{n}_y"])] for n in NAMES[:2]])
    assert np.abs(got_a - truth(0)[:2]).max() <= 0.5 and rows_a[0]["Orbitale_x"] == "" and rows_a[1]["Sella_x"] == ""
    assert abs(float(rows_b[0]["Sella_x"]) - truth(2)[0][0]) <= 0.5 and rows_b[0]["Nasion_x"] == ""
    # The tool files list the same images (incomplete ones as images to annotate).
    (tmp_path / "b.cvat.xml").write_bytes(files_b["annotations.cvat.xml"])
    entries, names = read_annotation_file(tmp_path / "b.cvat.xml")
    assert [e.file for e in entries] == ["other.png"] and entries[0].landmarks is None
