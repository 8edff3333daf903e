"""Datasets: readers for the benchmarks' public layouts, the prepared format, synthetic
data, few-shot subsets and augmentation."""

from .prepared import (
    SPLITS,
    UNLABELED,
    ConversionReport,
    DatasetFormatError,
    Record,
    build_dataset_dict,
    dataset_info,
    features,
    load_prepared,
    save_prepared,
)
from .readers import CEPH_LANDMARKS, READERS, prepare, read_ceph, read_chest, read_custom, read_hand, read_images
from .synthetic import write_synthetic_isbi
from .tensors import (
    ImagePool,
    LandmarkTensors,
    describe_split_counts,
    few_shot_indices,
    load_tensors,
    load_unlabeled_images,
    random_affine,
    random_gamma,
)

__all__ = [
    "CEPH_LANDMARKS",
    "READERS",
    "SPLITS",
    "UNLABELED",
    "ConversionReport",
    "DatasetFormatError",
    "ImagePool",
    "LandmarkTensors",
    "Record",
    "build_dataset_dict",
    "describe_split_counts",
    "dataset_info",
    "features",
    "few_shot_indices",
    "load_prepared",
    "load_tensors",
    "load_unlabeled_images",
    "prepare",
    "random_affine",
    "random_gamma",
    "read_ceph",
    "read_chest",
    "read_custom",
    "read_hand",
    "read_images",
    "save_prepared",
    "write_synthetic_isbi",
]
