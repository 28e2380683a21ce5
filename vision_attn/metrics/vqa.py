"""The official VQAv2 accuracy: answer normalisation, then a leave-one-out "min(#humans / 3, 1)" over the answers.

Follows the official VQA evaluation, written from its definition.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# VQA answer normalisation
# ---------------------------------------------------------------------------------------------------------------------

# The official punctuation set. The apostrophe is absent on purpose (it is part of contractions) and the period is
# handled separately so that decimals survive.
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'  # one mark per character
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (mistyped) look-ahead that never matches, so in
# effect a period is removed unless a digit follows it ("2.5" stays, "dog." -> "dog"). Reproduced as it behaves.
_PERIOD = re.compile(r"\.(?!\d)")

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Annotators often drop the apostrophe; restoring it makes "dont" and "don't" the same answer. Words that are also
# ordinary English without an apostrophe ("its", "well", "were", "ill", "shed", "id", "hell") are left out on purpose.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldntve": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "im": "i'm",
    "ive": "i've",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "lets": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "shant": "shan't",
    "shes": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "somebodys": "somebody's",
    "someones": "someone's",
    "somethings": "something's",
    "thats": "that's",
    "thered": "there'd",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def _process_punctuation(text: str) -> str:
    """Official punctuation rule: each mark is deleted, or turned into a space when it glues two words together."""
    out = text
    # As in the official script the decision is made per mark for the whole answer: a mark next to a space (or any
    # answer holding a "digit,digit" number) only needs deleting; otherwise the mark separates words ("black/white").
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _PUNCTUATION:
        if has_number_comma or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out)


def _process_words(text: str) -> str:
    """Official word rule: number words to digits, articles removed, contractions given back their apostrophe."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """Normalise a VQA answer the way the official evaluation does.

    Args:
        answer: a predicted or ground-truth answer, e.g. ``"  Two dogs."``.

    Returns:
        The normalised answer, e.g. ``"2 dogs"``.
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    return _process_words(_process_punctuation(text))


# ---------------------------------------------------------------------------------------------------------------------
# VQA accuracy
# ---------------------------------------------------------------------------------------------------------------------


def _accuracy_normalized(prediction: str, gt_answers: list[str]) -> float:
    """Leave-one-out VQA accuracy of an already normalised prediction against normalised answers."""
    matches = sum(answer == prediction for answer in gt_answers)
    # Leaving out a matching answer leaves matches - 1 matches among the others; leaving out another leaves matches.
    total = sum(min((matches - (answer == prediction)) / 3.0, 1.0) for answer in gt_answers)
    return total / len(gt_answers)


