"""vision_attn.metrics.vqa held case by case against the official VQA evaluator's own outputs.

``vqa_official_cases.json`` was made once, outside this project, by running the official evaluator, GT-Vision-Lab/VQA
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at commit a013f0043c1e2cdc995922dfe257f7149aa9af06 (its sha256 is
in the file), on Python 3.11.7 with only its two ``print`` statements turned into calls. Each case became one question
whose human answers carry distinct ``answer_id`` values, as in VQAv2; ``VQAEval.evaluate()`` ran once over all of them
and we kept each question's unrounded accuracy (the value it passes to ``setEvalQA``), its ``accuracy`` dict, and for
every answer string ``processDigitArticle(processPunctuation(...))`` after evaluate's cleaning. The cases: every key
of the official contraction table as written, without apostrophes and upper-cased; punctuation at every position;
1 to 100 periods; numbers with commas and decimals; number words and articles; tabs, newlines and Unicode spaces;
Unicode letters and digits; empty answers; unanimous and split humans with 1 to 11 answers; a rounding tie. The
file's ``python2`` entry records where the unmodified file on Python 2.7.18 answers differently (see
``vision_attn/metrics/vqa.py``); the tests hold us to the Python 3 outputs.

Accuracies are compared exactly: ours adds the same k/3 terms in the same order and divides by the same count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vision_attn.metrics import normalize_answer, vqa_accuracy, vqa_scores

_FIXTURE = json.loads((Path(__file__).parent / "vqa_official_cases.json").read_text(encoding="utf-8"))
_CASES: list[dict[str, Any]] = _FIXTURE["cases"]


def test_fixture_names_its_reference() -> None:
    ref = _FIXTURE["reference"]
    assert ref["repository"] == "https://github.com/GT-Vision-Lab/VQA"
    assert ref["commit"] == "a013f0043c1e2cdc995922dfe257f7149aa9af06"
    assert len(_CASES) > 1000 and len(_FIXTURE["normalized"]) > 1000


def test_accuracy_equals_the_official_one_for_every_case() -> None:
    wrong = [
        (case["prediction"], case["gt_answers"][:4], case["accuracy"], ours)
        for case in _CASES
        if (ours := vqa_accuracy(case["prediction"], case["gt_answers"])) != case["accuracy"]
    ]
    assert not wrong, f"{len(wrong)} of {len(_CASES)} cases differ (prediction, answers, official, ours): {wrong[:10]}"


def test_normalisation_equals_the_official_one_for_every_answer() -> None:
    wrong = [(raw, expected, normalize_answer(raw)) for raw, expected in _FIXTURE["normalized"].items()]
    wrong = [w for w in wrong if w[1] != w[2]]
    assert not wrong, f"{len(wrong)} answers normalise differently (raw, official, ours): {wrong[:10]}"


def test_scores_equal_the_official_aggregate() -> None:
    """Overall, per question type and per answer type, rounded to 2 decimals, a 3.125 rounding tie included."""
    answer_types = _FIXTURE["answer_types"]
    annotations = [
        {
            "question_id": i + 1,
            "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(case["gt_answers"])],
            "question_type": case["group"],
            "answer_type": answer_types[i % len(answer_types)],
        }
        for i, case in enumerate(_CASES)
    ]
    scores = vqa_scores({i + 1: case["prediction"] for i, case in enumerate(_CASES)}, annotations)
    official = _FIXTURE["aggregate"]
    assert scores["vqa_accuracy"] == official["overall"]
    assert scores["per_question_type"] == official["perQuestionType"]
    assert scores["per_answer_type"] == official["perAnswerType"]
    assert scores["per_question_type"]["rounding"] == 3.12  # 100 / 32 = 3.125: Python 3's round, half to even


@pytest.mark.parametrize(
    ("prediction", "gt_answers", "expected"),
    [
        # The official table's "Im" and "Ive" are capitalised, so they never match a lower-cased answer.
        ("im", ["i'm"] * 4 + ["x"] * 6, 0.0),
        ("ive", ["i've"] * 4 + ["x"] * 6, 0.0),
        ("lets", ["let's"] * 4 + ["x"] * 6, 0.0),
        ("couldntve", ["couldn't've"] * 4 + ["x"] * 6, 0.0),
        ("oughtnt", ["oughtn't"] * 4 + ["x"] * 6, 1.0),
        ("somebodyll", ["somebody'll"] * 4 + ["x"] * 6, 1.0),
        ("you'dve", ["you'd've"] * 4 + ["x"] * 6, 1.0),
        ("somebody'd", ["somebodyd"] * 4 + ["x"] * 6, 1.0),  # sic: the official entry drops the apostrophe
        # Only the first 32 periods go: 33 leave one behind.
        ("yes" + "." * 32, ["yes"] * 4 + ["x"] * 6, 1.0),
        ("yes" + "." * 33, ["yes"] * 4 + ["x"] * 6, 0.0),
    ],
)
def test_named_official_quirks(prediction: str, gt_answers: list[str], expected: float) -> None:
    assert vqa_accuracy(prediction, gt_answers) == expected


def test_only_the_first_32_periods_are_removed() -> None:
    assert normalize_answer("yes" + "." * 32) == "yes"
    assert normalize_answer("yes" + "." * 40) == "yes" + "." * 8
    assert normalize_answer("a." * 34) == "a" * 33 + ".a."
