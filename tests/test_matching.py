"""Matching landmarks with a DDPM's features: the both-ways check, and a shifted copy of an
image, whose right answer is known, through the library and the command line."""

import json

import numpy as np
import pytest
import torch

from hf_landmark.matching import FeatureExtractor, match_images, match_landmarks

SHIFT = np.array(
    [60.0, 75.0]
)  # original pixels of the 240 x 300 image: 8 x 8 pixels of the 32-px DDPM, its largest stride


def _unit(v):
    return torch.nn.functional.normalize(torch.as_tensor(v, dtype=torch.float32), dim=0)


def test_a_match_must_map_back_to_its_landmark():
    g = torch.Generator().manual_seed(0)
    c, h, w = 16, 8, 8
    template = torch.nn.functional.normalize(torch.randn(c, h, w, generator=g), dim=0)
    target = torch.nn.functional.normalize(torch.randn(c, h, w, generator=g), dim=0)
    d = template[:, 2, 2].clone()
    target[:, 5, 5] = d  # the landmark's anatomy, at (5, 5) in the target
    res = match_landmarks(template, torch.tensor([[2.0, 2.0]]), target[None])
    assert torch.allclose(res["xy"][0, 0], torch.tensor([5.0, 5.0]), atol=0.5) and bool(res["consistent"][0, 0])
    # The target's best match is something the template has more of elsewhere: (6, 6) holds the
    # target's descriptor exactly, so the way back lands there, 5.7 feature pixels away: refused.
    lookalike = _unit(d + 0.3 * torch.randn(c, generator=g))
    target[:, 5, 5] = lookalike
    template[:, 6, 6] = lookalike
    res = match_landmarks(template, torch.tensor([[2.0, 2.0]]), target[None])
    assert torch.allclose(res["xy"][0, 0], torch.tensor([5.0, 5.0]), atol=0.5)
    assert not bool(res["consistent"][0, 0]) and float(res["cycle_error"][0, 0]) == pytest.approx(4 * 2**0.5, abs=0.6)


@pytest.fixture(scope="module")
def ddpm_and_images(tmp_path_factory, synth_raw):
    """A small DDPM checkpoint (untrained: convolution features are shift-equivariant all the
    same) and a synthetic cephalogram with a copy of it shifted by SHIFT."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from PIL import Image

    from hf_landmark.configuration_landmark import unet_kwargs
    from hf_landmark.data.readers import read_isbi_annotation

    tmp = tmp_path_factory.mktemp("match")
    torch.manual_seed(0)
    DDPMPipeline(
        unet=UNet2DModel(**unet_kwargs("tiny", 32, out_channels=1)), scheduler=DDPMScheduler(num_train_timesteps=500)
    ).save_pretrained(tmp / "ddpm")
    files = sorted((synth_raw / "RawImage" / "TrainingData").iterdir())
    big = np.asarray(Image.open(files[0]).convert("L"), dtype=np.uint8)
    truth = read_isbi_annotation(synth_raw / "AnnotationsByMD" / "400_senior" / (files[0].stem + ".txt"))
    # The image and a copy rolled by SHIFT: 8 x 8 pixels of the DDPM's 32 x 32 input, so that
    # the copy's features are the image's moved by 8 x 8 (but for the borders).
    a, b = big, np.roll(big, (int(SHIFT[1]), int(SHIFT[0])), axis=(0, 1))
    Image.fromarray(a).save(tmp / "template.png")
    (tmp / "targets").mkdir()
    Image.fromarray(b).save(tmp / "targets" / "shifted.png")
    h, w = big.shape
    inside = [j for j, (x, y) in enumerate(truth) if 16 <= x < w - SHIFT[0] - 16 and 16 <= y < h - SHIFT[1] - 16]
    lm = truth
    return tmp, a / 255.0, b / 255.0, lm[inside]


class LocalFeatures(torch.nn.Module):
    """Stands in for a DDPM U-Net: two "up-blocks" of random 5 x 5 convolutions, whose features
    are exactly shift-equivariant and describe each pixel's neighbourhood (a trained DDPM's
    describe anatomy; this test is about the matching, not the features)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up_blocks = torch.nn.ModuleList(
            [torch.nn.Conv2d(1, 24, 5, padding=2), torch.nn.Conv2d(24, 24, 5, padding=2)]
        )

    def forward(self, x, t):
        return self.up_blocks[1](torch.tanh(self.up_blocks[0](x)))


