"""The model: ViT patch tokens feed a cross-attention text decoder. A plain nn.Module (no Lightning).

Notation: B images, M texts (several texts may share one image), T text tokens, N image tokens, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision_attn.config import ModelConfig
from vision_attn.models.decoder import TextDecoder
from vision_attn.models.encoder import ImageEncoder
from vision_attn.models.pretrained import lm_config, load_lm_weights

log = logging.getLogger(__name__)


class VisionAttnModel(nn.Module):
    """Image captioning and VQA in one model: the task is chosen by the text prompt."""

    def __init__(self, config: ModelConfig) -> None:
        """Build the model; with `config.decoder.pretrained` the decoder's family, sizes and weights come from that
        language model's folder (and `self.config` holds them, so that a saved model rebuilds without it)."""
        super().__init__()
        if config.decoder.pretrained:
            config = dataclasses.replace(config, decoder=lm_config(config.decoder))
        self.config = config
        self.encoder = ImageEncoder(config.encoder, config.decoder.dim)
        self.decoder = TextDecoder(config.decoder)
        if config.decoder.pretrained:
            load_lm_weights(self.decoder, config.decoder)

    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> image tokens [B, N, C]."""
        return self.encoder(images)

    def forward(self, images: Tensor, input_ids: Tensor, image_index: Tensor | None = None) -> Tensor:
        """Teacher-forced logits.

        Args:
            images: [B, 3, H, W].
            input_ids: [M, T], right-padded texts (prompt + target).
            image_index: [M], which image each text belongs to (default: text i uses image i). Each image
                is encoded once however many texts ask about it.
        Returns:
            logits [M, T, V].
        """
        return self.forward_groups(images, [(input_ids, image_index)])[0]

    def forward_groups(self, images: Tensor, groups: list[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        """Like `forward` for several groups of texts ([M_g, T_g] ids, [M_g] image index) about the same images.

        Texts of very different lengths (captions, questions) go in separate groups so that short texts
        are not padded to the longest; the images are still encoded once.
        """
        image_kv = self.decoder.image_kv(self.encode(images))  # per layer 2x[B, H, N, D]
        out = []
        for input_ids, image_index in groups:
            kv = image_kv if image_index is None else self.decoder.select_images(image_kv, image_index)
            out.append(self.decoder(input_ids, kv))  # [M_g, T_g, V]
        return out

    # ---- folder format: config.json + model.safetensors (+ tokenizer.json, written by the caller) ----

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write `config.json` and `model.safetensors` (tied LM head and token embeddings stored once)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.config.decoder.tie_embeddings:
            state.pop("decoder.lm_head.weight")  # the same tensor as decoder.tok_emb.weight
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> VisionAttnModel:
        """Load a folder written by `save_pretrained` (no pickle, no Lightning).

        Raises:
            ModelFolderError: the folder or a file is missing, `config.json` is not a model config, or
                `model.safetensors` is damaged or holds other weights; the message names the file and why.
        """
        from safetensors.torch import load_file

        d = Path(model_dir)
        if not d.is_dir():
            raise ModelFolderError(f"{d}: no such model folder (expected the output of `vision-attn export`)")
        for name in ("config.json", "model.safetensors"):
            if not (d / name).is_file():
                raise ModelFolderError(f"{d} is not a vision-attn model folder: {name} is missing")
        config = read_config(d / "config.json")
        model = cls(config)
        try:
            state = load_file(str(d / "model.safetensors"), device=str(device))
            if config.decoder.tie_embeddings:
                state["decoder.lm_head.weight"] = state["decoder.tok_emb.weight"]
            model.load_state_dict(state)
        except Exception as e:  # safetensors reports a damaged file with its own error type
            why = str(e).splitlines()[0][:300]
            raise ModelFolderError(f"{d / 'model.safetensors'}: not the weights of this model ({why})") from e
        return model.to(device).eval()


class ModelFolderError(ValueError):
    """A model folder is missing a file, or a file is damaged or does not fit; the message names the file."""


def standalone_config(cfg_dict: dict) -> ModelConfig:
    """A saved model's config (`ModelConfig.to_dict`) that reads no pretrained file: its weights come with it."""
    encoder, decoder = ({**cfg_dict[k], "pretrained": None} for k in ("encoder", "decoder"))
    return ModelConfig.from_dict({**cfg_dict, "encoder": encoder, "decoder": decoder})


def read_config(path: Path) -> ModelConfig:
    """A model folder's `config.json` as a `ModelConfig`, or a `ModelFolderError` naming the file and the problem."""
    try:
        cfg_dict = json.loads(path.read_text())
        missing = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in cfg_dict]
        if missing:  # a folder must say everything: a default here would build another model than was saved
            raise KeyError(missing[0])
        config = standalone_config(cfg_dict)
        if config.decoder.vocab_size <= 0:
            raise ValueError(f"decoder.vocab_size is {config.decoder.vocab_size}")
        return config
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not a readable JSON file ({e})") from e
    except KeyError as e:
        raise ModelFolderError(f"{path}: missing key {e}") from e
    except (TypeError, ValueError, AttributeError) as e:
        raise ModelFolderError(f"{path}: not a vision-attn model config ({e})") from e


def text_loss(logits: Tensor | Sequence[Tensor], labels: Tensor | Sequence[Tensor]) -> Tensor:
    """Mean cross-entropy over the target tokens of one group or several (length buckets of one task).

    logits [M, T, V] (or a list of [M_g, T_g, V]), labels [M, T] (or a list of [M_g, T_g]); -100 = not a target.
    """
    if isinstance(logits, Tensor):
        logits, labels = [logits], [labels]
    total = sum(
        F.cross_entropy(lg.flatten(0, 1).float(), lab.flatten(), ignore_index=-100, reduction="sum")
        for lg, lab in zip(logits, labels, strict=True)
    )
    return total / sum((lab != -100).sum() for lab in labels)
