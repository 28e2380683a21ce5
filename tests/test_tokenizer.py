"""The BPE tokenizer and the text layouts built from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vision_attn.data.tokenizer import (
    IGNORE,
    SPECIAL_TOKENS,
    TextCodec,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from vision_attn.tasks import caption_prompt, vqa_prompt

TEXTS = [
    "A red circle at the top left.",
    "a blue square is right of the red circle",
    "what color is the square?",
    "how many shapes are there?",
    "two small green triangles and a large purple diamond",
    "yes",
    "no",
] * 3


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return train_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture(scope="module")
def codec(tok: PreTrainedTokenizerFast) -> TextCodec:
    return TextCodec(tok)


def test_special_tokens_have_ids_0_to_5_in_order(tok: PreTrainedTokenizerFast, codec: TextCodec) -> None:
    assert SPECIAL_TOKENS == ["<pad>", "<bos>", "<eos>", "<caption>", "<vqa>", "<answer>"]
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4, 5]
    assert (codec.pad, codec.bos, codec.eos, codec.caption, codec.vqa, codec.answer) == (0, 1, 2, 3, 4, 5)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert 6 < codec.vocab_size <= 400
    # special tokens are atomic: the text "<answer>" in a question is not split into characters
    assert tok.encode("<answer>", add_special_tokens=False) == [5]


def test_training_is_deterministic(tok: PreTrainedTokenizerFast) -> None:
    again = train_tokenizer(TEXTS, vocab_size=400)
    assert again.get_vocab() == tok.get_vocab()


@pytest.mark.parametrize(
    "text", ["A Red Circle at the TOP left.", "how many shapes are there?", "Unseen words: zebra, 42 & café!"]
)
def test_encode_decode_round_trip_lower_cases(codec: TextCodec, text: str) -> None:
    ids = codec.encode(text)
    assert ids and all(i >= len(SPECIAL_TOKENS) for i in ids)  # plain text never yields special ids
    assert codec.decode(ids) == text.lower()
    # decode drops the special tokens around the text
    assert codec.decode([codec.bos, codec.caption, *ids, codec.eos, codec.pad]) == text.lower()


@pytest.mark.parametrize("text", ["  A Red Circle at the TOP left. ", "is there an <answer> here?", "café 42 &", ""])
def test_codec_encode_equals_the_transformers_tokenizer(
    tok: PreTrainedTokenizerFast, codec: TextCodec, text: str
) -> None:
    """The codec calls the Rust tokenizer directly for speed; it must give exactly the wrapper's ids."""
    assert codec.encode(text) == tok.encode(text.strip(), add_special_tokens=False)


def test_known_words_are_merged(codec: TextCodec) -> None:
    """BPE really learned merges: a frequent word costs far fewer tokens than its bytes."""
    assert len(codec.encode("circle")) < len(" circle")


def _check_layout(codec: TextCodec, prompt: list[int], ids: list[int], labels: list[int], target: str) -> int:
    """Common checks of an example; returns where the target starts."""
    assert len(labels) == len(ids)
    start = len(prompt)
    assert ids[:start] == prompt
    assert labels[: start - 1] == [IGNORE] * (start - 1)  # no loss on the prompt
    for t in range(start - 1, len(ids) - 1):  # next-token targets over the target text and its EOS
        assert labels[t] == ids[t + 1]
    assert labels[-1] == IGNORE  # nothing follows the last token
    return start


def test_caption_example_layout(codec: TextCodec) -> None:
    target = "a red circle at the top left."
    prompt = caption_prompt(codec)
    assert prompt == [codec.bos, codec.caption]
    ids, labels = codec.example(prompt, target, max_len=48)
    _check_layout(codec, prompt, ids, labels, target)
    assert ids[2:] == codec.encode(target) + [codec.eos]
    assert labels[-2] == codec.eos  # the EOS is a target: the model learns to stop
    assert codec.decode(ids) == target


def test_vqa_example_layout(codec: TextCodec) -> None:
    prompt = vqa_prompt(codec, "What color is the square?")
    assert prompt[:2] == [codec.bos, codec.vqa] and prompt[-1] == codec.answer
    assert codec.decode(prompt) == "what color is the square?"
    ids, labels = codec.example(prompt, "blue", max_len=48)
    start = _check_layout(codec, prompt, ids, labels, "blue")
    assert [x for x in labels if x != IGNORE] == codec.encode("blue") + [codec.eos]
    assert labels[start - 1] == codec.encode("blue")[0]  # the <answer> position predicts the first answer token


@pytest.mark.parametrize(
    "max_len",
    [
        4,
        5,
        6,
        8,
        11,
        16,
        48,
    ],
)
def test_over_long_texts_are_cut_to_max_len(codec: TextCodec, max_len: int) -> None:
    long_question = "what color is the small square right of the large purple diamond at the bottom? " * 3
    long_caption = "two small green triangles and a large purple diamond " * 6
    cases = [(vqa_prompt(codec, long_question), "blue"), (caption_prompt(codec), long_caption)]
    for prompt, target in cases:
        assert len(prompt) + len(codec.encode(target)) + 1 > max_len
        ids, labels = codec.example(prompt, target, max_len=max_len)
        assert len(ids) == len(labels) <= max_len
        assert ids[:2] == prompt[:2]  # the task tokens survive the cut
        assert any(label != IGNORE for label in labels)  # something is still learned


def test_long_question_keeps_its_end(codec: TextCodec) -> None:
    """The prompt keeps its last tokens (the end of the question and <answer>), the target its head."""
    prompt = vqa_prompt(codec, "what color is the small square right of the large purple diamond at the bottom?")
    ids, labels = codec.example(prompt, "blue", max_len=16)
    assert len(ids) <= 16
    assert ids[:2] == prompt[:2] and ids[7] == codec.answer and ids[2:8] == prompt[-6:]
    assert ids[8:] == codec.encode("blue") + [codec.eos]


def test_save_and_load_round_trip(tok: PreTrainedTokenizerFast, codec: TextCodec, tmp_path: Path) -> None:
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    for path in (tmp_path / "tokenizer.json", tmp_path):  # a file or its folder
        loaded = load_tokenizer(path)
        assert loaded.get_vocab() == tok.get_vocab()
        again = TextCodec(loaded)
        for text in TEXTS[:7]:
            assert again.encode(text) == codec.encode(text)
            assert again.decode(again.encode(text)) == text.lower()
        assert vqa_prompt(again, "how many?") == vqa_prompt(codec, "how many?")


def test_load_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "specials",
    [list(reversed(SPECIAL_TOKENS)), ["<unk>", *SPECIAL_TOKENS], SPECIAL_TOKENS[:3]],
    ids=["reversed", "shifted", "missing"],
)
def test_load_rejects_special_tokens_in_the_wrong_place(tmp_path: Path, specials: list[str]) -> None:
    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel()
    other.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False))
    other.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(
        ValueError, match=r"special token <\w+> must have id \d; was this tokenizer made by vision-attn"
    ):
        load_tokenizer(tmp_path / "tokenizer.json")
