"""Fine-tuning rules, in one place: which parameters are pretrained, frozen or new, their optimizer groups, and LoRA.

A `VisionAttnModel` has three parts (module names are the same in every decoder family):
- "encoder": the ViT, `encoder.vit.*` (pretrained when `encoder.pretrained` is set);
- "language_model": every decoder parameter outside the cross-attention sublayers (pretrained when
  `decoder.pretrained` is set): embeddings, self-attention, MLPs, norms, the LM head;
- "new": what is always trained from its initialisation: the encoder's projection `encoder.proj`, each decoder
  block's cross-attention sublayer (`norm2`, `cross_attn`, `cross_gate`) and LoRA adapters.

LoRA goes through peft's public API (`LoraConfig`, `inject_adapter_in_model`, `LoraLayer.merge`), so that
`merge_lora` can fold the adapters back into plain `nn.Linear` weights: an exported model needs no peft.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from vision_attn.config import ModelConfig

log = logging.getLogger(__name__)

Part = Literal["encoder", "language_model", "new"]
FreezablePart = Literal["encoder", "language_model"]
PARTS: tuple[Part, ...] = get_args(Part)
FREEZABLE: tuple[FreezablePart, ...] = get_args(FreezablePart)
CROSS_ATTENTION = ("norm2", "cross_attn", "cross_gate")  # a decoder block's sublayers that are new in every family
LM_LINEARS = ("self_attn.qkv", "self_attn.proj", "mlp.fc1", "mlp.fc2")  # a decoder block's language-model linears


@dataclass
class LoraSettings:
    """LoRA adapters on the language model's linear layers: y = W x + (alpha / r) B A x, W frozen, A and B trained.

    Args:
        r: rank of each adapter (A: r x in, B: out x r).
        alpha: scale numerator: the adapter's output is multiplied by alpha / r.
        dropout: dropout on the adapters' input while training.
        targets: module-name suffixes inside a decoder block (`decoder.blocks.{i}.<suffix>`) that get adapters:
            linear layers of the language model, never of the cross-attention sublayer (which trains in full).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LM_LINEARS))

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r={self.r} must be a positive rank (8 or 16 are usual)")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha={self.alpha} must be > 0 (the adapters are scaled by alpha / r)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")
        if not self.targets:
            raise ValueError(f"lora.targets is empty: name the decoder-block linears to adapt, e.g. {list(LM_LINEARS)}")


# ---- parts ----


def lora_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the LoRA adapter parameters in `model` (those of a LoRA layer that its base layer does not own)."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, LoraLayer):
            base = {id(p) for p in module.get_base_layer().parameters()}
            ids |= {id(p) for p in module.parameters() if id(p) not in base}
    return ids


def part_of(name: str) -> Part:
    """The part of a `VisionAttnModel` parameter (or buffer) by its name; LoRA adapters, which are "new" whatever
    layer they adapt, are told apart by `named_parts`."""
    if name.startswith("encoder.vit."):
        return "encoder"
    if name.startswith("decoder."):
        parts = name.split(".")  # decoder.blocks.{i}.<sublayer>...
        if parts[1] == "blocks" and len(parts) > 3 and parts[3] in CROSS_ATTENTION:
            return "new"
        return "language_model"
    return "new"


def named_parts(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, Part]]:
    """(name, parameter, part) of every parameter of a `VisionAttnModel`, in the model's order; tied ones once."""
    adapters = lora_parameter_ids(model)
    for name, p in model.named_parameters():
        yield name, p, "new" if id(p) in adapters else part_of(name)


def parameter_groups(model: nn.Module) -> dict[Part, dict[str, nn.Parameter]]:
    """The parameters of a `VisionAttnModel` by part, {part: {name: parameter}}; tied parameters appear once."""
    groups: dict[Part, dict[str, nn.Parameter]] = {part: {} for part in PARTS}
    for name, p, part in named_parts(model):
        groups[part][name] = p
    return groups


def pretrained_parts(config: ModelConfig) -> set[FreezablePart]:
    """The parts whose weights come from a pretrained model, as the config says."""
    parts: set[FreezablePart] = set()
    if config.encoder.pretrained:  # a named timm encoder without weights starts from random ones
        parts.add("encoder")
    if config.decoder.pretrained:
        parts.add("language_model")
    return parts


# ---- freezing ----


def check_freeze(freeze: Iterable[str], lora: LoraSettings | None) -> list[FreezablePart]:
    """`freeze` without repeats, or a ValueError naming the option and the fix."""
    out = list(dict.fromkeys(freeze))
    unknown = [p for p in out if p not in FREEZABLE]
    if unknown:
        raise ValueError(f"freeze: unknown part(s) {unknown}; choose among {list(FREEZABLE)}")
    if lora is not None and "language_model" in out:
        raise ValueError(
            "freeze contains 'language_model' and lora is set: LoRA already freezes the language model's weights "
            "and trains its adapters; remove 'language_model' from freeze (or set lora to null to train no adapters)"
        )
    return out  # type: ignore[return-value]  (checked against FREEZABLE above)


