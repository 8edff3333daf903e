"""One record per dataset: every fact about a benchmark (or custom data) in one place.

Readers, metrics, evaluation, fine-tuning, model cards and the command line read
:data:`DATASETS`; adding a dataset is a :class:`DatasetSpec` here plus its reader.
"""

from __future__ import annotations

from dataclasses import dataclass

CEPH_LANDMARKS = (
    "Sella",
    "Nasion",
    "Orbitale",
    "Porion",
    "Subspinale",
    "Supramentale",
    "Pogonion",
    "Menton",
    "Gnathion",
    "Gonion",
    "Lower incisal incision",
    "Upper incisal incision",
    "Upper lip",
    "Lower lip",
    "Subnasale",
    "Soft tissue pogonion",
    "Posterior nasal spine",
    "Anterior nasal spine",
    "Articulare",
)


@dataclass(frozen=True)
class DatasetSpec:
    """Facts of one dataset.

    Attributes:
        name: short name, stored in prepared datasets and model configs (``ceph``, ...).
        title: human title (cards, tables).
        landmark_names: names in channel order; ``None`` where the data brings its own.
        unit_convention: how errors become physical units: ``spacing`` (a known mm/px),
            ``wrist`` (50 mm between two wrist landmarks of the ground truth) or ``pixels``.
        spacing_mm: the isotropic spacing of the ``spacing`` convention, when fixed.
        wrist_indices: the 0-based wrist landmarks of the ``wrist`` convention (the paper's
            code uses (0, 4); Payer et al. (1, 5)).
        wrist_distance_mm: the distance the ``wrist`` convention assumes.
        sdr_thresholds: successful-detection-rate thresholds, in the convention's unit.
        split_counts: default train / validation / test counts over sorted ids (``None``: the rest).
        paper_key: the dataset's name in the paper's result tables (``reference/*.csv``).
        expected_images: images in the public release.
        layout: the public on-disk layout the reader expects.
    """

    name: str
    title: str
    landmark_names: tuple[str, ...] | None
    unit_convention: str
    sdr_thresholds: tuple[float, ...]
    split_counts: tuple[int | None, int | None, int | None]
    spacing_mm: float | None = None
    wrist_indices: tuple[int, int] = (0, 4)
    wrist_distance_mm: float = 50.0
    paper_key: str | None = None
    expected_images: int | None = None
    layout: str = ""

    @property
    def unit(self) -> str:
        return "px" if self.unit_convention == "pixels" else "mm"


DATASETS: dict[str, DatasetSpec] = {
    "ceph": DatasetSpec(
        name="ceph",
        title="cephalometric (ISBI 2015)",
        landmark_names=CEPH_LANDMARKS,
        unit_convention="spacing",
        spacing_mm=0.1,
        sdr_thresholds=(2.0, 2.5, 3.0, 4.0),
        split_counts=(130, 20, None),
        paper_key="ceph",
        expected_images=400,
        layout="RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp and AnnotationsByMD/{400_senior,400_junior}/NNN.txt",
    ),
    "hand": DatasetSpec(
        name="hand",
        title="hand (Digital Hand Atlas)",
        landmark_names=tuple(f"hand_{i}" for i in range(37)),
        unit_convention="wrist",
        sdr_thresholds=(2.0, 4.0, 10.0),
        split_counts=(550, 59, None),
        paper_key="hand",
        expected_images=909,
        layout="jpg/<id>.jpg and labels/all.csv (rows id,x1,y1,...,x37,y37)",
    ),
    "chest": DatasetSpec(
        name="chest",
        title="chest (Shenzhen)",
        landmark_names=tuple(f"chest_{i}" for i in range(6)),
        unit_convention="pixels",
        sdr_thresholds=(3.0, 6.0, 9.0),
        split_counts=(195, 34, None),
        paper_key="chest",
        expected_images=279,
        layout="pngs/CHNCXR_NNNN_0.png and labels/CHNCXR_NNNN_0.txt",
    ),
    "custom": DatasetSpec(
        name="custom",
        title="custom",
        landmark_names=None,
        unit_convention="spacing",
        sdr_thresholds=(2.0, 2.5, 3.0, 4.0),
        split_counts=(None, None, None),
        layout="a folder of images plus a CSV or JSON of landmarks (see the README)",
    ),
}

#: SDR thresholds for data in pixels without a benchmark of its own.
PIXEL_THRESHOLDS = (3.0, 6.0, 9.0)


def get_spec(name: str | None) -> DatasetSpec:
    """The record of ``name``; an unknown name (a custom dataset's own) gets the custom record."""
    return DATASETS.get(name or "custom", DATASETS["custom"])


def sdr_thresholds(name: str | None, unit: str) -> tuple[float, ...]:
    """The dataset's SDR thresholds when its unit is ``unit``, else sensible ones for the unit."""
    spec = get_spec(name)
    if spec.unit == unit:
        return spec.sdr_thresholds
    return PIXEL_THRESHOLDS if unit == "px" else DATASETS["custom"].sdr_thresholds


def unit_config(name: str | None, spacing=None) -> dict:
    """The :class:`~hf_landmark.LandmarkConfig` fields that define a dataset's physical units
    (what evaluation reads). ``spacing``: a fixed mm/px for the config, when there is one."""
    spec = get_spec(name)
    return {
        "unit_convention": spec.unit_convention,
        "wrist_indices": list(spec.wrist_indices),
        "wrist_distance_mm": spec.wrist_distance_mm,
        "spacing": spacing,
    }
