"""Captions and questions about sampled scenes: distinct wordings, every question kind, balanced answers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from vision_attn.data.synthetic.language import QUESTION_KINDS, Context, make_captions, make_questions
from vision_attn.data.synthetic.scene import sample_scene


def test_caption_and_question_statistics() -> None:
    kinds: Counter[str] = Counter()
    exist: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for i in range(200):
        rng = random.Random(i)
        objs = sample_scene(rng, 128)  # the scene assertions are in test_scene.py
        captions = make_captions(objs, rng)
        assert len(set(captions)) == 5 and all(len(c.split()) <= 45 for c in captions)
        questions = make_questions(objs, rng, Context(128))
        assert len({q.question for q in questions}) == 8
        for q in questions:
            kinds[q.kind] += 1
            if q.kind == "exist":
                exist[q.answer] += 1
            if q.kind == "count":
                counts[q.answer] += 1
                assert all(
                    a in (q.answer, ["zero", "one", "two", "three", "four", "five"][int(q.answer)]) for a in q.answers
                )
    assert set(kinds) == set(QUESTION_KINDS)
    assert min(kinds.values()) > 0.5 * max(kinds.values()), kinds
    assert 0.35 < exist["yes"] / exist.total() < 0.65, exist
    assert counts["0"] > 0, "count questions never have the answer zero"


@pytest.mark.parametrize("n", [0, 8])
def test_caption_count_is_checked(n: int) -> None:
    objs = sample_scene(random.Random(0), 64)
    assert len(make_captions(objs, random.Random(1), n=7)) == 7
    with pytest.raises(ValueError, match=f"n={n} captions asked for; choose 1..7"):
        make_captions(objs, random.Random(1), n=n)
