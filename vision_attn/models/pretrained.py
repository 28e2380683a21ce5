"""A pretrained causal language model as the decoder: a local Hugging Face folder -> our config and weights.

Two families load: GPT-2 (`model_type` gpt2) and the Llama family (llama, which includes SmolLM2, and qwen2).
The folder is what `save_pretrained` of a transformers causal LM writes: `config.json`, `model.safetensors`
(or sharded files with `model.safetensors.index.json`) and the tokenizer files. Nothing is downloaded.

The weights are mapped onto `TextDecoder`'s own modules (fused qkv, fused SwiGLU input) so that one decoder
serves every family; the cross-attention sublayers and their gates are new and keep their initialisation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from vision_attn.config import DecoderConfig

log = logging.getLogger(__name__)

FAMILIES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama"}  # transformers' model_type -> our family
NEW = re.compile(r"blocks\.\d+\.(norm2|cross_attn|cross_gate)\.")  # the cross-attention sublayers: not in the LM


def lm_folder(path: str | Path) -> Path:
    """The folder `decoder.pretrained` names, checked to hold a config and weights."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"decoder.pretrained: {folder} is not a Hugging Face model folder (no config.json); download the "
            "model's config.json, model.safetensors and tokenizer files into it"
        )
    return folder


def lm_config(cfg: DecoderConfig) -> DecoderConfig:
    """`cfg` with the family and every size taken from the `config.json` of `cfg.pretrained`.

    Raises:
        ValueError: the model type or one of its settings is not one this decoder reproduces (named).
    """
    folder = lm_folder(cfg.pretrained)
    hf = json.loads((folder / "config.json").read_text())
    model_type = hf.get("model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        raise ValueError(f"decoder.pretrained: {folder} holds a {model_type!r} model; supported: {sorted(FAMILIES)}")
    fields = _gpt2_fields(hf) if family == "gpt2" else _llama_fields(hf, model_type)
    out = dataclasses.replace(cfg, family=family, vocab_size=hf["vocab_size"], **fields)
    limit = hf.get("n_positions") or hf.get("max_position_embeddings")
    if limit and out.max_len > limit:
        raise ValueError(f"decoder.max_len={out.max_len} exceeds the {limit} positions of {folder}")
    return out


def _gpt2_fields(hf: dict[str, Any]) -> dict[str, Any]:
    unsupported = {
        "activation_function": ("gelu_new", hf.get("activation_function", "gelu_new")),
        "scale_attn_by_inverse_layer_idx": (False, hf.get("scale_attn_by_inverse_layer_idx", False)),
        "scale_attn_weights": (True, hf.get("scale_attn_weights", True)),
    }
    for key, (want, got) in unsupported.items():
        if got != want:
            raise ValueError(f"decoder.pretrained: GPT-2 with {key}={got!r} is not supported (only {want!r})")
    dim = hf["n_embd"]
    return {
        "dim": dim,
        "depth": hf["n_layer"],
        "num_heads": hf["n_head"],
        "num_kv_heads": None,
        "mlp_dim": hf.get("n_inner") or 4 * dim,
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "tie_embeddings": True,  # GPT2LMHeadModel's head is always the token embedding
    }


def _llama_fields(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    checks = {
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "head_dim": (hf.get("head_dim") or dim // heads, dim // heads),
        "mlp_bias": (hf.get("mlp_bias", False), False),
        "use_sliding_window": (hf.get("use_sliding_window", False), False),
        # Llama's attention_bias also puts a bias on the output projection, which this decoder does not have
        "attention_bias": (hf.get("attention_bias", False) and model_type == "llama", False),
    }
    for key, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"decoder.pretrained: a {model_type} model with {key}={got!r} is not supported")
    rope = hf.get("rope_parameters") or {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 1e4)}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ValueError(f"decoder.pretrained: rotary scaling {kind!r} is not supported (only default and llama3)")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return {
        "dim": dim,
        "depth": hf["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "mlp_dim": hf["intermediate_size"],
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": float(rope.get("rope_theta", 1e4)),
        "rope_scaling": {k: float(rope[k]) for k in keys} if kind == "llama3" else None,
        "qkv_bias": model_type == "qwen2",  # Qwen2: biases on q, k, v only
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def read_weights(folder: Path) -> dict[str, Tensor]:
    """Every tensor of the folder's `model.safetensors` (or of the shards its index names), on the CPU."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"decoder.pretrained: {folder} has no model.safetensors (nor a sharded index)")
    state: dict[str, Tensor] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            state.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open is not a dict)
    return state


def _gpt2_state(hf: dict[str, Tensor], cfg: DecoderConfig) -> dict[str, Tensor]:
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    out = {"tok_emb.weight": hf["wte.weight"], "pos_emb.weight": hf["wpe.weight"][: cfg.max_len]}
    out |= {f"norm.{p}": hf[f"ln_f.{p}"] for p in ("weight", "bias")}
    names = {"ln_1": "norm1", "attn.c_attn": "self_attn.qkv", "attn.c_proj": "self_attn.proj", "ln_2": "norm3"}
    names |= {"mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(cfg.depth):
        for theirs, ours in names.items():
            w = hf[f"h.{i}.{theirs}.weight"]
            # GPT-2's Conv1D stores [in, out]: nn.Linear wants [out, in]
            out[f"blocks.{i}.{ours}.weight"] = w.t() if w.ndim == 2 else w
            out[f"blocks.{i}.{ours}.bias"] = hf[f"h.{i}.{theirs}.bias"]
    return out


def _llama_state(hf: dict[str, Tensor], cfg: DecoderConfig) -> dict[str, Tensor]:
    hf = {k.removeprefix("model."): v for k, v in hf.items()}
    out = {"tok_emb.weight": hf["embed_tokens.weight"], "norm.weight": hf["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = hf["lm_head.weight"]
    for i in range(cfg.depth):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        out[dst + "norm1.weight"] = hf[src + "input_layernorm.weight"]
        out[dst + "norm3.weight"] = hf[src + "post_attention_layernorm.weight"]
        out[dst + "self_attn.qkv.weight"] = torch.cat([hf[f"{src}self_attn.{p}_proj.weight"] for p in "qkv"])
        if cfg.qkv_bias:
            out[dst + "self_attn.qkv.bias"] = torch.cat([hf[f"{src}self_attn.{p}_proj.bias"] for p in "qkv"])
        out[dst + "self_attn.proj.weight"] = hf[src + "self_attn.o_proj.weight"]
        out[dst + "mlp.fc1.weight"] = torch.cat([hf[src + "mlp.gate_proj.weight"], hf[src + "mlp.up_proj.weight"]])
        out[dst + "mlp.fc2.weight"] = hf[src + "mlp.down_proj.weight"]
    return out


def load_lm_weights(decoder: torch.nn.Module, cfg: DecoderConfig) -> None:
    """Copy the weights of `cfg.pretrained` into `decoder` (a `TextDecoder` built from `lm_config(cfg)`).

    Raises:
        ValueError: the folder lacks a weight the decoder needs, or its shapes differ (named).
    """
    folder = lm_folder(cfg.pretrained)
    hf = read_weights(folder)
    try:
        state = _gpt2_state(hf, cfg) if cfg.family == "gpt2" else _llama_state(hf, cfg)
    except KeyError as e:
        raise ValueError(f"decoder.pretrained: {folder} has no weight {e} (a {cfg.family} checkpoint?)") from e
    try:
        missing, unexpected = decoder.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"decoder.pretrained: {folder}: {str(e).splitlines()[-1].strip()}") from e
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    missing = [k for k in missing if not NEW.match(k) and k not in tied]
    if missing or unexpected:
        raise ValueError(f"decoder.pretrained: {folder}: weights missing {missing[:5]}, unexpected {unexpected[:5]}")
    log.info("loaded the %s language model of %s (%d tensors)", cfg.family, folder, len(state))
