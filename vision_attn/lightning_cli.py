"""The training command line: LightningCLI over the VisionAttn LightningModule and DataModule."""

from __future__ import annotations

import dataclasses

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vision_attn.checkpointing import AtomicCheckpointIO, CheckpointError
from vision_attn.config import EncoderConfig
from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.data.errors import DataFormatError
from vision_attn.training import VisionAttnModule


class VisionAttnCLI(LightningCLI):
    """`python train.py {fit,validate,test,predict} --config configs/....yaml`.

    A run's outputs follow one setting, `trainer.default_root_dir`: the logger writes there (metrics.csv,
    hparams.yaml and config.yaml, with the configs' empty logger name and version), checkpoints go to its
    `checkpoints/` and the trained tokenizer to its `tokenizer.json`.
    """

    def add_arguments_to_parser(self, parser) -> None:
        # The encoder's defaults are its fields' (None = unset), not the resolved values of the module's default
        # EncoderConfig(): a from-scratch size left in the defaults would conflict with the sizes of encoder.name.
        unset = [f.name for f in dataclasses.fields(EncoderConfig) if f.default is None]
        parser.set_defaults({f"model.encoder.{name}": None for name in unset})
        # values the data and the model share are set once, on the model; the image size may follow encoder.name
        parser.link_arguments(
            ("model.encoder.name", "model.encoder.image_size"), "data.image_size", compute_fn=EncoderConfig.input_side
        )
        parser.link_arguments("model.decoder.max_len", "data.max_text_len")
        parser.link_arguments("model.decoder.pretrained", "data.language_model")  # a pretrained LM's tokenizer
        # The model's tokenizer is the DataModule's, so never a config option. When both are made it is still None
        # (the DataModule loads it in setup), and the model takes it from the trainer's DataModule in configure_model.
        parser.link_arguments("data.tokenizer", "model.tokenizer", apply_on="instantiate")
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: make its writes atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


USER_ERRORS = (DataFormatError, CheckpointError)  # what `train.py` reports in one line: bad data, a damaged checkpoint


def main(args: list[str] | None = None, run: bool = True) -> VisionAttnCLI:
    """Build (and run) the CLI; bad data and damaged checkpoints raise one of `USER_ERRORS`, naming the file."""
    return VisionAttnCLI(
        VisionAttnModule,
        VisionAttnDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
