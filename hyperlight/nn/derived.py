"""The one factory for classes made at run time, and their one pickle path.

`hypernetize` swaps a module into `Hypernetized<Class>` or `LowRank<Class>`, and the Transformers plug-in
gives each hyper model a class whose `forward` shows the base model's signature. Such a class is made once
per recipe and arguments, and cached. Its instances pickle as "(recipe, arguments) + state": the recipe
is a module-level function, so `pickle`, `torch.save` and `copy.deepcopy` rebuild the same class anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# a recipe maps its arguments to (class name, bases, namespace)
Recipe = Callable[..., tuple[str, tuple[type, ...], dict[str, Any]]]

_CLASSES: dict[tuple[Any, ...], type] = {}


def derived_class(recipe: Recipe, *args: Any) -> type:
    """The (cached) class `recipe(*args)` describes."""
    key = (recipe, *args)
    cls = _CLASSES.get(key)
    if cls is None:
        name, bases, namespace = recipe(*args)
        namespace = {"__qualname__": name, **namespace, "_hl_derivation": key}
        cls = _CLASSES[key] = type(name, bases, namespace)
    return cls


def reduce_derived(obj: Any, state: Any) -> tuple:
    """`__reduce_ex__` for instances of derived classes: rebuilt from the recipe, then given `state`."""
    return (_rebuild, type(obj)._hl_derivation, state)


def _rebuild(recipe: Recipe, *args: Any) -> Any:
    cls = derived_class(recipe, *args)
    return cls.__new__(cls)
