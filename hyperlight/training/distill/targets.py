"""The hyper model's targets as distillation sees them: their sizes, and how their generated tensors read as ΔW."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from ...hypernetize import original_value
from ...nn.hypernetized import linear_like

if TYPE_CHECKING:
    from ...plugin.model import HyperModel


@dataclass
class Target:
    """A hyper target as distillation sees it: sizes, and how its generated tensors read as ΔW (out, in)."""

    name: str
    in_features: int
    out_features: int
    transposed: bool  # full mode: the weight is stored (in, out) (GPT-2's Conv1D)
    scaling: float  # lora mode: the hyper model's alpha/rank
    original: Tensor | None  # full mode: W0 as stored (the model's own tensor, not a copy)


def hyper_targets(hyper: HyperModel) -> list[Target]:
    """Every target of `hyper`, in its order; mode 'full' takes linear targets generating their weight only."""
    config = hyper.hyper_config
    targets = []
    for name, module in hyper.targeted_modules.items():
        shapes = hyper.target_shapes[name]
        spec = linear_like(module)
        if config.mode == "lora":
            _, fan_in = shapes["lora_A"]
            fan_out, _ = shapes["lora_B"]
            scaling = float(module.__dict__.get("lora_scaling", config.scaling))
            targets.append(Target(name, fan_in, fan_out, False, scaling, None))
            continue
        if spec is None or set(shapes) != {"weight"}:
            raise NotImplementedError(
                f"distill_adapters in mode='full' generates the weight of linear targets only; target '{name}' "
                f"({type(module).__name__}, externals {sorted(shapes)}) is not one. Use mode='lora', or "
                "mode='full' with target_parameters=['weight'] on linear targets (q_proj, v_proj, ...)"
            )
        rows, cols = shapes["weight"]
        fan_in, fan_out = (rows, cols) if spec.transposed else (cols, rows)
        original = original_value(module, "weight").detach()
        targets.append(Target(name, fan_in, fan_out, bool(spec.transposed), 1.0, original))
    return targets
