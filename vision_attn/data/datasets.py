"""Map-style datasets over records: images alone (evaluation), and images with teacher-forcing texts (training).

Sampling is image-centric: an item is one image with its texts (all of them, or a chunk of its questions), so
each image is decoded and encoded once per item however many texts ask about it. An unreadable image gives None,
which the collate functions count and drop.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Literal

from torch.utils.data import Dataset

from vision_attn.data.errors import ImageLoadError
from vision_attn.data.records import ImageRecord, QAItem
from vision_attn.data.tokenizer import TextCodec
from vision_attn.data.transforms import ImageLoader
from vision_attn.tasks import caption_prompt, vqa_prompt

log = logging.getLogger(__name__)

__all__ = ["TASKS", "ImageDataset", "ImageTextDataset", "answered", "chunk_items"]

TASKS = {"caption": 0, "vqa": 1}  # the task id each text carries; the names are the batch keys of their texts

Text = tuple[list[int], list[int], int]  # input ids, labels, task id


class ImageDataset(Dataset):
    """Items: ``{"image": uint8 [3, S, S], "record": ImageRecord}``, or None for an unreadable image (logged).

    Args:
        records: the images to read, with their captions and questions.
        image_size: side S the images are resized to.
    """

    def __init__(self, records: list[ImageRecord], image_size: int) -> None:
        self.records = records
        self.load = ImageLoader(image_size)  # decoded as the Pipeline decodes it

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        record = self.records[i]
        try:
            image = self.load(record.path)
        except ImageLoadError as e:
            log.warning("skipping unreadable image: %s", e)
            return None
        return {"image": image, "record": record}


class ImageTextDataset(Dataset):
    """Items: an `ImageDataset` item plus ``"texts"``, its (input_ids, labels, task id) triples; or None.

    Training (`train=True`) uses every annotated question of every image once per epoch: an image's questions are
    split into consecutive chunks of at most `max_questions_per_item` (sizes differing by at most one), and each
    chunk is one item, with one caption drawn at random; an image without questions is one caption item, and an
    image with no text for `tasks` is left out. The image is decoded and encoded once per item, for all its texts.
    Validation (`train=False`): one item per image, with its first caption and every annotated question.

    Args:
        records: the images with their captions and questions.
        codec: builds the prompt and target ids.
        image_size: side the images are resized to.
        max_text_len: prompt + target tokens; longer texts are cut.
        tasks: which texts to give.
        train: training items (chunks, a random caption) or validation items (see above).
        max_questions_per_item: the cap on one training item's questions; None: all of an image's in one item.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        codec: TextCodec,
        image_size: int,
        max_text_len: int,
        tasks: Literal["both", "caption", "vqa"],
        train: bool,
        max_questions_per_item: int | None = None,
    ) -> None:
        if max_questions_per_item is not None and max_questions_per_item < 1:
            raise ValueError(f"max_questions_per_item={max_questions_per_item}: choose >= 1, or None for no cap")
        self.images = ImageDataset(records, image_size)
        self.codec = codec
        self.max_text_len = max_text_len
        self.tasks = tasks
        self.train = train
        # (record index, first question, end): the answered questions [first:end] of that record
        self.items = (
            chunk_items(records, tasks, max_questions_per_item)
            if train
            else [(i, 0, len(answered(r))) for i, r in enumerate(records)]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        index, first, end = self.items[i]
        item = self.images[index]
        if item is None:
            return None
        return {**item, "texts": self._texts(item["record"], first, end)}

    def _texts(self, record: ImageRecord, first: int, end: int) -> list[Text]:
        captions = record.captions if self.tasks != "vqa" else []
        questions = answered(record)[first:end] if self.tasks != "caption" else []
        if captions:  # training: one at random; validation: the loss on the first (all stay references)
            captions = [random.choice(captions) if self.train else captions[0]]
        codec, n = self.codec, self.max_text_len
        texts = [(*codec.example(caption_prompt(codec), c, n), TASKS["caption"]) for c in captions]
        texts += [(*codec.example(vqa_prompt(codec, q.question), q.answer, n), TASKS["vqa"]) for q in questions]
        return texts


def answered(record: ImageRecord) -> list[QAItem]:
    """The record's questions that have an answer to learn from, in file order."""
    return [q for q in record.questions if q.answer is not None]


def chunk_items(
    records: list[ImageRecord], tasks: Literal["both", "caption", "vqa"], cap: int | None
) -> list[tuple[int, int, int]]:
    """Training items (record index, first question, end): every answered question once, at most `cap` per item."""
    items = []
    for i, r in enumerate(records):
        n = len(answered(r)) if tasks != "caption" else 0
        if n == 0:
            if r.captions and tasks != "vqa":
                items.append((i, 0, 0))
            continue
        k = -(-n // cap) if cap else 1  # chunks, sizes n // k or n // k + 1
        items += [(i, c * n // k, (c + 1) * n // k) for c in range(k)]
    return items
