"""The fallback for modules without a batched kernel: `torch.func.vmap` over the module's own forward.

Inside the vmap, one example's slices of the per-example values of the subtree are bound as a nested call
(nothing on the modules changes), so any module built from vmappable ops (norms, activations, attention,
user code) computes example b with weight b.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .binding import BoundValues, Plan, bind
from .module import HyperModule


def _refuse_unsupported(root: nn.Module) -> None:
    for module in root.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            name = getattr(type(module), "_hl_base", type(module)).__name__
            raise NotImplementedError(
                f"per-example weights are not supported for {name} in training mode: its batch "
                "statistics mix the examples of a batch, so no result equals running each example alone. Use "
                "eval() for it, a per-example-safe norm (GroupNorm, LayerNorm), or shared (unbatched) weights"
            )


def _per_example_entries(root: HyperModule, plan: Plan) -> list[tuple[HyperModule, BoundValues]]:
    entries = []
    for module in root.modules():
        if isinstance(module, HyperModule):
            bound = module.current_externals()
            if bound.plan.batch is not None:
                if bound.plan.batch != plan.batch:
                    raise ValueError(
                        f"per-example externals below {type(root).__name__} were given for batches of {plan.batch} "
                        f"and {bound.plan.batch} ({type(module).__name__}); give them all the same B"
                    )
                entries.append((module, bound))
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


def per_example_forward(root: HyperModule, forward: Callable[..., Any], plan: Plan, args: tuple, kwargs: dict) -> Any:
    """Run `forward(*args, **kwargs)` once per example under `vmap`, example b with its values b."""
    _refuse_unsupported(root)
    assert plan.batch is not None
    entries = _per_example_entries(root, plan)
    first = next((t for t in _flatten((args, kwargs)) if isinstance(t, Tensor) and t.dim() > 0), None)
    if first is None:
        raise ValueError(
            f"{type(root).__name__}: per-example externals were given for a batch of {plan.batch}, but no input "
            "tensor has a batch dimension"
        )
    k = plan.rows_per_value(first.shape[0], type(root).__name__)
    batch = plan.batch * k
    # the per-example values, each repeated k times for an expanded batch (rows b·k … b·k+k−1 use value b)
    slots = [(module, name) for module, bound in entries for name in bound.per_example]
    values = [bound.values[name] for _, bound in entries for name in bound.per_example]
    if k > 1:
        values = [v.repeat_interleave(k, 0) for v in values]

    def one_example(example_values: list[Tensor], a: tuple, kw: dict[str, Any]) -> Any:
        own: dict[HyperModule, dict[str, Tensor]] = {m: dict(bound.values) for m, bound in entries}
        for (module, name), value in zip(slots, example_values):
            own[module][name] = value
        with bind({m: BoundValues(v) for m, v in own.items()}):  # shared plan: one example's values
            return forward(*a, **kw)

    if batch == 0:  # an empty batch: no example to vmap over; run once for the shapes a plain call gives
        return one_example([v.new_zeros(v.shape[1:]) for v in values], args, kwargs)
    if not any(isinstance(d, int) for d in _flatten(_in_dims((args, kwargs), batch))):
        raise ValueError(
            f"{type(root).__name__}: per-example externals were given for a batch of {batch}, but no input "
            f"tensor has a first dimension of {batch}"
        )

    in_dims = (0, _in_dims(args, batch), _in_dims(kwargs, batch))
    # each example runs as a batch of one, `(1, ...)`, exactly as `module(x[b:b+1])` would: modules that need
    # a batch dimension (batch-first attention, user code reading x.shape[0]) work unchanged
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
