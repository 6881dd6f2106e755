"""Layers written as HyperModules: their weights are externals, their forwards batched per example."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from . import functional as HF
from .binding import Plan
from .external import ExternalParameter
from .module import HyperModule


def _tensors(module: HyperModule, *names: str) -> tuple[Plan, list[Tensor | None]]:
    """The call's plan and `names` of `module` shaped for it: externals as bound, other tensors (a bias that
    stayed a parameter) shared, or expanded to (B, ...) views when the plan is per-example."""
    bound = module.current_externals()
    if bound.plan.batch is None:
        return bound.plan, [getattr(module, name) for name in names]
    return bound.plan, [bound.batched(n, getattr(module, n)) for n in names]


def linear_forward(module: HyperModule, x: Tensor) -> Tensor:
    plan, (weight, bias) = _tensors(module, "weight", "bias")
    return HF.linear(x, weight, bias, plan)


def conv_forward(module: HyperModule, x: Tensor) -> Tensor:
    plan, (weight, bias) = _tensors(module, "weight", "bias")
    return HF.conv(
        x,
        weight,
        bias,
        plan,
        ndim=len(module.kernel_size),
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        padding_mode=module.padding_mode,
        reversed_padding_repeated_twice=module._reversed_padding_repeated_twice,
    )


def embedding_forward(module: HyperModule, ids: Tensor) -> Tensor:
    plan, (weight,) = _tensors(module, "weight")
    return HF.embedding(
        ids,
        weight,
        plan,
        module.padding_idx,
        max_norm=module.max_norm,
        norm_type=module.norm_type,
        scale_grad_by_freq=module.scale_grad_by_freq,
        sparse=module.sparse,
    )


# torch layers whose forward has a batched twin; used by hypernetized modules of these exact forwards
BATCHED_FORWARDS: dict[type[nn.Module], Callable[..., Any]] = {
    nn.Linear: linear_forward,
    nn.Conv1d: conv_forward,
    nn.Conv2d: conv_forward,
    nn.Conv3d: conv_forward,
    nn.Embedding: embedding_forward,
}


def batched_forward_for(cls: type[nn.Module]) -> Callable[..., Any] | None:
    """The batched forward for `cls`, if its `forward` is one of the torch layers above (not overridden)."""
    for base, fn in BATCHED_FORWARDS.items():
        if issubclass(cls, base) and cls.forward is base.forward:
            return fn
    return None


class HyperLinear(HyperModule):
    """`nn.Linear` whose `weight` (out, in) and `bias` (out,) are externals.

    >>> layer = HyperLinear(8, 16)
    >>> layer.external_shapes()
    {'weight': (16, 8), 'bias': (16,)}
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype | None = None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = ExternalParameter((out_features, in_features), dtype)
        if bias:
            self.bias = ExternalParameter((out_features,), dtype)
        else:
            self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        return linear_forward(self, x)

    def extra_repr(self) -> str:
        bias = "bias" in self._externals  # not `self.bias`: reading an unset external raises
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


class _HyperConvNd(HyperModule):
    _reference: type[nn.Module]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        # torch validates the arguments and derives the padding; the meta copy allocates nothing
        ref = self._reference(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device="meta",
        )
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, attr, getattr(ref, attr))
        self.padding_mode = ref.padding_mode
        self._reversed_padding_repeated_twice = ref._reversed_padding_repeated_twice
        self.weight = ExternalParameter(tuple(ref.weight.shape), dtype)
        if bias:
            self.bias = ExternalParameter((out_channels,), dtype)
        else:
            self.bias = None
        self._extra = ref.extra_repr()

    def forward(self, x: Tensor) -> Tensor:
        return conv_forward(self, x)

    def extra_repr(self) -> str:
        return self._extra


class HyperConv1d(_HyperConvNd):
    """`nn.Conv1d` with external `weight`/`bias`; every padding mode; per-example weights as a grouped conv."""

    _reference = nn.Conv1d


class HyperConv2d(_HyperConvNd):
    """`nn.Conv2d` with external `weight`/`bias`; every padding mode; per-example weights as a grouped conv."""

    _reference = nn.Conv2d


class HyperConv3d(_HyperConvNd):
    """`nn.Conv3d` with external `weight`/`bias`; every padding mode; per-example weights as a grouped conv."""

    _reference = nn.Conv3d


class HyperEmbedding(HyperModule):
    """`nn.Embedding` whose table (num_embeddings, embedding_dim) is an external."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"padding_idx must be within [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse = None, 2.0, False, False
        self.weight = ExternalParameter((num_embeddings, embedding_dim), dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return embedding_forward(self, ids)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
