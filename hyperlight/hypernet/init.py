"""Initial values of generated tensors, by kind of parameter (used for θ0 when nothing pretrained is given)."""

from __future__ import annotations

import math

import torch
from torch import nn


def initial_value(name: str, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A sensible starting value for the tensor called `name`.

    - `...lora_B`: zeros (a low-rank update that starts at identity); `...lora_A`: PEFT's LoRA A init.
    - biases: zeros; 1-D weights (norm scales): ones.
    - other weights with 2+ dims: Kaiming normal (fan_in, LeakyReLU gain), as for a freshly built layer.
    - anything else: zeros for 0/1-D, Kaiming normal otherwise.
    """
    leaf = name.rsplit(".", 1)[-1]
    value = torch.zeros(shape, dtype=dtype)
    if leaf == "lora_B" or value.numel() == 0:
        return value
    if leaf == "lora_A":
        nn.init.kaiming_uniform_(value, a=math.sqrt(5))
    elif leaf.endswith("bias"):
        pass
    elif leaf.endswith("weight") and value.dim() == 1:
        value.fill_(1.0)
    elif value.dim() >= 2:
        nn.init.kaiming_normal_(value, nonlinearity="leaky_relu")
    return value
