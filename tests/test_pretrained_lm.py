"""A pretrained GPT-2, Llama or Qwen2 folder as the decoder: with the cross-attention gates closed, our logits and
greedy continuations are the language model's own (transformers, float32, atol 1e-5), with and without the KV
cache, left-padded in a batch and one by one. The folders are tiny random models saved offline (tests/lm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm.fixtures import FAMILIES, make_lm_folder
from transformers import AutoModelForCausalLM

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.decoding import DecodingSession
from vision_attn.models import VisionAttnModel
from vision_attn.tasks import GenerationConfig, generate

ATOL = 1e-5  # float32; the two implementations sum in different orders
PROMPTS = [[5, 17, 9, 40, 33, 2, 8], [12, 3], [7, 7, 21, 60]]  # different lengths: left-padded in a batch


@pytest.fixture(scope="module")
def lm_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm")
    return {family: make_lm_folder(root, family) for family in FAMILIES}


def captioner(folder: Path, **decoder: object) -> VisionAttnModel:
    torch.manual_seed(0)
    enc = EncoderConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2)
    model = VisionAttnModel(ModelConfig(enc, DecoderConfig(pretrained=str(folder), max_len=48, **decoder), 0, 1, 2))
    return model.eval()


def reference(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_config_and_weights_come_from_the_folder(lm_folders: dict[str, Path], family: str) -> None:
    model, ref = captioner(lm_folders[family]), reference(lm_folders[family])
    cfg = model.config.decoder
    assert cfg.family == ("gpt2" if family == "gpt2" else "llama")
    assert (cfg.dim, cfg.depth, cfg.num_heads, cfg.vocab_size) == (64, 2, 4, ref.config.vocab_size)
    assert (cfg.num_kv_heads or cfg.num_heads) == (4 if family == "gpt2" else 2)
    assert model.decoder.blocks[0].self_attn.qkv.bias is not None if family != "llama" else True
    gates = [b.cross_gate.alpha for b in model.decoder.blocks]
    assert all(float(g) == 0.0 for g in gates)  # closed: the LM's own logits before training


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_logits_equal_transformers(lm_folders: dict[str, Path], family: str) -> None:
    model, ref = captioner(lm_folders[family]), reference(lm_folders[family])
    ids = torch.randint(0, ref.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(images(3), ids), ref(ids).logits
        assert theirs.std() > 0.5  # O(1) logits: an error of 1e-5 would show
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
        # the image enters only through the gates: opened, it changes the logits
        for b in model.decoder.blocks:
            b.cross_gate.alpha.fill_(0.5)
        assert (model(images(3), ids) - theirs).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_batched_decoding_equals_transformers_one_by_one(lm_folders: dict[str, Path], family: str) -> None:
    """A left-padded batch through the KV cache (prefill, then forced tokens step by step) gives, row by row, the
    next-token logits of transformers' forward on that row's unpadded text."""
    model, ref = captioner(lm_folders[family]), reference(lm_folders[family])
    forced = torch.tensor([[11, 4, 30], [2, 2, 19], [50, 8, 1]])  # [B, steps]
    with torch.no_grad(), DecodingSession(model, images(3), PROMPTS, max_new_tokens=4) as session:
        ours = [session.prefill()]
        for t in range(forced.shape[1]):
            ours.append(session.step(forced[:, t]))
        for row, prompt in enumerate(PROMPTS):
            text = torch.tensor([prompt + forced[row].tolist()])
            theirs = ref(text).logits[0, len(prompt) - 1 :]  # [steps + 1, V]
            torch.testing.assert_close(torch.stack([o[row] for o in ours]), theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_continuations_equal_transformers_generate(lm_folders: dict[str, Path], family: str) -> None:
    model, ref = captioner(lm_folders[family]), reference(lm_folders[family])
    eos = ref.generation_config.eos_token_id
    model.config.eos_token_id = eos  # stop where transformers stops
    n = 10
    batched = generate(model, images(3), PROMPTS, GenerationConfig(max_new_tokens=n)).sequences
    for row, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            out = ref.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=eos)
        theirs = out[0, len(prompt) :].tolist()
        theirs = theirs[: theirs.index(eos)] if eos in theirs else theirs  # ours leaves EOS out
        alone = generate(model, images(3)[row : row + 1], [prompt], GenerationConfig(max_new_tokens=n)).sequences[0]
        assert batched[row] == alone == theirs
        assert len(theirs) >= 3  # a real continuation, not an immediate EOS


def test_cross_attention_every_k_blocks(lm_folders: dict[str, Path]) -> None:
    model = captioner(lm_folders["llama"], cross_attn_every=2)
    assert [b.cross_attn is not None for b in model.decoder.blocks] == [False, True]
    with torch.no_grad():
        out = generate(model, images(2), PROMPTS[:2], GenerationConfig(max_new_tokens=3), record_maps=True)
    assert out.attentions[0].shape[0] == 1  # maps of the one cross-attention layer


def test_unsupported_or_missing_folders_are_named(tmp_path: Path, lm_folders: dict[str, Path]) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"decoder.pretrained: .* is not a Hugging Face model folder \(no config.json\)"
    ):
        captioner(tmp_path / "nowhere")
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bert", "vocab_size": 10}')
    with pytest.raises(ValueError, match="holds a 'bert' model; supported"):
        captioner(bad)
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text((lm_folders["gpt2"] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        captioner(empty)
