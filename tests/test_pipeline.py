import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from hf_landmark import LandmarkConfig, LandmarkDetector
from hf_landmark.preprocessing import original_to_model
from hf_landmark_cli import main as cli


@pytest.fixture(scope="module")
def dot_model(tmp_path_factory):
    """A detector whose heatmap is a fixed bump at model pixel (20.5, 9.25) of a 32-px input:
    the head's bias is the landmark, everything else zero, so predictions are known exactly."""
    model = LandmarkDetector(
        LandmarkConfig(
            backbone_config="tiny",
            num_landmarks=1,
            image_size=32,
            loss="contour",
            sigma=1.0,
            landmark_names=["tip"],
            spacing=[0.2, 0.5],
        )
    )
    with torch.no_grad():
        model.backbone.unet.conv_out.weight.zero_()
        model.backbone.unet.conv_out.bias.zero_()
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    bump = -((xs - 20.5) ** 2 + (ys - 9.25) ** 2) / 2.0
    original_forward = model.backbone.unet.forward

    class Out:
        def __init__(self, sample):
            self.sample = sample

    def forward(x, t):
        original_forward(x, t)
        return Out(bump.expand(x.shape[0], 1, 32, 32).clone())

    model.backbone.unet.forward = forward
    path = tmp_path_factory.mktemp("dot") / "model"
    model.save_pretrained(path)
    model.backbone.unet.forward = original_forward
    return path, model, forward


def test_pipeline_inputs_and_original_frame(dot_model, tmp_path):
    path, model, forward = dot_model
    model.backbone.unet.forward = forward
    pipe = pipeline("landmark-detection", model=model)
    arr = (np.random.default_rng(0).random((200, 100)) * 255).astype(np.uint8)  # H=200, W=100
    Image.fromarray(arr).save(tmp_path / "a.png")
    # Model (20.5, 9.25) -> original: x = 21 * 100/32 - 0.5, y = 9.75 * 200/32 - 0.5.
    want = (21.0 * 100 / 32 - 0.5, 9.75 * 200 / 32 - 0.5)
    assert np.allclose(original_to_model(np.array(want), (100, 200), 32), [20.5, 9.25])
    for item in (str(tmp_path / "a.png"), Image.fromarray(arr), arr):
        out = pipe(item, decoder="soft_argmax")  # the mean of the softmax bump is exactly its centre
        assert (
            out[0]["label"] == "tip"
            and out[0]["x"] == pytest.approx(want[0], abs=1e-3)
            and out[0]["y"] == pytest.approx(want[1], abs=1e-3)
        )
        assert out[0]["x_mm"] == pytest.approx(want[0] * 0.2, abs=1e-3) and 0 <= out[0]["score"] <= 1
    assert len(pipe([arr, arr])) == 2
    # Batched runs give the same landmarks as one image at a time (a randomly initialised model).
    torch.manual_seed(0)
    real = pipeline(
        "landmark-detection",
        model=LandmarkDetector(LandmarkConfig(backbone_config="tiny", num_landmarks=1, image_size=32)).eval(),
    )
    images = [arr, np.ones((30, 40), np.uint8) * 200, Image.fromarray(arr)]
    batched, single = real(images, batch_size=2, decoder="soft_argmax"), real(images, decoder="soft_argmax")
    assert len(batched) == 3 and abs(single[0][0]["x"] - single[1][0]["x"]) > 1e-3  # inputs really differ
    for b, s in zip(batched, single):
        assert b[0]["x"] == pytest.approx(s[0]["x"], abs=1e-3) and b[0]["y"] == pytest.approx(s[0]["y"], abs=1e-3)


