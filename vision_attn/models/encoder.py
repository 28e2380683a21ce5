"""Image encoder: a timm Vision Transformer whose patch tokens the decoder attends to."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import timm
import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vision_attn.config import EncoderConfig
from vision_attn.data.transforms import normalize, pixel_stats

log = logging.getLogger(__name__)


class ImageEncoder(nn.Module):
    """timm ViT -> patch tokens [B, N, out_dim] (prefix tokens such as the class token are dropped).

    The ViT is the timm model `cfg.name` (`named_vit`) or one built from the sizes in `cfg` (`scratch_vit`).
    """

    def __init__(self, cfg: EncoderConfig, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vit = named_vit(cfg) if cfg.name else scratch_vit(cfg)
        # Encoder and decoder widths may differ; an off projection is Identity so forward has no branch.
        self.proj = nn.Linear(cfg.dim, out_dim) if cfg.dim != out_dim else nn.Identity()
        # Fixed 2-D sin-cos positions added to the tokens the decoder attends to (as DETR does for its
        # cross-attention): "where" stays explicit after the ViT has mixed its own position embeddings into
        # content, which position words and left-of/closest-to questions need. No parameters.
        grid = list(self.grid)
        self.register_buffer("memory_pos", build_sincos2d_pos_embed(grid, dim=out_dim), persistent=False)  # [N, C]
        # the pixel statistics of `normalize`, kept on the model's device: no host-to-device copy per forward
        mean, std = pixel_stats(cfg.mean, cfg.std)
        self.register_buffer("pixel_mean", mean, persistent=False)  # [3, 1, 1]
        self.register_buffer("pixel_std", std, persistent=False)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): the patch grid of the ViT's tokens, as its patch embedding makes it."""
        h, w = self.vit.patch_embed.grid_size
        return h, w

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> patch tokens [B, N, out_dim], N = h * w of `grid`.

        uint8 images (0..255, as the loaders and `Pipeline` send them) are normalised here with the config's mean
        and std, on the model's device; floating-point images are taken as already normalised.
        """
        if images.dtype == torch.uint8:
            images = normalize(images, self.pixel_mean.float(), self.pixel_std.float(), self.memory_pos.dtype)
        x = self.vit.forward_features(images)  # [B, prefix + N, C_enc]
        return self.proj(x[:, self.vit.num_prefix_tokens :]) + self.memory_pos.to(x.dtype)


def scratch_vit(cfg: EncoderConfig) -> VisionTransformer:
    """A randomly initialised timm `VisionTransformer` of the sizes in `cfg` (no `name`), final-normed tokens."""
    return VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_classes=0,
        global_pool="token" if cfg.class_token else "avg",
        fc_norm=False,  # keep the final norm on the tokens (forward_features), not on a pooled head
        embed_dim=cfg.dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        class_token=cfg.class_token,
        drop_path_rate=cfg.drop_path,
        embed_layer=ConvStemEmbed if cfg.stem == "conv" else PatchEmbed,
    )


def named_vit(cfg: EncoderConfig) -> nn.Module:
    """The timm model `cfg.name` at `cfg.image_size`, with the weights `cfg.pretrained` names, without its head.

    Weights load through timm's own path (its checkpoint filter maps original-repository names and resamples the
    position embeddings to the image size): from a local file, or, with "hub", downloaded by timm.

    Raises:
        FileNotFoundError: `cfg.pretrained` names no file.
        ValueError: the file does not hold weights of that model.
    """
    kwargs = {"num_classes": 0, "img_size": cfg.image_size, "drop_path_rate": cfg.drop_path}
    if cfg.pretrained is None:
        vit = timm.create_model(cfg.name, pretrained=False, **kwargs)
    elif cfg.pretrained == "hub":
        log.info("timm loads the weights of %s from its hub (downloading them unless cached)", cfg.name)
        vit = timm.create_model(cfg.name, pretrained=True, **kwargs)
    else:
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"encoder.pretrained: no such file {path}; put the timm weights of {cfg.name} there (a .safetensors, "
                f".pth or .bin file), or set encoder.pretrained to their path"
            )
        try:
            vit = timm.create_model(cfg.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except Exception as e:  # a state dict that does not fit, a damaged file: torch, timm, safetensors errors
            why = " ".join(str(e).split())[:400]
            raise ValueError(f"encoder.pretrained={path}: not weights of timm's {cfg.name} ({why})") from e
        log.info("loaded the weights of %s from %s", cfg.name, path)
    # forward_features is all the encoder runs: a pooling head (attention pool, pooled-token norm) would hold
    # parameters that no loss reaches, which distributed training (DDP) rejects.
    vit.reset_classifier(0, global_pool="")
    if hasattr(vit, "fc_norm"):
        vit.fc_norm = nn.Identity()
    return vit


class ConvStemEmbed(PatchEmbed):
    """timm's PatchEmbed with its single strided conv replaced by 3x3 stride-2 convolutions (total stride =
    patch size) and a 1x1 projection.

    Why: a ViT trained from scratch on little data learns locality slowly; with overlapping receptive fields
    each patch token sees a whole small object, so shapes are readable from single tokens early in
    training (Xiao et al. 2021, "Early convolutions help transformers see better").
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int = 3, embed_dim: int = 768, **kwargs) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, **kwargs)
        n = int(math.log2(patch_size))
        if 2**n != patch_size:
            raise ValueError(f"encoder.stem='conv' needs a power-of-two patch_size, got {patch_size}")
        widths = [in_chans] + [max(16, embed_dim >> (n - 1 - i)) for i in range(n)]  # ..., dim/2, dim
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]
        layers.append(nn.Conv2d(widths[-1], embed_dim, 1))
        self.proj = nn.Sequential(*layers)
