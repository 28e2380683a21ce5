"""The task layer: prompts, decoding settings and answer ranking, what every caller of the model goes through.

The `Pipeline`, `vision-attn evaluate`, validation during training, the pointing game, the server and the
benchmarks all caption, answer and rank through `Tasks`, so that prompts, search and ranking are the same
everywhere. `Tasks` works on preprocessed image batches on the model's device; the `Pipeline` adds image
loading, batching and autocast.

Notation: B_img images, B texts (prompt i about image image_index[i]), V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from vision_attn.attention_maps import (
    DEFAULT_LAYER,
    AttentionLayer,
    AttentionResult,
    attention_result,
    check_layer,
    encoder_rollout,
)
from vision_attn.data.tokenizer import TextCodec
from vision_attn.decoding import CompiledDecoder, DecodingSession, GenerationOutput, beam_search, greedy, sample
from vision_attn.decoding.search import log_softmax
from vision_attn.models import VisionAttnModel

CAPTION_TOKENS = 48  # default longest caption
ANSWER_TOKENS = 8  # default longest answer


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode.

    Args:
        max_new_tokens: the longest output; None = the task's default (48 for captions, 8 for answers).
        num_beams: 1 = greedy (or sampling with `do_sample`); more = beam search.
        do_sample: top-p sampling instead of greedy (with one beam).
        top_p, temperature: nucleus sampling settings.
        length_penalty: beam scores are summed log-probability / length ** length_penalty.
        seed: seed of the sampling generator (None: torch's global random state).
    """

    max_new_tokens: int | None = None
    num_beams: int = 1
    do_sample: bool = False
    top_p: float = 1.0
    temperature: float = 1.0
    length_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("do_sample samples one sequence per input: use it with num_beams=1")
        if self.do_sample and not (0.0 < self.top_p <= 1.0 and self.temperature > 0):
            raise ValueError(
                f"need 0 < top_p <= 1 and temperature > 0, got top_p={self.top_p}, temperature={self.temperature}"
            )


Config = GenerationConfig | None  # None: greedy, the task's default length
Index = Tensor | None  # [B] the image of each text; None: text i is about image i
Layer = AttentionLayer


def settle(config: Config, default_tokens: int) -> GenerationConfig:
    """`config` (default: greedy) with `max_new_tokens` set to the task's default where it was left None."""
    config = config or GenerationConfig()
    return config if config.max_new_tokens is not None else replace(config, max_new_tokens=default_tokens)


def caption_prompt(codec: TextCodec) -> list[int]:
    """<bos> <caption>; with a pretrained LM's tokenizer <bos> "Caption:"."""
    if codec.task_tokens:
        return [codec.bos, codec.caption]
    return [codec.bos, *codec.encode("Caption:")]


def vqa_prompt(codec: TextCodec, question: str) -> list[int]:
    """<bos> <vqa> question <answer>; with a pretrained LM's tokenizer <bos> "Question: question Answer:"."""
    if codec.task_tokens:
        return [codec.bos, codec.vqa, *codec.encode(question), codec.answer]
    return [codec.bos, *codec.encode(f"Question: {question.strip()} Answer:")]


def check_questions(questions: list[str]) -> None:
    """Raise ValueError naming the first question that is not a non-empty string."""
    for q in questions:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"a question must be a non-empty string, got {q!r}")


@torch.inference_mode()
def generate(
    model: VisionAttnModel,
    images: Tensor,
    prompts: list[list[int]],
    config: GenerationConfig,
    image_index: Tensor | None = None,
    record_maps: bool = False,
    compiled: CompiledDecoder | None = None,
) -> GenerationOutput:
    """Continue each prompt about its image until EOS or `config.max_new_tokens` (which must be set here).

    images [B_img, 3, H, W]; prompt i is about image image_index[i] (default: image i). With `record_maps`
    the output holds each sequence's cross-attention maps; `compiled` runs each token through that
    `CompiledDecoder` of `model` (the same tokens, faster for many batches).
    """
    if config.max_new_tokens is None:
        raise ValueError("generate needs config.max_new_tokens")
    beams = config.num_beams
    with DecodingSession(
        model, images, prompts, config.max_new_tokens, beams, image_index, record_maps, compiled
    ) as session:
        if beams > 1:
            out = beam_search(session, config.length_penalty)
        elif config.do_sample:
            gen = None
            if config.seed is not None:
                gen = torch.Generator(images.device).manual_seed(config.seed)
            out = sample(session, config.top_p, config.temperature, gen)
        else:
            out = greedy(session)
    return out.first(len(prompts))


