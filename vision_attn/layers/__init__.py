"""Building blocks: attention (self, cross, KV cache) and MLP."""

from vision_attn.layers.attention import CrossAttention, KVCache, SelfAttention, attention_weights
from vision_attn.layers.mlp import MLP

__all__ = ["MLP", "CrossAttention", "KVCache", "SelfAttention", "attention_weights"]
