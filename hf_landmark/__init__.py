"""hf-landmark: few-shot anatomical landmark detection in x-ray images with DDPM pre-training."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_landmark import UNET_PRESETS, LandmarkConfig, unet_preset
from .errors import UserInputError
from .image_processing_landmark import LandmarkImageProcessor
from .modeling_landmark import LandmarkDetector, LandmarkDetectorOutput
from .pipeline_landmark import LandmarkDetectionPipeline, register_pipeline

__version__ = "0.4.0"

AutoConfig.register(LandmarkConfig.model_type, LandmarkConfig)
AutoModel.register(LandmarkConfig, LandmarkDetector)
# One class serves both backends: it needs neither torchvision nor an accelerator.
AutoImageProcessor.register(
    LandmarkConfig, image_processor_classes={"pil": LandmarkImageProcessor, "torchvision": LandmarkImageProcessor}
)
# Saved models carry `auto_map` and their modelling files, so that they also load with
# `AutoModel.from_pretrained(path_or_repo, trust_remote_code=True)` where hf_landmark is absent.
LandmarkConfig.register_for_auto_class()
LandmarkDetector.register_for_auto_class("AutoModel")
LandmarkImageProcessor.register_for_auto_class("AutoImageProcessor")
register_pipeline()

_TRAINING = {
    "pretrain": "pretrain",
    "pretrain_ssl": "pretrain_ssl",
    "finetune": "finetune",
    "benchmark": "fewshot_benchmark",
}


def __getattr__(name):
    # The training functions import Accelerate and the data stack: loaded on first use.
    if name in _TRAINING:
        import importlib

        return getattr(importlib.import_module(f"hf_landmark.training.{_TRAINING[name]}"), name)
    raise AttributeError(f"module 'hf_landmark' has no attribute {name!r}")


__all__ = [
    "UNET_PRESETS",
    "LandmarkConfig",
    "LandmarkDetectionPipeline",
    "LandmarkDetector",
    "LandmarkDetectorOutput",
    "LandmarkImageProcessor",
    "UserInputError",
    "benchmark",
    "finetune",
    "pretrain",
    "pretrain_ssl",
    "unet_preset",
    "__version__",
]
