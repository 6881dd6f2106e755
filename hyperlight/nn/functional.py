"""Batched kernels: one weight per example, one kernel call per layer (never a loop over examples).

Each function takes the call's `Plan` explicitly: with `plan.batch` None every tensor has its plain shape;
otherwise every tensor has a leading B (`BoundValues.batched` gives shared ones as views) and the result
equals running each example alone with its own weight. Expanded inputs (k·B rows, beam search) follow
`Plan.rows_per_value`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor

from .binding import Plan


def _rows(x: Tensor) -> int:
    return x.shape[0] if x.dim() > 0 else -1


def _group(x: Tensor, batch: int) -> Tensor:
    """(B·k, ..., C) -> (B, k·…, C): the rows that share value b side by side (an empty batch stays empty).

    An x of that shape already is returned itself, not as a view of itself: the gradient of a view reaches x
    through a view node, and the autograd engine adds a view's gradient to x's other gradients (the base
    layer's) out of place, a new (B, T, C) tensor per layer, where a plain tensor is added into in place."""
    if x.dim() == 3 and x.shape[0] == batch:
        return x
    return x.reshape(batch, -1 if batch else 0, x.shape[-1])


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, plan: Plan) -> Tensor:
    """`F.linear`; per example: `weight` (B, out, in), `bias` (B, out), `x` (B·k, ..., in)."""
    batch = plan.batch
    if batch is None:
        return F.linear(x, weight, bias)
    plan.rows_per_value(_rows(x), "linear")
    x3 = _group(x, batch)  # (B, k·T, in): rows b·k … b·k+k−1 are contiguous
    y = torch.bmm(x3, weight.transpose(1, 2))  # (B, k·T, out)
    if bias is not None:
        y = y + bias.unsqueeze(1)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def lowrank_add(
    y: Tensor, x: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float, plan: Plan, *, in_place: bool = False
) -> Tensor:
    """`y + scaling * (x Aᵀ) Bᵀ` with A (r, in) and B (out, r); per example A (B, r, in) and B (B, out, r).

    The factors are cast to the input's dtype, so an fp32 hypernetwork drives a bf16 base model. The
    scaling is folded into the small factor B and the addition into the second matmul
    (`addmm`/`baddbmm`), so no extra pass runs over the (B, T, out) activations. `in_place=True` lets the
    per-example path add into `y` itself (no new (B, T, out) tensor; measured no gain for the shared path's
    `addmm`): only for a `y` nothing else holds, such as a linear layer's fresh output, whose backward does not
    need it. With autograd recording, the per-example path runs as `_PerExampleLowRank` (its backward below).
    """
    lora_a = lora_a.to(x.dtype)
    lora_b = lora_b.to(x.dtype) * scaling if scaling != 1 else lora_b.to(x.dtype)
    batch = plan.batch
    out_features = lora_b.shape[-2]
    if batch is None:
        h = x.reshape(-1, x.shape[-1]) @ lora_a.T  # (N, r)
        return torch.addmm(y.reshape(-1, out_features), h, lora_b.T).reshape(*x.shape[:-1], out_features)
    plan.rows_per_value(_rows(x), "low-rank linear")
    x3 = _group(x, batch)  # (B, k·T, in)
    # y itself when it has the grouped shape already (`_group`): autograd records an in-place op on a view as a
    # copy of the whole base in backward (CopySlices), a zero-filled buffer and two more passes per layer
    y3 = _group(y, batch)  # (B, k·T, out)
    if x.device.type == "cpu" and torch.is_grad_enabled() and not _transformed():
        # compiled and traced code get no in-place custom op: torch.compile (torch 2.13) traced its `mark_dirty`
        # variant into wrong gradients, torch.jit.trace refuses it; the compiler fuses the addition anyway
        in_place = in_place and not (torch.compiler.is_compiling() or torch.jit.is_tracing())
        # a y that shares memory with x (a caller breaking the in-place contract) would change the x saved for
        # backward, and the custom Function's saved tensors are versioned only after its forward: add out of place
        in_place = in_place and y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        # one dtype for every operand, the one autocast's baddbmm would give (in place: y's own); autocast leaves
        # float64 alone
        device = y.device.type
        autocast = torch.is_autocast_enabled(device) and {x.dtype, y.dtype} <= _AUTOCAST_CASTS
        dtype = torch.get_autocast_dtype(device) if autocast and not in_place else y.dtype
        out = _PerExampleLowRank.apply(
            y3 if in_place else y3.to(dtype), x3.to(dtype), lora_a.to(dtype), lora_b.to(dtype), in_place
        )
    else:  # a GPU, no backward to shape (inference), or a functorch transform / forward-mode AD: the builtin ops
        if x.device.type == "cpu":  # (A xᵀ)ᵀ: the narrow side (r) as rows, 1.5-2x faster on CPU
            h = torch.bmm(lora_a, x3.transpose(1, 2)).transpose(1, 2)  # (B, k·T, r)
        else:  # x Aᵀ: on a GPU a transposed x made autocast's cast and x's gradient strided kernels
            h = torch.bmm(x3, lora_a.transpose(1, 2))
        if in_place:  # in-place ops skip autocast: the operands take y's dtype, as autocast's baddbmm would
            out = y3.baddbmm_(h.to(y.dtype), lora_b.transpose(1, 2).to(y.dtype))
        else:
            out = torch.baddbmm(y3, h, lora_b.transpose(1, 2))
    return out.reshape(*x.shape[:-1], out_features)  # (B, T, out)


