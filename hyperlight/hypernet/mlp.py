"""The MLP a `HyperNet` is built on, with the two initializations of Ortiz et al.'s ablation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

INITS = ("paper", "torch")


def check_init(init: Any) -> str:
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(
            f"init must be 'paper' (Kaiming fan-out, Ortiz et al.) or 'torch' (PyTorch's default nn.Linear init), "
            f"got {init!r}"
        )
    return init


def mlp(
    in_features: int,
    hidden_sizes: Sequence[int],
    out_features: int,
    *,
    activation: str = "LeakyReLU",
    dropout: float = 0.0,
    out_bias: bool = False,
    init: str = "paper",
) -> nn.Sequential:
    """Linear -> activation (-> dropout) blocks, then a final Linear.

    `init="paper"`: Kaiming normal, fan-out mode, zero biases (Ortiz et al.); `init="torch"`: what `nn.Linear`
    draws by itself (Kaiming uniform with a=√5 and a uniform bias in ±1/√fan_in).
    """
    check_init(init)
    act = getattr(nn, activation, None)
    if act is None or not (isinstance(act, type) and issubclass(act, nn.Module)):
        raise ValueError(f"activation must name a torch.nn activation class such as 'LeakyReLU', got {activation!r}")
    layers: list[nn.Module] = []
    size = in_features
    for hidden in hidden_sizes:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise ValueError(f"hidden_sizes must hold positive ints, got {list(hidden_sizes)!r}")
        linear = nn.Linear(size, hidden)
        if init == "paper":
            nn.init.kaiming_normal_(linear.weight, mode="fan_out", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
        layers += [linear, act()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        size = hidden
    out = nn.Linear(size, out_features, bias=out_bias)
    if init == "paper":
        nn.init.kaiming_normal_(out.weight, mode="fan_out", nonlinearity="linear")
        if out_bias:
            nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)
