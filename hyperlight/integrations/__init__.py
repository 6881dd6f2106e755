"""Deprecated: the old home of the plug-in and its training helpers, kept so that existing imports still work.

`hyperlight.integrations.X` now lives in `hyperlight.plugin` (HyperConfig, HyperModel, get_hyper_model,
SentenceEncoder) or `hyperlight.training` (collators, mixtures, distillation); `hyperlight.integrations.trl` is
`hyperlight.training.trl`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "HyperConfig": "hyperlight.plugin",
    "HyperModel": "hyperlight.plugin",
    "get_hyper_model": "hyperlight.plugin",
    "SentenceEncoder": "hyperlight.plugin",
    "HyperDataCollator": "hyperlight.training",
    "MultiTaskSampler": "hyperlight.training",
    "mixing_weights": "hyperlight.training",
    "temperature_mixture": "hyperlight.training",
    "AdapterError": "hyperlight.training",
    "DistillReport": "hyperlight.training",
    "distill_adapters": "hyperlight.training",
}


def __getattr__(name: str) -> Any:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'hyperlight.integrations' has no attribute '{name}'")
    warnings.warn(
        f"hyperlight.integrations.{name} moved to {home}.{name}; import it from there "
        "(hyperlight.integrations will be removed in a later release)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted(_MOVED)
