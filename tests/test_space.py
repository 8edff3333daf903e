"""The Space folder ``hf-landmark space`` writes: the page and this package as a wheel its
requirements install, so that a visitor annotates their own uploads with nothing installed;
in a Space only the owner's models run."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image

from hf_landmark import LandmarkConfig, LandmarkDetector
from hf_landmark_cli import main as cli


def test_the_space_brings_the_package_and_its_annotation_tab(tmp_path):
    out = tmp_path / "space"
    assert cli(["space", "--out", str(out), "--model", "org/ceph-detector"]) == 0
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    wheel = next(f for f in files if f.startswith("hf_landmark-") and f.endswith(".whl"))
    assert {"app.py", "README.md", "landmark_app.py", "requirements.txt"} <= files
    assert not (out / "landmark_app.py").is_symlink() and any(f.startswith("examples/") for f in files)
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert requirements[-1] == f"./{wheel}" and "gradio>=6.19,<7" in requirements
    names = zipfile.ZipFile(out / wheel).namelist()
    assert "hf_landmark/annotation/ui.py" in names and "hf_landmark/training/finetune.py" in names
    # As the Space runs it: the package from the wheel (not this checkout), the page with the
    # visitor's Annotate tab; a model the owner did not name is refused even with the package.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(out / wheel)],
        check=True,
    )
    model = tmp_path / "m"
    LandmarkDetector(
        LandmarkConfig(backbone_config="tiny", num_landmarks=2, image_size=32, landmark_names=["a", "b"])
    ).save_pretrained(model)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "x.png")
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}, {str(out)!r}]\n"
        "import json, hf_landmark, landmark_app\n"
        "demo = landmark_app.build_demo(None)\n"
        "ids = {getattr(b, 'elem_id', None) for b in demo.blocks.values()}\n"
        "try:\n"
        f"    landmark_app.landmark_pipeline({str(tmp_path)!r} + '/elsewhere')\n"
        "    refused = False\n"
        "except ValueError as err:\n"
        "    refused = 'runs only its own models' in str(err)\n"
        f"ok = type(landmark_app.landmark_pipeline({str(model)!r})).__name__\n"
        "print(json.dumps({'file': hf_landmark.__file__, 'uploads': 'annot-uploads' in ids, 'refused': refused, 'ok': ok}))\n"
    )
    env = dict(os.environ, SPACE_ID="org/space", HF_LANDMARK_MODEL=str(model), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["file"].startswith(str(site)) and facts["uploads"] and facts["refused"]
    assert facts["ok"] == "LandmarkDetectionPipeline"


def test_push_space_refuses_a_folder_that_is_not_a_space(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert cli(["push", str(tmp_path / "m"), "--repo-id", "org/x", "--space"]) == 2
    assert "not a Space folder (no app.py)" in capsys.readouterr().err


def test_space_into_a_folder_that_cannot_be_written_is_one_error_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert cli(["space", "--out", str(tmp_path / "file" / "space")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "cannot write the Space there" in err and "Traceback" not in err
