"""`hypernetize`: turn chosen parameters of an existing model into externals.

Only the chosen modules change class (`nn.Linear` -> `HypernetizedLinear`), plus the root so that it has
the HyperModule API (`external_shapes`, `set_externals`, ...). Everything else is untouched, and
`unhypernetize` (restore.py) restores the original classes, parameters and `state_dict` keys.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from .nn.external import ExternalParameter
from .nn.hypernetized import ORIGINAL_PREFIX, HypernetizedModule, LowRankModule, hypernetized_class, linear_like
from .nn.module import HyperModule, init_external_state

ModuleSelection = Union[nn.Module, Mapping[str, nn.Module], Iterable[Union[nn.Module, tuple[str, nn.Module]]]]
ParameterSelection = Union[nn.Parameter, Mapping[str, nn.Parameter], Iterable[Union[nn.Parameter, str]]]

_ORIGINAL = ORIGINAL_PREFIX  # prefix of the non-persistent buffers that keep pretrained values
UNSET_POLICIES = ("raise", "original")


def _as_list(selection: Any, kind: type) -> list[Any]:
    if selection is None:
        return []
    if isinstance(selection, kind):
        return [selection]
    if isinstance(selection, Mapping):
        return list(selection.values())
    items = []
    for item in selection:
        if isinstance(item, tuple) and len(item) == 2:  # (name, object) pairs, as find_* used to return
            item = item[1]
        items.append(item)
    return items


def _select(model: nn.Module, modules: Any, parameters: Any) -> list[tuple[str, list[str]]]:
    """Resolve the selection to `[(module name, [parameter names])]` in model order."""
    given_modules = _as_list(modules, nn.Module)
    given_params = _as_list(parameters, nn.Parameter)
    named = list(model.named_modules())
    module_ids = {id(m) for _, m in named}
    param_ids: dict[int, str] = {}
    for prefix, m in named:
        for pname, p in m._parameters.items():
            if p is not None:
                param_ids.setdefault(id(p), f"{prefix}.{pname}" if prefix else pname)

    selected_modules: set[int] = set()
    for m in given_modules:
        if not isinstance(m, nn.Module):
            raise TypeError(f"modules must hold nn.Module objects, got {type(m).__name__}")
        if id(m) not in module_ids:
            raise ValueError(f"{type(m).__name__} given in modules= is not part of the model being hypernetized")
        below = list(m.modules())
        if not any(p is not None for sub in below for p in sub._parameters.values()):
            if any(isinstance(sub, HyperModule) and sub._externals for sub in below):
                raise ValueError(
                    f"{type(m).__name__} given in modules= is already hypernetized (it has externals and no "
                    "parameters left); a parameter can only be hypernetized once"
                )
            raise ValueError(f"{type(m).__name__} given in modules= has no parameters to hypernetize")
        selected_modules.update(id(sub) for sub in below)

    selected_params: set[int] = set()
    for p in given_params:
        if isinstance(p, str):
            raise TypeError(f"parameters must be nn.Parameter objects, got the string {p!r}; use hypernetize_single")
        if not isinstance(p, nn.Parameter):
            raise TypeError(f"parameters must hold nn.Parameter objects, got {type(p).__name__}")
        if id(p) not in param_ids:
            raise ValueError(
                f"a parameter of shape {tuple(p.shape)} given in parameters= is not a parameter of the model "
                "(was it hypernetized already? a parameter can only be hypernetized once)"
            )
        selected_params.add(id(p))

    plan = []
    for prefix, m in named:
        names = [
            pname
            for pname, p in m._parameters.items()
            if p is not None and (id(m) in selected_modules or id(p) in selected_params)
        ]
        if names:
            plan.append((prefix, names))
    if not plan:
        raise ValueError(
            "nothing to hypernetize: pass modules=[...] and/or parameters=[...] that hold parameters of the model "
            "(find_modules_of_type / find_modules_from_patterns / find_parameters_from_patterns help)"
        )
    modules = dict(named)
    for prefix, _ in plan:
        _refuse_unsupported(modules[prefix], prefix, model)
    return plan


def _refuse_unsupported(module: nn.Module, prefix: str, model: nn.Module) -> None:
    """Modules whose forward does not read its parameters as attributes would silently ignore externals."""
    where = f"'{prefix}'" if prefix else "the model"
    if isinstance(module, nn.RNNBase):
        raise TypeError(
            f"{type(module).__name__} at {where} cannot be hypernetized: its forward reads a cached list of its "
            "weights (_flat_weights), not the attributes, so generated weights would be silently ignored. "
            "Hypernetize the layers around it, or write the recurrence with hypernetized nn.Linear/LSTMCell layers"
        )
    owner = _parametrized_owner(model, prefix)
    if owner is not None:
        raise TypeError(
            f"{where} cannot be hypernetized: '{owner}' is parametrized (e.g. weight_norm), so its weight is computed "
            "by a function that expects one unbatched value and generated or per-example weights would be "
            "silently misread. Hypernetize before parametrizing, or remove it first with "
            "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')"
        )


def _parametrized_owner(model: nn.Module, prefix: str) -> str | None:
    from torch.nn.utils import parametrize

    parts = prefix.split(".") if prefix else []
    for depth in range(len(parts) + 1):
        name = ".".join(parts[:depth])
        module = model.get_submodule(name)
        if parametrize.is_parametrized(module):
            return name or "the model"
    return None


def full_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _swap_class(module: nn.Module, kind: str) -> None:
    if isinstance(module, HypernetizedModule):
        if module._hl_kind != kind:
            raise ValueError(
                f"{type(module).__name__} is already hypernetized as '{module._hl_kind}'; "
                f"it cannot also take '{kind}' externals"
            )
        return
    if isinstance(module, HyperModule):  # user-written HyperModules keep their class
        init_external_state(module)
        return
    module.__dict__["_hl_param_order"] = list(module._parameters)
    module.__dict__["_hl_requires_grad"] = {n: p.requires_grad for n, p in module._parameters.items() if p is not None}
    module.__class__ = hypernetized_class(type(module), kind)
    init_external_state(module)


def _externalize(
    module: nn.Module,
    names: list[str],
    *,
    keep_original: bool,
    detached: dict[int, Tensor] | None = None,
    tied: Mapping[str, str] | None = None,
) -> dict[str, Tensor]:
    """Turn `names` into externals. `detached` (id of a parameter -> its detached value) is shared across the
    modules of one call, so a parameter tied between modules keeps one original object, and
    `unhypernetize` ties them again."""
    _swap_class(module, "full")
    detached = {} if detached is None else detached
    values = {}
    if tied:  # by name, so copies keep it: unhypernetize re-attaches the Parameter the other module still holds
        module.__dict__.setdefault("_hl_tied", {}).update(tied)
    for name in names:
        param = module._parameters.pop(name)
        value = detached.setdefault(id(param), param.detach())
        if keep_original:
            module.register_buffer(f"{_ORIGINAL}{name}", value, persistent=False)
        module.register_external(name, ExternalParameter(tuple(param.shape)))
        values[name] = value
    return values


def parameter_holders(model: nn.Module) -> dict[int, dict[int, str]]:
    """`{id(parameter): {id(module): a full name of it}}` in model order: a parameter held by two modules is tied."""
    holders: dict[int, dict[int, str]] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, param in module._parameters.items():
            if param is not None:
                holders.setdefault(id(param), {}).setdefault(id(module), full_name(prefix, name))
    return holders


def _tie_names(model: nn.Module, plan: list[tuple[str, list[str]]]) -> dict[str, str]:
    """`{selected parameter: the first name (in model order) of the Parameter it is tied to}` for parameters held
    by several modules (an output head tied to the input embedding). Names survive copies and dtype changes,
    so unhypernetize ties them again whether the other side was hypernetized or not."""
    owners = parameter_holders(model)
    modules = dict(model.named_modules())
    ties = {}
    for prefix, names in plan:
        for name in names:
            held = owners[id(modules[prefix]._parameters[name])]
            if len(held) > 1:
                ties[full_name(prefix, name)] = next(iter(held.values()))
    return ties


def _check_lowrank_target(module: nn.Module, prefix: str, names: list[str]) -> None:
    where = f"'{prefix}'" if prefix else "the model"
    if linear_like(module) is None:
        raise TypeError(
            f"low-rank externals need a linear-like layer (nn.Linear or a type given to register_linear_like), "
            f"got {type(module).__name__} at {where}"
        )
    if isinstance(module, LowRankModule):
        raise ValueError(f"{where} already has low-rank externals; a layer can only be hypernetized once")
    if isinstance(module, HypernetizedModule) and module._externals:
        raise ValueError(f"{where} already has full externals; it cannot also take low-rank externals")
    if "weight" not in names:
        raise ValueError(f"low-rank externals attach to a layer's weight; {where} was selected without it")


def _add_lowrank(
    module: nn.Module, rank: int, alpha: float | None, dropout: float, *, freeze: bool
) -> dict[str, Tensor]:
    own = {n: p for n, p in module._parameters.items() if p is not None}
    module.__dict__["_hl_lowrank_requires_grad"] = {n: p.requires_grad for n, p in own.items()}  # for the way back
    if freeze:
        for p in own.values():
            p.requires_grad_(False)
    spec = linear_like(module)
    fan_in, fan_out = spec.in_features(module), spec.out_features(module)
    _swap_class(module, "lowrank")
    module.register_external("lora_A", ExternalParameter((rank, fan_in)))
    module.register_external("lora_B", ExternalParameter((fan_out, rank)))
    module.__dict__["lora_scaling"] = (rank if alpha is None else alpha) / rank
    module.__dict__["lora_dropout"] = float(dropout)
    ref = module.weight
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    lora_a = torch.empty(rank, fan_in, dtype=dtype, device=ref.device)
    if ref.device.type != "meta":
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))  # PEFT's LoRA A init
    lora_b = torch.zeros(fan_out, rank, dtype=dtype, device=ref.device)
    return {"lora_A": lora_a, "lora_B": lora_b}


def _ensure_root(model: nn.Module) -> None:
    if not isinstance(model, HyperModule):
        _swap_class(model, "full")


def hypernetize(
    model: nn.Module,
    modules: ModuleSelection | None = None,
    parameters: ParameterSelection | None = None,
    *,
    return_values: bool = False,
    inplace: bool = True,
    rank: int | None = None,
    alpha: float | None = None,
    dropout: float = 0.0,
    keep_original: bool = True,
    convert_root: bool = True,
    unset: str = "raise",
    freeze: bool | None = None,
) -> Any:
    """Turn the parameters of `modules` (all parameters below each one) and `parameters` into externals.

    Args:
        model: any `nn.Module`; it becomes a HyperModule (`Hypernetized<Class>`) with the subtree API.
        modules: modules of `model` (a list, a `find_*` dict, or one module); a container means every
            parameter below it. A module that appears twice in the model is converted once.
        parameters: individual `nn.Parameter`s of `model`.
        return_values: also return `{full name: tensor}`, the pretrained values (for
            `HyperNet.from_existing`); with `rank`, the identity initialisation of the factors instead.
        inplace: convert `model` itself (default) or a deep copy, leaving `model` untouched.
        rank: instead of externalizing weights, keep them and add low-rank externals `lora_A` (rank, in) and
            `lora_B` (out, rank) to each selected linear-like layer: `y = base(x) + s * (x Aᵀ) Bᵀ`.
        alpha: LoRA alpha; `s = alpha / rank` (default alpha = rank, so s = 1).
        dropout: dropout on the low-rank branch's input while training.
        keep_original: keep pretrained values (non-persistent buffers) so `unhypernetize` can restore them.
        convert_root: give the root the HyperModule API (default). Wrappers that manage externals
            themselves (the Transformers plug-in) leave the root's class alone.
        unset: what a converted module does when a call reads it with no value set or bound: `"raise"`
            (`UninitializedExternalError`, the default) or `"original"`: compute as the pretrained module
            (full externals read the kept pretrained values; low-rank layers skip their update).
        freeze: with `rank`, freeze the adapted layers' own parameters (`requires_grad=False`, as PEFT does),
            so an optimizer over `model.parameters()` trains only what generates the update; the default.
            `freeze=False` keeps them trainable. `unhypernetize` gives back the flags they had.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> model = hypernetize(model, modules=[model[0]])
    >>> model.external_shapes()
    {'0.weight': (8, 4), '0.bias': (8,)}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if unset not in UNSET_POLICIES:
        raise ValueError(f"unset must be one of {list(UNSET_POLICIES)}, got {unset!r}")
    if freeze is not None and rank is None:
        raise ValueError(
            "freeze applies to low-rank externals (rank=...): full externals replace the selected parameters, "
            "which then are not trained as parameters at all; remove freeze="
        )
    if unset == "original" and rank is None and not keep_original:
        raise ValueError("unset='original' reads the pretrained values, so it needs keep_original=True")
    plan = _select(model, modules, parameters)
    named = dict(model.named_modules())
    for prefix, names in plan:  # check every target before changing any: a bad selection leaves the model as it was
        if rank is not None:
            _check_lowrank_target(named[prefix], prefix, names)
        elif isinstance(named[prefix], LowRankModule):
            where = f"'{prefix}'" if prefix else "the model"
            raise ValueError(f"{where} already has low-rank externals; it cannot also take full externals")
    if not inplace:
        model = copy.deepcopy(model)
    named = dict(model.named_modules())

    values: dict[str, Tensor] = {}
    detached: dict[int, Tensor] = {}
    ties = _tie_names(model, plan) if rank is None else {}
    for prefix, names in plan:
        module = named[prefix]
        if rank is None:
            tied = {n: ties[full_name(prefix, n)] for n in names if full_name(prefix, n) in ties}
            created = _externalize(module, names, keep_original=keep_original, detached=detached, tied=tied)
        else:
            created = _add_lowrank(module, rank, alpha, dropout, freeze=freeze is not False)
        module.__dict__["_hl_unset"] = unset
        module.__dict__["_external_prefix"] = f"{prefix}." if prefix else ""  # full names in messages
        values.update({full_name(prefix, n): v for n, v in created.items()})
    if convert_root:
        _ensure_root(model)
    return (model, values) if return_values else model


