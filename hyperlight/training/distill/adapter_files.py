"""Reading PEFT LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`, as
`save_pretrained` writes them) into the factors distillation matches, refusing anything that is not a plain LoRA
adapter of the hyper model's targets."""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import AdapterError, short
from .targets import Target

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_ADAPTER_CONFIG_BYTES = 1 << 20  # a LoraConfig is a few KiB: a larger file is something else, not read whole
# PEFT's state-dict names for the factors of one module (the adapter name is removed when PEFT saves)
_FACTOR_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight")
# LoraConfig fields that change what an adapter computes beyond ΔW = s·B·A: such adapters are refused
_UNSUPPORTED = {
    "use_dora": "DoRA (a learned magnitude per output)",
    "lora_bias": "a bias on lora_B",
    "use_qalora": "QA-LoRA (pooled inputs)",
    "alora_invocation_tokens": "activated LoRA (applied only after invocation tokens)",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "use_bdlora": "BD-LoRA",
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens",
    "modules_to_save": "modules_to_save (whole modules trained with the adapter)",
}


@dataclass
class Adapter:
    """One adapter of the library, read and checked against the hyper model's targets."""

    conditions: dict[str, Any]
    path: Path
    factors: dict[str, tuple[Tensor, Tensor]]  # target -> (A (r, in), s·B (out, r)), float32, CPU
    rank: int
    parameters: int


def read_adapter_config(directory: Path) -> dict[str, Any]:
    """The fields of `directory/adapter_config.json`, checked to describe a plain LoRA adapter (ΔW = s·B·A only).

    Raises:
        AdapterError: the file is missing, larger than 1 MiB, not a JSON object, or not a plain LoRA config.
    """
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterError(f"{directory} holds no {ADAPTER_CONFIG}; give PEFT adapter directories")
    if path.stat().st_size > MAX_ADAPTER_CONFIG_BYTES:
        raise AdapterError(f"{path} is larger than 1 MiB; it is not a PEFT adapter config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise AdapterError(f"{path} is not valid JSON ({str(err)[:200]}); save the adapter again with PEFT") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} holds a {type(config).__name__}, not a JSON object of LoraConfig fields")
    _check_lora_config(config, path)
    return config


def _check_lora_config(config: dict[str, Any], path: Path) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(
            f"{path}: peft_type is {peft_type!r}; only LoRA adapters (peft_type 'LORA') can be distilled"
        )
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(
                f"{path}: {key}={short(config[key])} ({what}) changes the model beyond ΔW = (alpha/r)·B·A, "
                "which is all a hyper model in lora mode generates; distill plain LoRA adapters (without it)"
            )
    if config.get("bias", "none") != "none":
        raise AdapterError(
            f"{path}: bias={config['bias']!r} trains the base model's biases with the adapter; only "
            "bias='none' can be distilled (the hyper model generates ΔW only)"
        )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or not math.isfinite(value):
            raise AdapterError(f"{path}: {key} must be a positive number, got {short(value)}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, Mapping):
            raise AdapterError(f"{path}: {key} must be an object {{pattern: value}}, got {config[key]!r}")


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any, where: str) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup (peft.utils.other.get_pattern_key): the first key that matches
    the end of the module name wins."""
    for key, value in patterns.items():
        try:
            found = re.match(rf"(.*\.)?({key})$", module)
        except re.error as err:
            raise AdapterError(f"{where}: the pattern {key!r} is not a valid regular expression ({err})") from None
        if found:
            return value
    return default


def read_adapter(conditions: dict[str, Any], path: Path, targets: Mapping[str, Target]) -> Adapter:
    """The adapter in directory `path`, its factors checked against the hyper model's `targets` by name and shape,
    each module's scaling (alpha/r, rank and alpha patterns, rsLoRA) folded into its B."""
    _check_directory(path)
    config = read_adapter_config(path)
    parts = _factor_pairs(path, _load_tensors(path))
    _check_targeted(path, parts, targets)
    factors = {}
    rank = parameters = 0
    for module, pair in parts.items():
        a, b, r = _module_factors(path, config, module, pair, targets[module])
        factors[module] = (a.float(), b.float() * _scaling(path, config, module, r))
        rank = max(rank, r)
        parameters += a.numel() + b.numel()
    return Adapter(conditions, path, factors, rank, parameters)


