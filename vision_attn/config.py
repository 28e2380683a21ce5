"""Typed model configuration: the encoder, the decoder and the whole model.

These dataclasses are what `config.json` in an exported model folder holds, and what the Lightning CLI
exposes under `model.encoder.*` / `model.decoder.*`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import timm
import torch
from torch import nn

from vision_attn.data.transforms import MEAN, STD


@dataclass
class StackConfig:
    """The width and depth of a stack of transformer blocks: what the encoder and the decoder share.

    Args:
        dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over `dim`.
    """

    dim: int = 192
    depth: int = 3
    num_heads: int = 3
    mlp_ratio: float = 4.0

    def check_heads(self, name: str) -> None:
        """Raise ValueError unless the width splits into whole heads (`name`: the config's key, for the message)."""
        if self.dim % self.num_heads:
            raise ValueError(f"{name}.dim={self.dim} must be divisible by {name}.num_heads={self.num_heads}")


@dataclass
class EncoderConfig(StackConfig):
    """The Vision Transformer that turns an image into patch tokens: a timm model by name, or one built here.

    With `name`, timm builds the model; its architecture and its pretrained config (input size, mean, std) fill
    the fields left unset, so that `config.json` says what was built and rebuilds it. A size set to another value
    than the named model's is an error (image_size, mean and std may be chosen). Without a name, a ViT of the sizes
    below is built from scratch (the defaults in brackets).

    Args:
        dim: token width [192].
        depth: number of transformer blocks [4].
        num_heads: attention heads per block [3].
        mlp_ratio: MLP hidden width over `dim` [4.0].
        name: a timm ViT-family model, with or without a `.tag`: "vit_base_patch16_224.augreg2_in21k_ft_in1k",
            "deit3_small_patch16_224", "eva02_tiny_patch14_224", "vit_base_patch16_siglip_224", ...
        image_size: input side in pixels (square) [the named model's pretrained input size; 64]. With a name, another
            size resamples the pretrained position embeddings.
        patch_size: patch side in pixels; the grid is (image_size // patch_size)^2 tokens [the named model's; 8].
        mean: per-channel pixel mean of the input normalisation [the named model's pretrained config's; 0.5].
        std: per-channel pixel standard deviation [the named model's pretrained config's; 0.5].
        drop_path: stochastic depth rate (regularisation for small data).
        stem: "patch" = one linear projection per patch (standard ViT); "conv" = a small stack of strided 3x3
            convolutions (learns much faster from scratch on small data; not with a name).
        class_token: the ViT has a class token [the named model's; False]. It is dropped from the tokens the
            decoder sees: the decoder attends to patches only.
        pretrained: with `name`, the weights: a local `.safetensors`/`.pth`/`.bin` file of that timm model, or
            "hub" to let timm download them; None = random init.
    """

    dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    name: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    drop_path: float = 0.0
    stem: Literal["patch", "conv"] = "patch"
    class_token: bool | None = None
    pretrained: str | None = None

    def __post_init__(self) -> None:
        self.image_size = self.input_side(self.name, self.image_size)
        if self.name is None:
            if self.pretrained is not None:
                raise ValueError(
                    f"encoder.pretrained={self.pretrained!r} needs encoder.name: set encoder.name to the timm model "
                    "the weights are for (e.g. vit_base_patch16_224.augreg2_in21k_ft_in1k)"
                )
            scratch = {"dim": 192, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0, "patch_size": 8, "class_token": False}
            scratch |= {"mean": MEAN, "std": STD}
            for key, value in scratch.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
            if self.image_size % self.patch_size:
                raise ValueError(
                    f"encoder.image_size={self.image_size} must be a multiple of encoder.patch_size={self.patch_size}"
                )
        else:
            self._follow_name()
        self.mean, self.std = (tuple(float(v) for v in stats) for stats in (self.mean, self.std))  # JSON: lists
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"encoder.mean={list(self.mean)}, encoder.std={list(self.std)}: give three numbers each (R, G, B), "
                "the std ones > 0"
            )
        self.check_heads("encoder")

    def _follow_name(self) -> None:
        """Fill the unset fields from the named timm model; raise ValueError where a set one disagrees."""
        if self.stem != "patch":
            raise ValueError(
                f"encoder.stem={self.stem!r} is for encoders built from scratch; with encoder.name={self.name!r} the "
                "model's own patch embedding is used: remove encoder.stem"
            )
        pretrained = self.pretrained_cfg(self.name)
        for key, value in self.timm_architecture(self.name, self.image_size).items():
            mine = getattr(self, key)
            if mine is None:
                setattr(self, key, value)
            elif value is not None and not (mine == value or isinstance(value, float) and math.isclose(mine, value)):
                raise ValueError(
                    f"encoder.{key}={mine} does not match encoder.name={self.name!r}, whose {key} is {value}: remove "
                    f"encoder.{key} (it follows the name)"
                )
        # the statistics the weights were trained with, unless chosen otherwise
        self.mean = pretrained.mean if self.mean is None else self.mean
        self.std = pretrained.std if self.std is None else self.std

    @staticmethod
    def input_side(name: str | None, image_size: int | None) -> int:
        """The input side in pixels: `image_size` if set, else the named timm model's pretrained one, else 64.

        The CLI links this to `data.image_size`.
        """
        if image_size is not None:
            return image_size
        if name is None:
            return 64
        _, height, width = EncoderConfig.pretrained_cfg(name).input_size
        if height != width:
            raise ValueError(f"encoder.name={name!r} takes {height}x{width} images: set a square encoder.image_size")
        return height

    @staticmethod
    def pretrained_cfg(name: str) -> timm.models.PretrainedCfg:
        """timm's pretrained config of `name` (its input size, mean, std, weights' hub id); ValueError if none."""
        if not timm.is_model(name):
            raise ValueError(
                f"encoder.name={name!r} is not a timm model; timm.list_models('vit_*') lists the ViTs it builds"
            )
        try:
            cfg = timm.get_pretrained_cfg(name)
        except RuntimeError as e:  # an unknown tag
            tags = f"timm.list_pretrained('{name.split('.')[0]}*')"
            raise ValueError(f"encoder.name={name!r}: {e} ({tags} lists the tagged names)") from e
        if cfg is None:
            raise ValueError(f"encoder.name={name!r}: timm has no pretrained config for it")
        return cfg

    @staticmethod
    @functools.cache
    def timm_architecture(name: str, image_size: int) -> dict[str, Any]:
        """The sizes of the timm model `name` at `image_size`: dim, depth, num_heads, mlp_ratio, patch_size and
        class_token. Read from the model built on the meta device (no memory, no weights, a few milliseconds).
        """
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size)
        except TypeError as e:  # a model without img_size: not a ViT
            raise ValueError(f"encoder.name={name!r} is not a ViT-family model timm builds ({e})") from e
        except (ValueError, AssertionError, RuntimeError) as e:
            raise ValueError(f"timm cannot build encoder.name={name!r} at encoder.image_size={image_size} ({e})") from e
        blocks = getattr(model, "blocks", None)
        patch_embed = getattr(model, "patch_embed", None)
        if blocks is None or patch_embed is None or not hasattr(model, "num_prefix_tokens"):
            raise ValueError(
                f"encoder.name={name!r} is not a ViT-family model (patch_embed -> blocks -> patch tokens): choose a "
                "vit_*, deit3_*, eva02_* or *siglip* model"
            )
        patch_h, patch_w = patch_embed.patch_size
        if patch_h != patch_w:
            raise ValueError(
                f"encoder.name={name!r} has {patch_h}x{patch_w} patches; only square patches are supported"
            )
        fc2 = getattr(blocks[0].mlp, "fc2", None)
        return {
            "dim": model.embed_dim,
            "depth": len(blocks),
            "num_heads": blocks[0].attn.num_heads,
            "mlp_ratio": fc2.in_features / model.embed_dim if isinstance(fc2, nn.Linear) else None,
            "patch_size": patch_h,
            "class_token": getattr(model, "cls_token", None) is not None,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A checkpoint pickled before a field existed lacks it: resolve it as a new config would.
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def grid_size(self) -> int:
        """Patches per side (as timm's patch embedding counts them: a remainder of pixels is not a patch)."""
        return self.image_size // self.patch_size


@dataclass
class DecoderConfig(StackConfig):
    """The text decoder: pre-norm blocks of causal self-attention, cross-attention to patches, and MLP.

    Three families share one decoder. "base" (from scratch): LayerNorm, learned positions, GELU MLP, and
    cross-attention in every block. "gpt2" and "llama" are the layouts of those pretrained language models
    (GPT-2: LayerNorm, learned positions, GELU; Llama, SmolLM2, Qwen2: RMSNorm, rotary positions, SwiGLU,
    grouped-query attention), with a cross-attention sublayer behind a tanh gate that starts closed. Set
    `pretrained` to a local Hugging Face causal-LM folder and the family and every size below come from its
    `config.json` (`models.pretrained.lm_config`); only `max_len`, `dropout` and `cross_attn_every` stay yours.

    Args:
        dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over `dim` (unless `mlp_dim` is set).
        vocab_size: set from the tokenizer (0 means "not yet known").
        max_len: longest prompt + generated text, in tokens (size of the position table and KV cache).
        dropout: dropout on residual branches.
        family: "base", "gpt2" or "llama" (see above).
        pretrained: a local Hugging Face causal-LM folder (`config.json`, `model.safetensors`, `tokenizer.json`)
            whose weights and tokenizer the decoder starts from.
        cross_attn_every: cross-attention in every k-th block (the last block always has one).
        num_kv_heads: key/value heads (grouped-query attention); None = num_heads.
        mlp_dim: MLP hidden width; None = dim * mlp_ratio.
        norm_eps: epsilon of the norms.
        rope_theta: base of the rotary frequencies (llama family).
        rope_scaling: Llama 3's rotary scaling parameters (llama family), or None.
        qkv_bias: bias on the query/key/value projection (llama family: Qwen2 has one, Llama does not).
        tie_embeddings: the LM head shares the token embedding matrix.
    """

    vocab_size: int = 0
    max_len: int = 64
    dropout: float = 0.0
    family: Literal["base", "gpt2", "llama"] = "base"
    pretrained: str | None = None
    cross_attn_every: int = 1
    num_kv_heads: int | None = None
    mlp_dim: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, float] | None = None
    qkv_bias: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        self.check_heads("decoder")
        if self.dim % 4:
            raise ValueError(f"decoder.dim={self.dim} must be a multiple of 4 (2-D sin-cos positions of the patches)")
        if self.max_len < 16:
            raise ValueError(f"decoder.max_len={self.max_len} is too short; use at least 16")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"decoder.num_heads={self.num_heads} must be a multiple of decoder.num_kv_heads={self.num_kv_heads}"
            )
        if not 1 <= self.cross_attn_every <= self.depth:
            raise ValueError(f"decoder.cross_attn_every={self.cross_attn_every} must be in 1..depth ({self.depth})")

    @property
    def hidden_dim(self) -> int:
        """The MLP's hidden width."""
        return self.mlp_dim or int(self.dim * self.mlp_ratio)

    def has_cross_attn(self, block: int) -> bool:
        """Whether block `block` (0-based) attends to the image: every k-th, counted so that the last one does."""
        return (self.depth - 1 - block) % self.cross_attn_every == 0


@dataclass
class ModelConfig:
    """The whole model plus the special token ids generation needs."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if isinstance(self.decoder, dict):
            self.decoder = DecoderConfig(**self.decoder)
        if self.decoder.vocab_size and max(self.pad_token_id, self.bos_token_id, self.eos_token_id) >= (
            self.decoder.vocab_size
        ):
            raise ValueError("special token ids must be smaller than decoder.vocab_size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**d)
