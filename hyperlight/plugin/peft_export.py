"""Export one condition of a hyper model as a standard PEFT LoRA adapter (adapter_config.json +
adapter_model.safetensors), loadable with `peft.PeftModel.from_pretrained(base, directory)`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..hypernetize import original_value
from ..nn.hypernetized import linear_like
from .checkpoint_file import save_tensors


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
        dtype = hyper.targeted_modules[name].weight.dtype
        tensors[f"base_model.model.{name}.lora_A.weight"] = lora_a.to(dtype)
        tensors[f"base_model.model.{name}.lora_B.weight"] = lora_b.to(dtype)
    for name, module in hyper.saved_modules.items():  # PEFT stores trained whole modules under their own names
        tensors.update({f"base_model.model.{name}.{k}": v for k, v in module.state_dict().items()})
    save_tensors(directory / "adapter_model.safetensors", tensors)
    lora_config.save_pretrained(str(directory))
    return errors
