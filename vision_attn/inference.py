"""Inference: the `Pipeline` class, which loads images and runs the task layer on them, batched.

Every method takes one image (and question) or a list, and gives one result or a list of them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
from PIL import Image
from torch import Tensor

from vision_attn.attention_maps import DEFAULT_LAYER, AttentionResult
from vision_attn.data.images import MAX_PIXELS
from vision_attn.data.tokenizer import TextCodec, load_tokenizer
from vision_attn.data.transforms import ImageLoader
from vision_attn.decoding import CompiledDecoder
from vision_attn.models import ModelFolderError, VisionAttnModel
from vision_attn.tasks import Config, Layer, RankedAnswer, Ranking, Tasks, check_questions

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what `vision-attn export` writes
ImageInput = str | Path | bytes | Image.Image | Tensor
Images = ImageInput | Sequence[ImageInput]  # one image for all questions, or one per question
Maps = AttentionResult
R = TypeVar("R")


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
    >>> pipe.rank_answers("photo.jpg", "what color is the circle?", top_k=3)

    Args:
        batch_size: images (captions) or questions (answers) per model call; a list gives the same results as
            its members one at a time.
        bf16: bf16 autocast (weights stay float32); None = on for a GPU that supports it, off on the CPU, where
            bf16 matmuls are no faster and results would drift from float32 for nothing.
        compile: decode through a `CompiledDecoder` (CUDA graphs on a GPU). Worth it for many batches (a folder
            of photos): each batch shape compiles once, which takes longer than one uncompiled caption.
        max_pixels: larger images are refused (`ImageLoadError`) before they are decoded; JPEGs are decoded at a
            reduced size first (`load_image`), so this bounds PNGs and the like.
    """

    def __init__(
        self,
        model: VisionAttnModel,
        codec: TextCodec,
        device: torch.device,
        batch_size: int = 32,
        bf16: bool | None = None,
        compile: bool = False,
        max_pixels: int | None = MAX_PIXELS,
    ) -> None:
        self.model = model.to(device).eval()
        self.codec = codec
        self.device = device
        self.batch_size = batch_size
        self.bf16 = bf16 if bf16 is not None else device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.loader = ImageLoader(model.config.encoder.image_size, max_pixels)
        self.tasks = Tasks(self.model, codec, CompiledDecoder(self.model) if compile else None)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str = "auto",
        batch_size: int = 32,
        bf16: bool | None = None,
        compile: bool = False,
        max_pixels: int | None = MAX_PIXELS,
    ) -> Pipeline:
        """Load `config.json`, `model.safetensors` and `tokenizer.json` from `model_dir`.

        Raises:
            ModelFolderError: a file is missing, damaged or does not fit the model; the message names it.
        """
        d = Path(model_dir)
        missing = [n for n in MODEL_FILES if not (d / n).is_file()]
        if d.is_dir() and missing:
            raise ModelFolderError(f"{d} is not a vision-attn model folder: {', '.join(missing)} missing")
        dev = resolve_device(device)
        model = VisionAttnModel.from_pretrained(d, device=dev)
        cfg = model.config
        try:
            codec = TextCodec(
                load_tokenizer(d / "tokenizer.json"), (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id)
            )
        except (OSError, ValueError) as e:
            raise ModelFolderError(str(e)) from e
        vocab = cfg.decoder.vocab_size  # a pretrained LM's table may have unused rows past its tokenizer's ids
        if codec.vocab_size > vocab or (codec.task_tokens and codec.vocab_size != vocab):
            raise ModelFolderError(
                f"{d / 'tokenizer.json'}: {codec.vocab_size} tokens, but the model's vocabulary has "
                f"{vocab}: the files come from different models"
            )
        return cls(model, codec, dev, batch_size, bf16, compile, max_pixels)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Inference mode and, where the pipeline uses it, bf16 autocast: what every model call runs under."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            yield

    def preprocess(self, image: ImageInput) -> Tensor:
        """A path, bytes, PIL image or tensor ([3, H, W] floats in 0..1 or uint8) -> uint8 [3, S, S] (the model
        normalises it). A uint8 tensor already [3, S, S] is taken as it is."""
        size = self.model.config.encoder.image_size
        if isinstance(image, Tensor):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"an image tensor must be [3, H, W], got {list(image.shape)}")
            if image.dtype == torch.uint8 and tuple(image.shape[1:]) == (size, size):
                return image
            if image.is_floating_point():
                image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
            image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        return self.loader(image)

    # ---- captions: one per image ----

    @overload
    def caption(self, images: ImageInput, config: Config = ...) -> str: ...
    @overload
    def caption(self, images: Sequence[ImageInput], config: Config = ...) -> list[str]: ...
    def caption(self, images, config=None):
        """One caption per image (`config`: how to decode; default greedy, up to 48 tokens)."""
        return self._per_image(images, lambda x: self.tasks.captions(x, config))

    @overload
    def caption_maps(self, images: ImageInput, config: Config = ..., layer: Layer = ...) -> AttentionResult: ...
    @overload
    def caption_maps(self, images: Sequence[ImageInput], config: Config = ..., layer: Layer = ...) -> list[Maps]: ...
    def caption_maps(self, images, config=None, layer=DEFAULT_LAYER):
        """`caption` with where the decoder looked: the text, a cross-attention map per token and per word over the
        patch grid (`layer`: a decoder layer index, or "mean" over layers, the default because it points best),
        the raw per-layer, per-head weights and the encoder's attention rollout. With beam search, the maps of
        the returned beam."""
        return self._per_image(images, lambda x: self.tasks.caption_maps(x, config, layer))

    # ---- answers: question i about image i (one image with several questions is encoded once) ----

    @overload
    def answer(self, images: ImageInput, questions: str, config: Config = ...) -> str: ...
    @overload
    def answer(self, images: Images, questions: Sequence[str], config: Config = ...) -> list[str]: ...
    def answer(self, images, questions, config=None):
        """The answer to each question (`config`: how to decode; default greedy, up to 8 tokens). One image with
        a list of questions is asked each of them."""
        return self._per_question(images, questions, lambda x, i, qs: self.tasks.answers(x, qs, i, config))

    @overload
    def answer_maps(self, images: ImageInput, questions: str, config: Config = ..., layer: Layer = ...) -> Maps: ...
    @overload
    def answer_maps(
        self, images: Images, questions: Sequence[str], config: Config = ..., layer: Layer = ...
    ) -> list[Maps]: ...
    def answer_maps(self, images, questions, config=None, layer=DEFAULT_LAYER):
        """`answer` with where the decoder looked for each word of the answer (as in `caption_maps`)."""
        return self._per_question(images, questions, lambda x, i, qs: self.tasks.answer_maps(x, qs, i, config, layer))

    @overload
    def rank_answers(
        self, images: ImageInput, questions: str, top_k: int = ..., config: Config = ..., maps: Layer | None = ...
    ) -> Ranking: ...
    @overload
    def rank_answers(
        self, images: Images, questions: Sequence[str], top_k: int = ..., config: Config = ..., maps: Layer | None = ...
    ) -> list[Ranking]: ...
    def rank_answers(self, images, questions, top_k=3, config=None, maps=None):
        """The `top_k` most likely distinct answers with their probabilities (beam search with at least
        max(top_k, 2) beams, ranked by sequence probability); with `maps` (a decoder layer, or "mean"), the best
        answer's attention maps from the same search."""

        def run(x: Tensor, index: Tensor, qs: list[str]) -> list[Ranking]:
            return self.tasks.rank_answers(x, qs, top_k, index, config, maps)

        return self._per_question(images, questions, run)

    @overload
    def score_candidates(self, images: ImageInput, questions: str, candidates: Sequence[str]) -> list[RankedAnswer]: ...
    @overload
    def score_candidates(
        self, images: Images, questions: Sequence[str], candidates: Sequence[str]
    ) -> list[list[RankedAnswer]]: ...
    def score_candidates(self, images, questions, candidates):
        """The given candidate answers of each question ranked by their probability under the model."""
        cands = list(candidates)
        return self._per_question(images, questions, lambda x, i, qs: self.tasks.score_candidates(x, qs, cands, i))

    # ---- batching ----

    def _per_image(self, images: Images, run: Callable[[Tensor], list[R]]) -> Any:
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        out: list[R] = []
        for start in range(0, len(items), self.batch_size):
            x = torch.stack([self.preprocess(im) for im in items[start : start + self.batch_size]]).to(self.device)
            with self.running():
                out += run(x)
        return out[0] if single else out

    def _per_question(
        self,
        images: Images,
        questions: str | Sequence[str],
        run: Callable[[Tensor, Tensor, list[str]], list[R]],
    ) -> Any:
        single = isinstance(questions, str)
        qs = [questions] if single else list(questions)
        ims = list(images) if isinstance(images, list | tuple) else [images] * len(qs)
        if len(ims) != len(qs):
            raise ValueError(f"got {len(ims)} images but {len(qs)} questions")
        check_questions(qs)  # all of them before any work
        out: list[R] = []
        for start in range(0, len(qs), self.batch_size):
            batch = ims[start : start + self.batch_size]
            # an image asked several questions (the same object or path) is preprocessed and encoded once
            slots: dict[Any, int] = {}
            index = [slots.setdefault(_image_key(im), len(slots)) for im in batch]
            firsts = {slot: im for im, slot in zip(batch, index, strict=True)}
            x = torch.stack([self.preprocess(firsts[slot]) for slot in range(len(slots))]).to(self.device)
            with self.running():
                out += run(x, torch.tensor(index, device=self.device), qs[start : start + self.batch_size])
        return out[0] if single else out
