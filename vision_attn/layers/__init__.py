"""Building blocks: attention (self, cross, and a recorder of cross-attention weights), KV cache, MLP."""

from vision_attn.layers.attention import AttentionRecorder, CrossAttention, SelfAttention, attention_weights
from vision_attn.layers.kv_cache import KVCache
from vision_attn.layers.mlp import MLP

__all__ = ["MLP", "AttentionRecorder", "CrossAttention", "KVCache", "SelfAttention", "attention_weights"]