def test_a_shifted_copy_is_matched_by_the_shift(ddpm_and_images):
    tmp, a, b, lm = ddpm_and_images
    assert len(lm) >= 4
    assert FeatureExtractor.from_ddpm(str(tmp / "ddpm")).size == 32  # the checkpoint's own size
    extractor = FeatureExtractor(LocalFeatures(), torch.linspace(0.999, 0.9, 500), 32, (-1.0, 1.0), blocks=(0, 1))
    coarse = match_images(extractor, a.astype(np.float32), lm, [b.astype(np.float32)], fine_crops=())[0]
    res = match_images(extractor, a.astype(np.float32), lm, [b.astype(np.float32)])[0]
    # The landmarks found moved by the shift are exactly those whose match maps back (here all
    # but one): within a cell of the 32-px map (7.5 x 9.4 px) from the whole image, within 1 px
    # after the fine stage; the one matched elsewhere is flagged.
    right = (np.abs(coarse["xy"] - (lm + SHIFT)) < [7.5, 9.4]).all(axis=1)
    assert right.sum() >= len(lm) - 1 and (coarse["consistent"] == right).all() and (res["consistent"] == right).all()
    assert np.abs(res["xy"][right] - (lm[right] + SHIFT)).max() <= 1.0
    # Matched into an image without that anatomy (the template flipped), a match does not map back.
    flipped = match_images(extractor, a.astype(np.float32), lm, [a[::-1, ::-1].astype(np.float32).copy()])[0]
    assert not flipped["consistent"].all()


def test_match_command(ddpm_and_images, tmp_path):
    from hf_landmark.data.formats import read_annotation_file
    from hf_landmark_cli import main as cli

    tmp, _, _, lm = ddpm_and_images
    names = [f"L{j}" for j in range(len(lm))]
    (tmp_path / "template.csv").write_text(
        "image,"
        + ",".join(f"{n}_x,{n}_y" for n in names)
        + "\ntemplate.png,"
        + ",".join(f"{v:.4f}" for v in lm.ravel())
        + "\n"
    )
    # The annotation file names the template relative to its own folder: the image sits with it.
    (tmp_path / "template.png").write_bytes((tmp / "template.png").read_bytes())
    assert (
        cli(
            [
                "match",
                "--template",
                str(tmp_path / "template.png"),
                "--landmarks",
                str(tmp_path / "template.csv"),
                "--images",
                str(tmp / "targets"),
                "--features",
                str(tmp / "ddpm"),
                "--output",
                str(tmp_path / "m.json"),
                "--format",
                "csv",
            ]
        )
        == 0
    )
    preds = json.loads((tmp_path / "m.json").read_text())["predictions"][str(tmp / "targets" / "shifted.png")]
    assert [p["label"] for p in preds] == names
    got = np.array([[p["x"], p["y"]] for p in preds])
    ok = np.array([p["consistent"] for p in preds])
    # (This untrained DDPM's features are poor: accuracy is the library test's; here the plumbing.)
    assert all(isinstance(p["cycle_error"], float) and p["cycle_error"] >= 0 for p in preds) and ok.dtype == bool
    entries, read_names = read_annotation_file(tmp_path / "m.csv")
    assert read_names == names and entries[0].file == "shifted.png" and np.abs(entries[0].landmarks - got).max() < 1e-3


