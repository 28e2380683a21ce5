"""Evaluation metrics: the official VQAv2 accuracy and the COCO caption scores (BLEU, ROUGE-L, CIDEr).

The VQA part follows the official VQA evaluation (answer normalisation, then a leave-one-out "min(#humans / 3, 1)"
over the ground-truth answers), written from its definition. The caption part calls the scorers of the COCO caption
toolkit (`pycocoevalcap`) on captions tokenized by a pure-Python stand-in for its Java PTB tokenizer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

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


# ---------------------------------------------------------------------------------------------------------------------
# Caption metrics
# ---------------------------------------------------------------------------------------------------------------------

# pycocoevalcap's PTBTokenizer shells out to Stanford CoreNLP and so needs Java. For plain English captions it only
# lower-cases, splits punctuation and clitics ("don't" -> "do n't", "dog's" -> "dog 's") off words, and then drops the
# punctuation tokens below; this regex tokenizer gives the same tokens without the Java dependency (a test checks it
# against the Java tokenizer where Java exists). Quotes appear here as the ASCII characters the Java tokenizer rewrites
# to `` and ''. Brackets are kept, spelled as the toolkit spells them: it lower-cases before filtering, so its
# "-LRB-"-style entries never match and "-lrb-", "-rrb-", ... stay in the toolkit's token stream.
_CAPTION_PUNCTUATION = frozenset({"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CAPTION_TOKEN = re.compile(
    r"\d+(?:[.,:]\d+)+"  # numbers and times: 2.5, 1,000, 3:30
    r"|[a-z](?:\.[a-z])+\."  # dotted abbreviations: u.s.
    r"|\w+(?:[-'/]\w+)*"  # words, keeping inner hyphens, slashes and apostrophes: black-and-white, and/or, don't
    r"|\.\.\.|--|``|''"  # multi-character punctuation
    r"|\S"  # any other single character
)
_CLITIC = re.compile(r"^(\w+?)(n't|'s|'re|'ve|'ll|'d|'m)$")


def tokenize_caption(text: str) -> str:
    """Tokenize a caption like the COCO toolkit's PTB step, in pure Python.

    Args:
        text: a raw caption, e.g. ``"A dog's ball, on the grass."``.

    Returns:
        Lower-cased, space-joined tokens without punctuation, e.g. ``"a dog 's ball on the grass"``.
    """
    tokens: list[str] = []
    for token in _CAPTION_TOKEN.findall(text.lower()):
        clitic = _CLITIC.match(token)
        tokens.extend(clitic.groups() if clitic else (_BRACKETS.get(token, token),))
    return " ".join(t for t in tokens if t not in _CAPTION_PUNCTUATION)


def java_available() -> bool:
    """METEOR runs the toolkit's Java jar: it is computed only where a Java runtime is on PATH."""
    return shutil.which("java") is not None


def meteor_score(res: dict[int, list[str]], gts: dict[int, list[str]]) -> float:
    """METEOR 1.5 through the COCO toolkit's jar (a Java subprocess that lives for this call).

    res/gts hold PTB-tokenized captions; "|" is the jar's field separator on its stdin, so it is dropped.
    """
    from pycocoevalcap.meteor.meteor import Meteor

    def clean(caps: list[str]) -> list[str]:
        return [c.replace("|", " ") for c in caps]

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score({k: clean(v) for k, v in gts.items()}, {k: clean(v) for k, v in res.items()})
    finally:
        del scorer  # its __del__ stops the Java process
    return float(score)


def caption_scores(
    predictions: dict[int, str], references: dict[int, list[str]], meteor: bool = False
) -> dict[str, float]:
    """COCO caption metrics of predicted captions against reference captions.

    Args:
        predictions: image_id -> predicted caption. Only these images are scored (CIDEr's document frequencies come
            from their references, as in the COCO toolkit).
        references: image_id -> reference captions (5 in COCO).
        meteor: also compute METEOR (needs Java, see `java_available`; starting the jar takes a few seconds).

    Returns:
        ``bleu1``..``bleu4``, ``rouge_l``, ``cider`` (and ``meteor``) as the toolkit returns them (BLEU, METEOR and
        ROUGE-L in [0, 1]; CIDEr-D is scaled by 10 and usually lies in [0, 10]).

    Raises:
        ValueError: if ``predictions`` is empty or an image with a prediction has no references.
        RuntimeError: if ``meteor`` is asked for and no Java runtime is on PATH.
    """
    if meteor and not java_available():
        raise RuntimeError("METEOR needs a Java runtime (`java` on PATH); install one (e.g. openjdk) or skip METEOR.")
    if not predictions:
        raise ValueError("caption_scores got no predictions; pass a non-empty {image_id: caption} dict.")
    res: dict[int, list[str]] = {}
    gts: dict[int, list[str]] = {}
    for image_id, caption in predictions.items():
        refs = references.get(image_id)
        if not refs:
            raise ValueError(f"Image id {image_id} has a predicted caption but no reference captions.")
        res[image_id] = [tokenize_caption(caption)]
        gts[image_id] = [tokenize_caption(r) for r in refs]

    # Bleu prints its intermediate counts to stdout; keep the library quiet and log them at debug level instead.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        bleu, _ = Bleu(4).compute_score(gts, res)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    if captured.getvalue():
        logger.debug("pycocoevalcap output: %s", captured.getvalue().strip())

    scores = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["rouge_l"] = float(rouge)
    scores["cider"] = float(cider)
    if meteor:
        scores["meteor"] = meteor_score(res, gts)
    return scores
