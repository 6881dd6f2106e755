"""Initial values of generated tensors, by kind of parameter (used for θ0 when nothing pretrained is given), and
the statistics of those values (the scale a plain hypernetwork's outputs are initialised to match)."""

from __future__ import annotations

import math

import torch
from torch import nn


def _kind(name: str, shape: tuple[int, ...]) -> str:
    """Which rule of `initial_value` applies to the tensor called `name`."""
    leaf = name.rsplit(".", 1)[-1]
    numel = math.prod(shape)
    if leaf == "lora_B" or numel == 0:
        return "zeros"
    if leaf == "lora_A":
        return "lora_A"
    if leaf.endswith("bias"):
        return "zeros"
    if leaf.endswith("weight") and len(shape) == 1:
        return "ones"
    return "kaiming" if len(shape) >= 2 else "zeros"


def _fan_in(shape: tuple[int, ...]) -> int:
    # as torch.nn.init computes it for an (out, in, *kernel) weight
    return shape[1] * math.prod(shape[2:])


def initial_value(name: str, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A sensible starting value for the tensor called `name`.

    - `...lora_B`: zeros (a low-rank update that starts at identity); `...lora_A`: PEFT's LoRA A init.
    - biases: zeros; 1-D weights (norm scales): ones.
    - other weights with 2+ dims: Kaiming normal (fan_in, LeakyReLU gain), as for a freshly built layer.
    - anything else: zeros for 0/1-D, Kaiming normal otherwise.
    """
    kind = _kind(name, shape)
    value = torch.zeros(shape, dtype=dtype)
    if kind == "lora_A":
        nn.init.kaiming_uniform_(value, a=math.sqrt(5))
    elif kind == "ones":
        value.fill_(1.0)
    elif kind == "kaiming":
        nn.init.kaiming_normal_(value, nonlinearity="leaky_relu")
    return value


def initial_statistics(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """`(mean, std)` of each entry of `initial_value(name, shape)`: the distribution it draws from.

    Kaiming normal (a=0): std = √2 / √fan_in; LoRA A (Kaiming uniform, a=√5): std = 1 / √(3·fan_in);
    constants (zeros, ones): std 0.
    """
    kind = _kind(name, shape)
    if kind == "kaiming":
        return 0.0, math.sqrt(2.0 / _fan_in(shape))
    if kind == "lora_A":
        return 0.0, 1.0 / math.sqrt(3.0 * _fan_in(shape))
    return (1.0 if kind == "ones" else 0.0), 0.0
