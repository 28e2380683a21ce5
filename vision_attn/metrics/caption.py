"""COCO caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D from the COCO caption toolkit.

The scorers are pycocoevalcap 1.2's (salaniz/pycocoevalcap, the Python 3 port of tylin/coco-caption), called as its
``COCOEvalCap.evaluate`` calls them: each on ``{image_id: [tokenized captions]}`` dicts, one prediction per image,
CIDEr's document frequencies taken from the scored images' references. Only the tokenization is ours: the toolkit's
``PTBTokenizer`` shells out to Stanford CoreNLP (Java), and `tokenize_caption` gives the same tokens in pure Python.
Where Java exists, tests check it against the Java tokenizer and the scores against the toolkit's own steps.

SPICE is not computed. The toolkit's SPICE scorer downloads the Stanford CoreNLP 3.6.0 distribution with its models
(hundreds of megabytes) from nlp.stanford.edu the first time it is constructed, then runs ``spice-1.0.jar`` with an
8 GB Java heap on a Java 8 runtime (the jar fails on recent Javas). Evaluation here runs without network access, so
there is nothing to download the models with; ``COCOEvalCap.evaluate`` builds that scorer unconditionally, which is
also why `caption_scores` calls the other scorers one by one instead of going through it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

logger = logging.getLogger(__name__)

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

    res/gts hold PTB-tokenized captions. "|||" separates the fields of the jar's input lines: the toolkit deletes it
    from each prediction (then turns double spaces into single ones); it is deleted from the references too, where
    the toolkit would pass it on and misalign the jar's fields.
    """
    from pycocoevalcap.meteor.meteor import Meteor

    def clean(caps: list[str]) -> list[str]:
        return [c.replace("|||", "").replace("  ", " ") for c in caps]

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
