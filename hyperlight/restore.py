"""`unhypernetize`: the way back from `hypernetize` to a plain model, with the original classes, parameters (ties
included), trainability and `state_dict` keys, and optionally values baked in (a merge)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .hypernetize import full_name
from .nn.hypernetized import ORIGINAL_PREFIX, HypernetizedModule, LowRankModule, linear_like
from .nn.module import HyperModule, drop_external_state


def merged_lowrank_weight(module: nn.Module, lora_a: Tensor, lora_b: Tensor) -> Tensor:
    """The weight of a low-rank layer with its update folded in: W + s·B·A (transposed for (in, out) layouts)."""
    spec = linear_like(module)
    delta = (lora_b.to(torch.float32) @ lora_a.to(torch.float32)) * module.__dict__.get("lora_scaling", 1.0)
    if spec is not None and spec.transposed:
        delta = delta.T
    weight = module.weight
    return (weight.to(torch.float32) + delta.to(weight.device)).to(weight.dtype)


def unhypernetize(model: nn.Module, values: Mapping[str, Tensor] | None = None, *, inplace: bool = True) -> nn.Module:
    """The way back: a plain model with the original classes and `state_dict` keys.

    Full externals take `values[name]` when given, else the pretrained values kept by `hypernetize`.
    Low-rank layers fold `values[...lora_A/lora_B]` into their weight when given, else keep it unchanged.

    >>> from torch import nn
    >>> from hyperlight import hypernetize
    >>> model = nn.Sequential(nn.Linear(4, 8))
    >>> before = list(model.state_dict())
    >>> plain = unhypernetize(hypernetize(model, modules=[model[0]]))
    >>> type(plain).__name__, list(plain.state_dict()) == before
    ('Sequential', True)
    """
    if not isinstance(model, nn.Module) or not any(isinstance(m, HypernetizedModule) for m in model.modules()):
        raise TypeError(f"expected a hypernetized model, got a {type(model).__name__} with no hypernetized modules")
    if not inplace:
        model = copy.deepcopy(model)
    given = dict(values or {})
    shapes = external_shapes_of(model)
    unknown = sorted(set(given) - set(shapes))
    if unknown:
        raise KeyError(f"values for unknown externals {unknown}; the model's externals are {sorted(shapes)}")
    for name, value in given.items():
        shape = shapes[name]
        if tuple(value.shape) != shape:
            raise ValueError(
                f"shape mismatch for '{name}': expected {shape}, got {tuple(value.shape)} "
                "(per-example values cannot be baked into one model; pick one example's value)"
            )

    _check_tied_values(model, given)
    restored: dict[str, nn.Parameter] = {}  # one Parameter per tie group (keyed by its first name): ties come back
    for prefix, module in list(model.named_modules()):
        if not isinstance(module, HypernetizedModule):
            if isinstance(module, HyperModule) and module._externals and module is not model:
                raise TypeError(
                    f"'{prefix}' is a user-defined {type(module).__name__}; it has no plain twin to restore"
                )
            continue
        _restore(module, prefix, given, restored, model)
    return model


def external_shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """`{full name: shape}` of every external below `model`, whether or not `model` is a HyperModule."""
    return {
        full_name(prefix, name): ext.shape
        for prefix, module in model.named_modules()
        if isinstance(module, HyperModule)
        for name, ext in module._externals.items()
    }


def _restore(
    module: nn.Module,
    prefix: str,
    given: Mapping[str, Tensor],
    restored: dict[str, nn.Parameter],
    root: nn.Module,
) -> None:
    if isinstance(module, LowRankModule):
        a_name, b_name = full_name(prefix, "lora_A"), full_name(prefix, "lora_B")
        if (a_name in given) != (b_name in given):
            raise KeyError(f"give both '{a_name}' and '{b_name}' to fold a low-rank update, or neither")
        if a_name in given:
            merged = merged_lowrank_weight(module, given[a_name], given[b_name])
            module.weight = nn.Parameter(merged, requires_grad=module.weight.requires_grad)
        for name, flag in module.__dict__.pop("_hl_lowrank_requires_grad", {}).items():
            if module._parameters.get(name) is not None:
                module._parameters[name].requires_grad_(flag)
        for key in ("lora_scaling", "lora_dropout"):
            module.__dict__.pop(key, None)
    else:
        requires_grad = module.__dict__.get("_hl_requires_grad", {})
        tied = module.__dict__.get("_hl_tied", {})
        for name in list(module._externals):
            full = full_name(prefix, name)
            original = module._buffers.pop(f"{ORIGINAL_PREFIX}{name}", None)
            if full in given:
                value = given[full]
            elif original is not None:
                value = original
            else:
                raise KeyError(f"no value for '{full}': pass it in values=, or hypernetize with keep_original=True")
            key = tied.get(name, full)
            if key in restored:  # another side of this tie was restored already: share its Parameter
                param = restored[key]
            elif (alive := _parameter_or_none(root, key) if name in tied else None) is not None:
                param = alive  # the Parameter is still held by a module that was not hypernetized
                with torch.no_grad():
                    if value is not alive and not _same_storage(value, alive):
                        alive.data = value.detach().clone().to(alive.device)  # the tie sees the new value too
            else:
                param = nn.Parameter(value.detach().clone(), requires_grad=requires_grad.get(name, True))
            restored[key] = module._parameters[name] = param
    order = module.__dict__.get("_hl_param_order", [])
    params = module._parameters
    module.__dict__["_parameters"] = {n: params[n] for n in order if n in params} | {
        n: p for n, p in params.items() if n not in order
    }
    for key in ("_hl_param_order", "_hl_requires_grad", "_hl_tied", "_hl_unset"):
        module.__dict__.pop(key, None)
    drop_external_state(module)
    module.__class__ = module._hl_base


def _check_tied_values(model: nn.Module, given: Mapping[str, Tensor]) -> None:
    """Tied parameters come back as one Parameter, so the values given for them must agree (checked before
    anything changes)."""
    first: dict[str, tuple[str, Tensor]] = {}
    for prefix, module in model.named_modules():
        for name, key in module.__dict__.get("_hl_tied", {}).items():
            full = full_name(prefix, name)
            if full not in given:
                continue
            seen = first.setdefault(key, (full, given[full]))
            if seen[0] != full and not torch.equal(seen[1], given[full].to(seen[1])):
                raise ValueError(
                    f"'{full}' is tied to '{seen[0]}' but was given a different value; give tied parameters one value"
                )


def _parameter_or_none(root: nn.Module, name: str) -> nn.Parameter | None:
    try:
        return root.get_parameter(name)
    except AttributeError:  # unhypernetize was given another root, or that side was hypernetized since
        return None


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and a.data_ptr() == b.data_ptr()
