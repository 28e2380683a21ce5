"""Checkpoint -> self-contained model folder: config.json, model.safetensors, tokenizer.json."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer

from vision_attn.data.tokenizer import save_tokenizer, wrap
from vision_attn.finetune import LoraSettings, add_lora, merge_lora
from vision_attn.models import VisionAttnModel
from vision_attn.models.vision_attn import standalone_config

log = logging.getLogger(__name__)


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> VisionAttnModel:
    """Write the model folder that `Pipeline.from_pretrained` loads (no Lightning, no pickle needed there).

    LoRA adapters of a checkpoint trained with `model.lora` are merged into the linear layers they adapt: the folder
    holds the same weights as a model without LoRA, and loading it needs no peft.
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    # A Lightning checkpoint holds pickled hyper-parameters, so it needs weights_only=False: only export
    # checkpoints you trust. The exported folder itself is pickle-free.
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    extra = ckpt.get("vision_attn")
    if extra is None:
        raise ValueError(f"{ckpt_path} was not written by vision-attn's train.py (no 'vision_attn' entry)")
    model = VisionAttnModel(standalone_config(extra["model_config"]))  # the weights are in the checkpoint
    lora = extra.get("lora")  # absent in checkpoints older than LoRA
    if lora is not None:
        add_lora(model, LoraSettings(**lora))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    if lora is not None:
        merge_lora(model)
    out = Path(out_dir)
    model.save_pretrained(out)
    save_tokenizer(wrap(Tokenizer.from_str(extra["tokenizer_json"])), out / "tokenizer.json")
    log.info("exported %s (step %s) to %s", ckpt_path, ckpt.get("global_step"), out)
    return model
