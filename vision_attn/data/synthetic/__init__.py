"""A built-in synthetic dataset written in the exact on-disk layout of MS-COCO 2014 + VQAv2.

Each image shows 2-5 non-overlapping shapes (circle, square, triangle, diamond) in six saturated colours and two
sizes on a muted gradient background. Every image gets five captions naming every object and eight VQA questions
(one of each kind in `QUESTION_KINDS` where its precondition holds). Everything about an image is drawn from
`random.Random(f"{seed}-{split}-{index}")`, so the output is byte-identical for a seed whatever the worker count.

That is the demo set. `variants.py` holds sets that differ from it in kind (`VARIANTS`: shapes64, relations,
counting), each a frozen record of what its scenes hold, which question kinds it asks and how it captions;
`make_synthetic(..., variant=NAME)` writes one.

`scene.py` samples and draws the objects, `language.py` words the demo's captions and questions and asks any kinds
in turn, `questions.py` and `captions.py` hold the other variants' question kinds and caption styles, `writer.py`
writes the json files of a split, and `generate.py` (`make_synthetic`) runs them over a process pool.
"""

from vision_attn.data.synthetic.generate import make_synthetic

__all__ = ["make_synthetic"]
