"""The variants of the synthetic set (`VARIANTS`): data that differs from the demo's in kind, one frozen record each.

A variant says what its scenes hold (`SceneSpec`), which question kinds it asks and how many per image, and which
caption style it writes (or none), so that one training config, with only `data.root` changed, trains and scores
on each. `make-synthetic --variant NAME` writes one.

    demo       the built-in set: 2-5 shapes, six colours, two sizes, 128 px; five captions and eight questions
    shapes64   one shape (circle, rectangle, triangle) of varied size and place, eight colours, 64 px; VQA only
    relations  six shapes of six different colours (a colour names an object), 128 px; twenty questions about
               halves, shapes, nearest and farthest neighbours and shared shapes; captions with relations
    counting   1-8 shapes whose colours and shapes repeat, varied sizes, 96 px; counts, "above", "larger" and
               "largest" questions; captions that group and count
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vision_attn.data.synthetic.captions import CAPTION_STYLES
from vision_attn.data.synthetic.language import QUESTION_KINDS, Context, Question, make_questions
from vision_attn.data.synthetic.questions import ASKERS
from vision_attn.data.synthetic.scene import COLORS, DEMO_SCENE, Obj, SceneSpec

# ids are image_id * 10 + k for captions and objects, image_id * 100 + k for questions (as the demo writes them)
MAX_OBJECTS = 9
MAX_CAPTIONS = 9
MAX_QUESTIONS = 99


@dataclass(frozen=True)
class Variant:
    """One kind of synthetic data.

    Args:
        name: what `make-synthetic --variant` calls it.
        summary: one line for `--help`.
        image_size: side of its images in pixels (`make-synthetic --image-size` can change it).
        scene: what a scene holds: object count, shapes, colours, sizes, what must differ between objects.
        question_kinds: the kinds asked (names in `questions.ASKERS`), in turn; each is its `question_type`.
        questions_per_image: distinct questions per image.
        caption_style: a name in `captions.CAPTION_STYLES`, or None for a VQA-only set (no captions).
        captions_per_image: differently worded captions per image (with a caption style).
    """

    name: str
    summary: str
    image_size: int
    scene: SceneSpec
    question_kinds: tuple[str, ...]
    questions_per_image: int
    caption_style: str | None = "demo"
    captions_per_image: int = 5

    def __post_init__(self) -> None:
        where = f"variant {self.name!r}"
        if self.image_size < 32:
            raise ValueError(f"{where}: image_size={self.image_size}; choose >= 32 so small objects stay recognisable")
        if unknown := [k for k in self.question_kinds if k not in ASKERS]:
            raise ValueError(f"{where}: unknown question kinds {unknown}; choose from {sorted(ASKERS)}")
        if not self.question_kinds or not 1 <= self.questions_per_image <= MAX_QUESTIONS:
            raise ValueError(f"{where}: give question kinds and 1..{MAX_QUESTIONS} questions per image")
        if self.caption_style is not None and self.caption_style not in CAPTION_STYLES:
            raise ValueError(f"{where}: caption_style {self.caption_style!r}; choose from {sorted(CAPTION_STYLES)}")
        if self.caption_style is not None and not 1 <= self.captions_per_image <= MAX_CAPTIONS:
            raise ValueError(f"{where}: captions_per_image={self.captions_per_image}; choose 1..{MAX_CAPTIONS}")
        if self.scene.objects[1] > MAX_OBJECTS:
            raise ValueError(f"{where}: at most {MAX_OBJECTS} objects per scene (object ids are image_id * 10 + k)")

    def context(self, image_size: int | None = None) -> Context:
        """What its questions may name: the image side and the scene's colours and shapes."""
        return Context(image_size or self.image_size, self.scene.colors, self.scene.shapes)

    def captions(self, objs: list[Obj], rng: random.Random) -> list[str]:
        """Its captions of a scene; none for a VQA-only variant."""
        if self.caption_style is None:
            return []
        return CAPTION_STYLES[self.caption_style](objs, rng, self.captions_per_image)

    def questions(self, objs: list[Obj], rng: random.Random, image_size: int | None = None) -> list[Question]:
        """Its questions about a scene: its kinds in turn, `questions_per_image` distinct ones."""
        askers = {kind: ASKERS[kind] for kind in self.question_kinds}
        return make_questions(objs, rng, self.context(image_size), self.questions_per_image, askers)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "demo",
            "the built-in set: 2-5 shapes, six colours, two sizes; 5 captions and 8 questions per image",
            image_size=128,
            scene=DEMO_SCENE,
            question_kinds=QUESTION_KINDS,
            questions_per_image=8,
        ),
        Variant(
            "shapes64",
            "one circle, rectangle or triangle of varied size and place in one of eight colours; VQA only, no captions",
            image_size=64,
            scene=SceneSpec(
                objects=(1, 1),
                shapes=("circle", "rectangle", "triangle"),
                colors=tuple(COLORS),
                sizes={"small": (20, 40), "large": (48, 80)},
            ),
            question_kinds=("single_color", "single_shape", "has_shape", "has_color"),
            questions_per_image=4,
            caption_style=None,
        ),
        Variant(
            "relations",
            "six shapes, each of its own colour; 20 questions on halves, shapes, neighbours and shared shapes",
            image_size=128,
            scene=SceneSpec(
                objects=(6, 6), colors=tuple(COLORS), sizes={"small": (18, 18), "large": (24, 24)}, distinct="color"
            ),
            question_kinds=("left_half", "top_half", "shape_of", "closest_shape", "farthest_shape", "same_shape_count"),
            questions_per_image=20,
            caption_style="relations",
        ),
        Variant(
            "counting",
            "1-8 shapes whose colours and shapes repeat, varied sizes; counts, above, larger and largest questions",
            image_size=96,
            scene=SceneSpec(
                objects=(1, 8),
                shapes=("circle", "triangle", "diamond", "rectangle"),
                colors=("red", "green", "blue", "yellow", "purple"),  # few, so that counts of a colour spread
                sizes={"small": (14, 20), "large": (26, 34)},
                distinct="none",
            ),
            question_kinds=("count_all", "count_color", "count_shape", "above", "larger", "largest_color"),
            questions_per_image=6,
            caption_style="counting",
        ),
    )
}


def get_variant(name: str) -> Variant:
    """The variant called `name`; a ValueError naming the choices if there is none."""
    if name not in VARIANTS:
        raise ValueError(f"variant={name!r}: unknown; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]
