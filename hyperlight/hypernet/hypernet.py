"""`HyperNet`: an MLP from named inputs to named output tensors, with the residual parametrization
θ = θ0 + Δθ(E(γ)) of Ortiz et al. ("Magnitude Invariant Parametrizations Improve Hypernetwork Learning").

Each part of that parametrization is an option, so the paper's ablation is one constructor call per cell:
`encoding` (E: None, "cos|sin", "z|1-z"), `residual` (with or without θ0) and `init` (the paper's Kaiming
fan-out, or PyTorch's default `nn.Linear` init). Inputs are either tensors (`input_shapes`) or the plug-in's
condition vocabulary (`conditions`: categorical ids, vectors, scalars, text)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.external import Shape, as_shape
from ..nn.module import HyperModule
from .conditions import ConditionEncoder, ConditionSpec, first_rows
from .encoding import ENCODINGS, check_encoding, encode, outside_unit_range, warn_outside_range
from .init import initial_statistics, initial_value
from .mlp import check_init, mlp

_RENAMED = {"layer_sizes": "hidden_sizes"}
DEFAULT_CONDITION_DIM = 32  # as the plug-in's HyperConfig
_EXAMPLE_CONDITIONS = "conditions={'task': {'type': 'categorical', 'num': 4}}"
_FEATURE_SAMPLES = 1024  # random inputs that measure the output layer's input scale (hyperfan-in)


class _Default:
    """Marks an argument left out (so an explicit value can be told apart from the default)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_DEFAULT_ENCODING = _Default("cos|sin")


def _shapes(shapes: Mapping[str, Any], what: str) -> dict[str, Shape]:
    if not isinstance(shapes, Mapping) or not shapes:
        raise TypeError(f"{what} must be a non-empty dict of name -> shape, got {shapes!r}")
    return {str(name): as_shape(shape, what=f"{what}['{name}']") for name, shape in shapes.items()}


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _is_batched(spec: ConditionSpec, value: Any) -> bool:
    """Whether a (checked) condition value has a batch dimension: ids and scalars beyond 0-d, vectors beyond 1-d."""
    if isinstance(value, str):
        return False
    if spec.type == "text" or (spec.type == "categorical" and isinstance(value, (list, tuple))):
        return True  # a list of strings (or of named values and ids), one per example
    dims = getattr(value, "ndim", None)  # tensors and NumPy arrays (of names, too) say it themselves
    dims = torch.as_tensor(value).dim() if dims is None else dims
    return dims > (1 if spec.type == "vector" else 0)


