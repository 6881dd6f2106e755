"""The fallback for modules without a batched kernel: `torch.func.vmap` over the module's own forward.

Inside the vmap every per-example external of the subtree is swapped for its slice, so any module built
from vmappable ops (norms, activations, attention, user code) computes example b with weight b.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .module import HyperModule


def _batched_entries(root: HyperModule, batch: int) -> list[tuple[HyperModule, str, Tensor]]:
    entries = []
    for module in root.modules():
        if isinstance(module, HyperModule) and module._external_batch is not None:
            for name, value in module._external_values.items():
                if value.dim() == len(module._externals[name].shape) + 1:
                    if value.shape[0] != batch:
                        raise ValueError(
                            f"per-example externals below '{type(root).__name__}' have batch sizes {batch} and "
                            f"{value.shape[0]} ('{module._full_name(name)}'); give them all the same B"
                        )
                    entries.append((module, name, value))
    return entries


def _in_dims(tree: Any, batch: int) -> Any:
    """0 for tensors whose first dimension is the batch, None for everything else (same structure)."""
    if isinstance(tree, Tensor):
        return 0 if tree.dim() > 0 and tree.shape[0] == batch else None
    if isinstance(tree, (tuple, list)):
        return type(tree)(_in_dims(t, batch) for t in tree)
    if isinstance(tree, dict):
        return {k: _in_dims(v, batch) for k, v in tree.items()}
    return None


def per_example_forward(
    root: HyperModule, forward: Callable[..., Any], batch: int, args: tuple, kwargs: dict[str, Any]
) -> Any:
    """Run `forward(*args, **kwargs)` once per example under `vmap`, example b with externals b."""
    entries = _batched_entries(root, batch)
    first = next((t for t in _flatten((args, kwargs)) if isinstance(t, Tensor) and t.dim() > 0), None)
    if first is not None and first.shape[0] != batch and first.shape[0] % batch == 0:
        # an expanded batch (beam search, num_return_sequences): rows b·k … b·k+k−1 share weight b
        k = first.shape[0] // batch
        entries = [(m, n, v.repeat_interleave(k, 0)) for m, n, v in entries]
        batch *= k
    if not any(isinstance(d, int) for d in _flatten(_in_dims((args, kwargs), batch))):
        raise ValueError(
            f"{type(root).__name__}: per-example externals were set for a batch of {batch}, but no input "
            f"tensor has a first dimension of {batch}"
        )
    modules = {id(m): m for m, _, _ in entries}

    def one_example(values: list[Tensor], a: tuple, kw: dict[str, Any]) -> Any:
        saved = [(m, m._external_batch) for m in modules.values()]
        previous = [module._external_values[name] for module, name, _ in entries]
        for (module, name, _), value in zip(entries, values):
            module._external_values[name] = value
        for module in modules.values():
            module.__dict__["_external_batch"] = None
        try:
            return forward(*a, **kw)
        finally:
            for (module, name, _), value in zip(entries, previous):
                module._external_values[name] = value
            for module, b in saved:
                module.__dict__["_external_batch"] = b

    values = [v for _, _, v in entries]
    in_dims = (0, _in_dims(args, batch), _in_dims(kwargs, batch))
    # each example runs as a batch of one, `(1, ...)`, exactly as `module(x[b:b+1])` would: modules that need
    # a batch dimension (BatchNorm, batch-first attention, user code reading x.shape[0]) work unchanged
    args, kwargs = _map(args, _keep_batch_dim, batch), _map(kwargs, _keep_batch_dim, batch)
    out = torch.func.vmap(one_example, in_dims=in_dims, randomness="different")(values, args, kwargs)
    return _map(out, _drop_batch_dim, batch)


def _keep_batch_dim(t: Tensor, batch: int) -> Tensor:
    return t.unsqueeze(1) if t.dim() > 0 and t.shape[0] == batch else t  # (B, ...) -> (B, 1, ...)


def _drop_batch_dim(t: Tensor, batch: int) -> Tensor:
    return t.squeeze(1) if t.dim() > 1 and t.shape[1] == 1 else t  # (B, 1, ...) -> (B, ...)


def _map(tree: Any, fn: Callable[[Tensor, int], Tensor], batch: int) -> Any:
    if isinstance(tree, Tensor):
        return fn(tree, batch)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(t, fn, batch) for t in tree)
    if isinstance(tree, dict):
        return {k: _map(v, fn, batch) for k, v in tree.items()}
    return tree


def _flatten(tree: Any) -> list[Any]:
    if isinstance(tree, (tuple, list)):
        return [x for t in tree for x in _flatten(t)]
    if isinstance(tree, dict):
        return [x for t in tree.values() for x in _flatten(t)]
    return [tree]
