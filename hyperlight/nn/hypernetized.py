"""The classes `hypernetize` swaps existing modules into.

`HypernetizedLinear` is `(HypernetizedModule, nn.Linear)`: the original class's forward, reading its
externals like parameters, plus a per-example dispatch (a batched kernel for torch's layers, `vmap`
for anything else). `LowRankLinear` keeps the frozen weight and adds `s * (x Aᵀ) Bᵀ` from externals
`lora_A` (r, in) and `lora_B` (out, r): the PEFT-LoRA shape with predicted factors.

The classes are made once per base class and cached; instances pickle as "(kind, base class) + state",
so `torch.save`, `pickle` and `copy.deepcopy` work although the class itself is made at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .external import UninitializedExternalError
from .functional import lowrank_add
from .layers import batched_forward_for
from .module import HyperModule
from .per_example import per_example_forward


@dataclass(frozen=True)
class LinearLike:
    """How to read a linear-like layer: its in/out sizes and whether its weight is stored (in, out)."""

    in_features: Callable[[nn.Module], int]
    out_features: Callable[[nn.Module], int]
    transposed: bool = False


LINEAR_LIKE: dict[type[nn.Module], LinearLike] = {
    nn.Linear: LinearLike(lambda m: m.in_features, lambda m: m.out_features),
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
    return None


class HypernetizedModule(HyperModule):
    """Mixin placed before the original class: its forward runs, externals read like parameters."""

    _hl_base: type[nn.Module]
    _hl_kind: str = "full"
    _hl_batched: Callable[..., Any] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        batch = self.__dict__["_external_batch"]
        base_forward = self._hl_base.forward
        if batch is None:
            return base_forward(self, *args, **kwargs)
        batched = type(self)._hl_batched
        if batched is not None:
            return batched(self, *args, **kwargs)
        return per_example_forward(self, partial(base_forward, self), batch, args, kwargs)

    def extra_repr(self) -> str:
        try:
            return self._hl_base.extra_repr(self)
        except UninitializedExternalError:  # the original repr reads a tensor that is now an unset external
            return ""

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return (_rebuild, (self._hl_kind, self._hl_base), self.__getstate__())


class LowRankModule(HypernetizedModule):
    """Mixin for linear-like layers: frozen base forward plus the low-rank update from `lora_A`, `lora_B`."""

    _hl_kind = "lowrank"

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        y = self._hl_base.forward(self, x, *args, **kwargs)
        lora_a, lora_b = self.lora_A, self.lora_B
        p = self.__dict__.get("lora_dropout", 0.0)
        h = F.dropout(x, p, self.training) if p else x
        return lowrank_add(y, h, lora_a, lora_b, self.__dict__.get("lora_scaling", 1.0))


_MIXINS = {"full": HypernetizedModule, "lowrank": LowRankModule}
_PREFIX = {"full": "Hypernetized", "lowrank": "LowRank"}
_CLASSES: dict[tuple[str, type[nn.Module]], type[nn.Module]] = {}


def hypernetized_class(base: type[nn.Module], kind: str = "full") -> type[nn.Module]:
    """The (cached) class `Hypernetized<Base>` or `LowRank<Base>` for an original module class."""
    if kind not in _MIXINS:
        raise ValueError(f"kind must be one of {sorted(_MIXINS)}, got {kind!r}")
    key = (kind, base)
    if key not in _CLASSES:
        name = f"{_PREFIX[kind]}{base.__name__}"
        batched = batched_forward_for(base) if kind == "full" else None
        namespace = {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"{base.__name__} with hypernetwork-provided externals ({kind}).",
            "_hl_base": base,
            "_hl_batched": staticmethod(batched) if batched is not None else None,
        }
        _CLASSES[key] = type(name, (_MIXINS[kind], base), namespace)
    return _CLASSES[key]


def _rebuild(kind: str, base: type[nn.Module]) -> nn.Module:
    cls = hypernetized_class(base, kind)
    return cls.__new__(cls)


def is_hypernetized(module: nn.Module) -> bool:
    return isinstance(module, HypernetizedModule)
