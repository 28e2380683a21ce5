"""Image preprocessing, the same for training and inference.

Images travel as 8-bit tensors and are normalised by the model's encoder (`normalize`), on its device: a
quarter of the bytes through the loader, pinned memory and the host-to-GPU copy, and less work for a loader
worker (benchmarks/README.md, "Data loading").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from vision_attn.data.images import MAX_PIXELS, ImageSource, load_image

# The pixel statistics of an encoder built from scratch (EncoderConfig's defaults: random-init models do not care);
# a named timm model brings its own (`EncoderConfig.mean`, `.std`).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def image_transform(image_size: int) -> v2.Compose:
    """PIL RGB image -> uint8 tensor [3, image_size, image_size]."""
    return v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)])


class ImageLoader:
    """An image (path, bytes or PIL image) -> the model's input, uint8 [3, S, S], decoded the same way by every
    caller (training, evaluation, the Pipeline, the commands, the server), so they all see the same pixels.

    A JPEG is decoded at a reduced scale (`load_image`'s `draft_side`), never below four times the model's input, so
    the resize still averages many source pixels; an image over `max_pixels` is refused before it is decoded.
    """

    def __init__(self, image_size: int, max_pixels: int | None = MAX_PIXELS) -> None:
        self.max_pixels, self.draft_side = max_pixels, 4 * image_size
        self.transform = image_transform(image_size)

    def load(self, source: ImageSource) -> Image.Image:
        """The decoded RGB image, before the resize (what the attention pictures draw)."""
        return load_image(source, self.max_pixels, self.draft_side)

    def __call__(self, source: ImageSource) -> Tensor:
        return self.transform(self.load(source))


def pixel_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (3 numbers each) as [3, 1, 1] tensors (the encoder keeps them as buffers)."""
    return torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]


def normalize(images: Tensor, mean: Tensor, std: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 images [..., 3, H, W] -> `dtype` images scaled to 0..1 and normalised by `mean` and `std`.

    mean, std: [3, 1, 1] on the images' device (`pixel_stats` of the encoder's config).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images (0..255), got {images.dtype}")
    return ((images.float() / 255 - mean) / std).to(dtype)
