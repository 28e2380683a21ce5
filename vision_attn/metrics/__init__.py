"""Evaluation metrics: the official VQAv2 accuracy (`vqa`) and the COCO caption scores (`caption`)."""

from vision_attn.metrics.caption import caption_scores, java_available, meteor_score, tokenize_caption
from vision_attn.metrics.vqa import majority_baseline, normalize_answer, vqa_accuracy, vqa_scores

__all__ = [
    "caption_scores",
    "java_available",
    "majority_baseline",
    "meteor_score",
    "normalize_answer",
    "tokenize_caption",
    "vqa_accuracy",
    "vqa_scores",
]