@dataclass
class RankedAnswer:
    """An answer and its probability under the model."""

    answer: str
    probability: float


@dataclass
class Ranking:
    """The most likely answers of one question, best first, and the best answer's attention maps if asked."""

    answers: list[RankedAnswer]
    maps: AttentionResult | None = None


class Tasks:
    """Captioning, answering and answer ranking with one model and its codec, on preprocessed images.

    images: [B_img, 3, S, S] (uint8, or normalised floats) on the model's device. Every method runs under the
    caller's autocast, if any. `compiled` decodes through that `CompiledDecoder` (never for maps).
    """

    def __init__(self, model: VisionAttnModel, codec: TextCodec, compiled: CompiledDecoder | None = None) -> None:
        self.model, self.codec, self.compiled = model, codec, compiled

    def _generate(
        self, images: Tensor, prompts: list[list[int]], config: GenerationConfig, image_index: Index, maps: bool
    ) -> GenerationOutput:
        return generate(self.model, images, prompts, config, image_index, maps, self.compiled)

    def captions(self, images: Tensor, config: Config = None) -> list[str]:
        """One caption per image."""
        config = settle(config, CAPTION_TOKENS)
        out = self._generate(images, [caption_prompt(self.codec)] * images.shape[0], config, None, False)
        return [self.codec.decode(s) for s in out.sequences]

    def caption_maps(
        self, images: Tensor, config: Config = None, layer: Layer = DEFAULT_LAYER
    ) -> list[AttentionResult]:
        """One caption per image with where the decoder looked for each of its words."""
        config = settle(config, CAPTION_TOKENS)
        prompts = [caption_prompt(self.codec)] * images.shape[0]
        return self._with_maps(images, prompts, config, None, layer)

    def answers(
        self, images: Tensor, questions: list[str], image_index: Index = None, config: Config = None
    ) -> list[str]:
        """The answer to question i about image image_index[i] (default: image i)."""
        config = settle(config, ANSWER_TOKENS)
        out = self._generate(images, self._vqa_prompts(questions), config, image_index, False)
        return [self.codec.decode(s) for s in out.sequences]

    def answer_maps(
        self,
        images: Tensor,
        questions: list[str],
        image_index: Index = None,
        config: Config = None,
        layer: Layer = DEFAULT_LAYER,
    ) -> list[AttentionResult]:
        """`answers` with where the decoder looked for each word of each answer."""
        config = settle(config, ANSWER_TOKENS)
        return self._with_maps(images, self._vqa_prompts(questions), config, image_index, layer)

    def rank_answers(
        self,
        images: Tensor,
        questions: list[str],
        top_k: int,
        image_index: Index = None,
        config: Config = None,
        maps: Layer | None = None,
    ) -> list[Ranking]:
        """The `top_k` most likely distinct answers of each question with their probabilities, from one beam search
        with max(top_k, config.num_beams, 2) beams ranked by probability (no length penalty); with `maps` (a decoder
        layer, or "mean"), the best answer's attention maps from that same search."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        config = settle(config, ANSWER_TOKENS)
        beams = max(top_k, config.num_beams, 2)  # 1 beam = greedy, which ranks nothing
        config = replace(config, num_beams=beams, length_penalty=0.0)
        if maps is not None:
            check_layer(maps, len(self.model.decoder.cross_attns))
        out = self._generate(images, self._vqa_prompts(questions), config, image_index, maps is not None)
        results = [None] * len(questions) if maps is None else self._results(out, images, image_index, maps)
        rankings = []
        assert out.hypotheses is not None
        for hyps, m in zip(out.hypotheses, results, strict=True):
            ranked: dict[str, float] = {}
            for seq, logp in sorted(hyps, key=lambda h: -h[1]):
                ranked.setdefault(self.codec.decode(seq), math.exp(logp))  # keep the likelier of equal texts
            rankings.append(Ranking([RankedAnswer(a, p) for a, p in list(ranked.items())[:top_k]], m))
        return rankings

    @torch.inference_mode()
    def score_candidates(
        self, images: Tensor, questions: list[str], candidates: list[str], image_index: Index = None
    ) -> list[list[RankedAnswer]]:
        """Every candidate answer of each question with its probability (its tokens and EOS), most likely first."""
        if not candidates or not all(isinstance(c, str) and c.strip() for c in candidates):
            raise ValueError("candidates must be a non-empty list of non-empty strings")
        n, m = len(questions), len(candidates)
        index = torch.arange(n, device=images.device) if image_index is None else image_index
        prompts = self._vqa_prompts(questions)
        conts = [self.codec.target(c) for c in candidates]
        logp = score_continuations(
            self.model, images, [p for p in prompts for _ in range(m)], conts * n, index.repeat_interleave(m)
        )
        out = []
        for i in range(n):
            probs = logp[i * m : (i + 1) * m].exp().tolist()
            order = sorted(range(m), key=lambda j: -probs[j])
            out.append([RankedAnswer(candidates[j], probs[j]) for j in order])
        return out

    def _vqa_prompts(self, questions: list[str]) -> list[list[int]]:
        check_questions(questions)
        return [vqa_prompt(self.codec, q) for q in questions]

    def _with_maps(
        self,
        images: Tensor,
        prompts: list[list[int]],
        config: GenerationConfig,
        image_index: Tensor | None,
        layer: AttentionLayer,
    ) -> list[AttentionResult]:
        check_layer(layer, len(self.model.decoder.cross_attns))  # before the work, not after it
        return self._results(self._generate(images, prompts, config, image_index, True), images, image_index, layer)

    def _results(
        self, out: GenerationOutput, images: Tensor, image_index: Tensor | None, layer: AttentionLayer
    ) -> list[AttentionResult]:
        rollout = encoder_rollout(self.model.encoder, images)  # [B_img, h, w]
        if image_index is not None:
            rollout = rollout[image_index]
        assert out.attentions is not None
        return [
            attention_result(self.codec, seq, raw, rollout[i], layer)
            for i, (seq, raw) in enumerate(zip(out.sequences, out.attentions, strict=True))
        ]


@torch.inference_mode()
def score_continuations(
    model: VisionAttnModel,
    images: Tensor,
    prompts: list[list[int]],
    continuations: list[list[int]],
    image_index: Tensor | None = None,
) -> Tensor:
    """Summed log-probability of each continuation (e.g. an answer's tokens + EOS) after its prompt: [B].

    One teacher-forced pass over right-padded prompt + continuation texts; padding sits after every scored
    token, so the causal mask keeps each row equal to scoring it alone.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
    if any(not c for c in continuations):
        raise ValueError("every continuation needs at least one token")
    device = images.device
    texts = [p + c for p, c in zip(prompts, continuations, strict=True)]
    T = max(len(t) for t in texts)
    if T > model.decoder.cfg.max_len:
        raise ValueError(f"prompt + continuation of {T} tokens exceeds decoder.max_len={model.decoder.cfg.max_len}")
    pad = model.config.pad_token_id
    ids = torch.tensor([t + [pad] * (T - len(t)) for t in texts], device=device)
    logp = log_softmax(model(images, ids, image_index))  # [B, T, V]
    rows = torch.tensor([i for i, c in enumerate(continuations) for _ in c], device=device)
    pos = torch.tensor([len(p) - 1 + j for p, c in zip(prompts, continuations, strict=True) for j in range(len(c))])
    toks = torch.tensor([t for c in continuations for t in c], device=device)
    picked = logp[rows, pos.to(device), toks]  # the log-probability of every continuation token
    return torch.zeros(len(texts), dtype=logp.dtype, device=device).index_add_(0, rows, picked)
