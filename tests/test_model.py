"""The assembled model: shapes, grouped forward, the exported folder, config checks, pixel normalisation.

Named timm encoders and their pretrained weights: test_encoder_timm.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.data.transforms import MEAN, STD, normalize, pixel_stats
from vision_attn.decoding import DecodeBuffers
from vision_attn.models import ImageEncoder, ModelFolderError, VisionAttnModel, text_loss

# the tiny config of conftest: 32 px images in 8 px patches, decoder width 48, vocabulary 60
IMAGE_SIZE, N_TOKENS, WIDTH, VOCAB = 32, 16, 48, 60


@pytest.fixture(autouse=True)
def _check_tiny_config(make_config) -> None:
    cfg = make_config()
    assert (cfg.encoder.image_size, cfg.encoder.grid_size**2) == (IMAGE_SIZE, N_TOKENS)
    assert (cfg.decoder.dim, cfg.decoder.vocab_size) == (WIDTH, VOCAB)


def _ids(m: int, t: int, seed: int = 0) -> Tensor:
    return torch.randint(3, VOCAB, (m, t), generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_finite(tiny_model: VisionAttnModel, images: Tensor) -> None:
    assert tiny_model.encode(images).shape == (4, N_TOKENS, 48)
    logits = tiny_model(images, _ids(4, 9))
    assert logits.shape == (4, 9, VOCAB)
    assert torch.isfinite(logits).all()
    # several texts per image: image_index picks the image of each text
    index = torch.tensor([0, 0, 3, 1, 3])
    ids = _ids(5, 6)
    shared = tiny_model(images, ids, image_index=index)
    assert shared.shape == (5, 6, VOCAB)
    torch.testing.assert_close(shared, tiny_model(images[index], ids), atol=1e-5, rtol=1e-5)
    assert (shared[0] - shared[2]).abs().max() > 1e-2  # the image matters


@pytest.mark.parametrize("class_token", [False, True])
def test_encoder_returns_patch_tokens_only(make_config, class_token: bool) -> None:
    cfg = dataclasses.replace(make_config().encoder, class_token=class_token)
    enc = ImageEncoder(cfg, out_dim=cfg.dim).eval()  # same width: no projection
    assert isinstance(enc.proj, torch.nn.Identity)
    assert enc(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, N_TOKENS, cfg.dim)


def test_decoder_is_causal(tiny_model: VisionAttnModel, images: Tensor) -> None:
    ids = _ids(2, 8)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % VOCAB
    a, b = tiny_model(images[:2], ids), tiny_model(images[:2], changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=0, rtol=0)
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


def test_decoder_prefill_and_steps_equal_full_forward(tiny_model: VisionAttnModel, images: Tensor) -> None:
    """The decoder's incremental path over a session's buffers: a 4-token prefill, then one token per step."""
    dec, cfg = tiny_model.decoder, tiny_model.config.decoder
    ids = _ids(4, 9)
    with torch.no_grad():
        kv = dec.image_kv(tiny_model.encode(images))
        full = dec(ids, kv)  # [4, 9, V]
        buffers = DecodeBuffers.allocate(cfg, cfg.max_len, kv)
        buffers.start(torch.ones(4, 4, dtype=torch.bool))
        parts = [dec.prefill(ids[:, :4], buffers)]
        for t in range(4, 9):
            parts.append(dec.step(ids[:, t], buffers))
            buffers.advance()
    torch.testing.assert_close(torch.stack(parts, 1), full[:, 3:], atol=1e-5, rtol=1e-5)
    assert int(buffers.slot) == 9 and buffers.key_valid[:, :9].all() and not buffers.key_valid[:, 9:].any()


def test_forward_groups_equal_separate_forwards(tiny_model: VisionAttnModel, images: Tensor) -> None:
    captions, cap_index = _ids(4, 10, seed=1), None  # one per image
    questions, q_index = _ids(6, 5, seed=2), torch.tensor([0, 1, 1, 2, 3, 3])
    got = tiny_model.forward_groups(images, [(captions, cap_index), (questions, q_index)])
    assert [g.shape for g in got] == [(4, 10, VOCAB), (6, 5, VOCAB)]
    torch.testing.assert_close(got[0], tiny_model(images, captions), atol=0, rtol=0)
    torch.testing.assert_close(got[1], tiny_model(images, questions, image_index=q_index), atol=0, rtol=0)


def test_texts_sharing_an_image_equal_repeated_images_with_gradients(make_model, images: Tensor) -> None:
    """image_index picks each text's image keys/values (index_select): logits and every parameter's gradient equal
    those of the images repeated, one per text (float32; the gradients of a shared image are summed in another
    order, hence the tolerance)."""
    index = torch.tensor([3, 0, 0, 2, 3, 3, 1])
    ids = _ids(len(index), 6, seed=3)
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    grads = []
    for imgs, idx in [(images, index), (images[index], None)]:
        model = make_model().train()
        logits = model(imgs, ids, image_index=idx)
        text_loss(logits, labels).backward()
        grads.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (shared, g_shared), (repeated, g_repeated) = grads
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-5)
    assert g_shared.keys() == g_repeated.keys() and g_shared
    for name in g_shared:
        torch.testing.assert_close(g_shared[name], g_repeated[name], atol=1e-5, rtol=1e-4, msg=name)


def test_gradients_reach_encoder_and_decoder(make_model, images: Tensor) -> None:
    model = make_model().train()
    ids = _ids(4, 7)
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    text_loss(model(images, ids), labels).backward()
    for name in (
        "encoder.vit.patch_embed.proj.weight",
        "decoder.blocks.0.cross_attn.kv.weight",
        "decoder.tok_emb.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("class_token", [False, True])
def test_every_parameter_is_used_and_patch_tokens_are_normed(make_config, class_token: bool, images: Tensor) -> None:
    """DDP requires every parameter to take part in the loss; the decoder expects final-normed patch tokens."""
    cfg = make_config()
    cfg.encoder = dataclasses.replace(cfg.encoder, dim=48, num_heads=2, class_token=class_token)
    model = VisionAttnModel(cfg)  # library init: final LayerNorm has weight 1, bias 0
    pos = model.encoder.memory_pos  # fixed 2-D sin-cos positions, added after the norm; not saved
    assert pos.shape == (N_TOKENS, 48) and "encoder.memory_pos" not in model.state_dict()
    assert len({tuple(row.tolist()) for row in pos}) == N_TOKENS  # every patch has its own position
    tokens = model.encode(images) - pos
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(4, N_TOKENS), atol=1e-4, rtol=0)
    torch.testing.assert_close(tokens.std(-1, unbiased=False), torch.ones(4, N_TOKENS), atol=1e-2, rtol=0)
    ids = _ids(4, 6)
    model(images, ids).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_text_loss_ignores_non_targets() -> None:
    logits = torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 3, 5, -100], [-100, -100, 6, 2]])
    keep = labels != -100
    expected = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(text_loss(logits, labels), expected)
    # the ignored positions really are ignored
    logits2 = logits.clone()
    logits2[~keep] = 100.0
    torch.testing.assert_close(text_loss(logits2, labels), expected)


def test_text_loss_over_length_buckets_is_the_mean_over_all_their_targets() -> None:
    """Buckets of different lengths weigh each target token equally, as one padded group would."""
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(2, 4, 7, generator=g), torch.randn(3, 2, 7, generator=g)]
    labels = [torch.tensor([[-100, 3, 5, 1], [-100, -100, 6, 2]]), torch.tensor([[-100, 4], [-100, 1], [2, -100]])]
    flat_logits = torch.cat([lg[lab != -100] for lg, lab in zip(logits, labels, strict=True)])
    flat_labels = torch.cat([lab[lab != -100] for lab in labels])
    torch.testing.assert_close(text_loss(logits, labels), F.cross_entropy(flat_logits, flat_labels))


# ---------------------------------------------------------------------------------------------- the folder


def test_save_and_load_round_trip(
    tiny_model: VisionAttnModel, images: Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert ModelConfig.from_dict(json.loads((tmp_path / "model" / "config.json").read_text())) == tiny_model.config

    def no_pickle(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle anything")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = VisionAttnModel.from_pretrained(tmp_path / "model")
    monkeypatch.undo()
    assert not loaded.training
    assert loaded.decoder.lm_head.weight is loaded.decoder.tok_emb.weight  # still tied after loading
    ids = _ids(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, ids), tiny_model(images, ids), atol=0, rtol=0)
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_from_pretrained_names_a_missing_file(tiny_model: VisionAttnModel, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="model.safetensors is missing"):
        VisionAttnModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: EncoderConfig(image_size=30, patch_size=8), r"image_size=30 must be a multiple of .*patch_size=8"),
        (lambda: EncoderConfig(dim=30, num_heads=4), r"encoder.dim=30 must be divisible by encoder.num_heads=4"),
        (lambda: DecoderConfig(dim=50, num_heads=4), r"decoder.dim=50 must be divisible by decoder.num_heads=4"),
        (lambda: DecoderConfig(max_len=2), r"decoder.max_len=2"),
        (lambda: VisionAttnModel(make_tiny(vocab_size=0)), r"vocab_size must be set"),
        (lambda: make_tiny(vocab_size=2), r"special token ids must be smaller than decoder.vocab_size"),
        (lambda: ModelConfig.from_dict({"encoder": {}, "decoderr": {}}), r"unknown model config keys \['decoderr'\]"),
        (lambda: ModelConfig(encoder={"image_size": 33, "patch_size": 8}), r"image_size=33"),
    ],
)
def test_invalid_configs_raise_helpful_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def make_tiny(vocab_size: int) -> ModelConfig:
    return ModelConfig(
        EncoderConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2),
        DecoderConfig(vocab_size=vocab_size, dim=48, depth=1, num_heads=2, max_len=16),
    )


def test_config_dict_round_trip(
    make_config,
) -> None:
    cfg = make_config()
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.encoder, EncoderConfig) and isinstance(again.decoder, DecoderConfig)


# ---------------------------------------------------------------------------------------------- pixels


def test_encoder_normalises_uint8_images(tiny_model: VisionAttnModel) -> None:
    """Loaders send uint8; the encoder normalises it as the float path expects ((x / 255 - 0.5) / 0.5)."""
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = tiny_model.encode(x)
        want = tiny_model.encode((x.float() / 255 - 0.5) / 0.5)
        assert (got - tiny_model.encode(x.float())).abs().max() > 1e-2  # raw 0..255 floats would differ
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # a bf16 model gets bf16 pixels
        assert tiny_model.to(torch.bfloat16).encode(x).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="uint8"):
        normalize(x.float(), *pixel_stats(MEAN, STD))
