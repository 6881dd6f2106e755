"""Binding a call when a library has replaced a hyper model's `forward` on the instance.

TRL's fused LM head and Accelerate's autocast wrapper assign `model.forward = ...`; the replacement may never reach
`HyperModel.forward`, which is where a call normally binds its generated weights. These two hooks (a forward
pre-hook and an always-called forward hook, registered by `HyperModel.__init__`) bind the call around whatever
forward runs instead, after the hooks registered before them (FSDP's unsharding prepends itself).
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

from torch import nn


class _ReplacedForwardCalls(threading.local):
    """Per thread (a call's hooks and forward run on one thread, and torch.compile can read a thread-local):
    `open`, the calls the hooks below bound, innermost last, each with what to close and restore; `bound`, the
    hyper model whose hooks bound a call that has not yet reached `HyperModel.forward`."""

    def __init__(self) -> None:
        self.open: list[list[Any]] = []  # [hyper, ExitStack, GradientSink | None, the previous `bound`]
        self.bound: nn.Module | None = None


REPLACED = _ReplacedForwardCalls()


def bind_replaced_forward(hyper: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    """Forward pre-hook: binds the call (`hyper._bound_call`) when the instance's `forward` was replaced."""
    if "forward" not in hyper.__dict__:
        return None  # HyperModel.forward runs and binds the call itself
    kwargs = dict(kwargs)
    entry: list[Any] = [hyper, ExitStack(), None, REPLACED.bound]
    REPLACED.open.append(entry)  # first: the post-hook runs even when binding raises, and closes this entry
    entry[2] = entry[1].enter_context(hyper._bound_call(args, kwargs))
    REPLACED.bound = hyper  # if the replacement calls HyperModel.forward, that binds nothing more
    return args, kwargs


def unbind_replaced_forward(hyper: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook (always called): closes what `bind_replaced_forward` opened for this call."""
    calls = REPLACED.open
    if not calls or calls[-1][0] is not hyper:
        return None
    _, stack, sink, previous = calls.pop()
    REPLACED.bound = previous
    stack.close()
    if sink is not None and output is not None:
        sink.attach(output)
    return None
