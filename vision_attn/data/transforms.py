"""Image preprocessing with torchvision transforms.v2 (the same for training and inference)."""

import torch
from torchvision.transforms import v2

# timm's ViT weights (augreg) are trained with mean = std = 0.5; random-init models do not care.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def image_transform(image_size: int) -> v2.Compose:
    """PIL RGB image -> float tensor [3, image_size, image_size], normalised."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
