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

# The official contraction table as it acts on lower-cased words: each written form with the spellings that are
# rewritten to it. Only these spellings change; everything else stays as it is, so ordinary words that happen to be
# contractions without the apostrophe ("its", "well", "ill", "lets", "shes") and forms the table does not list
# ("couldntve", "somethings") are never touched. The official table also has the keys "Im", "Ive", "Id've" and
# "I'dve": capitalised, they never match a lower-cased word, so "im" stays "im" and is left out here. Its entries
# "let's" and "she's" map to themselves and are left out too.
_CONTRACTION_SPELLINGS: dict[str, tuple[str, ...]] = {
    "'ow's'at": ("ow's'at", "'ows'at", "'ow'sat"),
    "'twas": ("twas",),
    "ain't": ("aint",),
    "aren't": ("arent",),
    "can't": ("cant",),
    "could've": ("couldve",),
    "couldn't": ("couldnt",),
    "couldn't've": ("couldn'tve", "couldnt've"),
    "didn't": ("didnt",),
    "doesn't": ("doesnt",),
    "don't": ("dont",),
    "hadn't": ("hadnt",),
    "hadn't've": ("hadnt've", "hadn'tve"),
    "hasn't": ("hasnt",),
    "haven't": ("havent",),
    "he'd": ("hed",),
    "he'd've": ("hed've", "he'dve"),
    "he's": ("hes",),
    "how'd": ("howd",),
    "how'll": ("howll",),
    "how's": ("hows",),
    "isn't": ("isnt",),
    "it'd": ("itd",),
    "it'd've": ("itd've", "it'dve"),
    "it'll": ("itll",),
    "ma'am": ("maam",),
    "might've": ("mightve",),
    "mightn't": ("mightnt",),
    "mightn't've": ("mightnt've", "mightn'tve"),
    "must've": ("mustve",),
    "mustn't": ("mustnt",),
    "needn't": ("neednt",),
    "not've": ("notve",),
    "o'clock": ("oclock",),
    "oughtn't": ("oughtnt",),
    "shan't": ("shant",),
    "she'd've": ("shed've", "she'dve"),
    "should've": ("shouldve",),
    "shouldn't": ("shouldnt",),
    "shouldn't've": ("shouldnt've", "shouldn'tve"),
    "somebody'd've": ("somebodyd've", "somebody'dve"),
    "somebody'll": ("somebodyll",),
    "somebody's": ("somebodys",),
    "somebodyd": ("somebody'd",),  # sic: this official entry takes the apostrophe out
    "someone'd": ("someoned",),
    "someone'd've": ("someoned've", "someone'dve"),
    "someone'll": ("someonell",),
    "someone's": ("someones",),
    "something'd": ("somethingd",),
    "something'd've": ("somethingd've", "something'dve"),
    "something'll": ("somethingll",),
    "that's": ("thats",),
    "there'd": ("thered",),
    "there'd've": ("thered've", "there'dve"),
    "there're": ("therere",),
    "there's": ("theres",),
    "they'd": ("theyd",),
    "they'd've": ("theyd've", "they'dve"),
    "they'll": ("theyll",),
    "they're": ("theyre",),
    "they've": ("theyve",),
    "wasn't": ("wasnt",),
    "we'd've": ("wed've", "we'dve"),
    "we've": ("weve",),
    "weren't": ("werent",),
    "what'll": ("whatll",),
    "what're": ("whatre",),
    "what's": ("whats",),
    "what've": ("whatve",),
    "when's": ("whens",),
    "where'd": ("whered",),
    "where's": ("wheres",),
    "where've": ("whereve",),
    "who'd": ("whod",),
    "who'd've": ("whod've", "who'dve"),
    "who'll": ("wholl",),
    "who's": ("whos",),
    "who've": ("whove",),
    "why'll": ("whyll",),
    "why're": ("whyre",),
    "why's": ("whys",),
    "won't": ("wont",),
    "would've": ("wouldve",),
    "wouldn't": ("wouldnt",),
    "wouldn't've": ("wouldnt've", "wouldn'tve"),
    "y'all": ("yall",),
    "y'all'd've": ("yall'd've", "y'alld've", "y'all'dve"),
    "y'all'll": ("yall'll", "y'allll"),
    "you'd": ("youd",),
    "you'd've": ("youd've", "you'dve"),
    "you'll": ("youll",),
    "you're": ("youre",),
    "you've": ("youve",),
}
_CONTRACTIONS = {spelling: form for form, spellings in _CONTRACTION_SPELLINGS.items() for spelling in spellings}


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
