"""A user's mistake is one line, `error: <file or argument>: <what is wrong>`, exit code 2, no traceback."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hf_landmark import LandmarkConfig, LandmarkDetector
from hf_landmark_cli import main as cli


def _one_error_line(capsys, *names):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def test_truncated_image_in_prepare(synth_raw, tmp_path, capsys):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(synth_raw, raw)
    bad = raw / "RawImage" / "TrainingData" / "003.bmp"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    assert cli(["prepare", "ceph", "--root", str(raw), "--out", str(tmp_path / "out"), "--split-counts", "14,5"]) == 2
    line = _one_error_line(capsys, str(bad), "cannot read image")
    assert not (tmp_path / "out").exists(), line


def test_wrong_layout_and_missing_folder(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert cli(["prepare", "ceph", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys, "400_senior", "annotation folder not found")
    assert cli(["prepare", "hand", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys, str(tmp_path / "nope"), "folder not found", "labels/all.csv")


def test_missing_annotations(tmp_path, capsys):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    assert cli(["prepare", "custom", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys, "--annotations")
    assert (
        cli(
            [
                "prepare",
                "custom",
                "--root",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
                "--annotations",
                str(tmp_path / "l.csv"),
            ]
        )
        == 2
    )
    _one_error_line(capsys, str(tmp_path / "l.csv"), "annotation file not found")


def test_empty_split_is_refused(synth_raw, tmp_path, capsys):
    assert cli(["prepare", "ceph", "--root", str(synth_raw), "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys, str(synth_raw), "validation and test splits would be empty", "--split-counts")
    assert not (tmp_path / "out").exists()


def test_model_folder_without_weights_says_where_they_are(tmp_path, capsys):
    LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=2, image_size=32)).save_pretrained(
        tmp_path / "run" / "model"
    )
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "x.png")
    capsys.readouterr()
    assert (
        cli(
            [
                "predict",
                str(tmp_path / "x.png"),
                "--model",
                str(tmp_path / "run"),
                "--output",
                str(tmp_path / "p.json"),
            ]
        )
        == 2
    )
    _one_error_line(capsys, str(tmp_path / "run"), "no model.safetensors", str(tmp_path / "run" / "model"))
    assert cli(["predict", str(tmp_path / "missing.png"), "--model", str(tmp_path / "run" / "model")]) == 2
    _one_error_line(capsys, "missing.png", "no such file")


def test_empty_or_missing_split_in_evaluate_and_finetune(synth_prepared, tmp_path, capsys):
    LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=19, image_size=32)).save_pretrained(
        tmp_path / "m"
    )
    capsys.readouterr()
    assert cli(["evaluate", "--model", str(tmp_path / "m"), "--dataset", str(synth_prepared), "--split", "tset"]) == 2
    _one_error_line(capsys, str(synth_prepared), "no 'tset' split", "train, validation, test")
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(tmp_path / "nothing"),
                "--output-dir",
                str(tmp_path / "o"),
                "--num-labels",
                "2",
                "--init",
                "scratch",
                "--preset",
                "tiny",
                "--resolution",
                "32",
                "--report-to",
                "none",
            ]
        )
        == 2
    )
    _one_error_line(capsys, str(tmp_path / "nothing"), "no such prepared dataset")
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(synth_prepared),
                "--output-dir",
                str(tmp_path / "o"),
                "--num-labels",
                "2",
                "--init",
                str(tmp_path / "no-ddpm"),
                "--report-to",
                "none",
            ]
        )
        == 2
    )
    _one_error_line(capsys, str(tmp_path / "no-ddpm"), "no such pre-trained DDPM folder")
    assert (
        cli(
            [
                "finetune",
                "--dataset",
                str(synth_prepared),
                "--output-dir",
                str(tmp_path / "o"),
                "--num-labels",
                "2",
                "--init",
                "scratch",
                "--resolution",
                "30",
            ]
        )
        == 2
    )
    _one_error_line(capsys, "--resolution", "multiple of 8")


@pytest.mark.parametrize("typo", ["--max-stpes", "--max-step"])  # a misspelling, and a prefix (no abbreviations)
def test_flag_typo_is_a_usage_error(typo, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["finetune", "--dataset", "d", "--output-dir", "o", "--num-labels", "2", "--init", "scratch", typo, "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {typo} 3" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli(["evaluate", "--mod", "m", "--dataset", "d"])
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_real_exit_code_and_debug_traceback(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "hf_landmark_cli",
        "prepare",
        "chest",
        "--root",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "o"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().startswith("error: ") and "Traceback" not in res.stderr
    res = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" in res.stderr and "DatasetFormatError" in res.stderr


def test_help_imports_neither_torch_nor_the_package():
    # `hf-landmark --help` (and a non-training subcommand's) answers without loading torch,
    # transformers or hf_landmark; the command's work is imported after parsing.
    code = (
        "import sys, hf_landmark_cli\n"
        "for argv in (['--help'], ['predict', '--help'], ['prepare', '--help']):\n"
        "    try:\n        hf_landmark_cli.main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'hf_landmark') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
    assert "{ceph,hand,chest,custom,images}" in res.stdout and "--overlay-dir" in res.stdout


def test_cli_choices_match_the_library():
    import hf_landmark_cli
    from hf_landmark.data.formats import FORMATS
    from hf_landmark.data.specs import DATASETS
    from hf_landmark.heatmaps import DECODERS

    assert hf_landmark_cli.DATASET_KINDS == (*DATASETS, "images")  # images: a bare folder, no benchmark spec
    assert hf_landmark_cli.ANNOTATION_FORMATS == FORMATS
    assert hf_landmark_cli.DECODER_NAMES == tuple(DECODERS)
