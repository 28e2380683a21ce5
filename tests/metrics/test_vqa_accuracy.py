"""Tests for vision_attn.metrics.vqa, with expected values worked out by hand from the official definitions."""

import pytest

from vision_attn.metrics import majority_baseline, normalize_answer, vqa_accuracy, vqa_scores

# ---------------------------------------------------------------------------------------------------------------------
# VQA normalisation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("the dog.", "dog"),
        ("yes!", "yes"),
        ("2.5", "2.5"),
        ("1,000", "1000"),
        ("dont", "don't"),
        ("whats", "what's"),
        ("isnt", "isn't"),
        ("a red circle", "red circle"),
        ("an apple", "apple"),
        ("  Top   Left ", "top left"),
        ("Top\tLeft\n", "top left"),
        ("black/white", "black white"),  # a mark between two words becomes a space
        ("black / white", "black white"),  # a mark next to a space is just removed
        ("t-shirt", "t shirt"),
        ("what?", "what"),
        ("don't", "don't"),  # the apostrophe is not official punctuation
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# ---------------------------------------------------------------------------------------------------------------------
# VQA accuracy
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # 0 matches: every leave-one-out subset has 0 matches -> 0.
        (0, 0.0),
        # 1 match: the 9 subsets that keep it score 1/3, the 1 that drops it scores 0 -> 9 * (1/3) / 10 = 0.3.
        (1, 0.3),
        # 2 matches: 8 subsets keep both (2/3), 2 subsets keep one (1/3) -> (8 * 2/3 + 2 * 1/3) / 10 = 18/30 = 0.6.
        (2, 0.6),
        # 3 matches: 7 subsets keep three (1), 3 subsets keep two (2/3) -> (7 + 3 * 2/3) / 10 = 0.9.
        (3, 0.9),
        # 4 matches: 6 subsets keep four (min(4/3, 1) = 1), 4 subsets keep three (1) -> 1.0.
        (4, 1.0),
        # 10 matches: every subset keeps nine -> 1.0.
        (10, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out(matches: int, expected: float) -> None:
    gt = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("cat", gt) == pytest.approx(expected)


def test_vqa_accuracy_normalises_prediction_and_answers() -> None:
    # normalised because the humans disagree
    assert vqa_accuracy("two", ["2"] * 9 + ["two"]) == pytest.approx(1.0)
    assert vqa_accuracy("Yes.", ["yes"] * 9 + ["no"]) == pytest.approx(1.0)
    assert vqa_accuracy("the dog", ["Dog!"] + ["cat"] * 9) == pytest.approx(0.3)


def test_vqa_accuracy_unanimous_answers_are_not_normalised() -> None:
    # The official script normalises only when the ground-truth answers differ; only whitespace is cleaned.
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == pytest.approx(1.0)


def test_vqa_accuracy_empty_answers_raises() -> None:
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("yes", [])


def _ann(qid: int, answers: list[str], qtype: str, atype: str, mc: str | None = None) -> dict:
    return {
        "question_id": qid,
        "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
        "question_type": qtype,
        "answer_type": atype,
        "multiple_choice_answer": mc if mc is not None else answers[0],
    }


def _vqa_annotations() -> list[dict]:
    return [
        _ann(1, ["yes"] * 10, "is the", "yes/no"),
        _ann(2, ["2"] + ["3"] * 9, "how many", "number"),
        _ann(3, ["red"] * 2 + ["blue"] * 8, "what color is the", "other"),
        _ann(4, ["no"] * 10, "is the", "yes/no"),
    ]


def test_vqa_scores_aggregates_per_type() -> None:
    predictions = {
        1: "yes",  # 10 matches -> 1.0
        2: "two",  # normalised to "2": 1 match -> 0.3
        3: "red",  # 2 matches -> 0.6
        4: "yes",  # 0 matches -> 0.0
    }
    scores = vqa_scores(predictions, _vqa_annotations())
    # overall: (1.0 + 0.3 + 0.6 + 0.0) / 4 = 0.475 -> 47.5%
    assert scores["vqa_accuracy"] == pytest.approx(47.5)
    assert scores["num_questions"] == 4
    # "is the": (1.0 + 0.0) / 2 = 50%; "how many": 30%; "what color is the": 60%
    assert scores["per_question_type"] == pytest.approx({"is the": 50.0, "how many": 30.0, "what color is the": 60.0})
    assert scores["per_answer_type"] == pytest.approx({"yes/no": 50.0, "number": 30.0, "other": 60.0})


def test_vqa_scores_only_scores_predicted_questions() -> None:
    scores = vqa_scores({2: "3"}, _vqa_annotations())  # 9 matches -> 1.0
    assert scores["vqa_accuracy"] == 100.0
    assert scores["num_questions"] == 1
    assert scores["per_question_type"] == {"how many": 100.0}


def test_vqa_scores_rounds_to_two_decimals() -> None:
    # (0.3 + 0.6 + 0.0) / 3 = 0.3 -> 30.0; (1.0 + 0.3 + 0.6) / 3 = 0.6333.. -> 63.33
    scores = vqa_scores({1: "yes", 2: "2", 3: "red"}, _vqa_annotations())
    assert scores["vqa_accuracy"] == 63.33


def test_vqa_scores_unknown_question_raises() -> None:
    with pytest.raises(ValueError, match="question_id 99"):
        vqa_scores({1: "yes", 99: "no"}, _vqa_annotations())


def test_vqa_scores_empty_predictions_raises() -> None:
    with pytest.raises(ValueError, match="no predictions"):
        vqa_scores({}, _vqa_annotations())


def test_majority_baseline() -> None:
    train = [
        _ann(10, ["yes"] * 10, "is the", "yes/no", mc="yes"),
        _ann(11, ["yes"] * 10, "is the", "yes/no", mc="Yes"),
        _ann(12, ["no"] * 10, "is the", "yes/no", mc="no"),
        _ann(13, ["2"] * 10, "how many", "number", mc="two"),
        _ann(14, ["2"] * 10, "how many", "number", mc="2"),
        _ann(15, ["3"] * 10, "how many", "number", mc="3"),
    ]
    # Majorities: "is the" -> "yes" (2 of 3), "how many" -> "2" ("two" and "2" normalise alike).
    # "what color" is unseen in train and falls back to the overall majority, "yes" (3 of 6 after normalisation).
    evaluation = [
        _ann(1, ["yes"] * 10, "is the", "yes/no"),  # 1.0
        _ann(2, ["no"] * 10, "is the", "yes/no"),  # 0.0
        _ann(3, ["2"] * 3 + ["4"] * 7, "how many", "number"),  # 3 matches -> 0.9
        _ann(4, ["red"] * 10, "what color", "other"),  # "yes" -> 0.0
    ]
    result = majority_baseline(train, evaluation)
    # "is the": (1.0 + 0.0) / 2 = 50%; "how many": 90%; "what color": 0%; overall: 1.9 / 4 = 47.5%
    assert result == pytest.approx({"is the": 50.0, "how many": 90.0, "what color": 0.0, "overall": 47.5})