def test_predict_cli_formats_and_bad_files(dot_model, tmp_path):
    path, _, _ = dot_model
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "eight.png")
    Image.fromarray(np.full((64, 48), 40000, np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "preds.json"
    code = cli(
        ["predict", str(tmp_path), "--model", str(path), "--output", str(out), "--csv", str(tmp_path / "p.csv")]
    )
    data = json.loads(out.read_text())
    assert code == 1 and len(data["predictions"]) == 3 and list(data["errors"]) == [str(tmp_path / "broken.png")]
    assert "broken.png: cannot read image" in data["errors"][str(tmp_path / "broken.png")]
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 4
    assert (
        cli(
            [
                "predict",
                str(tmp_path / "sixteen.png"),
                "--model",
                str(path),
                "--output",
                str(out),
                "--overlay-dir",
                str(tmp_path / "ov"),
            ]
        )
        == 0
    )
    assert (
        Image.open(tmp_path / "ov" / "sixteen.png").size == (48, 64)
        and (tmp_path / "ov" / "legend.txt").read_text() == "1 tip\n"
    )
    assert (
        cli(
            [
                "predict",
                str(tmp_path / "eight.png"),
                str(tmp_path / "broken.png"),
                "--model",
                str(path),
                "--output",
                str(out),
                "--skip-bad",
            ]
        )
        == 0
    )


def _write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", spacing=(0.3, 0.2), slope=2.0, intercept=-100.0):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [spacing[0], spacing[1]]  # (row, column) = (sy, sx)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_spacing_inversion_and_rescale(dot_model, tmp_path):
    from hf_landmark.preprocessing import read_dicom

    pixels = np.zeros((40, 30), np.uint16)
    pixels[0, 0] = 1000
    _write_dicom(tmp_path / "mono2.dcm", pixels)
    image, spacing = read_dicom(tmp_path / "mono2.dcm")
    assert spacing == (0.2, 0.3) and image[0, 0] == 1.0 and image[5, 5] == 0.0  # rescaled then min-max
    _write_dicom(tmp_path / "mono1.dcm", pixels, photometric="MONOCHROME1")
    assert read_dicom(tmp_path / "mono1.dcm")[0][0, 0] == 0.0  # MONOCHROME1 is inverted
    path, _, _ = dot_model
    out = tmp_path / "preds.json"
    assert (
        cli(
            [
                "predict",
                str(tmp_path / "mono2.dcm"),
                "--model",
                str(path),
                "--output",
                str(out),
                "--decoder",
                "soft_argmax",
            ]
        )
        == 0
    )
    pred = json.loads(out.read_text())["predictions"][str(tmp_path / "mono2.dcm")][0]
    # The DICOM header's spacing (0.2, 0.3) wins over the model's (0.2, 0.5).
    assert pred["x_mm"] == pytest.approx(pred["x"] * 0.2) and pred["y_mm"] == pytest.approx(pred["y"] * 0.3)


def test_zero_size_and_decompression_bomb_are_refused_by_name(dot_model, tmp_path):
    from hf_landmark.preprocessing import ImageReadError, read_image

    path, model, _ = dot_model
    pipe = pipeline("landmark-detection", model=model)
    with pytest.raises(ImageReadError, match="zero-size image"):
        pipe(np.zeros((0, 12), np.uint8))
    # 15000 x 15000 = 225 M pixels, above the 200 M limit: refused before decoding.
    Image.new("L", (15000, 15000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageReadError, match="bomb.png: image too large"):
        read_image(tmp_path / "bomb.png")
    out = tmp_path / "preds.json"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "ok.png")
    assert (
        cli(
            [
                "predict",
                str(tmp_path / "bomb.png"),
                str(tmp_path / "ok.png"),
                "--model",
                str(path),
                "--output",
                str(out),
            ]
        )
        == 1
    )
    data = json.loads(out.read_text())
    assert (
        list(data["predictions"]) == [str(tmp_path / "ok.png")]
        and "too large" in data["errors"][str(tmp_path / "bomb.png")]
    )


@pytest.mark.parametrize(
    "command",
    [
        "synth",
        "prepare",
        "pretrain",
        "pretrain-ssl",
        "finetune",
        "benchmark",
        "demo",
        "predict",
        "evaluate",
        "card",
        "push",
    ],
)
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: " in capsys.readouterr().out


@pytest.mark.parametrize("refine", [{}, {"refine_size": 128, "refine_crop": 32}], ids=["one stage", "two stages"])
def test_pipeline_cli_and_app_agree_on_the_same_file(tmp_path, refine):
    """Folder → pipeline, `hf-landmark predict` and the web demo: the same coordinates (for a
    two-stage detector, both stages run in each)."""
    from hf_landmark.app import predict as app_predict

    torch.manual_seed(3)
    LandmarkDetector(
        LandmarkConfig(
            backbone_config="tiny",
            num_landmarks=3,
            image_size=32,
            landmark_names=["a", "b", "c"],
            spacing=[0.1, 0.1],
            **refine,
        )
    ).save_pretrained(tmp_path / "m")
    Image.fromarray((np.random.default_rng(5).random((300, 240)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    from_pipeline = pipeline("landmark-detection", model=str(tmp_path / "m"))(str(tmp_path / "x.png"))
    assert (
        cli(["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "m"), "--output", str(tmp_path / "p.json")])
        == 0
    )
    from_cli = json.loads((tmp_path / "p.json").read_text())["predictions"][str(tmp_path / "x.png")]
    _, _, _, json_path = app_predict(str(tmp_path / "x.png"), str(tmp_path / "m"))
    from_app = json.loads(open(json_path, encoding="utf-8").read())["landmarks"]
    assert from_pipeline == from_cli == from_app
    assert {p["label"] for p in from_pipeline} == {"a", "b", "c"} and all("x_mm" in p for p in from_pipeline)
    if refine:  # --no-refine gives the first stage alone, which differs
        assert (
            cli(
                [
                    "predict",
                    str(tmp_path / "x.png"),
                    "--model",
                    str(tmp_path / "m"),
                    "--output",
                    str(tmp_path / "q.json"),
                    "--no-refine",
                ]
            )
            == 0
        )
        first = json.loads((tmp_path / "q.json").read_text())["predictions"][str(tmp_path / "x.png")]
        assert [p["x"] for p in first] != [p["x"] for p in from_cli]
