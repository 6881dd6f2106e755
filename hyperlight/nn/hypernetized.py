"""The classes `hypernetize` swaps existing modules into.

`HypernetizedLinear` is `(HypernetizedModule, nn.Linear)`: the original class's forward, reading its
externals like parameters, plus a per-example dispatch (a batched kernel for torch's layers, `vmap`
for anything else). `LowRankLinear` keeps the frozen weight and adds `s * (x Aᵀ) Bᵀ` from externals
`lora_A` (r, in) and `lora_B` (out, r): the PEFT-LoRA shape with predicted factors.

The classes come from the one run-time class factory (`derived.py`) and pickle through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .derived import derived_class, reduce_derived
from .external import UninitializedExternalError
from .functional import lowrank_add
from .layers import batched_forward_for
from .module import HyperModule
from .per_example import per_example_forward

ORIGINAL_PREFIX = "hl_original_"  # non-persistent buffers that keep pretrained values


@dataclass(frozen=True)
class LinearLike:
    """How to read a linear-like layer: its in/out sizes and whether its weight is stored (in, out)."""

    in_features: Callable[[nn.Module], int]
    out_features: Callable[[nn.Module], int]
    transposed: bool = False


LINEAR_LIKE: dict[type[nn.Module], LinearLike] = {
    nn.Linear: LinearLike(lambda m: m.in_features, lambda m: m.out_features),
}
# known by qualified name, so the core recognises them without importing their framework, whatever was imported
# first: Transformers' Conv1D (GPT-2 and friends) stores its weight as (in, out)
LINEAR_LIKE_BY_NAME: dict[str, LinearLike] = {
    "transformers.pytorch_utils.Conv1D": LinearLike(
        lambda m: m.weight.shape[0], lambda m: m.weight.shape[1], transposed=True
    ),
}


def register_linear_like(
    cls: type[nn.Module],
    *,
    in_features: Callable[[nn.Module], int],
    out_features: Callable[[nn.Module], int],
    transposed: bool = False,
) -> None:
    """Declare a layer type that maps (..., in) -> (..., out) with a 2-D weight, so it can take low-rank
    externals (e.g. GPT-2's `Conv1D`, whose weight is stored transposed as (in, out))."""
    LINEAR_LIKE[cls] = LinearLike(in_features, out_features, transposed)


def linear_like(module: nn.Module) -> LinearLike | None:
    base = getattr(type(module), "_hl_base", type(module))
    for cls in type.mro(base):
        if cls in LINEAR_LIKE:
            return LINEAR_LIKE[cls]
        spec = LINEAR_LIKE_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if spec is not None:
            return spec
    return None


class HypernetizedModule(HyperModule):
    """Mixin placed before the original class: its forward runs, externals read like parameters."""

    _hl_base: type[nn.Module]
    _hl_kind: str = "full"
    _hl_batched: Callable[..., Any] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.current_externals()
        base_forward = self._hl_base.forward
        if bound.plan.batch is None:
            return base_forward(self, *args, **kwargs)
        batched = type(self)._hl_batched
        if batched is not None:
            return batched(self, *args, **kwargs)
        return per_example_forward(self, partial(base_forward, self), bound.plan, args, kwargs)

    def _value_when_unset(self, name: str) -> Tensor:
        # hypernetize(..., unset="original"): with no value bound, the module is the pretrained one
        if self.__dict__.get("_hl_unset") == "original":
            original = self._buffers.get(f"{ORIGINAL_PREFIX}{name}")
            if original is not None:
                return original
        return super()._value_when_unset(name)

    def extra_repr(self) -> str:
        try:
            return self._hl_base.extra_repr(self)
        except UninitializedExternalError:  # the original repr reads a tensor that is now an unset external
            return ""

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return reduce_derived(self, self.__getstate__())


class LowRankModule(HypernetizedModule):
    """Mixin for linear-like layers: frozen base forward plus the low-rank update from `lora_A`, `lora_B`."""

    _hl_kind = "lowrank"
    _hl_fresh_output: bool = False  # the base forward returns a new tensor nothing else holds: add into it

    def _expected_dtype(self, name: str) -> torch.dtype | None:
        return None  # the factors are cast to the activations' dtype where they are used (lowrank_add)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        y = self._hl_base.forward(self, x, *args, **kwargs)
        bound = self.current_externals()
        if not bound.values and self.__dict__.get("_hl_unset") == "original":
            return y  # nothing bound: the pretrained layer
        lora_a, lora_b = self.lora_A, self.lora_B  # raise, naming the external, if one is unset
        if bound.plan.batch is not None:
            lora_a, lora_b = bound.batched("lora_A", lora_a), bound.batched("lora_B", lora_b)
        p = self.__dict__.get("lora_dropout", 0.0)
        h = F.dropout(x, p, self.training) if p else x
        scaling = self.__dict__.get("lora_scaling", 1.0)
        return lowrank_add(y, h, lora_a, lora_b, scaling, bound.plan, in_place=type(self)._hl_fresh_output)


_MIXINS = {"full": HypernetizedModule, "lowrank": LowRankModule}
_PREFIX = {"full": "Hypernetized", "lowrank": "LowRank"}


# forwards known to return a fresh tensor that their backward does not save (torch's and Transformers' linear
# layers): the low-rank update may be added into it in place. Any other forward (a subclass's, a registered
# linear-like layer's) might return a tensor someone else holds, so it gets a new one.
_FRESH_OUTPUT_FORWARDS = frozenset(
    {"torch.nn.modules.linear.Linear.forward", "transformers.pytorch_utils.Conv1D.forward"}
)


def _returns_fresh_output(base: type[nn.Module]) -> bool:
    forward = base.forward
    return f"{forward.__module__}.{forward.__qualname__}" in _FRESH_OUTPUT_FORWARDS


def _hypernetized_recipe(kind: str, base: type[nn.Module]) -> tuple[str, tuple[type, ...], dict[str, Any]]:
    batched = batched_forward_for(base) if kind == "full" else None
    namespace = {
        "__module__": __name__,
        "__doc__": f"{base.__name__} with hypernetwork-provided externals ({kind}).",
        "_hl_base": base,
        "_hl_batched": staticmethod(batched) if batched is not None else None,
    }
    if kind == "lowrank":
        namespace["_hl_fresh_output"] = _returns_fresh_output(base)
    return f"{_PREFIX[kind]}{base.__name__}", (_MIXINS[kind], base), namespace


def hypernetized_class(base: type[nn.Module], kind: str = "full") -> type[nn.Module]:
    """The (cached) class `Hypernetized<Base>` or `LowRank<Base>` for an original module class."""
    if kind not in _MIXINS:
        raise ValueError(f"kind must be one of {sorted(_MIXINS)}, got {kind!r}")
    return derived_class(_hypernetized_recipe, kind, base)


def is_hypernetized(module: nn.Module) -> bool:
    return isinstance(module, HypernetizedModule)
