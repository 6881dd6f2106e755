"""`HyperNet`: an MLP from named inputs to named output tensors, with the residual parametrization
θ = θ0 + Δθ(E(γ)) of Ortiz et al. ("Magnitude Invariant Parametrizations Improve Hypernetwork Learning")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.external import Shape, as_shape
from .encoding import ENCODINGS, check_encoding, encode, outside_unit_range, warn_outside_range
from .init import initial_value

_RENAMED = {"layer_sizes": "hidden_sizes"}


def _shapes(shapes: Mapping[str, Any], what: str) -> dict[str, Shape]:
    if not isinstance(shapes, Mapping) or not shapes:
        raise TypeError(f"{what} must be a non-empty dict of name -> shape, got {shapes!r}")
    return {str(name): as_shape(shape, what=f"{what}['{name}']") for name, shape in shapes.items()}


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def mlp(
    in_features: int,
    hidden_sizes: Sequence[int],
    out_features: int,
    *,
    activation: str = "LeakyReLU",
    dropout: float = 0.0,
    out_bias: bool = False,
) -> nn.Sequential:
    """Linear -> activation (-> dropout) blocks, then a final Linear; Kaiming fan-out init (Ortiz et al.)."""
    act = getattr(nn, activation, None)
    if act is None or not (isinstance(act, type) and issubclass(act, nn.Module)):
        raise ValueError(f"activation must name a torch.nn activation class such as 'LeakyReLU', got {activation!r}")
    layers: list[nn.Module] = []
    size = in_features
    for hidden in hidden_sizes:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise ValueError(f"hidden_sizes must hold positive ints, got {list(hidden_sizes)!r}")
        linear = nn.Linear(size, hidden)
        nn.init.kaiming_normal_(linear.weight, mode="fan_out", nonlinearity="leaky_relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, act()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        size = hidden
    out = nn.Linear(size, out_features, bias=out_bias)
    nn.init.kaiming_normal_(out.weight, mode="fan_out", nonlinearity="linear")
    if out_bias:
        nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


class HyperNet(nn.Module):
    """Predicts named tensors (`output_shapes`) from named inputs (`input_shapes`).

    Inputs are flattened, concatenated in `input_shapes` order and encoded (`"cos|sin"` by default:
    inputs are expected in [0, 1]); an MLP then predicts Δθ, added to learned independent values θ0.
    Inputs given with a leading batch dimension give outputs with one too.

    >>> import torch
    >>> net = HyperNet({"h": (2,)}, {"weight": (4, 3), "bias": (4,)}, hidden_sizes=[16])
    >>> {k: tuple(v.shape) for k, v in net(h=torch.rand(2)).items()}
    {'weight': (4, 3), 'bias': (4,)}
    >>> {k: tuple(v.shape) for k, v in net(h=torch.rand(5, 2)).items()}
    {'weight': (5, 4, 3), 'bias': (5, 4)}
    """

    def __init__(
        self,
        input_shapes: Mapping[str, Sequence[int] | int],
        output_shapes: Mapping[str, Sequence[int] | int],
        hidden_sizes: Sequence[int] = (),
        *,
        encoding: str | None = "cos|sin",
        activation: str = "LeakyReLU",
        dropout: float = 0.0,
        delta_init: str = "paper",
        **unexpected: Any,
    ) -> None:
        if unexpected:
            name = next(iter(unexpected))
            hint = f"; did you mean {_RENAMED[name]}=?" if name in _RENAMED else ""
            raise TypeError(f"HyperNet got an unexpected keyword argument '{name}'{hint}")
        super().__init__()
        self.input_shapes = _shapes(input_shapes, "input_shapes")
        self.output_shapes = _shapes(output_shapes, "output_shapes")
        self.hidden_sizes = list(hidden_sizes)
        self.encoding = check_encoding(encoding)
        self.output_dtype: torch.dtype | None = None
        in_size = sum(_numel(s) for s in self.input_shapes.values()) * ENCODINGS[self.encoding]
        out_size = sum(_numel(s) for s in self.output_shapes.values())
        self.backbone = mlp(in_size, self.hidden_sizes, out_size, activation=activation, dropout=dropout)
        self.theta0 = nn.Parameter(
            torch.cat([initial_value(n, s).flatten() for n, s in self.output_shapes.items()])
            if out_size
            else torch.zeros(0)
        )
        self._warned = False
        self.reset_delta(delta_init)

    def reset_delta(self, delta_init: str = "paper") -> None:
        """`"paper"`: Kaiming fan-out on the output layer (Ortiz et al.); `"zero"`: Δθ is exactly 0, so the
        outputs equal θ0 for every input (the output layer still gets gradients from the first step)."""
        out = self.backbone[-1]
        if delta_init == "zero":
            nn.init.zeros_(out.weight)
        elif delta_init == "paper":
            nn.init.kaiming_normal_(out.weight, mode="fan_out", nonlinearity="linear")
        else:
            raise ValueError(f"delta_init must be 'paper' or 'zero', got {delta_init!r}")

    @classmethod
    def from_existing(
        cls,
        weights: Mapping[str, Tensor],
        input_shapes: Mapping[str, Sequence[int] | int],
        hidden_sizes: Sequence[int] = (),
        *,
        output_shapes: Mapping[str, Sequence[int] | int] | None = None,
        delta_init: str = "zero",
        **kwargs: Any,
    ) -> HyperNet:
        """A HyperNet whose θ0 holds `weights` (e.g. from `hypernetize(..., return_values=True)`).

        With the default `delta_init="zero"` the outputs equal `weights` bit for bit for every input, so the
        hypernetized model starts as the pretrained one. `output_shapes`, if given, must agree with the
        weights and fixes the output order.
        """
        if not isinstance(weights, Mapping) or not weights:
            raise TypeError(f"weights must be a non-empty dict of name -> tensor, got {type(weights).__name__}")
        actual = {name: tuple(w.shape) for name, w in weights.items()}
        if output_shapes is None:
            output_shapes = actual
        else:
            declared = _shapes(output_shapes, "output_shapes")
            if declared.keys() != actual.keys():
                missing, extra = sorted(declared.keys() - actual.keys()), sorted(actual.keys() - declared.keys())
                raise ValueError(f"output_shapes and weights disagree: missing weights {missing}, extra {extra}")
            for name, shape in declared.items():
                if shape != actual[name]:
                    raise ValueError(
                        f"shape mismatch for '{name}': output_shapes says {shape}, weight is {actual[name]}"
                    )
            output_shapes = declared
        net = cls(input_shapes, output_shapes, hidden_sizes, delta_init=delta_init, **kwargs)
        dtypes = {w.dtype for w in weights.values()}
        if dtypes == {torch.float64}:
            net.double()  # fp32 master values would round fp64 weights: the outputs would not be bit for bit
        net.set_independent_weights(weights)
        if len(dtypes) == 1 and (dtype := dtypes.pop()) != net.theta0.dtype:
            net.output_dtype = dtype  # θ0 keeps fp32 master values; outputs match the pretrained dtype
        return net

    def set_independent_weights(self, weights: Mapping[str, Tensor]) -> None:
        """Set θ0 from `{name: tensor}` (any dict order; every output once)."""
        missing = sorted(self.output_shapes.keys() - weights.keys())
        extra = sorted(weights.keys() - self.output_shapes.keys())
        if missing or extra:
            raise ValueError(f"weights must match output_shapes: missing {missing}, unexpected {extra}")
        for name, shape in self.output_shapes.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"shape mismatch for '{name}': expected {shape}, got {tuple(weights[name].shape)}")
        flat = [weights[n].detach().to(self.theta0.device, self.theta0.dtype).flatten() for n in self.output_shapes]
        with torch.no_grad():
            self.theta0.copy_(torch.cat(flat) if flat else self.theta0)

    def get_independent_weights(self) -> dict[str, Tensor]:
        """θ0 as `{name: tensor}` (views of the parameter)."""
        return self._unflatten(self.theta0.detach().unsqueeze(0), batched=False)

    def _flat_inputs(self, inputs: Mapping[str, Any]) -> tuple[Tensor, bool]:
        missing = [n for n in self.input_shapes if n not in inputs]
        extra = [n for n in inputs if n not in self.input_shapes]
        if missing or extra:
            raise TypeError(
                f"HyperNet expects inputs {list(self.input_shapes)} as keyword arguments; "
                f"missing {missing}, unexpected {extra}"
            )
        device = self.theta0.device
        flats, batch = [], None
        for name, shape in self.input_shapes.items():
            x = torch.as_tensor(inputs[name], device=device)
            if not x.is_floating_point():
                x = x.float()
            x = x.to(self.theta0.dtype)
            if tuple(x.shape) == shape:
                flats.append((name, x.reshape(1, -1), False))
            elif x.dim() == len(shape) + 1 and tuple(x.shape[1:]) == shape:
                if batch is not None and x.shape[0] != batch:
                    raise ValueError(f"inputs have different batch sizes: {batch} and {x.shape[0]} ('{name}')")
                batch = x.shape[0]
                flats.append((name, x.reshape(batch, -1), True))
            else:
                raise ValueError(
                    f"wrong shape for input '{name}': expected {shape} or (B, *{shape}), got {tuple(x.shape)}"
                )
        rows = batch or 1
        parts = [x.expand(rows, -1) for _, x, _ in flats]
        if self.encoding is not None and not self._warned:
            for (name, _, _), x in zip(flats, parts):
                if outside_unit_range(x):
                    self._warned = True
                    warn_outside_range(name, self.encoding)
                    break
        return torch.cat(parts, dim=-1), batch is not None

    def _unflatten(self, flat: Tensor, *, batched: bool) -> dict[str, Tensor]:
        outputs, offset = {}, 0
        for name, shape in self.output_shapes.items():
            size = _numel(shape)
            part = flat.narrow(-1, offset, size)
            outputs[name] = part.reshape(flat.shape[0], *shape) if batched else part.reshape(shape)
            offset += size
        return outputs

    def forward(self, **inputs: Any) -> dict[str, Tensor]:
        flat, batched = self._flat_inputs(inputs)
        theta = self.theta0 + self.backbone(encode(flat, self.encoding))  # (B, N): θ0 + Δθ(E(γ))
        if self.output_dtype is not None:
            theta = theta.to(self.output_dtype)
        return self._unflatten(theta, batched=batched)

    def extra_repr(self) -> str:
        outputs = len(self.output_shapes)
        return f"inputs={dict(self.input_shapes)}, outputs={outputs} tensors, encoding={self.encoding!r}"


Hypernet = HyperNet
