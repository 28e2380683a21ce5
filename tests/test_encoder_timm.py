"""Named timm encoders (`EncoderConfig.name`): sizes, pixel statistics and grid from timm, weights through timm.

Offline: every model is built with random weights and saved to a temporary file; nothing is downloaded.
Tokens are compared in float32 with atol 1e-5 (the same weights and ops; only summation order may differ).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.utils import AttentionExtract
from torch import Tensor, nn

from vision_attn.attention_maps import encoder_attention, encoder_rollout
from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.models import ImageEncoder, VisionAttnModel


@dataclasses.dataclass(frozen=True)
class Variant:
    """A tiny timm model of one family, at a small image size timm accepts for it."""

    name: str
    image_size: int
    class_token: bool
    prefix: int  # class + register tokens, dropped from the tokens the decoder sees
    grid: tuple[int, int]


VARIANTS = [
    Variant("test_vit", 64, class_token=True, prefix=1, grid=(4, 4)),  # ViT with a class token
    # no class token, a register token, an attention-pool head: the SigLIP layout
    Variant("test_vit3", 64, class_token=False, prefix=1, grid=(4, 4)),
    # EVA-02: class token, rotary position embeddings, SwiGLU MLP, norm on the pooled token only
    Variant("eva02_tiny_patch14_224", 56, class_token=True, prefix=1, grid=(4, 4)),
]
IDS = [v.name for v in VARIANTS]


def timm_model(v: Variant, seed: int = 0) -> nn.Module:
    """timm's model of `v` as a pretrained file would hold it (classifier head included), with every weight random:
    timm's zero or 1e-5 inits (biases, layer scales) are perturbed so that each weight shows in the tokens."""
    torch.manual_seed(seed)
    model = timm.create_model(v.name, img_size=v.image_size).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save_weights(model: nn.Module, path: Path) -> Path:
    """`model`'s state dict as the file's suffix says: .safetensors, a .pth checkpoint {"model": ...}, or a .bin."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state} if path.suffix == ".pth" else state, path)
    return path


def uint8_images(size: int, n: int = 2) -> Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def timm_patch_tokens(model: nn.Module, name: str, images: Tensor) -> Tensor:
    """The reference: timm's forward_features of images normalised by the pretrained config, prefix dropped."""
    cfg = timm.get_pretrained_cfg(name)
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in (cfg.mean, cfg.std))
    with torch.no_grad():
        return model.forward_features((images.float() / 255 - mean) / std)[:, model.num_prefix_tokens :]


# ------------------------------------------------------------------------------------------------ the config


@pytest.mark.parametrize(
    "name,sizes",
    [
        # name: (patch_size, dim, depth, num_heads, class_token); image size, mean and std: the pretrained config's
        ("vit_base_patch16_224", (16, 768, 12, 12, True)),  # default tag augreg2_in21k_ft_in1k: mean = std = 0.5
        ("vit_base_patch16_224.augreg_in21k", (16, 768, 12, 12, True)),
        ("deit3_small_patch16_224.fb_in1k", (16, 384, 12, 6, True)),  # ImageNet statistics
        ("eva02_tiny_patch14_224.mim_in22k", (14, 192, 12, 3, True)),  # CLIP statistics
        ("vit_base_patch16_siglip_224", (16, 768, 12, 12, False)),
        ("vit_so400m_patch14_siglip_384", (14, 1152, 27, 16, False)),  # 384 px is no multiple of 14: 27 patches
    ],
)
def test_config_follows_the_named_model(name: str, sizes: tuple) -> None:
    """Nothing but the name is given: the sizes come from the model (built on the meta device, no weights), the
    image size, mean and std from timm's pretrained config of that name (tag included)."""
    cfg = EncoderConfig(name=name)
    pretrained = timm.get_pretrained_cfg(name)
    assert cfg.image_size == pretrained.input_size[-1]
    assert (cfg.mean, cfg.std) == (tuple(pretrained.mean), tuple(pretrained.std))
    assert (cfg.patch_size, cfg.dim, cfg.depth, cfg.num_heads, cfg.class_token) == sizes
    assert cfg.grid_size == cfg.image_size // cfg.patch_size
    if name == "vit_base_patch16_224":
        assert cfg.mean == (0.5, 0.5, 0.5)  # not ImageNet's: the default tag's weights were trained with 0.5
    # config.json holds the resolved values; read back, they describe the same model without complaint
    again = ModelConfig.from_dict(json.loads(json.dumps(ModelConfig(cfg, DecoderConfig(vocab_size=10)).to_dict())))
    assert again.encoder == cfg


def test_a_named_config_takes_a_chosen_size_and_statistics() -> None:
    cfg = EncoderConfig(name="test_vit", image_size=64, mean=[0.1, 0.2, 0.3], std=(1, 1, 1))
    assert (cfg.image_size, cfg.grid_size, cfg.mean, cfg.std) == (64, 4, (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))