def vqa_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Official VQA accuracy of one predicted answer.

    As in the official script, answers are normalised only when the ground-truth answers disagree (otherwise
    only newlines, tabs and outer spaces are cleaned); then, for each of the N ground-truth answers, the
    prediction scores ``min(#matches among the other N - 1 answers / 3, 1)``, and the N scores are averaged.
    With the usual 10 answers, 0, 1, 2, 3 and 4+ matching humans give 0, 0.3, 0.6, 0.9 and 1.0.

    So ``"two"`` against ten ``"2"`` scores 0, as the official evaluation gives, while against nine ``"2"`` and one
    ``"two"`` it scores 1.0.

    Args:
        prediction: the model's answer.
        gt_answers: the human answers (10 in VQAv2).

    Returns:
        The accuracy in [0, 1].
    """
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer; got an empty gt_answers list.")
    pred, gts = _clean(prediction), [_clean(a) for a in gt_answers]
    if len(set(gts)) > 1:
        pred, gts = normalize_answer(pred), [normalize_answer(a) for a in gts]
    return _accuracy_normalized(pred, gts)


def _clean(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def _percent(values: Iterable[float]) -> float:
    """Mean of accuracies in [0, 1] as a percentage rounded to 2 decimals, like the official script."""
    values = list(values)
    return round(100.0 * sum(values) / len(values), 2)


def _index_annotations(annotations: list[dict]) -> dict[int, dict]:
    """Map question_id -> annotation, refusing duplicated ids."""
    index: dict[int, dict] = {}
    for ann in annotations:
        qid = ann["question_id"]
        if qid in index:
            raise ValueError(f"question_id {qid} appears twice in the annotations; pass each question once.")
        index[qid] = ann
    return index


def vqa_scores(predictions: dict[int, str], annotations: list[dict]) -> dict:
    """Official VQAv2 accuracy over a set of predictions, overall and per question/answer type.

    Args:
        predictions: question_id -> predicted answer. Only these questions are scored.
        annotations: VQAv2 annotation dicts with ``question_id``, ``answers`` (``[{"answer": ...}, ...]``),
            ``question_type`` and ``answer_type``.

    Returns:
        ``{"vqa_accuracy": pct, "per_question_type": {type: pct}, "per_answer_type": {type: pct},
        "num_questions": n}`` with percentages in [0, 100] rounded to 2 decimals.

    Raises:
        ValueError: if ``predictions`` is empty or holds a question_id with no annotation.
    """
    if not predictions:
        raise ValueError("vqa_scores got no predictions; pass a non-empty {question_id: answer} dict.")
    index = _index_annotations(annotations)
    accuracies: list[float] = []
    by_question_type: dict[str, list[float]] = defaultdict(list)
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    for qid, prediction in predictions.items():
        if qid not in index:
            raise ValueError(
                f"Prediction for question_id {qid} has no annotation; score predictions against the annotation file "
                "of the split they were made on."
            )
        ann = index[qid]
        acc = vqa_accuracy(prediction, [a["answer"] for a in ann["answers"]])
        accuracies.append(acc)
        by_question_type[ann["question_type"]].append(acc)
        by_answer_type[ann["answer_type"]].append(acc)
    return {
        "vqa_accuracy": _percent(accuracies),
        "per_question_type": {t: _percent(v) for t, v in sorted(by_question_type.items())},
        "per_answer_type": {t: _percent(v) for t, v in sorted(by_answer_type.items())},
        "num_questions": len(accuracies),
    }


def majority_baseline(train_annotations: list[dict], eval_annotations: list[dict]) -> dict[str, float]:
    """Accuracy of answering every question with the most common train answer for its question type.

    A question type never seen in train falls back to the most common train answer overall. Ties go to the answer
    seen first in ``train_annotations``.

    Args:
        train_annotations: VQAv2 annotations with ``question_type`` and ``multiple_choice_answer``.
        eval_annotations: VQAv2 annotations with ``question_type`` and ``answers``.

    Returns:
        ``{question_type: pct, ..., "overall": pct}``, percentages rounded to 2 decimals.
    """
    if not train_annotations or not eval_annotations:
        raise ValueError("majority_baseline needs non-empty train_annotations and eval_annotations.")
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    overall: Counter[str] = Counter()
    for ann in train_annotations:
        answer = normalize_answer(ann["multiple_choice_answer"])
        per_type[ann["question_type"]][answer] += 1
        overall[answer] += 1
    fallback = overall.most_common(1)[0][0]
    majority = {qtype: counts.most_common(1)[0][0] for qtype, counts in per_type.items()}

    by_type: dict[str, list[float]] = defaultdict(list)
    accuracies: list[float] = []
    for ann in eval_annotations:
        qtype = ann["question_type"]
        if qtype not in majority:
            logger.debug("question_type %r not in train; using the overall majority answer %r", qtype, fallback)
        prediction = majority.get(qtype, fallback)
        acc = _accuracy_normalized(prediction, [normalize_answer(a["answer"]) for a in ann["answers"]])
        by_type[qtype].append(acc)
        accuracies.append(acc)
    result = {qtype: _percent(v) for qtype, v in sorted(by_type.items())}
    result["overall"] = _percent(accuracies)
    return result