class _PerExampleLowRank(torch.autograd.Function):
    """`y + (x Aᵀ) Bᵀ` per example, with a backward whose every product has the narrow side (r) as rows or as
    the shared dimension, and whose gradient for x comes back contiguous. Autograd's own rules for the two `bmm`s
    compute dL/dh = g B with r as the output's narrow side (2-5x slower on a CPU than B gᵀ) and return x's or A's
    gradient transposed, which the accumulation into x's other gradients then adds or copies with strided kernels
    (on a GPU too: a strided kernel per layer). A training step of the benchmark's Llama on 2 CPU threads, paired
    with the builtin rules on the same instance: 239 -> 160 ms above the base at hidden 512, 17.1 -> 14.2 ms at
    hidden 256. Double backward recomputes h, so second derivatives see its dependence on x and A. CPU only: on
    an H200 it left the device time of a step as it was (64.6 vs 64.4 ms with x Aᵀ) and added host work (a Python
    Function per layer) where a step is bound by launching kernels."""

    @staticmethod
    def forward(ctx, y: Tensor, x: Tensor, a: Tensor, b: Tensor, in_place: bool) -> Tensor:
        with _no_autocast(y):  # every operand already has the dtype autocast would give
            h_t = torch.bmm(a, x.transpose(1, 2))  # (B, r, T): the narrow side as rows
            if in_place:
                out = y.baddbmm_(h_t.transpose(1, 2), b.transpose(1, 2))
                ctx.mark_dirty(y)
            else:
                out = torch.baddbmm(y, h_t.transpose(1, 2), b.transpose(1, 2))
        ctx.save_for_backward(x, a, b, h_t)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, a, b, h_t = ctx.saved_tensors
        _, need_x, need_a, need_b, _ = ctx.needs_input_grad
        grad_x = grad_a = grad_b = None
        with _no_autocast(g):
            if need_x or need_a:
                grad_h_t = torch.bmm(b.transpose(1, 2), g.transpose(1, 2))  # (B, r, T)
                grad_a = torch.bmm(grad_h_t, x) if need_a else None  # (B, r, in)
                grad_x = torch.bmm(grad_h_t.transpose(1, 2), a) if need_x else None  # (B, T, in)
            if need_b:
                if torch.is_grad_enabled():  # double backward: h's own dependence on x and A must be recorded
                    h_t = torch.bmm(a, x.transpose(1, 2))
                grad_b = torch.bmm(h_t, g).transpose(1, 2)  # (B, out, r), computed as (B, r, out)
        return g, grad_x, grad_a, grad_b, None


