"""Export one condition of a hyper model as a standard PEFT LoRA adapter (adapter_config.json +
adapter_model.safetensors), loadable with `peft.PeftModel.from_pretrained(base, directory)`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..hypernet.conditions import ConditionSpec
from ..hypernetize import original_value
from ..nn.hypernetized import linear_like
from .checkpoint_file import save_tensors

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _relative_error(delta: Tensor, approx: Tensor) -> float:
    norm = float(delta.norm())
    return 0.0 if norm == 0 else float((delta - approx).norm()) / norm


def _lowrank_factors(hyper: nn.Module, values: Mapping[str, Tensor]) -> tuple[dict[str, tuple[Tensor, Tensor]], dict]:
    """lora mode: the predicted factors themselves (exact)."""
    factors = {name: (values[f"{name}.lora_A"], values[f"{name}.lora_B"]) for name in hyper.targeted_modules}
    return factors, {name: 0.0 for name in factors}


def _svd_factors(hyper: nn.Module, values: Mapping[str, Tensor]) -> tuple[dict[str, tuple[Tensor, Tensor]], dict]:
    """full mode: truncated SVD of each linear target's weight change, at the config's rank."""
    rank, scaling = hyper.hyper_config.rank, hyper.hyper_config.scaling
    factors, errors = {}, {}
    for name, module in hyper.targeted_modules.items():
        spec = linear_like(module)
        names = set(hyper.target_shapes[name])
        if spec is None or names != {"weight"}:
            raise ValueError(
                f"full-mode target '{name}' ({type(module).__name__}, externals {sorted(names)}) cannot be written as "
                "a LoRA adapter, which only changes linear weights; use merge_and_unload(...) for this condition, or "
                "train with target_parameters=['weight'] on linear targets"
            )
        original = original_value(module, "weight").to(torch.float32)
        delta = values[f"{name}.weight"].to(torch.float32) - original
        if spec.transposed:
            delta = delta.T  # LoRA factors are (out, r) @ (r, in) whatever the layer's storage
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        r = min(rank, s.shape[0])
        lora_b, lora_a = u[:, :r] * s[:r], vh[:r]
        lora_b = lora_b / scaling  # PEFT multiplies B A by alpha / r
        if r < rank:  # keep PEFT's declared rank: pad with zero directions
            lora_a = torch.cat([lora_a, lora_a.new_zeros(rank - r, lora_a.shape[1])])
            lora_b = torch.cat([lora_b, lora_b.new_zeros(lora_b.shape[0], rank - r)], dim=1)
        factors[name] = (lora_a, lora_b)
        errors[name] = _relative_error(delta, (lora_b @ lora_a) * scaling)
    return factors, errors


def write_peft_adapter(hyper: nn.Module, directory: Path, values: Mapping[str, Tensor]) -> dict[str, float]:
    """Write `values` (one condition's generated tensors) as a PEFT LoRA adapter in `directory`."""
    from peft import LoraConfig

    config = hyper.hyper_config
    if config.mode == "lora":
        factors, errors = _lowrank_factors(hyper, values)
    else:
        factors, errors = _svd_factors(hyper, values)
    transposed = {bool(linear_like(m).transposed) for m in hyper.targeted_modules.values()}
    if len(transposed) > 1:
        raise ValueError("targets mix (in, out) and (out, in) weight layouts; PEFT's fan_in_fan_out is one flag")
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=list(factors),
        fan_in_fan_out=transposed.pop(),
        modules_to_save=list(hyper.saved_modules) or None,
        lora_dropout=config.dropout,
        base_model_name_or_path=config.base_model_name_or_path
        or getattr(getattr(hyper.get_base_model(), "config", None), "name_or_path", None),
        inference_mode=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (lora_a, lora_b) in factors.items():
        weight = hyper.targeted_modules[name].weight
        # the base's dtype; a quantized weight's (uint8, int8) cannot hold factors: PEFT keeps them in float
        dtype = weight.dtype if weight.is_floating_point() else lora_a.dtype
        tensors[f"base_model.model.{name}.lora_A.weight"] = lora_a.to(dtype)
        tensors[f"base_model.model.{name}.lora_B.weight"] = lora_b.to(dtype)
    for name, module in hyper.saved_modules.items():  # PEFT stores trained whole modules under their own names
        tensors.update({f"base_model.model.{name}.{k}": v for k, v in module.state_dict().items()})
    save_tensors(directory / ADAPTER_WEIGHTS, tensors)  # (removing what a killed export left, see atomic_write)
    lora_config.save_pretrained(str(directory))
    return errors


# a value's name becomes a directory name (and a served adapter's name): one path component, nothing hidden
_DIRECTORY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


def enumerated_values(
    specs: Mapping[str, ConditionSpec], condition: str | None, fixed: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """(the categorical condition whose every value gets an adapter, {directory name: value})."""
    categorical = [n for n, s in specs.items() if s.type == "categorical" and n not in fixed]
    if condition is None:
        if len(categorical) != 1:
            raise ValueError(
                f"export_peft_adapters writes one adapter per value of one categorical condition; this model has "
                f"{categorical or 'none'} left to enumerate. Name it with condition=..., and fix the others by keyword"
            )
        condition = categorical[0]
    spec = specs.get(condition)
    if spec is None or spec.type != "categorical":
        kind = "no condition" if spec is None else f"{'an' if spec.type == 'input' else 'a'} {spec.type} condition"
        which = f"one of the categorical conditions {categorical}" if categorical else "a categorical condition"
        raise ValueError(f"condition={condition!r} is {kind}; give {which}, and leave it out of the fixed ones")
    if condition in fixed:
        raise ValueError(f"condition {condition!r} is both enumerated and fixed to {fixed[condition]!r}; give it once")
    labels = list(spec.values) if spec.values is not None else [str(i) for i in range(spec.num)]
    bad = [label for label in labels if not _DIRECTORY_NAME.match(label)]
    if bad:
        raise ValueError(
            f"the values {bad[:4]} of condition {condition!r} cannot name adapter directories (letters, digits and "
            "'_.+=-', not starting with '.' or '-'); rename them in the config's values"
        )
    return condition, dict(zip(labels, spec.values if spec.values is not None else range(spec.num)))