class HyperNet(nn.Module):
    """Predicts named tensors (`output_shapes`) from named inputs (`input_shapes`, or `conditions`).

    Inputs are flattened, concatenated in `input_shapes` order and encoded (`"cos|sin"` by default:
    inputs are expected in [0, 1]); an MLP then predicts Δθ, added to learned independent values θ0
    (`residual=False`: no θ0, the MLP's output is the prediction). Inputs given with a leading batch
    dimension give outputs with one too; repeated rows in a batch are generated once (`dedup`).

    >>> import torch
    >>> net = HyperNet({"h": (2,)}, {"weight": (4, 3), "bias": (4,)}, hidden_sizes=[16])
    >>> {k: tuple(v.shape) for k, v in net(h=torch.rand(2)).items()}
    {'weight': (4, 3), 'bias': (4,)}
    >>> {k: tuple(v.shape) for k, v in net(h=torch.rand(5, 2)).items()}
    {'weight': (5, 4, 3), 'bias': (5, 4)}
    >>> net = HyperNet(conditions={"task": {"type": "categorical", "num": 4}}, output_shapes={"w": (4, 3)})
    >>> tuple(net(task=torch.tensor([0, 3, 3]))["w"].shape)
    (3, 4, 3)
    """

    def __init__(
        self,
        input_shapes: Mapping[str, Sequence[int] | int] | None = None,
        output_shapes: Mapping[str, Sequence[int] | int] | None = None,
        hidden_sizes: Sequence[int] = (),
        *,
        conditions: Mapping[str, Mapping[str, Any] | ConditionSpec] | None = None,
        condition_dim: int | None = None,
        text_encoders: Mapping[str, Callable[[list[str]], Tensor]] | None = None,
        encoding: str | None | _Default = _DEFAULT_ENCODING,
        residual: bool = True,
        init: str = "paper",
        activation: str = "LeakyReLU",
        dropout: float = 0.0,
        delta_init: str | None = None,
        dedup: bool = True,
        **unexpected: Any,
    ) -> None:
        if unexpected:
            name = next(iter(unexpected))
            hint = f"; did you mean {_RENAMED[name]}=?" if name in _RENAMED else ""
            raise TypeError(f"HyperNet got an unexpected keyword argument '{name}'{hint}")
        if input_shapes is not None and conditions is not None:
            raise TypeError(
                "HyperNet takes input_shapes= (tensor inputs) or conditions= (ids, vectors, scalars, text), not both; "
                "declare a tensor input as a condition instead, e.g. {'h': {'type': 'vector', 'dim': 2}}"
            )
        if input_shapes is None and conditions is None:
            raise TypeError(
                "HyperNet needs its inputs: input_shapes={'h': (2,)} (tensors, e.g. hyperparameters in [0, 1]) or "
                f"{_EXAMPLE_CONDITIONS} (the plug-in's condition vocabulary)"
            )
        if output_shapes is None:
            raise TypeError("HyperNet needs output_shapes: a dict of name -> shape, e.g. {'weight': (4, 3)}")
        if conditions is None:
            for name, value in (("condition_dim", condition_dim), ("text_encoders", text_encoders)):
                if value is not None:
                    raise TypeError(f"{name}= applies to conditions=, and this HyperNet takes input_shapes=")
        elif not isinstance(encoding, _Default):
            raise TypeError(
                f"encoding= applies to input_shapes=, not to conditions= (got encoding={encoding!r}): conditions "
                "are encoded by their type (scalars rescaled to [0, 1] and cos|sin-encoded, ids embedded); "
                "remove encoding="
            )
        if not isinstance(residual, bool):
            raise TypeError(f"residual must be True (θ = θ0 + Δθ) or False (θ = Δθ, no θ0), got {residual!r}")
        if not isinstance(dedup, bool):
            raise TypeError(f"dedup must be True or False, got {dedup!r}")
        self._check_delta_init(delta_init, residual)
        super().__init__()
        self.init = check_init(init)
        self.residual = residual
        self.dedup = dedup
        self.output_shapes = _shapes(output_shapes, "output_shapes")
        self.hidden_sizes = list(hidden_sizes)
        self.input_shapes: dict[str, Shape] | None = None
        self.condition_encoder: ConditionEncoder | None = None
        if conditions is not None:
            self.encoding = None  # the condition encoder encodes by type
            self.condition_encoder = self._condition_encoder(conditions, condition_dim, text_encoders)
            in_size = self.condition_encoder.out_features
        else:
            self.input_shapes = _shapes(input_shapes, "input_shapes")
            self.encoding = check_encoding(encoding.value if isinstance(encoding, _Default) else encoding)
            in_size = sum(_numel(s) for s in self.input_shapes.values()) * ENCODINGS[self.encoding]
        self.output_dtype: torch.dtype | None = None
        out_size = sum(_numel(s) for s in self.output_shapes.values())
        self.backbone = mlp(
            in_size,
            self.hidden_sizes,
            out_size,
            activation=activation,
            dropout=dropout,
            out_bias=not residual,
            init=init,
        )
        if residual:
            self.theta0 = nn.Parameter(
                torch.cat([initial_value(n, s).flatten() for n, s in self.output_shapes.items()])
                if out_size
                else torch.zeros(0)
            )
        else:
            self.register_parameter("theta0", None)  # a plain hypernetwork: the backbone's output is θ
        self._warned = False
        self.reset_delta(delta_init)

    @staticmethod
    def _condition_encoder(
        conditions: Any, condition_dim: int | None, text_encoders: Mapping[str, Any] | None
    ) -> ConditionEncoder:
        dim = DEFAULT_CONDITION_DIM if condition_dim is None else condition_dim
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"condition_dim must be a positive int, got {condition_dim!r}")
        encoders = dict(text_encoders or {})
        if isinstance(conditions, Mapping):  # anything else: ConditionEncoder names what it takes
            parsed = {name: ConditionSpec.parse(name, spec) for name, spec in conditions.items()}
            unused = sorted(n for n in encoders if n not in parsed or parsed[n].type != "text")
            if unused:
                raise ValueError(f"text_encoders names {unused}, which are not text conditions of {list(parsed)}")
            for name, spec in parsed.items():
                if spec.type == "input":
                    raise ValueError(
                        f"condition '{name}' is an input condition (computed from a Transformers model's hidden "
                        "states during its forward); it belongs to the plug-in: HyperConfig(conditions=...) with "
                        "get_hyper_model(model, config). HyperNet takes categorical, vector, scalar and text ones"
                    )
                if spec.type != "text":
                    continue
                if name not in encoders:
                    raise ValueError(
                        f"text condition '{name}' needs a sentence encoder: pass text_encoders={{'{name}': encoder}}, "
                        "a callable list[str] -> (n, dim) tensor (e.g. hyperlight.plugin.SentenceEncoder)"
                    )
                if spec.dim is None and isinstance(getattr(encoders[name], "dim", None), int):
                    parsed[name] = replace(spec, dim=encoders[name].dim)  # the embeddings' size, read off the encoder
            conditions = parsed
        return ConditionEncoder(conditions, dim, encoders)

    # -- initialisation ------------------------------------------------------------------------------------

    @staticmethod
    def _check_delta_init(delta_init: Any, residual: bool) -> None:
        if delta_init is not None and delta_init not in ("paper", "zero"):
            raise ValueError(
                f"delta_init must be 'paper' or 'zero', got {delta_init!r} (or leave it unset: the output layer then "
                "follows init= and residual=)"
            )
        if delta_init == "zero" and not residual:
            raise ValueError(
                "delta_init='zero' with residual=False would make every output exactly 0 for every input (there is "
                "no θ0 to start from); use residual=True to start at θ0, or leave delta_init unset"
            )

    def reset_delta(self, delta_init: str | None = None) -> None:
        """Initialise the output layer (the one that predicts Δθ, or θ itself with `residual=False`).

        `None` follows `init` and `residual`: with `init="paper"`, Kaiming fan-out (Ortiz et al.) when there
        is a θ0, and hyperfan-in (Chang et al. 2020) without one, so the generated tensors have the variance
        of a freshly initialised layer (`init.initial_statistics`); with `init="torch"`, PyTorch's default
        `nn.Linear` init. `"paper"`: Kaiming fan-out whatever `init` is. `"zero"`: Δθ is exactly 0, so the
        outputs equal θ0 for every input (the output layer still gets gradients from the first step).
        """
        self._check_delta_init(delta_init, self.residual)
        out = self.backbone[-1]
        rule = delta_init
        if rule is None:
            rule = "torch" if self.init == "torch" else ("paper" if self.residual else "hyperfan")
        if rule == "zero":
            nn.init.zeros_(out.weight)
        elif rule == "paper":
            nn.init.kaiming_normal_(out.weight, mode="fan_out", nonlinearity="linear")
        elif rule == "torch":
            nn.init.kaiming_uniform_(out.weight, a=math.sqrt(5))  # what nn.Linear.reset_parameters draws
        if out.bias is not None:  # residual=False: the output layer's bias (hyperfan: and its weight)
            self._init_plain_output(out, rows=rule == "hyperfan")

    @torch.no_grad()
    def _init_plain_output(self, out: nn.Linear, *, rows: bool) -> None:
        """Without θ0: the output bias (and, with `rows`, the weight: hyperfan-in) of the output layer.

        init="torch": the bias nn.Linear draws. init="paper": each output θ_j gets its usual initial mean
        (1 for norm scales, else 0) from the bias, and its usual variance v_j split evenly between the bias
        (N(mean, v_j/2)) and the input-dependent part: hyperfan-in (Chang et al. 2020), Var(W_jk) =
        v_j / (2 E‖e‖²), with E‖e‖² the second moment of the layer's input e measured on random inputs.
        The split keeps the scale where e = 0 (γ = 0 without an encoding, zero biases): a bias-free output
        layer would generate exactly zero weights there.
        """
        if out.weight.is_meta:
            return  # sizes only: nothing to draw
        if self.init == "torch":
            bound = 1.0 / math.sqrt(out.in_features) if out.in_features else 0.0
            nn.init.uniform_(out.bias, -bound, bound)
            return
        means, variances = [], []
        for name, shape in self.output_shapes.items():
            mean, std = initial_statistics(name, shape)
            means.append(torch.full((_numel(shape),), mean))
            variances.append(torch.full((_numel(shape),), std * std))
        mean, var = torch.cat(means).to(out.weight), torch.cat(variances).to(out.weight)
        if out.bias is not None:
            out.bias.copy_(mean + torch.randn_like(mean) * (var / 2).sqrt())
        if rows:
            second = self._feature_second_moment()
            scale = (var / (2 * second)).sqrt() if second > 0 else torch.zeros_like(var)
            out.weight.normal_().mul_(scale.unsqueeze(1))

    @torch.no_grad()
    def _feature_second_moment(self) -> float:
        """E‖e‖² of the output layer's input e over random inputs from the documented domain: input_shapes
        uniform in [0, 1]; categorical ids uniform; scalars uniform in their range; vectors N(0, 1); text
        embeddings N(0, 1/dim). A fixed-seed generator: the global random state advances as without it."""
        weight = self.backbone[-1].weight
        gen = torch.Generator(device=weight.device).manual_seed(0)
        n, kw = _FEATURE_SAMPLES, {"device": weight.device, "generator": gen}
        if self.condition_encoder is None:
            raw = sum(_numel(s) for s in self.input_shapes.values())
            x = encode(torch.rand(n, raw, dtype=weight.dtype, **kw), self.encoding)
        else:
            sampled: dict[str, Tensor] = {}
            for name, spec in self.condition_encoder.specs.items():
                if spec.type == "categorical":
                    sampled[name] = torch.randint(spec.num, (n,), **kw)
                elif spec.type == "scalar":
                    lo, hi = spec.range
                    sampled[name] = lo + (hi - lo) * torch.rand(n, **kw)
                else:
                    dim = self.condition_encoder.embedders[name].in_features
                    sampled[name] = torch.randn(n, dim, **kw) / (math.sqrt(dim) if spec.type == "text" else 1.0)
            x = self.condition_encoder(sampled)
        for layer in list(self.backbone)[:-1]:
            if not isinstance(layer, nn.Dropout):
                x = layer(x)
        return float(x.double().square().sum(-1).mean())

    # -- θ0 -------------------------------------------------------------------------------------------------

    @classmethod
    def from_existing(
        cls,
        weights: Mapping[str, Tensor],
        input_shapes: Mapping[str, Sequence[int] | int] | None = None,
        hidden_sizes: Sequence[int] = (),
        *,
        output_shapes: Mapping[str, Sequence[int] | int] | None = None,
        delta_init: str | None = "zero",
        **kwargs: Any,
    ) -> HyperNet:
        """A HyperNet whose θ0 holds `weights` (e.g. from `hypernetize(..., return_values=True)`).

        With the default `delta_init="zero"` the outputs equal `weights` bit for bit for every input, so the
        hypernetized model starts as the pretrained one. `output_shapes`, if given, must agree with the
        weights and fixes the output order. Inputs are `input_shapes` or `conditions=` (in `kwargs`).
        """
        if kwargs.get("residual", True) is not True:
            raise ValueError(
                "from_existing puts the weights in θ0, and residual=False builds a HyperNet without θ0; use "
                "residual=True (the default), or build HyperNet(..., residual=False) and train it to the weights"
            )
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

    def _require_theta0(self) -> Tensor:
        if self.theta0 is None:
            raise ValueError(
                "this HyperNet has no independent weights θ0 (it was built with residual=False: its outputs are "
                "the backbone's alone); build it with residual=True to hold them"
            )
        return self.theta0

    def set_independent_weights(self, weights: Mapping[str, Tensor]) -> None:
        """Set θ0 from `{name: tensor}` (any dict order; every output once)."""
        theta0 = self._require_theta0()
        missing = sorted(self.output_shapes.keys() - weights.keys())
        extra = sorted(weights.keys() - self.output_shapes.keys())
        if missing or extra:
            raise ValueError(f"weights must match output_shapes: missing {missing}, unexpected {extra}")
        for name, shape in self.output_shapes.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"shape mismatch for '{name}': expected {shape}, got {tuple(weights[name].shape)}")
        flat = [weights[n].detach().to(theta0.device, theta0.dtype).flatten() for n in self.output_shapes]
        with torch.no_grad():
            theta0.copy_(torch.cat(flat) if flat else theta0)

    def get_independent_weights(self) -> dict[str, Tensor]:
        """θ0 as `{name: tensor}` (views of the parameter)."""
        return self._unflatten(self._require_theta0().detach().unsqueeze(0), batched=False)

    # -- forward --------------------------------------------------------------------------------------------

    def _reference(self) -> Tensor:
        """The tensor whose device and dtype inputs take: θ0, or the output layer's weight without it."""
        return self.theta0 if self.theta0 is not None else self.backbone[-1].weight

    def _flat_inputs(self, inputs: Mapping[str, Any]) -> tuple[Tensor, bool]:
        missing = [n for n in self.input_shapes if n not in inputs]
        extra = [n for n in inputs if n not in self.input_shapes]
        if missing or extra:
            raise TypeError(
                f"HyperNet expects inputs {list(self.input_shapes)} as keyword arguments; "
                f"missing {missing}, unexpected {extra}"
            )
        reference = self._reference()
        flats, batch, integers = [], None, set()
        for name, shape in self.input_shapes.items():
            x = torch.as_tensor(inputs[name], device=reference.device)
            if not x.is_floating_point():
                integers.add(name)  # kept as numbers (the seed's behaviour); the range warning points to conditions
                x = x.float()
            x = x.to(reference.dtype)
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
                    warn_outside_range(name, self.encoding, integer=name in integers)
                    break
        return torch.cat(parts, dim=-1), batch is not None

    def _unflatten(self, flat: Tensor, *, batched: bool) -> dict[str, Tensor]:
        # one split, not a narrow per output: its backward is one concatenation, where each narrow's backward
        # would fill a zero tensor of the whole (B, N) gradient
        parts = flat.split([_numel(s) for s in self.output_shapes.values()], dim=-1)
        return {
            name: part.reshape(flat.shape[0], *shape) if batched else part.reshape(shape)
            for (name, shape), part in zip(self.output_shapes.items(), parts)
        }

    def _theta(self, features: Tensor) -> Tensor:
        """(R, in) backbone inputs -> (R, N) outputs: θ0 + Δθ, or the backbone's output alone."""
        delta = self.backbone(features)
        theta = delta if self.theta0 is None else self.theta0 + delta
        return theta if self.output_dtype is None else theta.to(self.output_dtype)

    def _distinct_rows(self, keys: Tensor) -> tuple[Tensor, Tensor] | None:
        """`(first, inverse)` to generate once per distinct row of `keys` (B, K) and gather, or None where that
        is not worth it or would change the math:
        - under torch.compile (a data-dependent shape) and torch.func transforms (no torch.unique there);
        - inputs that require grad: every row must get its own gradient;
        - dropout in training mode: every row must get its own mask;
        - a hypernetized HyperNet: its generated weights may differ per example;
        - no repeated row."""
        if not self.dedup or keys.shape[0] < 2 or not keys.shape[1] or keys.requires_grad:
            return None
        if torch.compiler.is_compiling():
            return None
        if torch._C._functorch.is_functorch_wrapped_tensor(keys):
            return None
        if self.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.backbone):
            return None
        if any(isinstance(m, HyperModule) for m in self.modules()):
            return None
        if keys.shape[1] == 1:  # one column (a task id, a scalar): a flat unique, far cheaper than the row-wise one
            unique, inverse = torch.unique(keys[:, 0], return_inverse=True)
        else:
            unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        if unique.shape[0] == keys.shape[0]:
            return None
        return first_rows(inverse, unique.shape[0]), inverse

    def _check_conditions(self, values: Mapping[str, Any]) -> tuple[dict[str, Tensor], bool]:
        encoder = self.condition_encoder
        checked = encoder.check(values)  # the plug-in's named errors: missing/unexpected, dtype, range, shape
        return checked, any(_is_batched(encoder.specs[n], values[n]) for n in encoder.specs)

    def forward(self, **inputs: Any) -> dict[str, Tensor]:
        if self.condition_encoder is None:
            flat, batched = self._flat_inputs(inputs)
            plan = self._distinct_rows(flat) if batched else None
            if plan is None:
                theta = self._theta(encode(flat, self.encoding))  # (B, N): θ0 + Δθ(E(γ))
            else:
                first, inverse = plan  # once per distinct row, then one row per example
                theta = self._theta(encode(flat.index_select(0, first), self.encoding)).index_select(0, inverse)
            return self._unflatten(theta, batched=batched)
        checked, batched = self._check_conditions(inputs)
        plan = None
        if batched and not any(v.requires_grad for v in checked.values()):
            rows = next(iter(checked.values())).shape[0]
            keys = torch.cat([v.reshape(rows, -1).to(torch.float64) for v in checked.values()], dim=1)
            plan = self._distinct_rows(keys)
        if plan is None:
            theta = self._theta(self.condition_encoder(checked))
        else:
            first, inverse = plan
            picked = {name: v.index_select(0, first) for name, v in checked.items()}
            theta = self._theta(self.condition_encoder(picked)).index_select(0, inverse)
        if not batched:
            theta = theta[:1]  # one value per condition: unbatched outputs
        return self._unflatten(theta, batched=batched)

    def extra_repr(self) -> str:
        outputs = len(self.output_shapes)
        if self.condition_encoder is not None:
            inputs = f"conditions={self.condition_encoder.describe()!r}"
        else:
            inputs = f"inputs={dict(self.input_shapes)}, encoding={self.encoding!r}"
        return f"{inputs}, outputs={outputs} tensors, residual={self.residual}, init={self.init!r}"
