"""Encoder, decoder and the assembled model."""

from vision_attn.models.decoder import TextDecoder
from vision_attn.models.encoder import ImageEncoder
from vision_attn.models.vision_attn import ModelFolderError, VisionAttnModel, text_loss

__all__ = ["ImageEncoder", "ModelFolderError", "TextDecoder", "VisionAttnModel", "text_loss"]
