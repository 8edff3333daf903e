"""hf-landmark: few-shot anatomical landmark detection in x-ray images with DDPM pre-training."""

from transformers import AutoConfig, AutoModel

from .configuration_landmark import UNET_PRESETS, LandmarkConfig, unet_preset
from .modeling_landmark import LandmarkDetector, LandmarkDetectorOutput

__version__ = "0.1.0"

AutoConfig.register(LandmarkConfig.model_type, LandmarkConfig)
AutoModel.register(LandmarkConfig, LandmarkDetector)

__all__ = [
    "UNET_PRESETS",
    "LandmarkConfig",
    "LandmarkDetector",
    "LandmarkDetectorOutput",
    "unet_preset",
    "__version__",
]
