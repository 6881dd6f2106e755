"""Input encodings for hypernetworks (Ortiz et al.): map inputs in [0, 1] onto a constant-norm manifold,
so the generated weights' magnitude does not scale with the input's."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

Encoding = Literal["cos|sin", "z|1-z"] | None
ENCODINGS: dict[str | None, int] = {"cos|sin": 2, "z|1-z": 2, None: 1}  # encoding -> size multiplier


def check_encoding(encoding: str | None) -> str | None:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
    return encoding


def outside_unit_range(x: Tensor) -> bool:
    """True if any entry lies outside [0, 1]; False where the check cannot run (under vmap or compile)."""
    if torch.compiler.is_compiling():
        return False
    try:
        return bool(((x < 0) | (x > 1)).any())
    except RuntimeError:  # data-dependent control flow is not allowed under torch.func.vmap
        return False


def encode(x: Tensor, encoding: str | None) -> Tensor:
    """Encode the last dimension: `cos|sin` -> [cos(πx/2), sin(πx/2)], `z|1-z` -> [x, 1 - x], None -> x."""
    if encoding is None:
        return x
    if encoding == "cos|sin":
        angle = x * (torch.pi / 2)
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)
    if encoding == "z|1-z":
        return torch.cat([x, 1 - x], dim=-1)
    raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {encoding!r}")


def warn_outside_range(name: str, encoding: str, *, integer: bool = False) -> None:
    hint = (
        f" '{name}' holds integers: if they are ids (a task index), declare them as a categorical condition, "
        f"HyperNet(conditions={{'{name}': {{'type': 'categorical', 'num': N}}}}, output_shapes=...), which learns "
        "an embedding per id instead of reading the id as a number."
        if integer
        else ""
    )
    warnings.warn(
        f"HyperNet input outside [0, 1] for encoding '{encoding}' (in {name}); the encoding is meant for inputs "
        "scaled to [0, 1] (rescale them, or use encoding=None). This warning is shown once per HyperNet." + hint,
        UserWarning,
        stacklevel=3,
    )
