"""The tokenizer: a byte-level BPE trained locally with HF `tokenizers`, or a pretrained language model's own;
either used through PreTrainedTokenizerFast.

Text layouts (prompts built by `vision_attn.tasks.caption_prompt` / `vqa_prompt`, for training and generation
alike; a training example is a prompt and its target, `TextCodec.example`). With our BPE, task tokens:
    caption: <bos> <caption> caption-tokens <eos>
    vqa:     <bos> <vqa> question-tokens <answer> answer-tokens <eos>
With a pretrained LM's tokenizer, plain text that the LM already reads (no new embeddings to learn), targets
after a space:
    caption: <bos> "Caption:" " caption" <eos>
    vqa:     <bos> "Question: question Answer:" " answer" <eos>
The loss covers only the target tokens (caption or answer) and the final <eos>.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
CAPTION, VQA, ANSWER = "<caption>", "<vqa>", "<answer>"
SPECIAL_TOKENS = [PAD, BOS, EOS, CAPTION, VQA, ANSWER]  # ids 0..5 in this order
IGNORE = -100


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000) -> PreTrainedTokenizerFast:
    """Train a lower-casing byte-level BPE on `texts` (deterministic for the same texts)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    log.info("trained a BPE tokenizer with %d tokens", tok.get_vocab_size())
    return wrap(tok)


def has_task_tokens(tok: Tokenizer) -> bool:
    """Whether `tok` is ours (made by `train_tokenizer`, with task tokens), not a pretrained language model's."""
    return any(tok.token_to_id(t) is not None for t in (BOS, CAPTION, VQA, ANSWER))


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """`tok` as transformers' fast tokenizer; ours (with task tokens) gets its special tokens named."""
    if not has_task_tokens(tok):  # a pretrained LM's (GPT-2, Llama, ...): its special ids travel in the model config
        return PreTrainedTokenizerFast(tokenizer_object=tok)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[CAPTION, VQA, ANSWER],
    )


def load_lm_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer of a pretrained language model's folder (`tokenizer.json` and its special tokens).

    Special tokens the tokenizer's own files leave unnamed (GPT-2's name none) are taken from the model's
    `config.json` and `generation_config.json` (`bos_token_id`, `eos_token_id`, `pad_token_id`).
    """
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"decoder.pretrained: {folder} has no tokenizer.json (download it with the model)")
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    configs = [folder / name for name in ("generation_config.json", "config.json")]
    ids = {}
    for path in (p for p in configs if p.is_file()):
        for key, value in json.loads(path.read_text()).items():
            if key in ("bos_token_id", "eos_token_id", "pad_token_id") and value is not None:
                ids.setdefault(key, value[0] if isinstance(value, list) else value)  # eos may be a list
    for key, value in ids.items():
        name = key.removesuffix("_id")
        if getattr(tok, name) is None and 0 <= value < len(tok):
            setattr(tok, name, tok.convert_ids_to_tokens(value))
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a `tokenizer.json` written by `save_tokenizer` (ours, or a pretrained language model's)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        tok = wrap(Tokenizer.from_file(str(path)))
    except Exception as e:  # the Rust tokenizer raises a bare Exception for a malformed file
        raise ValueError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:200]})") from e
    for i, t in enumerate(SPECIAL_TOKENS if has_task_tokens(tok.backend_tokenizer) else []):  # ours: fixed ids
        if tok.convert_tokens_to_ids(t) != i:
            raise ValueError(f"{path}: special token {t} must have id {i}; was this tokenizer made by vision-attn?")
    return tok


def save_tokenizer(tok: PreTrainedTokenizerFast, path: str | Path) -> None:
    tok.backend_tokenizer.save(str(path))


class TextCodec:
    """Builds prompt/target token ids for both tasks and decodes generated ids.

    Args:
        tokenizer: ours (with task tokens) or a pretrained language model's (text layout, see the module doc).
        specials: (pad, bos, eos) ids; None = the tokenizer's own (a pretrained LM's folder names them; a model
            folder's `config.json` does for a bare `tokenizer.json`). Without a BOS token the EOS token opens
            prompts, and without a pad token EOS pads (padding is never attended to nor scored).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, specials: tuple[int, int, int] | None = None) -> None:
        self.tok = tokenizer
        # The Rust tokenizer directly: the same ids as `tokenizer.encode(..., add_special_tokens=False)` without
        # the wrapper's per-call work; data loading tokenizes ~10 short texts per image, next to the training step.
        self._backend = tokenizer.backend_tokenizer
        self.task_tokens = has_task_tokens(self._backend)
        if self.task_tokens:
            ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
            self.pad, self.bos, self.eos = ids[PAD], ids[BOS], ids[EOS]
            self.caption, self.vqa, self.answer = ids[CAPTION], ids[VQA], ids[ANSWER]
        elif specials is not None:
            self.pad, self.bos, self.eos = specials
        else:
            eos = tokenizer.eos_token_id
            if eos is None:
                raise ValueError("the language model's tokenizer names no EOS token (tokenizer_config.json)")
            self.eos = eos
            self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
            self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text.strip(), add_special_tokens=False).ids

    def target(self, text: str) -> list[int]:
        """The ids of a caption or answer as the model writes it after its prompt, with the closing EOS."""
        space = "" if self.task_tokens else " "  # a pretrained LM reads words after a prompt with their leading space
        return self._backend.encode(space + text.strip(), add_special_tokens=False).ids + [self.eos]

    def example(self, prompt: list[int], target: str, max_len: int) -> tuple[list[int], list[int]]:
        """Teacher-forcing input ids and labels (labels[t] = ids[t + 1] on target positions, else IGNORE).

        Too-long texts are cut: the prompt keeps its last `max_len // 2` tokens, the target its head.
        """
        target_ids = self.target(target)
        if len(prompt) > max_len // 2:  # keep the task tokens and the end of the question (with <answer>)
            prompt = prompt[:2] + prompt[-max(1, max_len // 2 - 2) :]
        target_ids = target_ids[: max_len - len(prompt)]
        ids = prompt + target_ids
        labels = [IGNORE] * (len(prompt) - 1) + target_ids + [IGNORE]
        return ids, labels[: len(ids)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    @property
    def vocab_size(self) -> int:
        return len(self.tok)
