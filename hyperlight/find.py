"""Find modules and parameters to hypernetize, by type or by name pattern. Results are in model order.

Pattern semantics (matching dotted names such as `layer1.0.conv1`):
- `globs` use `fnmatch.fnmatchcase`: the whole name must match and `*` crosses dots, so `*.conv1` matches
  `layer1.0.conv1` and `layer1*conv*.weight` matches `layer1.0.conv2.weight`.
- `regex` uses `re.search`: a match anywhere in the name counts; anchor with `^`/`$` (or use `re.fullmatch`
  semantics by writing `^...$`). `^layer\\d.0.conv1` matches `layer2.0.conv1`.
A name is kept when any glob or any regex matches it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from torch import nn


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def _as_patterns(patterns: str | Sequence[str] | None, what: str) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{what} must be strings, got {type(p).__name__} {p!r}")
    return patterns


def _matcher(globs: str | Sequence[str] | None, regex: str | Sequence[str] | None):
    glob_list = _as_patterns(globs, "globs")
    try:
        regex_list = [re.compile(r) for r in _as_patterns(regex, "regex")]
    except re.error as err:
        raise ValueError(f"invalid regex {err.pattern!r}: {err}") from None
    if not glob_list and not regex_list:
        raise ValueError("give at least one pattern: globs=['*.conv1'] and/or regex=[r'^layer\\d']")

    def matches(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in glob_list) or any(r.search(name) for r in regex_list)

    return matches


def find_modules_of_type(
    model: nn.Module, module_types: type[nn.Module] | Iterable[type[nn.Module]]
) -> dict[str, nn.Module]:
    """`{name: module}` for every module of `model` that is an instance of `module_types` (a type or a list).

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    >>> list(find_modules_of_type(model, nn.Conv2d))
    ['0', '2']
    """
    _check_model(model)
    types = (module_types,) if isinstance(module_types, type) else tuple(module_types)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"module_types must be nn.Module subclasses, got {t!r}")
    if not types:
        raise ValueError("module_types is empty; give at least one nn.Module subclass, e.g. [nn.Conv2d]")
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}


def find_modules_from_patterns(
    model: nn.Module, globs: str | Sequence[str] | None = None, regex: str | Sequence[str] | None = None
) -> dict[str, nn.Module]:
    """`{name: module}` for the modules whose dotted name matches a glob or a regex (see module docs).

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2))
    >>> list(find_modules_from_patterns(model, globs=["*.0"]))
    ['0.0']
    """
    _check_model(model)
    matches = _matcher(globs, regex)
    return {name: m for name, m in model.named_modules() if name and matches(name)}


def find_parameters_from_patterns(
    model: nn.Module, globs: str | Sequence[str] | None = None, regex: str | Sequence[str] | None = None
) -> dict[str, nn.Parameter]:
    """`{name: parameter}` for the parameters whose dotted name matches a glob or a regex (see module docs).

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> list(find_parameters_from_patterns(model, regex=[r"weight$"]))
    ['0.weight', '1.weight']
    """
    _check_model(model)
    matches = _matcher(globs, regex)
    return {name: p for name, p in model.named_parameters() if matches(name)}
