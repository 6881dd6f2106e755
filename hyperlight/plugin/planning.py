"""Planning a hyper model from a config and a model, without changing the model: which modules and parameters are
targets, what the generator predicts for each (`GeneratorTarget`), the condition encoder and generator that
predict it, and the state a checkpoint of it must hold. `HyperModel` builds from these; loading a checkpoint
checks a file against them before anything is allocated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..hypernet.conditions import ConditionEncoder
from ..hypernetize import hypernetize, parameter_holders
from ..nn.hypernetized import linear_like
from .config import HyperConfig
from .generators import GeneratorTarget, PerTargetGenerator, SharedGenerator
from .selection import layer_index, type_key


def full_mode_parameters(model: nn.Module, names: list[str], wanted: list[str] | None) -> dict[str, list[str]]:
    """`{module: [parameter names]}` that full mode generates; refuses selections that would untie weights."""
    modules = dict(model.named_modules())
    chosen: dict[str, list[str]] = {}
    for n in names:
        own = [p for p, v in modules[n]._parameters.items() if v is not None]
        if picked := [p for p in own if wanted is None or p in wanted]:
            chosen[n] = picked
    if not chosen:
        raise ValueError(
            f"target_parameters={wanted} matched no parameter of the selected modules "
            f"{names[:5]}; their parameters are e.g. {list(modules[names[0]]._parameters)}"
        )
    quantized = [f"{n}.{p}" for n, ps in chosen.items() for p in ps if is_quantized(modules[n]._parameters[p])]
    if quantized:
        raise ValueError(
            f"mode='full' generates whole tensors, and {quantized[:4]} are quantized (bitsandbytes 4-/8-bit), which "
            "cannot take them; use mode='lora' (low-rank factors beside the quantized weights, as QLoRA), or load "
            "the base without quantization_config"
        )
    owners = parameter_holders(model)  # a tied parameter would be generated once per module: untied
    for n, ps in chosen.items():
        for p in ps:
            held = owners[id(modules[n]._parameters[p])]
            if len(held) > 1:
                others = [o for m, o in held.items() if m != id(modules[n])]
                raise ValueError(
                    f"'{n}.{p}' is tied to {others} (the same tensor); mode='full' would "
                    "generate a separate tensor for each module, untying them. Leave tied parameters out of "
                    "target_modules/target_parameters, or use mode='lora' (which keeps the weights)"
                )
    return chosen


def modules_to_save(model: nn.Module, wanted: list[str], targets: list[str]) -> dict[str, nn.Module]:
    """The base modules named by `modules_to_save` (exact names or suffixes), checked against the targets."""
    found = {n: m for n, m in model.named_modules() if n and any(n == w or n.endswith(f".{w}") for w in wanted)}
    missing = [w for w in wanted if not any(n == w or n.endswith(f".{w}") for n in found)]
    if missing:
        raise ValueError(f"modules_to_save {missing} matched no module of the model")
    both = [n for n in found if any(t == n or t.startswith(f"{n}.") for t in targets)]
    if both:
        raise ValueError(f"{both} hold targets and are in modules_to_save; a module is either generated or trained")
    return found


def plan_targets(
    model: nn.Module,
    config: HyperConfig,
    names: list[str],
    chosen: Mapping[str, list[str]],
    *,
    values: Mapping[str, Tensor] | None = None,
) -> list[GeneratorTarget]:
    """What the generator predicts for each selected module, computed from the model without changing it.

    Full mode's pretrained values come from `values` (what `hypernetize` kept); without them, meta tensors of
    the parameters' shapes stand in (enough to know sizes)."""
    modules = dict(model.named_modules())
    targets = []
    if config.mode == "lora":
        for n in names:
            spec = linear_like(modules[n])
            fan_in, fan_out = spec.in_features(modules[n]), spec.out_features(modules[n])
            shapes = {"lora_A": (config.rank, fan_in), "lora_B": (fan_out, config.rank)}
            targets.append(GeneratorTarget(n, type_key(n), layer_index(n) or 0, shapes))
    else:
        for n, ps in chosen.items():
            if values is not None:
                base = {p: values[f"{n}.{p}"] for p in ps}
            else:
                base = {p: torch.empty(modules[n]._parameters[p].shape, device="meta") for p in ps}
            shapes = {p: tuple(v.shape) for p, v in base.items()}
            targets.append(GeneratorTarget(n, type_key(n), layer_index(n) or 0, shapes, base))
    # modules that share a name pattern but not shapes (rare) get their own head
    by_key: dict[str, set] = {}
    for t in targets:
        by_key.setdefault(t.type_key, set()).add(tuple(sorted(t.shapes.items())))
    for t in targets:
        if len(by_key[t.type_key]) > 1:
            t.type_key = f"{t.type_key}|{sorted(t.shapes.items())}"
    return targets


