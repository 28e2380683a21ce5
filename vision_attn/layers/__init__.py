"""Building blocks: attention (self, cross, its gate, and a recorder of cross-attention weights), KV cache, MLPs,
rotary positions."""

from vision_attn.layers.attention import (
    AttentionRecorder,
    CrossAttention,
    SelfAttention,
    TanhGate,
    attention_weights,
)
from vision_attn.layers.kv_cache import KVCache
from vision_attn.layers.mlp import MLP, SwiGLU
from vision_attn.layers.positions import RotaryEmbedding, apply_rotary

__all__ = [
    "MLP",
    "AttentionRecorder",
    "CrossAttention",
    "KVCache",
    "RotaryEmbedding",
    "SelfAttention",
    "SwiGLU",
    "TanhGate",
    "apply_rotary",
    "attention_weights",
]
