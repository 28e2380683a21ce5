"""vision-attn: image captioning and VQA with a ViT encoder and a cross-attention Transformer decoder."""

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.decoding import GenerationOutput
from vision_attn.inference import Pipeline
from vision_attn.models import VisionAttnModel
from vision_attn.tasks import GenerationConfig, RankedAnswer, Ranking, generate

__all__ = [
    "DecoderConfig",
    "EncoderConfig",
    "GenerationConfig",
    "GenerationOutput",
    "ModelConfig",
    "Pipeline",
    "RankedAnswer",
    "Ranking",
    "VisionAttnModel",
    "generate",
]
__version__ = "0.1.0"