def _check_directory(path: Path) -> None:
    if not path.is_dir():
        raise AdapterError(
            f"{path}: not a directory; expected a PEFT adapter directory ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}), "
            "as peft_model.save_pretrained(directory) writes"
        )
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (path / name).is_file()]
    if missing:
        hint = (
            " (only adapter_model.bin is there: it is a pickle, which is not loaded here; save the adapter with "
            "safe_serialization=True)"
            if (path / "adapter_model.bin").is_file()
            else ""
        )
        raise AdapterError(
            f"{path}: missing {missing}{hint}; a PEFT adapter directory holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        )


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path / ADAPTER_WEIGHTS), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterError(f"{path / ADAPTER_WEIGHTS} cannot be read as safetensors ({err})") from None


def _factor_pairs(path: Path, tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """`{module: {"A": lora_A, "B": lora_B}}`; any tensor that is not a LoRA factor is refused."""
    parts: dict[str, dict[str, Tensor]] = {}
    others = []
    for key, tensor in tensors.items():
        found = _FACTOR_KEY.fullmatch(key)
        if found is None:
            others.append(key)
        else:
            parts.setdefault(found["module"], {})[found["which"]] = tensor
    if others:
        raise AdapterError(
            f"{path / ADAPTER_WEIGHTS} holds tensors other than LoRA factors of linear layers, e.g. {others[:3]}; "
            "expected only 'base_model.model.<module>.lora_A.weight' and '...lora_B.weight' (a plain LoRA adapter)"
        )
    if not parts:
        raise AdapterError(
            f"{path / ADAPTER_WEIGHTS} holds no LoRA factors ('base_model.model.<module>.lora_A.weight')"
        )
    return parts


def _check_targeted(path: Path, parts: Mapping[str, Any], targets: Mapping[str, Target]) -> None:
    foreign = sorted(set(parts) - set(targets))
    if foreign:
        raise AdapterError(
            f"{path}: the adapter changes {foreign[:4]}{' ...' if len(foreign) > 4 else ''}, which the hyper model "
            f"does not target (its targets are e.g. {list(targets)[:4]}); build the hyper model with target_modules "
            "covering every module of every adapter (or distill adapters trained on the same targets)"
        )


def _module_factors(
    path: Path, config: Mapping[str, Any], module: str, pair: Mapping[str, Tensor], target: Target
) -> tuple[Tensor, Tensor, int]:
    """`(lora_A, lora_B, r)` of one module, checked against the target's sizes and the config's rank."""
    if set(pair) != {"A", "B"}:
        lacking = "lora_B" if "A" in pair else "lora_A"
        raise AdapterError(f"{path / ADAPTER_WEIGHTS}: module '{module}' has no {lacking}.weight")
    a, b = pair["A"], pair["B"]
    r = a.shape[0] if a.dim() == 2 else -1
    expected = ((r, target.in_features), (target.out_features, r))
    if a.dim() != 2 or b.dim() != 2 or (tuple(a.shape), tuple(b.shape)) != expected:
        raise AdapterError(
            f"{path}: module '{module}' has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; the hyper "
            f"model's target has in_features={target.in_features}, out_features={target.out_features}, so "
            f"expected lora_A (r, {target.in_features}) and lora_B ({target.out_features}, r) with one r: was "
            "the adapter trained on another base model?"
        )
    where = f"{path / ADAPTER_CONFIG} (rank_pattern)"
    declared = _pattern_value(config.get("rank_pattern") or {}, module, config["r"], where)
    if declared != r:
        raise AdapterError(
            f"{path}: module '{module}' has factors of rank {r}, but {ADAPTER_CONFIG} gives it r={declared} "
            "(r / rank_pattern); the config does not belong to these weights"
        )
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise AdapterError(f"{path / ADAPTER_WEIGHTS}: module '{module}' has non-finite values in its factors")
    return a, b, r


def _scaling(path: Path, config: Mapping[str, Any], module: str, r: int) -> float:
    """What PEFT multiplies the module's B·A by: alpha/r (alpha/√r with rsLoRA), alpha_pattern applied."""
    where = f"{path / ADAPTER_CONFIG} (alpha_pattern)"
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"], where)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterError(f"{where}: module '{module}' gets lora_alpha {alpha!r}; expected a positive number")
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else r)