def test_a_config_without_name_is_built_from_scratch_as_before() -> None:
    cfg = EncoderConfig()
    assert (cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.image_size, cfg.patch_size) == (192, 4, 3, 4.0, 64, 8)
    assert (cfg.class_token, cfg.mean, cfg.std) == (False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"pretrained": "vit.safetensors"}, ValueError, r"encoder.pretrained='vit.safetensors' needs encoder.name"),
        ({"name": "vit_nope_patch16_224"}, ValueError, r"encoder.name='vit_nope_patch16_224' is not a timm model"),
        ({"name": "test_vit.nope"}, ValueError, r"encoder.name='test_vit.nope': Invalid pretrained tag"),
        ({"name": "resnet18"}, ValueError, r"encoder.name='resnet18' is not a ViT-family model"),
        ({"name": "test_vit", "dim": 128}, ValueError, r"encoder.dim=128 does not match .* remove encoder.dim"),
        ({"name": "test_vit", "class_token": False}, ValueError, r"encoder.class_token=False does not match"),
        ({"name": "test_vit", "stem": "conv"}, ValueError, r"encoder.stem='conv' is for encoders built from scratch"),
        ({"name": "test_vit", "std": (1, 0, 1)}, ValueError, r"encoder.std=\[1.0, 0.0, 1.0\].*> 0"),
    ],
)
def test_config_mistakes_name_the_field(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        EncoderConfig(**kwargs)


def test_a_config_pickled_before_the_named_fields_existed_resolves_them() -> None:
    """Lightning checkpoints pickle the hyper-parameters: an older EncoderConfig has no name, mean or std."""
    old = EncoderConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2)
    for key in ("name", "mean", "std"):
        del old.__dict__[key]
    loaded = pickle.loads(pickle.dumps(old))
    assert (loaded.name, loaded.mean, loaded.std, loaded.dim) == (None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32)


# ---------------------------------------------------------------------------------------------- the weights


@pytest.mark.parametrize("v", VARIANTS, ids=IDS)
def test_named_encoder_tokens_are_timm_forward_features(v: Variant, tmp_path: Path) -> None:
    source = timm_model(v)
    path = save_weights(source, tmp_path / "weights.safetensors")
    cfg = EncoderConfig(name=v.name, image_size=v.image_size, pretrained=str(path))
    assert (cfg.class_token, cfg.dim) == (v.class_token, source.embed_dim)
    encoder = ImageEncoder(cfg, out_dim=cfg.dim).eval()  # same width: no projection, the tokens as the ViT makes them
    assert encoder.grid == v.grid == tuple(source.patch_embed.grid_size)
    assert encoder.vit.num_prefix_tokens == v.prefix
    assert encoder.memory_pos.shape == (v.grid[0] * v.grid[1], cfg.dim)
    images = uint8_images(v.image_size)
    with torch.no_grad():
        ours = encoder(images) - encoder.memory_pos  # [B, N, C] before the decoder's positions
    want = timm_patch_tokens(source, v.name, images)
    assert ours.shape == want.shape == (2, v.grid[0] * v.grid[1], cfg.dim)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)
    # random weights of our own would be far off: the file's weights were loaded
    fresh = ImageEncoder(dataclasses.replace(cfg, pretrained=None), out_dim=cfg.dim).eval()
    with torch.no_grad():
        assert (fresh(images) - fresh.memory_pos - want).abs().max() > 0.1


@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_named_encoder_loads_torch_files(suffix: str, tmp_path: Path) -> None:
    v = VARIANTS[0]
    source = timm_model(v, seed=3)
    path = save_weights(source, tmp_path / f"weights{suffix}")
    encoder = ImageEncoder(EncoderConfig(name=v.name, image_size=v.image_size, pretrained=str(path)), 64).eval()
    images = uint8_images(v.image_size)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images) - encoder.memory_pos, timm_patch_tokens(source, v.name, images))


def test_timm_resamples_the_position_embeddings_to_another_image_size(tmp_path: Path) -> None:
    v = VARIANTS[0]
    source = timm_model(v)
    path = save_weights(source, tmp_path / "weights.safetensors")  # 64 px: a 4x4 grid of position embeddings
    encoder = ImageEncoder(EncoderConfig(name=v.name, image_size=32, pretrained=str(path)), 64).eval()
    assert encoder.grid == (2, 2)
    torch.testing.assert_close(encoder.vit.patch_embed.proj.weight, source.patch_embed.proj.weight, atol=0, rtol=0)
    with torch.no_grad():
        assert encoder(uint8_images(32)).shape == (2, 4, 64)


@pytest.mark.parametrize("v", VARIANTS, ids=IDS)
def test_every_named_encoder_parameter_is_trained(v: Variant) -> None:
    """No pooling head is left whose parameters no loss reaches (distributed training would refuse them)."""
    encoder = ImageEncoder(EncoderConfig(name=v.name, image_size=v.image_size), out_dim=32)
    encoder(uint8_images(v.image_size)).square().mean().backward()
    unused = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert not unused


