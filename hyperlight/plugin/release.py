"""Giving the base model back: merged for one condition, unloaded as it was, or exported as a PEFT adapter.

`HyperModel.merge_and_unload`, `unload` and `export_peft_adapter` are built from these: the generated values of
one condition, and the base model released with them (or without). What `unload()` needs to restore the base
exactly is recorded when the hyper model is built, in a `PretrainedState` the hyper model holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..restore import unhypernetize
from .planning import is_quantized


@dataclass(frozen=True)
class PretrainedState:
    """What the base model was before it became a hyper model's, beyond what `unhypernetize` restores: each
    parameter's `requires_grad`, and the pretrained state of the `modules_to_save` (which train in place)."""

    requires_grad: dict[str, bool]
    saved_modules: dict[str, dict[str, Tensor]]

    @classmethod
    def record(cls, model: nn.Module, saved_modules: Mapping[str, nn.Module]) -> PretrainedState:
        return cls(
            requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
            saved_modules={
                n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in saved_modules.items()
            },
        )


def single_condition_values(hyper: nn.Module, conditions: Mapping[str, Any]) -> dict[str, Tensor]:
    """`{target.external: tensor}` for one condition (one example), detached: what merging bakes in."""
    with torch.no_grad():
        try:
            generated = hyper.generate_weights(1, **conditions)
        except ValueError as error:
            raise ValueError(f"merge and export take one value per condition (one example): {error}") from None
    values = {}
    for target, tensors in generated.items():
        for name, value in tensors.items():
            if value.dim() != len(hyper.target_shapes[target][name]):
                raise ValueError("merge/export needs a single condition value (one example), got several")
            values[f"{target}.{name}"] = value.detach()
    return values


def release_base(
    base: nn.Module,
    pretrained: PretrainedState,
    saved_modules: Mapping[str, nn.Module],
    values: Mapping[str, Tensor] | None,
    *,
    keep_trained: bool,
) -> nn.Module:
    """The plain base model: its targets back to their original classes, with `values` baked in (merge) or their
    pretrained weights (unload); the `modules_to_save` trained (merge) or as they were (unload); trainability as
    it was."""
    unhypernetize(base, values)
    if not keep_trained:
        for name, module in saved_modules.items():
            module.load_state_dict(pretrained.saved_modules[name])
    for name, param in base.named_parameters():
        param.requires_grad_(pretrained.requires_grad.get(name, True))
    return base


def refuse_quantized_merge(targets: Mapping[str, nn.Module]) -> None:
    """A quantized weight holds codes: adding a generated update to it would compute garbage, so merging is refused
    (PEFT's users merge a QLoRA adapter into the base loaded in bf16 or fp32, as here)."""
    quantized = [name for name, module in targets.items() if is_quantized(getattr(module, "weight", None))]
    if quantized:
        raise NotImplementedError(
            f"merge_and_unload cannot bake generated weights into the quantized (bitsandbytes 4-/8-bit) targets "
            f"{quantized[:4]}: load the base without quantization_config (bf16 or fp32), rebuild the hyper model on "
            "it with HyperModel.from_pretrained(base, checkpoint), and merge there; or use export_peft_adapter(...)"
        )