_AUTOCAST_CASTS = {torch.float32, torch.float16, torch.bfloat16}  # the dtypes autocast casts (not float64)


def _transformed() -> bool:
    """A functorch transform (vmap, grad, jvp) or forward-mode AD is active: `_PerExampleLowRank` defines
    neither a vmap rule nor a jvp, so the builtin ops run instead."""
    return torch._C._are_functorch_transforms_active() or getattr(forward_ad, "_current_level", -1) >= 0


def _no_autocast(t: Tensor):
    """Autocast off inside the custom kernel (its operands are cast beforehand), a no-op where it is off."""
    device = t.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    plan: Plan,
    *,
    ndim: int,
    stride: Sequence[int] | int = 1,
    padding: Sequence[int] | int | str = 0,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    reversed_padding_repeated_twice: Sequence[int] | None = None,
) -> Tensor:
    """`ndim`-d convolution with `weight` (O, C/g, *k) and `bias` (O,); per example (B, O, C/g, *k) and (B, O).

    Per-example weights run as one grouped convolution: example b's channels become group block b of
    a single input `(1, B*C, *S)`, convolved with `(B*O, C/g, *k)` at `groups = B*g`.
    """
    conv_fn = _CONV[ndim]
    if padding_mode != "zeros":
        x = F.pad(x, list(reversed_padding_repeated_twice or ()), mode=padding_mode)
        padding = 0
    batch = plan.batch
    if batch is None:
        return conv_fn(x, weight, bias, stride, padding, dilation, groups)
    if (k := plan.rows_per_value(_rows(x), f"conv{ndim}d")) > 1:  # expanded batch: repeat each weight k times
        weight = weight.repeat_interleave(k, 0)
        bias = bias.repeat_interleave(k, 0) if bias is not None else None
        batch *= k
    if batch == 0:  # an empty batch: the shape a plain conv gives
        return conv_fn(x, weight.new_zeros(weight.shape[1:]), None, stride, padding, dilation, groups)
    out_channels = weight.shape[1]
    xg = x.reshape(1, batch * x.shape[1], *x.shape[2:])  # (1, B*C, *S)
    wg = weight.reshape(batch * out_channels, *weight.shape[2:])  # (B*O, C/g, *k)
    y = conv_fn(xg, wg, None, stride, padding, dilation, groups * batch)
    y = y.reshape(batch, out_channels, *y.shape[2:])  # (B, O, *S')
    if bias is not None:
        y = y + bias.reshape(*bias.shape, *([1] * ndim))
    return y


def embedding(ids: Tensor, weight: Tensor, plan: Plan, padding_idx: int | None = None, **kwargs) -> Tensor:
    """`F.embedding` with `weight` (V, D); per example (B, V, D): example b looks its ids up in table b."""
    if plan.batch is None:
        return F.embedding(ids, weight, padding_idx, **kwargs)
    if kwargs.get("max_norm") is not None:
        raise NotImplementedError(
            "per-example embedding tables do not support max_norm (it renormalises the table in place)"
        )
    batch = plan.batch
    plan.rows_per_value(_rows(ids), "embedding")
    flat = ids.reshape(batch, -1 if batch else 0)  # (B, k·N)
    rows = torch.arange(batch, device=ids.device).unsqueeze(1)
    out = weight[rows, flat]  # (B, N, D)
    if padding_idx is not None:
        # F.embedding sends no gradient to the padding row; do the same
        pad = (flat == (padding_idx % weight.shape[1])).unsqueeze(-1)
        out = torch.where(pad, out.detach(), out)
    return out.reshape(*ids.shape, weight.shape[-1])
