"""The training command line: LightningCLI over the VisionAttn LightningModule and DataModule."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from vision_attn.data.datamodule import VisionAttnDataModule
from vision_attn.training import VisionAttnModule


class VisionAttnCLI(LightningCLI):
    """`python train.py {fit,validate,test,predict} --config configs/....yaml`."""

    def add_arguments_to_parser(self, parser) -> None:
        # values the data and the model share are set once, on the model
        parser.link_arguments("model.encoder.image_size", "data.image_size")
        parser.link_arguments("model.decoder.max_len", "data.max_text_len")
        # The model's tokenizer is the DataModule's, so never a config option. When both are made it is still None
        # (the DataModule loads it in setup), and the model takes it from the trainer's DataModule in configure_model.
        parser.link_arguments("data.tokenizer", "model.tokenizer", apply_on="instantiate")


def main(args: list[str] | None = None, run: bool = True) -> VisionAttnCLI:
    return VisionAttnCLI(
        VisionAttnModule,
        VisionAttnDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
