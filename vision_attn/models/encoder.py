"""Image encoder: a timm Vision Transformer whose patch tokens the decoder attends to."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from vision_attn.config import EncoderConfig

log = logging.getLogger(__name__)


class ImageEncoder(nn.Module):
    """timm ViT -> patch tokens [B, N, out_dim] (prefix tokens such as the class token are dropped)."""

    def __init__(self, cfg: EncoderConfig, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vit = VisionTransformer(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            num_classes=0,
            global_pool="token" if cfg.class_token else "avg",
            embed_dim=cfg.dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            class_token=cfg.class_token,
            drop_path_rate=cfg.drop_path,
        )
        if cfg.pretrained:
            load_vit_weights(self.vit, cfg.pretrained)
        # Encoder and decoder widths may differ; an off projection is Identity so forward has no branch.
        self.proj = nn.Linear(cfg.dim, out_dim) if cfg.dim != out_dim else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] (normalised) -> patch tokens [B, N, out_dim], N = grid_size^2."""
        x = self.vit.forward_features(images)  # [B, prefix + N, C_enc], final-normed
        return self.proj(x[:, self.vit.num_prefix_tokens :])


def load_vit_weights(vit: VisionTransformer, path: str | Path) -> None:
    """Load timm ViT weights from a local `.safetensors` or `.pth`/`.bin` file (never from the network)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder.pretrained: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    state = checkpoint_filter_fn(state, vit)  # resizes position embeddings, maps original-repo names
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing:
        raise ValueError(f"encoder.pretrained {path}: weights missing for {missing[:5]} ({len(missing)} in all)")
    log.info("loaded ViT weights from %s (%d unused keys: %s)", path, len(unexpected), unexpected[:5])
