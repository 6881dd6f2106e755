"""Batched kernels: one weight per example, one kernel call per layer (never a loop over examples).

Every function accepts shared weights (`shape`) or per-example weights (`(B, *shape)`), and returns the
same result as running each example alone with its own weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def batch_size_of(*tensors: Tensor | None, unbatched_dims: Sequence[int]) -> int | None:
    """The per-example batch size B of weights given as `(B, *shape)`, or None if all are shared."""
    batch = None
    for t, dims in zip(tensors, unbatched_dims):
        if t is not None and t.dim() == dims + 1:
            batch = t.shape[0]
    return batch


def check_input_batch(x: Tensor, batch: int, what: str) -> int:
    """How many input rows share each per-example weight: 1 normally, k when the input batch is k·B.

    An input batch that is a multiple k of the weight batch B uses weight b for rows b·k … b·k+k−1: the
    layout of `repeat_interleave`, which beam search and `num_return_sequences` use to expand a batch.
    """
    if x.dim() == 0 or x.shape[0] % batch != 0:
        got = tuple(x.shape)
        raise ValueError(
            f"{what}: per-example weights were set for a batch of {batch}, but the input has shape {got}; "
            f"the input's first dimension must be the batch ({batch}, or a multiple of it for expanded "
            "batches), or set shared weights instead"
        )
    return x.shape[0] // batch


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear` with `weight` (out, in) or (B, out, in) and `bias` (out,) or (B, out)."""
    batch = batch_size_of(weight, bias, unbatched_dims=(2, 1))
    if batch is None:
        return F.linear(x, weight, bias)
    check_input_batch(x, batch, "linear")
    x3 = x.reshape(batch, -1, x.shape[-1])  # (B, T, in)
    y = torch.bmm(x3, weight.transpose(1, 2)) if weight.dim() == 3 else x3 @ weight.T  # (B, T, out)
    if bias is not None:
        y = y + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def lowrank_add(y: Tensor, x: Tensor, lora_a: Tensor, lora_b: Tensor, scaling: float) -> Tensor:
    """`y + scaling * (x Aᵀ) Bᵀ` with A (r, in) or (B, r, in) and B (out, r) or (B, out, r).

    The factors are cast to the input's dtype, so an fp32 hypernetwork drives a bf16 base model. The
    scaling is folded into the small factor B and the addition into the second matmul
    (`addmm`/`baddbmm`), so no extra pass runs over the (B, T, out) activations.
    """
    lora_a = lora_a.to(x.dtype)
    lora_b = lora_b.to(x.dtype) * scaling if scaling != 1 else lora_b.to(x.dtype)
    batch = batch_size_of(lora_a, lora_b, unbatched_dims=(2, 2))
    out_features = lora_b.shape[-2]
    if batch is None:
        h = x.reshape(-1, x.shape[-1]) @ lora_a.T  # (N, r)
        return torch.addmm(y.reshape(-1, out_features), h, lora_b.T).reshape(*x.shape[:-1], out_features)
    check_input_batch(x, batch, "low-rank linear")
    x3 = x.reshape(batch, -1, x.shape[-1])  # (B, T, in)
    h = torch.bmm(x3, lora_a.transpose(1, 2)) if lora_a.dim() == 3 else x3 @ lora_a.T  # (B, T, r)
    b_t = lora_b.transpose(-1, -2) if lora_b.dim() == 3 else lora_b.T.expand(batch, -1, -1)  # (B, r, out)
    out = torch.baddbmm(y.reshape(batch, -1, out_features), h, b_t)
    return out.reshape(*x.shape[:-1], out_features)  # (B, T, out)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    ndim: int,
    stride: Sequence[int] | int = 1,
    padding: Sequence[int] | int | str = 0,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    reversed_padding_repeated_twice: Sequence[int] | None = None,
) -> Tensor:
    """`ndim`-d convolution with `weight` (O, C/g, *k) or (B, O, C/g, *k) and `bias` (O,) or (B, O).

    Per-example weights run as one grouped convolution: example b's channels become group block b of
    a single input `(1, B*C, *S)`, convolved with `(B*O, C/g, *k)` at `groups = B*g`.
    """
    conv_fn = _CONV[ndim]
    if padding_mode != "zeros":
        x = F.pad(x, list(reversed_padding_repeated_twice or ()), mode=padding_mode)
        padding = 0
    batch = batch_size_of(weight, bias, unbatched_dims=(ndim + 2, 1))
    if batch is None:
        return conv_fn(x, weight, bias, stride, padding, dilation, groups)
    if (k := check_input_batch(x, batch, f"conv{ndim}d")) > 1:  # expanded batch: repeat each weight k times
        weight = weight.repeat_interleave(k, 0) if weight.dim() == ndim + 3 else weight
        bias = bias.repeat_interleave(k, 0) if bias is not None and bias.dim() == 2 else bias
        batch *= k
    if weight.dim() == ndim + 2:  # shared weight, per-example bias
        y = conv_fn(x, weight, None, stride, padding, dilation, groups)
    else:
        out_channels = weight.shape[1]
        xg = x.reshape(1, batch * x.shape[1], *x.shape[2:])  # (1, B*C, *S)
        wg = weight.reshape(batch * out_channels, *weight.shape[2:])  # (B*O, C/g, *k)
        y = conv_fn(xg, wg, None, stride, padding, dilation, groups * batch)
        y = y.reshape(batch, out_channels, *y.shape[2:])  # (B, O, *S')
    if bias is not None:
        b = bias if bias.dim() == 2 else bias.unsqueeze(0)  # (B or 1, O)
        y = y + b.reshape(*b.shape, *([1] * ndim))
    return y


def embedding(ids: Tensor, weight: Tensor, padding_idx: int | None = None, **kwargs) -> Tensor:
    """`F.embedding` with `weight` (V, D) or (B, V, D): example b looks its ids up in table b."""
    if weight.dim() == 2:
        return F.embedding(ids, weight, padding_idx, **kwargs)
    if kwargs.get("max_norm") is not None:
        raise NotImplementedError(
            "per-example embedding tables do not support max_norm (it renormalises the table in place)"
        )
    batch = weight.shape[0]
    check_input_batch(ids, batch, "embedding")
    flat = ids.reshape(batch, -1)  # (B, N)
    rows = torch.arange(batch, device=ids.device).unsqueeze(1)
    out = weight[rows, flat]  # (B, N, D)
    if padding_idx is not None:
        # F.embedding sends no gradient to the padding row; do the same
        pad = (flat == (padding_idx % weight.shape[1])).unsqueeze(-1)
        out = torch.where(pad, out.detach(), out)
    return out.reshape(*ids.shape, weight.shape[-1])
