"""Image preprocessing, the same for training and inference.

Images travel as 8-bit tensors and are normalised by the model's encoder (`normalize`), on its device: a
quarter of the bytes through the loader, pinned memory and the host-to-GPU copy, and less work for a loader
worker (benchmarks/README.md, "Data loading").
"""

import torch
from torch import Tensor
from torchvision.transforms import v2

# timm's ViT weights (augreg) are trained with mean = std = 0.5; random-init models do not care.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def image_transform(image_size: int) -> v2.Compose:
    """PIL RGB image -> uint8 tensor [3, image_size, image_size]."""
    return v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)])


def draft_side(image_size: int) -> int:
    """The side a JPEG is decoded down to at least (`load_image(draft_side=...)`) for a model of `image_size`: four
    times it, so the resize to the model's input still averages many source pixels."""
    return 4 * image_size


def pixel_stats() -> tuple[Tensor, Tensor]:
    """MEAN and STD as [3, 1, 1] tensors (the encoder keeps them as buffers, on its device)."""
    return torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]


def normalize(
    images: Tensor, dtype: torch.dtype = torch.float32, mean: Tensor | None = None, std: Tensor | None = None
) -> Tensor:
    """uint8 images [..., 3, H, W] -> `dtype` images scaled to 0..1 and normalised by `mean` and `std`.

    mean, std: [3, 1, 1] on the images' device (default: `pixel_stats()`, copied there on each call).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images (0..255), got {images.dtype}")
    if mean is None or std is None:
        mean, std = (t.to(images.device) for t in pixel_stats())
    return ((images.float() / 255 - mean) / std).to(dtype)
