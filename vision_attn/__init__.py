"""vision-attn: image captioning and VQA with a ViT encoder and a cross-attention Transformer decoder."""

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.generation import GenerationOutput, generate
from vision_attn.inference import Pipeline
from vision_attn.models import VisionAttnModel

__all__ = [
    "DecoderConfig",
    "EncoderConfig",
    "GenerationOutput",
    "ModelConfig",
    "Pipeline",
    "VisionAttnModel",
    "generate",
]
__version__ = "0.1.0"
