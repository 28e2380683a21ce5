"""Language about a scene: the demo's differently worded captions that name every object, its question kinds
(`QUESTION_KINDS`), and `make_questions`, which asks any set of kinds in turn where their preconditions hold and
gives each question ten annotator answers. Other variants' kinds and captions are in `questions.py` and
`captions.py`."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vision_attn.data.synthetic.scene import DEMO_COLORS, SHAPES, Obj

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS_PER_IMAGE = 5
QUESTIONS_PER_IMAGE = 8


@dataclass(frozen=True)
class Question:
    """A VQA question with its ten annotator answers."""

    kind: str
    question: str
    answers: tuple[str, ...]

    @property
    def answer(self) -> str:
        """The most common annotator answer (VQAv2's `multiple_choice_answer`)."""
        return Counter(self.answers).most_common(1)[0][0]

    @property
    def answer_type(self) -> str:
        """VQAv2's answer type, which follows the answer: "yes/no", "number" (digits) or "other"."""
        answer = self.answer
        return "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"


@dataclass(frozen=True)
class Context:
    """What a question may name besides the scene's objects: the image side, and the colours and shapes a scene
    could have held (questions about absent ones draw from them). The defaults are the demo's."""

    image_size: int
    colors: tuple[str, ...] = DEMO_COLORS
    shapes: tuple[str, ...] = SHAPES


# An asker lists every (question, answer) of its kind that is unambiguous for the scene; may be empty.
Asker = Callable[[list[Obj], random.Random, Context], list[tuple[str, str]]]


def _where(position: str) -> str:
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def with_article(word: str) -> str:
    """The indefinite article with its word: "a red", "an orange"."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def join_phrases(phrases: list[str]) -> str:
    """The phrases as a list in words: "x", "x and y", "x, y and z"."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _listing(objs: list[Obj], with_position: bool = True) -> str:
    return join_phrases(
        [f"a {o.size} {o.color} {o.shape}" + (f" {_where(o.position)}" if with_position else "") for o in objs]
    )


def make_captions(objs: list[Obj], rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`n` differently worded captions, each naming every object's size, colour and shape."""
    shuffled = rng.sample(objs, len(objs))
    by_x = sorted(objs, key=lambda o: (o.cx, o.cy))
    by_y = sorted(objs, key=lambda o: (o.cy, o.cx))
    by_size = sorted(objs, key=lambda o: (o.size != "large", o.cy, o.cx))
    templates = [
        f"{_listing(shuffled)}.",
        f"there are {NUMBER_WORDS[len(objs)]} objects: {_listing(shuffled)}.",
        f"from left to right: {_listing(by_x, with_position=False)}.",
        f"from top to bottom: {_listing(by_y, with_position=False)}.",
        f"the image shows {_listing(by_y)}.",
        f"we can see {_listing(by_size)}.",
        f"a picture of {_listing(by_x)}.",
    ]
    if not 1 <= n <= len(templates):
        raise ValueError(f"n={n} captions asked for; choose 1..{len(templates)}")
    return rng.sample(templates, n)


def is_unique(objs: list[Obj], **words: str) -> bool:
    """Whether exactly one object has these attribute values (`color="red", shape="circle"`): a safe reference."""
    return sum(all(getattr(o, k) == v for k, v in words.items()) for o in objs) == 1


def _ask_color(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    out = []
    for o in objs:
        if is_unique(objs, shape=o.shape) and rng.random() < 0.7:
            out.append((f"what color is the {o.shape}?", o.color))
        elif is_unique(objs, shape=o.shape, size=o.size):
            out.append((f"what color is the {o.size} {o.shape}?", o.color))
    return out


def _ask_shape(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return [(f"what shape is the {o.color} object?", o.shape) for o in objs if is_unique(objs, color=o.color)]


def _ask_size(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return [(f"what size is the {o.color} {o.shape}?", o.size) for o in objs]


def _ask_position(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    return [(f"where is the {o.color} {o.shape}?", o.position) for o in objs]


def _ask_exist(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    if rng.random() < 0.5:
        return [(f"is there {with_article(o.color)} {o.shape}?", "yes") for o in objs]
    present = [(o.color, o.shape) for o in objs]
    absent = [(c, s) for c in ctx.colors for s in ctx.shapes if (c, s) not in present]
    # colour and shape both in the scene but not together: only binding them tells the answer
    binding = [(c, s) for c, s in absent if any(o.color == c for o in objs) and any(o.shape == s for o in objs)]
    pool = binding if binding and rng.random() < 0.5 else absent
    return [(f"is there {with_article(c)} {s}?", "no") for c, s in pool]


def _ask_count(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    r = rng.random()
    if r < 0.2:
        return [("how many objects are there?", str(len(objs)))]
    if r < 0.6:  # mostly colours in the scene, so answers are not mostly zero
        color = rng.choice([o.color for o in objs] if rng.random() < 0.7 else list(ctx.colors))
        return [(f"how many {color} objects are there?", str(sum(o.color == color for o in objs)))]
    shape = rng.choice([o.shape for o in objs] if rng.random() < 0.7 else list(ctx.shapes))
    return [(f"how many {shape}s are there?", str(sum(o.shape == shape for o in objs)))]


def _ask_relation_left(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    min_dx = max(2, round(ctx.image_size * 4 / 128))
    return [
        (f"is the {a.color} {a.shape} left of the {b.color} {b.shape}?", "yes" if a.cx < b.cx else "no")
        for a in objs
        for b in objs
        if a is not b and abs(a.cx - b.cx) > min_dx
    ]


def _ask_relation_closest(objs: list[Obj], rng: random.Random, ctx: Context) -> list[tuple[str, str]]:
    if len(objs) < 3:
        return []
    out = []
    for a in objs:
        others = sorted((math.hypot(b.cx - a.cx, b.cy - a.cy), i) for i, b in enumerate(objs) if b is not a)
        if others[0][0] < 0.85 * others[1][0]:  # the nearest is clearly nearer than the runner-up
            out.append((f"what color is the object closest to the {a.color} {a.shape}?", objs[others[0][1]].color))
    return out


DEMO_ASKERS: dict[str, Asker] = {
    "color": _ask_color,
    "shape": _ask_shape,
    "size": _ask_size,
    "exist": _ask_exist,
    "count": _ask_count,
    "position": _ask_position,
    "relation_left": _ask_relation_left,
    "relation_closest": _ask_relation_closest,
}
QUESTION_KINDS: tuple[str, ...] = tuple(DEMO_ASKERS)  # the demo's kinds, in the order they are asked


def _annotate(answer: str, rng: random.Random) -> tuple[str, ...]:
    """Ten annotator answers; for a number, 1 or 2 annotators sometimes spell it out."""
    answers = [answer] * 10
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS) and rng.random() < 0.3:
        for i in rng.sample(range(10), rng.choice((1, 2))):
            answers[i] = NUMBER_WORDS[int(answer)]
    return tuple(answers)


def make_questions(
    objs: list[Obj],
    rng: random.Random,
    ctx: Context,
    n: int = QUESTIONS_PER_IMAGE,
    askers: Mapping[str, Asker] = DEMO_ASKERS,
) -> list[Question]:
    """`n` distinct questions: each kind of `askers` in turn, a random kind where a kind has nothing left to ask.

    Raises:
        RuntimeError: the scene does not allow `n` distinct questions of these kinds.
    """
    kinds = tuple(askers)
    plan = [kinds[i % len(kinds)] for i in range(n)]
    out: list[Question] = []
    asked: set[str] = set()  # membership only: never iterated, so hash order cannot leak into the output
    for _ in range(1000):
        if len(out) == n:
            return out
        kind = plan.pop(0) if plan else rng.choice(kinds)
        candidates = [qa for qa in askers[kind](objs, rng, ctx) if qa[0] not in asked]
        if candidates:
            question, answer = rng.choice(candidates)
            asked.add(question)
            out.append(Question(kind, question, _annotate(answer, rng)))
    raise RuntimeError(f"could not ask {n} distinct questions about {objs}")
