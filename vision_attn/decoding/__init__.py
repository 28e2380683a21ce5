"""Decoding: the session (caches, key mask, positions, slots, image keys/values), the searches over it, and the
compiled step. Callers go through `vision_attn.tasks`, which picks the search from a `GenerationConfig`."""

from vision_attn.decoding.compiled import CompiledDecoder
from vision_attn.decoding.search import GenerationOutput, beam_search, greedy, log_softmax, sample
from vision_attn.decoding.session import DecodeBuffers, DecodingSession

__all__ = [
    "CompiledDecoder",
    "DecodeBuffers",
    "DecodingSession",
    "GenerationOutput",
    "beam_search",
    "greedy",
    "log_softmax",
    "sample",
]
