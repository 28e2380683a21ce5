"""Tests for vision_attn.metrics.caption, with expected values worked out by hand from the official definitions."""

import json
import shutil
from pathlib import Path

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


# A few images with five references each, written like COCO captions (case, punctuation, clitics, numbers).
_TOOLKIT_REFS = {
    11: [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave in the ocean",
        "a person on a surf board riding a wave",
        "The surfer is catching a big wave!",
        "A man surfing on a blue wave, near the shore.",
    ],
    12: [
        "Two giraffes standing next to each other in a field.",
        "Two giraffes in a grassy field near some trees",
        "A pair of giraffes that are standing in the grass",
        "The giraffes are eating leaves off the tree.",
        "two tall giraffes stand together in the wild",
    ],
    13: [
        "A pizza with cheese, tomatoes and basil on it.",
        "A small pizza sitting on top of a white plate",
        "A cheese pizza on a plate next to a fork.",
        "there's a pizza with lots of toppings on the table",
        "A pizza that has been cut into 8 slices",
    ],
    14: [
        "A black-and-white cat sleeping on a laptop's keyboard.",
        "A cat is lying on top of a laptop computer",
        "a cat naps on the keys of an open laptop",
        "The cat doesn't want you to use the computer.",
        "A kitten curled up on a keyboard (sleeping)",
    ],
}
_TOOLKIT_PREDICTIONS = {
    11: "A man riding a wave on a surfboard.",
    12: "two giraffes standing in a field",
    13: "A pizza with tomatoes and cheese on a plate",
    14: "A cat that's sleeping on a laptop keyboard!",
}


@pytest.mark.skipif(shutil.which("java") is None, reason="the toolkit's PTBTokenizer and METEOR need Java")
def test_caption_scores_equal_the_toolkit_steps(tmp_path: Path) -> None:
    """The toolkit's own pipeline: COCO files, ``loadRes``, then ``COCOEvalCap.evaluate``'s steps without SPICE.

    ``evaluate`` itself cannot run offline (it constructs the SPICE scorer, which downloads CoreNLP models), so its
    steps are taken one by one here: the Java PTB tokenizer on each side, then BLEU, METEOR, ROUGE-L and CIDEr.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.eval import COCOEvalCap
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    anns = [
        {"id": 100 * i + j, "image_id": i, "caption": c}
        for i, refs in _TOOLKIT_REFS.items()
        for j, c in enumerate(refs)
    ]
    (tmp_path / "gt.json").write_text(json.dumps({"images": [{"id": i} for i in _TOOLKIT_REFS], "annotations": anns}))
    (tmp_path / "res.json").write_text(
        json.dumps([{"image_id": i, "caption": c} for i, c in _TOOLKIT_PREDICTIONS.items()])
    )
    coco = COCO(str(tmp_path / "gt.json"))
    evaluator = COCOEvalCap(coco, coco.loadRes(str(tmp_path / "res.json")))
    ids = evaluator.params["image_id"]
    gts = PTBTokenizer().tokenize({i: evaluator.coco.imgToAnns[i] for i in ids})
    res = PTBTokenizer().tokenize({i: evaluator.cocoRes.imgToAnns[i] for i in ids})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    toolkit = {f"bleu{n + 1}": b for n, b in enumerate(bleu)}
    toolkit["meteor"] = meteor.compute_score(gts, res)[0]
    del meteor
    toolkit["rouge_l"] = Rouge().compute_score(gts, res)[0]
    toolkit["cider"] = Cider().compute_score(gts, res)[0]

    ours = caption_scores(_TOOLKIT_PREDICTIONS, _TOOLKIT_REFS, meteor=True)
    assert gts == {i: [tokenize_caption(c) for c in refs] for i, refs in _TOOLKIT_REFS.items()}
    # Same tokens into the same scorers in the same order: the same floats.
    assert ours == toolkit
    assert 0 < ours["bleu4"] < 1 and ours["cider"] > 0
