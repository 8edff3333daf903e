import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The real radiographs (research use only, never copied into the repository) sit beside
# the project as ../shared/realdata, or wherever HF_LANDMARK_REALDATA points.
REALDATA = Path(
    os.environ.get("HF_LANDMARK_REALDATA", Path(__file__).resolve().parents[1].parent / "shared" / "realdata")
)


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory):
    from hf_landmark.data import write_synthetic_isbi

    return write_synthetic_isbi(tmp_path_factory.mktemp("synth") / "raw", num_images=24, seed=3)


@pytest.fixture(scope="session")
def synth_prepared(synth_raw, tmp_path_factory):
    from hf_landmark.data import prepare

    out = tmp_path_factory.mktemp("prepared") / "ceph64"
    prepare("ceph", synth_raw, out, image_size=64, split_counts=(14, 5, None))
    return out
