"""Inference: the `Pipeline` class (caption, answer) and the small functions validation shares with it."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vision_attn.attention_maps import (
    DEFAULT_LAYER,
    AttentionLayer,
    AttentionResult,
    attention_result,
    check_layer,
    encoder_rollout,
)
from vision_attn.data.images import load_image
from vision_attn.data.tokenizer import TextCodec, load_tokenizer
from vision_attn.data.transforms import image_transform
from vision_attn.generation import CompiledDecoder, generate, score_continuations
from vision_attn.models import VisionAttnModel

log = logging.getLogger(__name__)

ImageInput = str | Path | bytes | Image.Image | Tensor


def generate_captions(model: VisionAttnModel, codec: TextCodec, images: Tensor, **gen: Any) -> list[str]:
    """images [B, 3, S, S] (preprocessed) -> B captions."""
    out = generate(model, images, [codec.caption_prompt()] * images.shape[0], **gen)
    return [codec.decode(s) for s in out.sequences]


def generate_answers(
    model: VisionAttnModel,
    codec: TextCodec,
    images: Tensor,
    questions: Sequence[str],
    image_index: Tensor | None = None,
    **gen: Any,
) -> list[str]:
    """images [B_img, 3, S, S], questions [B] (question i about image image_index[i]) -> B answers."""
    prompts = [codec.vqa_prompt(q) for q in questions]
    out = generate(model, images, prompts, image_index=image_index, **gen)
    return [codec.decode(s) for s in out.sequences]


def generate_with_attention(
    model: VisionAttnModel,
    codec: TextCodec,
    images: Tensor,
    prompts: list[list[int]],
    image_index: Tensor | None = None,
    attention_layer: AttentionLayer = DEFAULT_LAYER,
    **gen: Any,
) -> list[AttentionResult]:
    """Like `generate_captions`/`generate_answers` for any prompts, with attention maps: one result per prompt.

    images [B_img, 3, S, S]; prompt i is about image image_index[i] (default: image i).
    """
    check_layer(attention_layer, len(model.decoder.blocks))  # before the work, not after it
    out = generate(model, images, prompts, image_index=image_index, return_attention=True, **gen)
    rollout = encoder_rollout(model.encoder, images)  # [B_img, h, w]
    if image_index is not None:
        rollout = rollout[image_index]
    assert out.attentions is not None
    return [
        attention_result(codec, seq, raw, rollout[i], attention_layer)
        for i, (seq, raw) in enumerate(zip(out.sequences, out.attentions, strict=True))
    ]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _image_key(image: ImageInput) -> Any:
    """Equal keys = the same image: a path by its text, anything else by identity."""
    return ("path", str(image)) if isinstance(image, str | Path) else ("object", id(image))


class Pipeline:
    """Caption images and answer questions with an exported model folder.

    >>> pipe = Pipeline.from_pretrained("runs/demo/model")
    >>> pipe.caption("photo.jpg")
    >>> pipe.answer("photo.jpg", "what color is the circle?")
    """

    def __init__(
        self,
        model: VisionAttnModel,
        codec: TextCodec,
        device: torch.device,
        batch_size: int = 32,
        bf16: bool | None = None,
        compile: bool = False,
    ) -> None:
        self.model = model.to(device).eval()
        self.codec = codec
        self.device = device
        self.batch_size = batch_size
        # bf16 autocast (weights stay float32): None = on for a GPU that supports it, off on the CPU, where
        # bf16 matmuls are no faster and results would drift from float32 for nothing.
        self.bf16 = bf16 if bf16 is not None else device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.transform = image_transform(model.config.encoder.image_size)
        # compile: decode through a CompiledDecoder (CUDA graphs on a GPU). Worth it for many batches (a folder
        # of photos): each batch shape compiles once, which takes longer than one uncompiled caption.
        self.compiled = CompiledDecoder(self.model) if compile else None

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str = "auto",
        batch_size: int = 32,
        bf16: bool | None = None,
        compile: bool = False,
    ) -> Pipeline:
        """Load `config.json`, `model.safetensors` and `tokenizer.json` from `model_dir`."""
        dev = resolve_device(device)
        model = VisionAttnModel.from_pretrained(model_dir, device=dev)
        codec = TextCodec(load_tokenizer(Path(model_dir) / "tokenizer.json"))
        return cls(model, codec, dev, batch_size, bf16, compile)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def preprocess(self, image: ImageInput) -> Tensor:
        """A path, bytes, PIL image or tensor ([3, H, W] floats in 0..1 or uint8) -> uint8 [3, S, S] (the model
        normalises it)."""
        if isinstance(image, Tensor):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"an image tensor must be [3, H, W], got {list(image.shape)}")
            if image.is_floating_point():
                image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
            image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        return self.transform(load_image(image))

    def _batches(self, n: int):
        for start in range(0, n, self.batch_size):
            yield slice(start, min(n, start + self.batch_size))

    @torch.inference_mode()
    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        num_beams: int = 1,
        max_new_tokens: int = 48,
        return_attention: bool = False,
        attention_layer: AttentionLayer = DEFAULT_LAYER,
        **gen: Any,
    ) -> Any:
        """One caption per image; a single image gives a string, a list gives a list.

        With `return_attention`, each caption is an `AttentionResult` instead: the text, one cross-attention
        map per generated token and per word over the patch grid (`attention_layer`: a decoder layer index,
        or "mean" over layers, the default because it points best; see `attention_maps.DEFAULT_LAYER`), the
        raw per-layer, per-head weights and the encoder's attention rollout. With beam search the maps are
        those of the returned beam.
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        gen = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "compiled": self.compiled, **gen}
        out: list[Any] = []
        for sl in self._batches(len(items)):
            x = torch.stack([self.preprocess(im) for im in items[sl]]).to(self.device)
            with self._autocast():
                if return_attention:
                    prompts = [self.codec.caption_prompt()] * x.shape[0]
                    out += generate_with_attention(self.model, self.codec, x, prompts, None, attention_layer, **gen)
                else:
                    out += generate_captions(self.model, self.codec, x, **gen)
        return out[0] if single else out

    @torch.inference_mode()
    def answer(
        self,
        images: ImageInput | Sequence[ImageInput],
        questions: str | Sequence[str],
        num_beams: int = 1,
        max_new_tokens: int = 8,
        top_k: int | None = None,
        candidates: Sequence[str] | None = None,
        return_attention: bool = False,
        attention_layer: AttentionLayer = DEFAULT_LAYER,
        **gen: Any,
    ) -> Any:
        """Answer question i about image i (one image with several questions is repeated).

        Returns a string per question; with `top_k`, a ranked list of {"answer", "probability"} per question
        (beam search with at least max(`top_k`, 2) beams, ranked by sequence probability); with `candidates`, those
        answers ranked by their probability (at most `top_k` of them if given); with `return_attention`, an
        `AttentionResult` per question (the answer's text and maps, as in `caption`). A single question (a
        string) gives a single result, a list gives a list.
        """
        single = isinstance(questions, str)
        qs = [questions] if single else list(questions)
        ims = list(images) if isinstance(images, list | tuple) else [images] * len(qs)
        if len(ims) != len(qs):
            raise ValueError(f"got {len(ims)} images but {len(qs)} questions")
        for q in qs:
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"a question must be a non-empty string, got {q!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if candidates is not None and (not candidates or not all(isinstance(c, str) and c.strip() for c in candidates)):
            raise ValueError("candidates must be a non-empty list of non-empty strings")
        if return_attention and (top_k is not None or candidates is not None):
            raise ValueError("return_attention maps a generated answer: use it without top_k and candidates")
        out: list[Any] = []
        for sl in self._batches(len(qs)):
            # an image asked several questions (the same object or path) is preprocessed and encoded once
            slots: dict[Any, int] = {}
            index = [slots.setdefault(_image_key(im), len(slots)) for im in ims[sl]]
            firsts = {slot: im for im, slot in zip(ims[sl], index, strict=True)}
            x = torch.stack([self.preprocess(firsts[slot]) for slot in range(len(slots))]).to(self.device)
            image_index = torch.tensor(index, device=self.device)
            with self._autocast():
                out += self._answer_batch(
                    x,
                    image_index,
                    qs[sl],
                    num_beams,
                    max_new_tokens,
                    top_k,
                    candidates,
                    return_attention,
                    attention_layer,
                    gen,
                )
        return out[0] if single else out

    def _answer_batch(
        self,
        x: Tensor,
        image_index: Tensor,
        qs: list[str],
        num_beams: int,
        max_new_tokens: int,
        top_k: int | None,
        candidates: Sequence[str] | None,
        return_attention: bool,
        attention_layer: AttentionLayer,
        gen: dict[str, Any],
    ) -> list[Any]:
        """One batch of `answer`: x [B_img, 3, S, S]; question i is about image image_index[i]."""
        if candidates is not None:
            return [r[:top_k] for r in self._rank_candidates(x, image_index, qs, list(candidates))]
        if top_k is not None:  # 1 beam = greedy, which ranks nothing
            return self._top_k(x, image_index, qs, top_k, max(top_k, num_beams, 2), max_new_tokens)
        gen = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "compiled": self.compiled, **gen}
        if return_attention:
            prompts = [self.codec.vqa_prompt(q) for q in qs]
            return generate_with_attention(self.model, self.codec, x, prompts, image_index, attention_layer, **gen)
        return generate_answers(self.model, self.codec, x, qs, image_index, **gen)

    def _top_k(
        self, images: Tensor, image_index: Tensor, questions: list[str], k: int, beams: int, max_new: int
    ) -> list[list[dict]]:
        prompts = [self.codec.vqa_prompt(q) for q in questions]
        kw = {"max_new_tokens": max_new, "num_beams": beams, "length_penalty": 0.0, "compiled": self.compiled}
        res = generate(self.model, images, prompts, image_index, **kw)
        out = []
        for hyps in res.hypotheses:
            ranked: dict[str, float] = {}
            for seq, logp in sorted(hyps, key=lambda h: -h[1]):
                ranked.setdefault(self.codec.decode(seq), math.exp(logp))  # keep the likelier of equal texts
            out.append([{"answer": a, "probability": p} for a, p in list(ranked.items())[:k]])
        return out

    def _rank_candidates(
        self, images: Tensor, image_index: Tensor, questions: list[str], candidates: list[str]
    ) -> list[list[dict]]:
        prompts = [self.codec.vqa_prompt(q) for q in questions]
        conts = [self.codec.encode(c) + [self.codec.eos] for c in candidates]
        n, m = len(questions), len(candidates)
        index = image_index.repeat_interleave(m)  # each question's image with every candidate
        logp = score_continuations(self.model, images, [p for p in prompts for _ in range(m)], conts * n, index)
        out = []
        for i in range(n):
            probs = logp[i * m : (i + 1) * m].exp().tolist()
            order = sorted(range(m), key=lambda j: -probs[j])
            out.append([{"answer": candidates[j], "probability": probs[j]} for j in order])
        return out
