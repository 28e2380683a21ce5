"""Attention maps: per-word decoder cross-attention over the patch grid, and encoder attention rollout.

Notation: L decoder layers, H heads, T generated tokens, W words, N image (patch) tokens on an h x w grid,
N' = prefix + N encoder tokens.

The decoder maps come from `tasks.generate(..., record_maps=True)`: map t is the cross-attention of the query
that predicted token t. `AttentionResult` turns them into one map per word; `encoder_rollout` is attention
rollout (Abnar & Zuidema 2020) through the ViT's self-attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vision_attn.data.tokenizer import TextCodec
from vision_attn.models.encoder import ImageEncoder

AttentionLayer = int | Literal["mean"]
# Chosen by the pointing game on the demo model (benchmarks/README.md, "Pointing game"): the mean over layers
# points at the named object more often than any single layer, and it does not depend on the depth.
DEFAULT_LAYER: AttentionLayer = "mean"


@dataclass
class AttentionResult:
    """A generated text with where the decoder looked for each token and word, and the encoder rollout.

    Attributes:
        text: the decoded text (as `caption()` / `answer()` return it).
        tokens: each generated token's text (EOS excluded), T of them; `token_ids` their ids.
        words: the words of the text; a BPE token that continues a word (no leading space) joins it.
        word_tokens: per word, the positions of its tokens in `tokens`.
        token_maps: [T, h, w] cross-attention of `layer` averaged over heads; each map sums to 1.
        word_maps: [W, h, w] the mean of each word's token maps (so each still sums to 1).
        raw: [L, H, T, N] per-layer, per-head cross-attention weights (N = h * w, row-major).
        rollout: [h, w] encoder attention rollout of the image, sums to 1.
        layer: the decoder layer the maps show (an index, or "mean" over layers).
    """

    text: str
    tokens: list[str]
    token_ids: list[int]
    words: list[str]
    word_tokens: list[list[int]]
    token_maps: Tensor
    word_maps: Tensor
    raw: Tensor
    rollout: Tensor
    layer: AttentionLayer

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) patches."""
        return tuple(self.token_maps.shape[-2:])  # type: ignore[return-value]


def reduce_maps(raw: Tensor, layer: AttentionLayer = DEFAULT_LAYER) -> Tensor:
    """raw [L, H, T, N] -> [T, N]: the head mean of one layer (negative indices count from the last) or of all."""
    check_layer(layer, raw.shape[0])
    return raw.mean(dim=(0, 1)) if layer == "mean" else raw[layer].mean(0)


def check_layer(layer: AttentionLayer, depth: int) -> None:
    """Raise ValueError unless `layer` is "mean" or an index into `depth` decoder layers."""
    if layer != "mean" and (isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth):
        raise ValueError(
            f"attention_layer must be 'mean' or a decoder layer index in [{-depth}, {depth - 1}], got {layer!r}"
        )


def group_words(pieces: list[str]) -> list[list[int]]:
    """Token texts -> positions of each word's tokens.

    A token starts a word if its text starts with a space (byte-level BPE marks word starts that way) and the
    current word already has visible text; the others continue the current word, so "circle" + "." is one
    word and whitespace-only tokens join the word that follows them (or, at the end, the one before).
    """
    words: list[list[int]] = []
    visible = False  # the current word has non-space text
    for i, piece in enumerate(pieces):
        if not words or (piece[:1].isspace() and visible):
            words.append([i])
            visible = False
        else:
            words[-1].append(i)
        visible = visible or bool(piece.strip())
    if len(words) > 1 and not visible:
        last = words.pop()
        words[-1] += last
    return words


def attention_result(
    codec: TextCodec, token_ids: list[int], raw: Tensor, rollout: Tensor, layer: AttentionLayer = DEFAULT_LAYER
) -> AttentionResult:
    """Build the result of one text: token_ids [T], raw [L, H, T, N], rollout [h, w].

    Word maps are the mean of their tokens' maps: each token's map sums to 1, so the mean does too, and a
    word split into several tokens counts as much as a word that is one token.
    """
    h, w = rollout.shape
    raw = raw.float().cpu()
    token_maps = reduce_maps(raw, layer).view(-1, h, w)  # [T, h, w]
    pieces = [codec.tok.decode([i], skip_special_tokens=True) for i in token_ids]  # specials: "" (as in the text)
    spans = group_words(pieces)
    words = [codec.tok.decode([token_ids[i] for i in span], skip_special_tokens=True).strip() for span in spans]
    word_maps = torch.stack([token_maps[span].mean(0) for span in spans]) if spans else token_maps[:0]
    return AttentionResult(
        text=codec.decode(token_ids),
        tokens=[p.strip() for p in pieces],
        token_ids=list(token_ids),
        words=words,
        word_tokens=spans,
        token_maps=token_maps,
        word_maps=word_maps,
        raw=raw,
        rollout=rollout.float().cpu(),
        layer=layer,
    )


