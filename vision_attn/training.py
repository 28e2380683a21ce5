"""The LightningModule: a thin training wrapper around the plain `VisionAttnModel`."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from vision_attn.config import DecoderConfig, EncoderConfig, ModelConfig
from vision_attn.data.datasets import TASKS
from vision_attn.data.tokenizer import TextCodec, wrap
from vision_attn.evaluation import Predictions, predict_batch, score
from vision_attn.finetune import (
    FreezablePart,
    LoraSettings,
    add_lora,
    check_checkpoint_lora,
    check_freeze,
    hold_frozen_in_eval,
    optimizer_groups,
    pretrained_parts,
    set_trainable,
)
from vision_attn.models import VisionAttnModel, text_loss
from vision_attn.tasks import GenerationConfig, Tasks

log = logging.getLogger(__name__)

# Checkpoints store these configs among the hyper-parameters; let `weights_only` loading (resume) accept them.
torch.serialization.add_safe_globals([EncoderConfig, DecoderConfig, LoraSettings])


class VisionAttnModule(L.LightningModule):
    """Trains captioning and VQA jointly; validation generates and scores both.

    Args:
        encoder: the ViT: a timm model by name (`encoder.name`, weights in `encoder.pretrained`) or sizes to build.
        decoder: the text decoder (width, depth, heads, max_len), or a pretrained language model's folder
            (`decoder.pretrained`, whose config sets the rest); vocab_size comes from the tokenizer or that model.
        lr: peak AdamW learning rate of the new parameters (the encoder's projection, the cross-attention
            sublayers and LoRA adapters) and of parts trained from scratch.
        weight_decay: AdamW decay on matrices (never on biases, norms, position embeddings or class token).
        betas: AdamW betas.
        warmup_steps: linear warmup from 0; then cosine decay to `lr * min_lr_ratio` at the end of training: the
            last step, or the end of `trainer.max_time` if that comes first (`lr_scale`).
        min_lr_ratio: final learning rate over the peak.
        caption_weight: weight of the caption loss (mean over caption tokens).
        vqa_weight: weight of the answer loss (mean over answer tokens).
        compile: torch.compile the training forward; None = on when training on a GPU.
        val_caption_tokens: longest caption generated in validation.
        val_answer_tokens: longest answer generated in validation.
        tokenizer: sets the vocabulary; None (as in configs) takes the DataModule's once it is set up, in
            `configure_model`.
        pretrained_lr: peak learning rate of the pretrained parts (the encoder when
            encoder.pretrained is set, the language model when decoder.pretrained is set); None = `lr`. Warmup and
            cosine decay scale every group alike.
        freeze: parts whose weights stay as they are: "encoder" (the ViT) and/or "language_model" (every decoder
            parameter outside the cross-attention sublayers). They get no gradient, stay out of the optimizer and
            run in eval mode while training (BatchNorm statistics and dropout stay put). The new parameters always
            train.
        lora: LoRA adapters on the language model's linear layers (`lora.r`, `lora.alpha`, `lora.dropout`,
            `lora.targets`); its base weights are then frozen and the adapters train. `vision-attn export` merges
            them into the plain weights, so a model folder needs no peft. None = no adapters.
    """

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(),  # noqa: B008 (dataclass defaults become --help)
        decoder: DecoderConfig = DecoderConfig(),  # noqa: B008
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.05,
        caption_weight: float = 1.0,
        vqa_weight: float = 1.0,
        compile: bool | None = None,
        val_caption_tokens: int = 48,
        val_answer_tokens: int = 8,
        tokenizer: PreTrainedTokenizerFast | None = None,
        pretrained_lr: float | None = None,
        freeze: list[FreezablePart] = [],  # noqa: B006 (never mutated; reads as [] in --help)
        lora: LoraSettings | None = None,
    ) -> None:
        super().__init__()
        if pretrained_lr is not None and pretrained_lr <= 0:
            raise ValueError(f"pretrained_lr={pretrained_lr} must be > 0 (or null: the pretrained parts use lr)")
        self.frozen_parts = check_freeze(freeze, lora)  # not self.freeze: LightningModule.freeze() is a method
        self.lora = lora
        self.save_hyperparameters(ignore=["tokenizer"])
        self._sizes = (encoder, decoder)  # the CLI turns hparams into dicts; the model is built from these
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.codec: TextCodec | None = None
        self.model_config: ModelConfig | None = None
        self.model: VisionAttnModel | None = None  # its vocabulary comes from the tokenizer: see configure_model
        self.tasks: Tasks | None = None  # validation and predict decode through the task layer
        self._compiled = False
        self._preds = Predictions()
        self._skipped: dict[str, int] = {}  # unreadable images per stage, reported at the end of its epoch
        if tokenizer is not None:
            self._build(tokenizer)

    def _build(self, tokenizer: PreTrainedTokenizerFast) -> None:
        """Make the model for `tokenizer`'s vocabulary and special token ids."""
        self.tokenizer = tokenizer
        self.codec = TextCodec(tokenizer)
        encoder, decoder = self._sizes
        decoder = dataclasses.replace(decoder, vocab_size=self.codec.vocab_size)  # a pretrained LM's: its own
        self.model = VisionAttnModel(ModelConfig(encoder, decoder, self.codec.pad, self.codec.bos, self.codec.eos))
        self.model_config = self.model.config  # with a pretrained LM's family and sizes filled in
        if self.codec.vocab_size > self.model_config.decoder.vocab_size:
            raise ValueError(
                f"the tokenizer has {self.codec.vocab_size} tokens but the decoder embeds "
                f"{self.model_config.decoder.vocab_size}: are data.language_model and decoder.pretrained one model?"
            )
        # Before Lightning restores a checkpoint (this runs in __init__ or configure_model): its weights include
        # the adapters, and its optimizer state holds the trainable parameters only.
        if self.lora is not None:
            add_lora(self.model, self.lora)
        set_trainable(self.model, self.frozen_parts)
        pretrained = pretrained_parts(self.model_config)
        if set(self.frozen_parts) - pretrained:
            log.warning("freezing %s, which is not pretrained: it keeps its random initialisation", self.frozen_parts)
        if self.hparams.pretrained_lr is not None and not pretrained:
            log.warning("pretrained_lr is set, but no part is pretrained (encoder.pretrained, decoder.pretrained)")
        self.tasks = Tasks(self.model, self.codec)
        # not a submodule, so a compiled wrapper stays out of state_dict
        self.__dict__["_forward_groups"] = self.model.forward_groups

    def configure_model(self) -> None:
        # Lightning calls this after the DataModule's setup (which loads the tokenizer) and before it restores a
        # checkpoint, configures the optimizers or moves the module to its device.
        data_tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        if self.model is None:
            if data_tokenizer is None:
                raise ValueError(
                    "VisionAttnModule has no tokenizer to size its vocabulary: pass tokenizer=..., or fit with a "
                    "DataModule that has a `tokenizer` after setup (VisionAttnDataModule)"
                )
            self._build(data_tokenizer)
        elif data_tokenizer is not None and data_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(
                "the tokenizer given to VisionAttnModule differs from the DataModule's: give the module none (it "
                "takes the DataModule's), or the same one (data.tokenizer_file)"
            )
        # The strategy knows where the module will run; self.device is still the CPU here.
        device = self.trainer.strategy.root_device
        use = self.hparams.compile if self.hparams.compile is not None else device.type == "cuda"
        if use and not self._compiled:  # forward_groups, not forward, is what training calls
            self.__dict__["_forward_groups"] = torch.compile(self.model.forward_groups)
            self._compiled = True

    # ---- training ----

    def train(self, mode: bool = True) -> VisionAttnModule:
        """As `nn.Module.train`, but frozen parts stay in eval mode (their BatchNorm statistics must not move)."""
        super().train(mode)
        if mode and self.model is not None:
            hold_frozen_in_eval(self.model)
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning does not call train() when fit starts: it keeps the mode the module is in
        hold_frozen_in_eval(self.model)

    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per task: mean cross-entropy over its target tokens; `loss` is their weighted sum."""
        names = [name for name in TASKS if name in batch]
        groups = [(name, g) for name in names for g in batch[name]]  # each task: a list of length buckets
        logits = self._forward_groups(batch["images"], [(g["input_ids"], g["image_index"]) for _, g in groups])
        weights = {"caption": self.hparams.caption_weight, "vqa": self.hparams.vqa_weight}
        pairs = list(zip(groups, logits, strict=True))
        out = {
            f"{name}_loss": text_loss(
                [lg for (n, _), lg in pairs if n == name], [g["labels"] for n, g in groups if n == name]
            )
            for name in names
        }
        out["loss"] = sum(weights[name] * out[f"{name}_loss"] for name in names)
        return out

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor | None:
        self._skipped[stage] = self._skipped.get(stage, 0) + batch["skipped"]
        if "images" not in batch:  # every image of the batch was unreadable
            return None
        losses = self._losses(batch)
        n = batch["images"].shape[0]
        # Lightning reads every progress-bar value back to the host (.item()) after every batch: on a GPU that
        # is a sync per training step, which stalls the queue, so there the training loss goes only to the
        # logger (read every log_every_n_steps).
        pbar_loss = stage != "train" or self.device.type != "cuda"
        for k, v in losses.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "loss" and pbar_loss, batch_size=n, sync_dist=stage != "train")
        if stage != "train":
            self._generate_for_metrics(batch)
        return losses["loss"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        if "images" not in batch:
            return []
        caps = self.tasks.captions(batch["images"], GenerationConfig(max_new_tokens=self.hparams.val_caption_tokens))
        return [{"image_id": r.image_id, "caption": c} for r, c in zip(batch["records"], caps, strict=True)]

    # ---- validation metrics: generate, gather across ranks, score ----

    def _generate_for_metrics(self, batch: dict[str, Any]) -> None:
        hp = self.hparams
        caption, answer = GenerationConfig(hp.val_caption_tokens), GenerationConfig(hp.val_answer_tokens)
        self._preds.merge(predict_batch(self.tasks, batch["images"], batch["records"], caption, answer))

    def on_validation_epoch_start(self) -> None:
        self._preds = Predictions()

    on_test_epoch_start = on_validation_epoch_start

    def on_train_epoch_end(self) -> None:
        self._report_skipped("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _report_skipped(self, stage: str) -> None:
        skipped = self._skipped.pop(stage, 0)
        if skipped:
            what = {"train": "training", "val": "validation"}.get(stage, stage)
            log.warning("skipped %d unreadable images during %s (see the warnings above for which)", skipped, what)

    def _log_metrics(self, stage: str) -> None:
        self._report_skipped(stage)
        preds = self._preds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Predictions | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, preds)
            preds = Predictions()
            for g in gathered:
                preds.merge(g)
        metrics = score(preds)
        flat = {k: v for k, v in metrics.items() if k in ("vqa_accuracy", "bleu4", "cider")}
        flat.update({f"vqa_acc_{t}": v for t, v in metrics.get("per_question_type", {}).items()})
        for k, v in flat.items():
            # every rank holds the same gathered numbers, so no further reduction is needed
            self.log(f"{stage}/{k}", float(v), prog_bar=k in ("vqa_accuracy", "bleu4"))
        self._preds = Predictions()

    # ---- optimisation ----

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = optimizer_groups(
            self.model, hp.lr, hp.weight_decay, hp.pretrained_lr, pretrained_parts(self.model_config)
        )
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=self.device.type == "cuda")
        total = float(self.trainer.estimated_stepping_batches)  # inf with max_epochs -1 (a time budget alone)
        warmup = hp.warmup_steps if math.isinf(total) else min(hp.warmup_steps, int(total) // 2)
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)  # trainer.max_time
        if math.isinf(total) and timer is None:
            raise ValueError("trainer: set max_epochs, max_steps or max_time; the learning-rate schedule needs an end")

        def schedule(step: int) -> float:
            spent = None
            if timer is not None:
                elapsed, left = timer.time_elapsed("train"), timer.time_remaining("train")
                spent = elapsed / max(elapsed + left, 1e-9)
            return lr_scale(step, warmup, total, spent, hp.min_lr_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoints carry what export needs ----

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vision_attn"] = {
            "model_config": self.model_config.to_dict(),
            "tokenizer_json": self.tokenizer.backend_tokenizer.to_str(),
            "lora": None if self.lora is None else dataclasses.asdict(self.lora),  # export merges the adapters
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called after configure_model and before the weights are loaded: resuming must not pair the weights
        # with another vocabulary (the tokenizer is retrained from the training text unless data.tokenizer_file).
        saved = checkpoint.get("vision_attn", {}).get("tokenizer_json")
        if saved is not None and wrap(Tokenizer.from_str(saved)).get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(
                "the checkpoint was trained with another tokenizer than the data's (did the training text change?): "
                "set data.tokenizer_file to the tokenizer.json of the run that wrote the checkpoint"
            )
        check_checkpoint_lora(checkpoint.get("vision_attn", {}).get("lora"), self.lora)


def lr_scale(step: int, warmup: int, total: float, spent: float | None, min_lr_ratio: float) -> float:
    """The learning rate over its peak at optimizer step `step`: linear warm-up over `warmup` steps, then a cosine
    to `min_lr_ratio` at the end of training.

    The end is whichever comes first: step `total` (inf without a step or epoch limit), or the end of a time budget,
    `spent` being the fraction of `trainer.max_time` used so far (None without one). So a budget that stops
    training before its last epoch still anneals the rate, and a small dataset with a large budget trains for the
    whole budget instead of stopping after a few epochs with the rate already at its floor.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1.0, total - warmup) if not math.isinf(total) else 0.0
    if spent is not None:
        progress = max(progress, spent)
    progress = min(1.0, progress)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
