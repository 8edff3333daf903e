"""hf-landmark: few-shot anatomical landmark detection in x-ray images with DDPM pre-training."""

from transformers import AutoConfig, AutoModel

from .configuration_landmark import UNET_PRESETS, LandmarkConfig, unet_preset
from .modeling_landmark import LandmarkDetector, LandmarkDetectorOutput
from .pipeline_landmark import LandmarkDetectionPipeline, register_pipeline

__version__ = "0.1.0"

AutoConfig.register(LandmarkConfig.model_type, LandmarkConfig)
AutoModel.register(LandmarkConfig, LandmarkDetector)
# Saved models carry `auto_map` and their modelling files, so that they also load with
# `AutoModel.from_pretrained(path_or_repo, trust_remote_code=True)` where hf_landmark is absent.
LandmarkConfig.register_for_auto_class()
LandmarkDetector.register_for_auto_class("AutoModel")
register_pipeline()

__all__ = [
    "UNET_PRESETS",
    "LandmarkConfig",
    "LandmarkDetectionPipeline",
    "LandmarkDetector",
    "LandmarkDetectorOutput",
    "unet_preset",
    "__version__",
]
