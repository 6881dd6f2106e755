"""A hyper model's `forward` shows the base model's arguments plus one keyword per condition.

Transformers' `Trainer` reads `inspect.signature(model.forward)` to decide which dataset columns to keep
(`remove_unused_columns=True`) and which are labels; with this signature it keeps the condition columns
and finds the labels without any flag or subclass. The signature lives on a per-(base class, conditions)
subclass, `Hyper<BaseClass>`, made by the core's one class factory (which also pickles it).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..nn.derived import derived_class


def forward_signature(base_cls: type[nn.Module], conditions: tuple[str, ...]) -> inspect.Signature:
    base = list(inspect.signature(base_cls.forward).parameters.values())
    clash = [n for n in conditions if any(p.name == n for p in base)]
    if clash:
        raise ValueError(
            f"condition name(s) {clash} collide with arguments of {base_cls.__name__}.forward; rename the condition"
        )
    var_keyword = [p for p in base if p.kind is inspect.Parameter.VAR_KEYWORD]
    plain = [p for p in base if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in conditions]
    return inspect.Signature(plain + extra + var_keyword)


def _signed_recipe(
    cls: type[nn.Module], base_cls: type[nn.Module], conditions: tuple[str, ...]
) -> tuple[str, tuple[type, ...], dict[str, Any]]:
    parent_forward = cls.forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return parent_forward(self, *args, **kwargs)

    forward.__signature__ = forward_signature(base_cls, conditions)  # type: ignore[attr-defined]
    forward.__doc__ = parent_forward.__doc__
    namespace = {"forward": forward, "__module__": cls.__module__, "__doc__": cls.__doc__, "_hl_unsigned": cls}
    return f"Hyper{base_cls.__name__}", (cls,), namespace


def signed_class(cls: type[nn.Module], base_cls: type[nn.Module], conditions: tuple[str, ...]) -> type[nn.Module]:
    """`cls` with a `forward` whose signature is `base_cls.forward`'s plus the conditions."""
    return derived_class(_signed_recipe, getattr(cls, "_hl_unsigned", cls), base_cls, conditions)