def build_generator(
    config: HyperConfig,
    targets: list[GeneratorTarget],
    device: torch.device | str,
    text_encoders: Mapping[str, Any] | None = None,
) -> tuple[ConditionEncoder, nn.Module]:
    """The condition encoder and generator a config describes for `targets` (on the meta device: sizes only)."""
    with torch.device(device):
        encoder = ConditionEncoder(config.conditions, config.condition_dim, text_encoders)
        if config.generator == "shared":
            generator: nn.Module = SharedGenerator(
                targets,
                encoder.out_features,
                hidden_size=config.hidden_size,
                num_layers=config.num_layers,
                layer_embedding_dim=config.layer_embedding_dim,
                type_embedding_dim=config.type_embedding_dim,
                dropout=config.hypernet_dropout,
                share_heads=config.share_heads,
            )
        else:
            generator = PerTargetGenerator(targets, encoder.out_features, hidden_size=config.hidden_size)
    return encoder, generator


def target_shapes_of(model: nn.Module, config: HyperConfig, names: list[str]) -> dict[str, dict[str, list[int]]]:
    """`{target: {external: shape}}` that `config` gives the modules `names` of `model` (nothing changes)."""
    chosen = full_mode_parameters(model, names, config.target_parameters) if config.mode == "full" else {}
    return {t.name: {k: list(v) for k, v in t.shapes.items()} for t in plan_targets(model, config, names, chosen)}


def expected_state_shapes(model: nn.Module, config: HyperConfig, names: list[str]) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of the `hyper_state_dict()` that `config` gives on `model` with these targets, computed on
    the meta device without changing the model: what a checkpoint's tensors must be before any is allocated."""
    chosen = full_mode_parameters(model, names, config.target_parameters) if config.mode == "full" else {}
    encoder, generator = build_generator(config, plan_targets(model, config, names, chosen), "meta")
    shapes = {f"condition_encoder.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    shapes |= {f"generator.{k}": tuple(v.shape) for k, v in generator.state_dict().items()}
    for name, module in modules_to_save(model, config.modules_to_save or [], names).items():
        shapes |= {f"base_model.{name}.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
    return shapes


def hypernetize_targets(
    model: nn.Module, config: HyperConfig, names: list[str], chosen: Mapping[str, list[str]]
) -> None:
    """Turn the targets into externals that compute as the pretrained model when nothing is bound: low-rank
    `lora_A`/`lora_B` beside each frozen weight (lora mode), or the chosen parameters themselves (full mode)."""
    modules = dict(model.named_modules())
    if config.mode == "lora":
        hypernetize(
            model,
            modules=[modules[n] for n in names],
            rank=config.rank,
            alpha=config.alpha,
            dropout=config.dropout,
            convert_root=False,
            unset="original",
        )
    else:
        params = [modules[n]._parameters[p] for n, ps in chosen.items() for p in ps]
        hypernetize(model, parameters=params, convert_root=False, unset="original")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), counted as PEFT counts them: each shared tensor once, DeepSpeed
    ZeRO-3's partitioned parameters by `ds_numel`, bitsandbytes 4-bit parameters by what they pack."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if count == 0 and hasattr(param, "ds_numel"):
            count = param.ds_numel
        if type(param).__name__ == "Params4bit":
            size = param.element_size() if hasattr(param, "element_size") else 1
            count *= 2 * getattr(getattr(param, "quant_storage", None), "itemsize", size)
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


def is_quantized(weight: object) -> bool:
    """A bitsandbytes 4-/8-bit weight (or any integer-typed one): it holds codes, not values."""
    if type(weight).__name__ in ("Params4bit", "Int8Params"):
        return True
    return isinstance(weight, Tensor) and not (weight.is_floating_point() or weight.is_complex())
