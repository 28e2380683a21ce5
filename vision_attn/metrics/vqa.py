"""The official VQAv2 accuracy: answer normalisation, then a leave-one-out "min(#humans / 3, 1)" over the answers.

Reference: the official evaluator, GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at commit
a013f0043c1e2cdc995922dfe257f7149aa9af06 (2021-03-11, "Fixed processing answers bug"). Written here from what that
code does, step by step, and held to its outputs case by case (``tests/metrics/test_vqa_official.py``: every case's
accuracy and every answer's normalised string, edge cases included). Per question it does:

1. Clean the prediction and every human answer: newlines and tabs become spaces, outer whitespace is stripped.
2. Only if the cleaned human answers are not all the same string, normalise the prediction and each human answer
   (`normalize_answer`); with unanimous humans, ``"Yes."`` against ten ``"yes"`` scores 0.
3. For each of the N human answers, leave it out and score ``min(#other answers equal to the prediction / 3, 1)``;
   the accuracy is the mean of the N scores.

Overall and per-type results are ``round(100 * mean, 2)``.

The reference is Python 2 code; ours, like the fixture's reference outputs, runs on Python 3. Run unmodified on
Python 2.7 it differs in three places: Python 2's ``round`` rounds exact ties away from zero (one right answer in 32
questions gives 3.13 there, 3.12 here); its ``\\d`` matches ASCII digits only (the Arabic-Indic ``"٣.٥"`` keeps its
period here, loses it there); and its older Unicode tables lower-case and split a few non-ASCII characters differently
(``"İ"``, a final ``"Σ"``, U+180E).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Answer normalisation
# ---------------------------------------------------------------------------------------------------------------------

# The official punctuation marks. The apostrophe is absent (it is part of contractions); the period has its own rule.
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'  # one mark per character
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a mistyped look-behind, in fact a look-ahead for
# "<=" that never matches at a period, so a period is removed unless a digit follows it ("2.5" stays, "dog." -> "dog").
_PERIOD = re.compile(r"\.(?!\d)")
# The official call is `periodStrip.sub("", outText, re.UNICODE)`: Pattern.sub's third parameter is `count`, so the
# flag (re.UNICODE == 32) caps the substitution at 32 periods and the rest stay ("yes" + 33 periods -> "yes.").
_PERIODS_REMOVED = 32

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

# The official contraction table as it acts on lower-cased words. Each key of the official table is a contracted
# form written with exactly one of its apostrophes left out ("couldnt've" and "couldn'tve", but never "couldntve"),
# and is rewritten to that form; so the table is the list of forms below and that rule, plus one official entry
# that runs the other way ("somebody'd" becomes "somebodyd", sic). Only these spellings change: ordinary words that
# happen to be contractions without the apostrophe ("its", "well", "ill", "lets", "shes") and spellings the table
# does not list ("couldntve", "somethings") are never touched. The official table also has the keys "Im", "Ive",
# "Id've" and "I'dve": capitalised, they never match a lower-cased word, so "im" stays "im" and is left out here. Its
# entries "let's" and "she's" map to themselves and are left out too.
_CONTRACTED_FORMS = """
    'ow's'at 'twas ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
    haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am might've mightn't mightn't've
    must've mustn't needn't not've o'clock oughtn't shan't she'd've should've shouldn't shouldn't've
    somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've
    something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've wasn't
    we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll
    who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'd've y'all'll you'd
    you'd've you'll you're you've
""".split()
_CONTRACTIONS = {
    form[:i] + form[i + 1 :]: form for form in _CONTRACTED_FORMS for i, c in enumerate(form) if c == "'"
} | {"somebody'd": "somebodyd"}


def _clean(answer: str) -> str:
    """Newlines and tabs to spaces, outer whitespace stripped: what the official script does to every answer."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


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
    return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def _process_words(text: str) -> str:
    """Official word rule: lower-case, number words to digits, articles removed, contractions rewritten."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """Normalise a VQA answer the way the official evaluation does (see the module docstring for when it applies).

    Punctuation is deleted or turned into spaces, periods not followed by a digit are removed (the first 32 of them
    only, as the official script does), then words are lower-cased, number words become digits, articles go and the
    official contraction table is applied.

    Args:
        answer: a predicted or ground-truth answer, e.g. ``"  Two dogs."``.

    Returns:
        The normalised answer, e.g. ``"2 dogs"``.
    """
    return _process_words(_process_punctuation(_clean(answer)))


# ---------------------------------------------------------------------------------------------------------------------
# VQA accuracy
# ---------------------------------------------------------------------------------------------------------------------


def _accuracy_normalized(prediction: str, gt_answers: list[str]) -> float:
    """Leave-one-out VQA accuracy of an already normalised prediction against normalised answers."""
    matches = sum(answer == prediction for answer in gt_answers)
    # Leaving out a matching answer leaves matches - 1 matches among the others; leaving out another leaves matches.
    # The terms are the official ones (k / 3 capped at 1), summed in the same order, so the float is the same too.
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

    The official script leaves out each answer by comparing answer dicts, which VQAv2 keeps distinct with an
    ``answer_id``; here every list entry is one human answer, repeated strings included.

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


def _percent(values: Iterable[float]) -> float:
    """Mean of accuracies in [0, 1] as a percentage rounded to 2 decimals, computed as the official script does."""
    values = list(values)
    return round(100 * sum(values) / len(values), 2)


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
        predictions: question_id -> predicted answer. Only these questions are scored, in the order of
            ``annotations`` (the order the official script sums them in).
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
    for qid in predictions:
        if qid not in index:
            raise ValueError(
                f"Prediction for question_id {qid} has no annotation; score predictions against the annotation file "
                "of the split they were made on."
            )
    accuracies: list[float] = []
    by_question_type: dict[str, list[float]] = defaultdict(list)
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    # In annotation order, as the official script sums them: the same floats added in the same order.
    for ann in index.values():
        if ann["question_id"] not in predictions:
            continue
        acc = vqa_accuracy(predictions[ann["question_id"]], [a["answer"] for a in ann["answers"]])
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

    Train answers are counted after normalisation; a question type never seen in train falls back to the most common
    train answer overall. Ties go to the answer seen first in ``train_annotations``. Each answer is scored with
    `vqa_accuracy`, as the official evaluation would score it.

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
        acc = vqa_accuracy(majority.get(qtype, fallback), [a["answer"] for a in ann["answers"]])
        by_type[qtype].append(acc)
        accuracies.append(acc)
    result = {qtype: _percent(v) for qtype, v in sorted(by_type.items())}
    result["overall"] = _percent(accuracies)
    return result