def test_annotation_proposals_matched_from_the_first_finished_image(ddpm_and_images, tmp_path):
    """annotate --features: once one image is finished, the next starts from its landmarks
    matched into it; only the sure ones (cycle-consistent) are proposed."""
    from PIL import Image

    from hf_landmark.annotation import AnnotationSession, open_project

    tmp, a, b, lm = ddpm_and_images
    (tmp_path / "x").mkdir()
    Image.fromarray((a * 255).round().astype(np.uint8)).save(tmp_path / "x" / "a.png")
    Image.fromarray((b * 255).round().astype(np.uint8)).save(tmp_path / "x" / "b.png")
    names = [f"L{j}" for j in range(len(lm))]
    session = AnnotationSession(
        open_project(str(tmp_path / "x"), str(tmp_path / "ann.csv"), names, features=str(tmp / "ddpm"))
    )
    session.extractor = FeatureExtractor(
        LocalFeatures(), torch.linspace(0.999, 0.9, 500), 32, (-1.0, 1.0), blocks=(0, 1)
    )
    assert session.state.proposals is None  # nothing finished yet: nothing to match from
    for x, y in lm:
        session.place(x, y)
    session.go(+1)
    st = session.state
    # Only the cycle-consistent matches are proposed; the others are left to place.
    sure = np.isfinite(st.proposals).all(axis=1)
    assert sure.sum() >= len(lm) - 1 and np.abs(st.proposals[sure] - (lm[sure] + SHIFT)).max() <= 1.0
    assert [r[4] for r in session.table()] == ["proposed" if s else "" for s in sure]
    session.accept()  # the proposals become the annotation, as with a model's
    saved = session.project.store.read()["b.png"][0]
    assert np.abs(saved[sure] - st.proposals[sure]).max() < 1e-3 and np.isnan(saved[~sure]).all()


def test_the_match_check_of_a_detector_counts_what_a_veto_removes():
    """benchmark_match --detector: how well a second opinion's distance finds a detector's errors
    beyond the tail, against its spread, and what a veto would leave out of the kept share."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from benchmark_match import auc, veto_summary

    # Two images x three landmarks; two errors beyond 4 mm (6.0 and 5.0).
    errors = np.array([[1.0, 6.0, 2.0], [5.0, 1.5, 0.5]])
    spread = np.array([[1.0, 2.0, 3.0], [6.0, 4.0, 5.0]])
    distance = np.array([[0.5, 7.0, 1.0], [4.5, 3.5, 2.0]])
    # By hand: positives (6.0, 5.0) have spreads 2 and 6, negatives 1, 3, 4, 5: pairs won 1 + 4 of 8.
    assert auc(spread, errors > 4) == pytest.approx(5 / 8)
    # Distances 7.0 and 4.5 against 0.5, 1.0, 3.5, 2.0: every pair won.
    assert auc(distance, errors > 4) == 1.0
    assert auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5  # a tie counts half
    assert auc(spread, errors > 10) is None  # no positive: no curve
    res = veto_summary(errors, spread, distance, tail=4.0, keep=0.5, vetoes=(3.0, 5.0))
    assert res["tail_share"] == pytest.approx(2 / 6)
    kept = res["kept"]
    # The half with the smallest spread: spreads 1, 2, 3 (errors 1.0, 6.0, 2.0; distances 0.5, 7.0, 1.0).
    assert kept["count"] == 3 and kept["tail"] == 1 and kept["mre"] == pytest.approx(3.0)
    assert kept["auc_distance"] == 1.0
    # A detector with no error beyond the tail: nothing to find, and no AUC (printed "none").
    assert veto_summary(errors, spread, distance, tail=10.0, keep=0.5)["auc_spread"] is None
    assert kept["vetoes"] == [
        {"distance": 3.0, "removed": 1, "removed_tail": 1, "mre_rest": pytest.approx(1.5)},
        {"distance": 5.0, "removed": 1, "removed_tail": 1, "mre_rest": pytest.approx(1.5)},
    ]
