"""Gradient checkpointing and generated weights.

Checkpointing re-runs a layer's forward during backward: after the call returned, possibly after other
forwards, possibly on another thread. `BindingCheckpoint` wraps the checkpoint function Transformers hands
each layer so the function it checkpoints is bound to the call's externals (`bound_to_now`): the
recompute reads the weights of the forward it recomputes.

With `use_reentrant=True`, each checkpointed layer runs its own nested `backward` during the outer one. If
layers read generated tensors directly, every nested backward walks on into the generator's graph, and the
second one fails ("Trying to backward through the graph a second time"). So while reentrant-style
checkpointing is on, the layers get detached leaf copies of the generated tensors; their gradients
accumulate there, and one backward through the generator runs when the outer backward finishes.
(Non-reentrant checkpointing needs no sink.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.binding import bound_to_now


class BindingCheckpoint:
    """A layer's `_gradient_checkpointing_func` that binds the checkpointed function to the current call."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.inner(bound_to_now(function), *args, **kwargs)

    @property
    def keywords(self) -> dict[str, Any]:  # the checkpoint arguments, as functools.partial shows them
        return getattr(self.inner, "keywords", {})


def bind_checkpointing(modules: Iterable[nn.Module]) -> None:
    """Make every checkpointing layer's function a `BindingCheckpoint` (idempotent: Transformers installs a new
    function at each `gradient_checkpointing_enable`, so this runs before each call)."""
    for module in modules:
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is not None and not isinstance(func, BindingCheckpoint):
            module._gradient_checkpointing_func = BindingCheckpoint(func)


def unbind_checkpointing(modules: Iterable[nn.Module]) -> None:
    """Give the layers back the checkpoint functions they had (used when the base model is released)."""
    for module in modules:
        func = getattr(module, "_gradient_checkpointing_func", None)
        if isinstance(func, BindingCheckpoint):
            module._gradient_checkpointing_func = func.inner


def uses_reentrant_checkpointing(modules: list[nn.Module]) -> bool:
    """True if a Transformers layer in `modules` will checkpoint (checkpointing on, training mode) with
    `use_reentrant` true (or unspecified, torch's historical default)."""
    for module in modules:
        if getattr(module, "gradient_checkpointing", False) is True and module.training:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(func, "keywords", {}).get("use_reentrant", True):
                return True
    return False


class GradientSink:
    """Detached leaves standing in for generated tensors; `flush` sends their gradients into the generator."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Tensor, Tensor]] = []
        self.queued = False

    def leaf(self, value: Tensor) -> Tensor:
        if not value.requires_grad:
            return value
        leaf = value.detach().requires_grad_()
        self.pairs.append((value, leaf))
        return leaf

    def attach(self, output: Any) -> None:
        """Hook the output tensors: the first gradient to reach one queues the flush for the end of backward."""

        def hook(grad: Tensor) -> Tensor:
            if not self.queued:
                self.queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self.flush)
            return grad

        for tensor in _tensors(output):
            if tensor.requires_grad:
                tensor.register_hook(hook)

    def flush(self) -> None:
        sources = [(value, leaf.grad) for value, leaf in self.pairs if leaf.grad is not None]
        for _, leaf in self.pairs:
            leaf.grad = None
        self.queued = False
        if sources:
            torch.autograd.backward([v for v, _ in sources], [g for _, g in sources])


def _tensors(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in _tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _tensors(v)]
    return []
