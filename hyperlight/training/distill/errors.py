"""The errors of adapter distillation, and the short form of a value that their messages (and the report) show."""

from __future__ import annotations

from typing import Any

from torch import Tensor


class AdapterError(ValueError):
    """An adapter directory cannot be distilled into this hyper model (missing or unreadable file, an unsupported
    LoRA variant, targets or shapes that differ from the hyper model's); the message names the directory."""


class AdapterKeyError(ValueError):
    """The `adapters` argument does not say which condition each adapter belongs to in a form this hyper model
    takes; the message shows what was given and what is expected."""


def short(value: Any) -> str:
    """`repr(value)` cut to 24 characters (a tensor of more than 4 elements shows its shape), for one line."""
    if isinstance(value, Tensor):
        value = value.tolist() if value.numel() <= 4 else f"tensor{tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."