def hypernetize_single(
    module: nn.Module,
    parameters: Iterable[str | nn.Parameter] | None = None,
    *,
    return_values: bool = False,
    keep_original: bool = True,
) -> Any:
    """Hypernetize `module`'s own parameters (by name or object; all of them by default), not its children's.

    >>> from torch import nn
    >>> layer = hypernetize_single(nn.Linear(8, 16), ["weight"])
    >>> layer.external_shapes()
    {'weight': (16, 8)}
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    own = {n: p for n, p in module._parameters.items() if p is not None}
    if parameters is None:
        names = list(own)
    else:
        names = []
        for item in _as_list(parameters, (str, nn.Parameter)):
            if isinstance(item, str):
                if item not in own:
                    raise KeyError(f"{type(module).__name__} has no parameter '{item}'; it has {list(own)}")
                names.append(item)
            else:
                match = [n for n, p in own.items() if p is item]
                if not match:
                    raise ValueError(f"a parameter given is not one of {type(module).__name__}'s own {list(own)}")
                names.append(match[0])
    if not names:
        raise ValueError(f"nothing to hypernetize: {type(module).__name__} has no parameters of its own left")
    values = _externalize(module, list(dict.fromkeys(names)), keep_original=keep_original)
    return (module, values) if return_values else module


def original_value(module: nn.Module, name: str) -> Tensor:
    """The pretrained value that `hypernetize` kept for external `name` of `module` (with keep_original)."""
    value = module._buffers.get(f"{_ORIGINAL}{name}")
    if value is None:
        raise KeyError(
            f"{type(module).__name__} kept no pretrained value for '{name}' (hypernetize keep_original=False?)"
        )
    return value