def test_a_missing_weights_file_names_the_field(tmp_path: Path) -> None:
    cfg = EncoderConfig(name="test_vit", image_size=64, pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"encoder.pretrained: no such file .*nope.safetensors"):
        ImageEncoder(cfg, 64)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    path = save_weights(timm_model(VARIANTS[0]), tmp_path / "test_vit.safetensors")
    cfg = EncoderConfig(name="test_vit3", image_size=64, pretrained=str(path))
    with pytest.raises(ValueError, match=r"encoder.pretrained=.*test_vit.safetensors: not weights of timm's test_vit3"):
        ImageEncoder(cfg, 64)


def test_hub_lets_timm_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """'hub' asks timm for its own weights (no test downloads them: timm.create_model is replaced here)."""
    calls: list[dict] = []
    create = timm.create_model

    def fake(name: str, **kwargs) -> nn.Module:
        calls.append(kwargs)
        return create(name, **{**kwargs, "pretrained": False})

    monkeypatch.setattr(timm, "create_model", fake)
    ImageEncoder(EncoderConfig(name="test_vit", image_size=64, pretrained="hub"), 64)
    assert calls[-1]["pretrained"] is True and "pretrained_cfg_overlay" not in calls[-1]


# ------------------------------------------------------------------------------------------ the model folder


def test_model_folder_round_trip_of_a_named_encoder(tmp_path: Path) -> None:
    """config.json tells the named model's true sizes and rebuilds it; the weights file may be gone by then."""
    v = VARIANTS[2]
    path = save_weights(timm_model(v), tmp_path / "eva.safetensors")
    config = ModelConfig(
        EncoderConfig(name=v.name, image_size=v.image_size, pretrained=str(path)),
        DecoderConfig(vocab_size=30, dim=48, depth=1, num_heads=2, max_len=16),
    )
    model = VisionAttnModel(config).eval()
    model.save_pretrained(tmp_path / "model")
    path.unlink()
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["encoder"]
    assert saved["name"] == v.name and saved["image_size"] == v.image_size
    assert (saved["patch_size"], saved["dim"], saved["depth"], saved["num_heads"]) == (14, 192, 12, 3)
    assert saved["mean"] == list(timm.get_pretrained_cfg(v.name).mean)
    loaded = VisionAttnModel.from_pretrained(tmp_path / "model")
    assert loaded.config.encoder == dataclasses.replace(config.encoder, pretrained=None)
    images, ids = uint8_images(v.image_size), torch.randint(3, 30, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, ids), model(images, ids), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------- rollout


@pytest.mark.parametrize("v", VARIANTS, ids=IDS)
def test_rollout_of_named_encoders(v: Variant) -> None:
    """The recorded probabilities are timm's own (timm.utils.AttentionExtract of the explicit softmax, on a copy),
    and the rollout lies on the model's patch grid."""
    encoder = ImageEncoder(EncoderConfig(name=v.name, image_size=v.image_size), 32).eval()
    with torch.no_grad():
        for p in encoder.parameters():  # timm's init gives near-uniform attention
            p.add_(torch.randn_like(p) * 0.1)
    images = uint8_images(v.image_size)
    probs = encoder_attention(encoder, images)
    assert all(blk.attn.fused_attn for blk in encoder.vit.blocks)  # restored after the pass

    reference = copy.deepcopy(encoder)
    for blk in reference.vit.blocks:
        blk.attn.fused_attn = False  # AttentionExtract reads the explicit softmax
    with torch.no_grad():
        pixels = (images.float() / 255 - reference.pixel_mean) / reference.pixel_std
        want = list(AttentionExtract(reference.vit, method="fx")(pixels).values())
    n = v.prefix + v.grid[0] * v.grid[1]
    assert len(probs) == len(want) == len(encoder.vit.blocks)
    for p, w in zip(probs, want, strict=True):
        assert p.shape == (2, encoder.vit.blocks[0].attn.num_heads, n, n)
        torch.testing.assert_close(p, w, atol=1e-5, rtol=0)
        assert p.amax() > 2.0 / n  # far from uniform, so the comparison means something

    roll = encoder_rollout(encoder, images)
    assert roll.shape == (2, *v.grid)
    torch.testing.assert_close(roll.sum((1, 2)), torch.ones(2))
    assert roll.amax() - roll.amin() > 0.01  # not uniform


def test_rollout_names_an_attention_it_cannot_read() -> None:
    encoder = ImageEncoder(EncoderConfig(name="test_vit", image_size=64), 32).eval()
    encoder.vit.blocks[1].attn = Opaque(encoder.vit.blocks[1].attn)
    with pytest.raises(ValueError, match=r"cannot read the attention of Opaque blocks \(encoder.name='test_vit'\)"):
        encoder_rollout(encoder, uint8_images(64))


class Opaque(nn.Module):
    """An attention module that computes its weights out of sight."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.inner(x, **kwargs)