def set_trainable(model: nn.Module, freeze: Iterable[FreezablePart]) -> None:
    """`requires_grad` of every parameter: False in the frozen parts, and in the language model when it has LoRA
    adapters (then its adapters train instead); True everywhere else."""
    frozen = set(freeze) | ({"language_model"} if lora_parameter_ids(model) else set())
    for _, p, part in named_parts(model):
        p.requires_grad_(part not in frozen)


def hold_frozen_in_eval(module: nn.Module) -> None:
    """Put every submodule whose parameters are all frozen in eval mode (its BatchNorm statistics and dropout stay
    as they are); call after each `train()`. Modules without parameters follow their parent."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        hold_frozen_in_eval(child)


# ---- optimizer ----


def optimizer_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    pretrained_lr: float | None = None,
    pretrained: Iterable[FreezablePart] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters of a `VisionAttnModel`.

    `lr` for new and from-scratch parts, `pretrained_lr` (None: `lr`) for the `pretrained` parts; in each, decay
    on matrices but not on biases, norms, position embeddings or the class token. Groups are ordered
    decay, no_decay (then pretrained/decay, pretrained/no_decay) and empty ones left out, so that the default
    settings give the two groups of earlier checkpoints.
    """
    no_decay = {f"encoder.vit.{n}" for n in model.encoder.vit.no_weight_decay()} | {"decoder.pos_emb.weight"}
    pretrained = set(pretrained) if pretrained_lr is not None else set()
    groups: dict[str, dict[str, Any]] = {}
    for prefix, group_lr in (("", lr), ("pretrained/", pretrained_lr)):
        for kind, decay in (("decay", weight_decay), ("no_decay", 0.0)):
            groups[prefix + kind] = {"name": prefix + kind, "params": [], "lr": group_lr, "weight_decay": decay}
    for name, p, part in named_parts(model):  # the model's order inside a group, as before
        if p.requires_grad:
            prefix = "pretrained/" if part in pretrained else ""
            groups[prefix + ("decay" if p.ndim >= 2 and name not in no_decay else "no_decay")]["params"].append(p)
    return [g for g in groups.values() if g["params"]]


# ---- LoRA ----


def lora_targets(decoder: nn.Module, targets: Sequence[str]) -> list[str]:
    """The names (in `decoder`) of the linear layers that `targets` (suffixes inside a block) select, or a
    ValueError naming the target and the fix."""
    inside = {}  # name in decoder -> (name inside its block, the module)
    for name, module in decoder.named_modules():
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "blocks":
            inside[name] = (".".join(parts[2:]), module)
    choices = sorted(
        {n for n, m in inside.values() if isinstance(m, nn.Linear) and n.split(".")[0] not in CROSS_ATTENTION}
    )
    names: list[str] = []
    for target in targets:
        matched = [name for name, (inner, _) in inside.items() if inner == target or inner.endswith("." + target)]
        if not matched:
            raise ValueError(
                f"lora.targets: {target!r} names no module inside the decoder blocks; choose among {choices}"
            )
        for name in matched:
            inner, module = inside[name]
            if inner.split(".")[0] in CROSS_ATTENTION:
                raise ValueError(
                    f"lora.targets: {target!r} selects decoder.{name} in the cross-attention sublayer, which always "
                    f"trains in full; name language-model layers only, among {choices}"
                )
            if not isinstance(module, nn.Linear):
                raise ValueError(
                    f"lora.targets: {target!r} selects decoder.{name}, a {type(module).__name__}, not a linear layer; "
                    f"choose among {choices}"
                )
        names += [n for n in matched if n not in names]
    return names


def check_checkpoint_lora(saved: dict[str, Any] | None, lora: LoraSettings | None) -> None:
    """Raise ValueError unless a checkpoint's LoRA settings (`checkpoint["vision_attn"]["lora"]`) give weights of the
    shapes and scale that `lora` gives (dropout may differ between runs)."""

    def shape(settings: dict[str, Any] | None) -> tuple[Any, ...] | None:
        return None if settings is None else (settings["r"], settings["alpha"], sorted(settings["targets"]))

    if shape(saved) != shape(None if lora is None else dataclasses.asdict(lora)):
        raise ValueError(
            f"the checkpoint was trained with model.lora={saved}, this run has model.lora="
            f"{None if lora is None else dataclasses.asdict(lora)}: set model.lora (r, alpha, targets) as in the run "
            "that wrote the checkpoint"
        )


def add_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Give the language model's linear layers in `settings.targets` LoRA adapters (in place; B = 0, so the model's
    outputs do not change yet). Call `set_trainable` afterwards: peft freezes every other decoder parameter."""
    if lora_parameter_ids(model):
        raise ValueError("the model already has LoRA adapters; add them once")
    names = lora_targets(model.decoder, settings.targets)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=names)
    inject_adapter_in_model(config, model.decoder)
    log.info("LoRA (r=%d, alpha=%g) on %d decoder layers", settings.r, settings.alpha, len(names))


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA adapter into its base layer (W += alpha / r * B A) and put the plain layer back in its place,
    so the model has the parameter names of one without LoRA."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    for module in model.modules():  # inject_adapter_in_model leaves its config on the module it adapted
        if "peft_config" in vars(module):
            del module.peft_config