@torch.inference_mode()
def encoder_attention(encoder: ImageEncoder, images: Tensor) -> list[Tensor]:
    """Self-attention probabilities of every ViT block: images [B, 3, S, S] -> per block [B, H, N', N'].

    timm's attention modules use fused SDPA, which returns no weights. For this one forward each block's `attn`
    takes timm's explicit path instead (its `fused_attn` switched off), which computes the softmax and passes it
    through the module's `attn_drop`; a forward hook there records it (the module `timm.utils.AttentionExtract`
    hooks by default). So the probabilities are the ones the block used, with its own q/k norms, scale and, for
    EVA, rotary position embeddings.

    Raises:
        ValueError: a block's attention is not a timm module with `fused_attn` and `attn_drop` (ViT, DeiT,
            EVA, SigLIP have them), or it did not record one map per block.
    """
    attns = [blk.attn for blk in encoder.vit.blocks]
    for attn in attns:
        if not (hasattr(attn, "fused_attn") and isinstance(getattr(attn, "attn_drop", None), nn.Module)):
            raise ValueError(
                f"encoder rollout cannot read the attention of {type(attn).__name__} blocks (encoder.name="
                f"{encoder.cfg.name!r}): it needs timm attention modules with `fused_attn` and `attn_drop`"
            )
    probs: list[Tensor] = []

    def record(_drop: nn.Module, args: tuple[Tensor, ...], _out: Tensor) -> None:
        probs.append(args[0].float())  # [B, H, N', N'], before dropout (none in eval mode)

    fused = [attn.fused_attn for attn in attns]
    handles = [attn.attn_drop.register_forward_hook(record) for attn in attns]
    try:
        for attn in attns:
            attn.fused_attn = False
        encoder(images)
    finally:
        for attn, was in zip(attns, fused, strict=True):
            attn.fused_attn = was
        for h in handles:
            h.remove()
    n = encoder.vit.num_prefix_tokens + math.prod(encoder.grid)
    if len(probs) != len(attns) or any(p.shape[-2:] != (n, n) for p in probs):
        raise ValueError(
            f"encoder rollout expected one [{n}, {n}] attention map per block from {type(attns[0]).__name__}, got "
            f"{[tuple(p.shape) for p in probs]}"
        )
    return probs


def attention_rollout(probs: list[Tensor], num_prefix_tokens: int = 0) -> Tensor:
    """Attention rollout: per-block probabilities [B, H, N', N'] -> [B, N] over the patch tokens, summing to 1.

    Each block's head-mean attention A gets the identity for its residual connection and is renormalised,
    A' = (A + I) / 2; the rollout is A'_L ... A'_1 (row i: how much output token i is made of each input
    token). The decoder reads only the patch tokens, so the map is the mean over the patch rows (there is no
    class token in the demo model; with one, its row is left out too), restricted to patch columns and
    renormalised.
    """
    if not probs:
        raise ValueError("attention rollout needs at least one block's attention")
    n = probs[0].shape[-1]
    eye = torch.eye(n, dtype=probs[0].dtype, device=probs[0].device)
    rollout = eye
    for p in probs:
        a = p.mean(1) + eye  # [B, N', N']
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    patches = rollout[:, num_prefix_tokens:, num_prefix_tokens:].mean(1)  # [B, N]
    return patches / patches.sum(-1, keepdim=True)


def encoder_rollout(encoder: ImageEncoder, images: Tensor) -> Tensor:
    """images [B, 3, S, S] -> rollout maps [B, h, w] on the encoder's patch grid (each sums to 1)."""
    roll = attention_rollout(encoder_attention(encoder, images), encoder.vit.num_prefix_tokens)
    return roll.view(-1, *encoder.grid)
