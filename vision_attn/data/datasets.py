"""Map-style datasets over records: images alone (evaluation), and images with teacher-forcing texts (training).

Sampling is image-centric: an item is one image with its texts, so each image is decoded and encoded once per
step however many texts ask about it. An unreadable image gives None, which the collate functions count and drop.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Literal

from torch.utils.data import Dataset

from vision_attn.data.errors import ImageLoadError
from vision_attn.data.records import ImageRecord
from vision_attn.data.tokenizer import TextCodec
from vision_attn.data.transforms import ImageLoader
from vision_attn.tasks import caption_prompt, vqa_prompt

log = logging.getLogger(__name__)

__all__ = ["TASKS", "ImageDataset", "ImageTextDataset"]

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

    Args:
        records: the images with their captions and questions.
        codec: builds the prompt and target ids.
        image_size: side the images are resized to.
        max_text_len: prompt + target tokens; longer texts are cut.
        questions_per_image: training: one random caption and this many random annotated questions per image.
            None (validation loss): the first caption and every annotated question.
        tasks: which texts to give.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        codec: TextCodec,
        image_size: int,
        max_text_len: int,
        questions_per_image: int | None,
        tasks: Literal["both", "caption", "vqa"],
    ) -> None:
        self.images = ImageDataset(records, image_size)
        self.codec = codec
        self.max_text_len = max_text_len
        self.questions_per_image = questions_per_image
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        item = self.images[i]
        if item is None:
            return None
        return {**item, "texts": self._texts(item["record"])}

    def _texts(self, record: ImageRecord) -> list[Text]:
        captions = record.captions if self.tasks != "vqa" else []
        questions = [q for q in record.questions if q.answer is not None] if self.tasks != "caption" else []
        if self.questions_per_image is not None:  # training: one random caption, a random subset of questions
            captions = [random.choice(captions)] if captions else []
            questions = random.sample(questions, min(len(questions), self.questions_per_image))
        elif captions:
            captions = captions[:1]  # the loss on one caption; all captions stay as references in the record
        codec, n = self.codec, self.max_text_len
        texts = [(*codec.example(caption_prompt(codec), c, n), TASKS["caption"]) for c in captions]
        texts += [(*codec.example(vqa_prompt(codec, q.question), q.answer, n), TASKS["vqa"]) for q in questions]
        return texts
