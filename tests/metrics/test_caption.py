"""Tests for vision_attn.metrics.caption, with expected values worked out by hand from the official definitions."""

import shutil

import pytest

from vision_attn.metrics import caption_scores, tokenize_caption

# ---------------------------------------------------------------------------------------------------------------------
# Caption metrics
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A dog runs.", "a dog runs"),
        ("  A DOG,  runs!  ", "a dog runs"),
        ("A dog's ball (red) on the grass...", "a dog 's ball -lrb- red -rrb- on the grass"),
        ("It doesn't fit; can't.", "it does n't fit ca n't"),
        ("A black-and-white cat: 2.5 kg, 1,000 hairs?", "a black-and-white cat 2.5 kg 1,000 hairs"),
        ('He said "hi" -- twice', "he said hi twice"),
        ("Near the U.S. flag at 3:30 pm", "near the u.s. flag at 3:30 pm"),
        ("", ""),
    ],
)
def test_tokenize_caption(raw: str, expected: str) -> None:
    assert tokenize_caption(raw) == expected


# Typical COCO-style captions plus the punctuation the toolkit has to deal with.
_JAVA_CHECK_CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two giraffes standing next to each other in a field ",
    "A black-and-white photo of a 2-year-old kid's toy, isn't it?",
    "The people's bikes (red and blue) are near the U.S. flag; it's 3:30 pm!",
    'A sign that says "STOP" -- on a pole... at 1,000 feet',
    "cats' bowls & dogs @ home #1: 50% off $5 [sic] {x}",
    "a pizza with cheese,tomatoes and basil/oregano on it",
]


@pytest.mark.skipif(shutil.which("java") is None, reason="the toolkit's PTBTokenizer needs Java")
def test_tokenize_caption_matches_java_ptb_tokenizer() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(_JAVA_CHECK_CAPTIONS)})
    for i, caption in enumerate(_JAVA_CHECK_CAPTIONS):
        assert tokenize_caption(caption) == java[i][0], caption


_REFS = {
    1: ["a dog runs on the green grass", "a brown dog running across a field"],
    2: ["a man rides a red bicycle down the street", "a person riding a bike on a road"],
}


def test_caption_scores_identical_is_perfect() -> None:
    refs = {1: ["a dog runs on the green grass"]}
    scores = caption_scores({1: "a dog runs on the green grass"}, refs)
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"}
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)


def test_caption_scores_cider_orders_closer_caption_higher() -> None:
    # Two images, so n-grams unique to one image's references get a positive idf (log 2) and CIDEr can be > 0.
    good = caption_scores({1: "a dog runs on the green grass", 2: "a man rides a red bicycle down the street"}, _REFS)
    close = caption_scores({1: "a brown dog runs on the grass", 2: "a man riding a bike on the street"}, _REFS)
    bad = caption_scores({1: "a dog sits", 2: "a man stands"}, _REFS)
    assert good["cider"] > close["cider"] > bad["cider"] > 0
    assert good["bleu4"] > close["bleu4"]
    assert close["rouge_l"] > bad["rouge_l"]


def test_caption_scores_disjoint_caption_is_zero() -> None:
    scores = caption_scores({1: "purple elephants juggling", 2: "quantum mechanics lecture"}, _REFS)
    assert scores["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert scores["rouge_l"] == 0.0
    assert scores["cider"] == 0.0


def test_caption_scores_ignore_case_and_punctuation() -> None:
    plain = caption_scores({1: "a dog runs on the grass", 2: "a man rides a bike"}, _REFS)
    noisy = caption_scores({1: "A Dog runs, on the GRASS!", 2: "A man... rides a bike."}, _REFS)
    assert noisy == pytest.approx(plain)


def test_caption_scores_empty_prediction_scores_zero() -> None:
    scores = caption_scores({1: "", 2: ""}, _REFS)
    assert scores["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert scores["rouge_l"] == 0.0
    assert scores["cider"] == 0.0


def test_caption_scores_is_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    caption_scores({1: "a dog runs"}, _REFS)
    assert capsys.readouterr().out == ""


def test_caption_scores_missing_references_raises() -> None:
    with pytest.raises(ValueError, match="Image id 7"):
        caption_scores({1: "a dog", 7: "a cat"}, _REFS)
