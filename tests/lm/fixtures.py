"""Tiny pretrained language-model folders, made offline: transformers models from small configs with random
weights, saved by `save_pretrained` with a small byte-level BPE tokenizer, as a user's downloaded folder would be.

Families: "gpt2"; "llama" (grouped-query attention: 4 query heads, 2 key/value heads); "qwen2" (the same,
with qkv biases and no BOS token).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

FAMILIES = ("gpt2", "llama", "qwen2")
# the words of the built-in set, so that its captions and questions take a few tokens each
WORDS = (
    "a picture of the large small red green blue orange purple yellow circle square triangle diamond object objects "
    "on at in to from left right top bottom center there are is what where how many color shape size two three "
    "four one no yes and of 0 1 2 3 4 Question Answer Caption"
).split()
TEXTS = [
    "a picture of a large orange triangle on the left, a large red circle in the center and a green square.",
    "from left to right: a small blue diamond, a large purple circle and a yellow square at the top.",
    "Question: what color is the large triangle? Answer: red",
    "Question: is the red circle left of the green square? Answer: yes",
    "Question: how many blue objects are there? Answer: 2",
    "Caption: there are three objects: a large green square at the top right, bottom left.",
    " ".join(WORDS),
] * 8
# special tokens of each family's tokenizer: (bos, eos, pad); None = the tokenizer has none
SPECIALS = {
    "gpt2": ("<|endoftext|>", "<|endoftext|>", None),
    "llama": ("<s>", "</s>", None),
    "qwen2": (None, "<|endoftext|>", "<|endoftext|>"),
}


def tiny_tokenizer(family: str, vocab_size: int = 500) -> PreTrainedTokenizerFast:
    """GPT-2's names no special token (as openai-community/gpt2's files): its ids are in the model's config.json."""
    bos, eos, pad = SPECIALS[family]
    specials = list(dict.fromkeys(t for t in (bos, eos, pad) if t))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS, trainer=trainer)
    if family == "gpt2":
        return PreTrainedTokenizerFast(tokenizer_object=tok)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)


def tiny_lm(family: str, vocab_size: int) -> torch.nn.Module:
    """A random causal LM of `family`; weights larger than the default init so that logits are O(1)."""
    torch.manual_seed(0)
    common = {"vocab_size": vocab_size, "initializer_range": 0.2}
    if family == "gpt2":  # BOS/EOS ids: set to the tokenizer's by make_lm_folder
        gpt2 = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "bos_token_id": 0, "eos_token_id": 0}
        model = GPT2LMHeadModel(GPT2Config(**common, **gpt2))
    else:
        cls_cfg, cls = (LlamaConfig, LlamaForCausalLM) if family == "llama" else (Qwen2Config, Qwen2ForCausalLM)
        sizes = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}
        cfg = cls_cfg(
            **common, **sizes, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=family == "qwen2"
        )
        model = cls(cfg)
        if family == "qwen2":  # its q/k/v biases start at zero: make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    torch.nn.init.normal_(proj.bias, std=0.2)
        for layer in model.model.layers:  # and the norms at one
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    return model.eval()


def make_lm_folder(root: Path, family: str) -> Path:
    """Save a tiny `family` LM and its tokenizer into root/family; return the folder."""
    folder = root / family
    tok = tiny_tokenizer(family)
    model = tiny_lm(family, len(tok) + 3)  # an embedding table a little larger than the tokenizer, as Qwen2's
    bos, eos, pad = (tok.backend_tokenizer.token_to_id(t) if t else None for t in SPECIALS[family])
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = bos, eos, pad
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = bos, eos
    model.generation_config.pad_token_id = pad if pad is not None else eos
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
