"""A call's conditions -> its weights: each distinct condition generated once, picked for the rows.

On the CPU the distinct rows are found with `torch.unique`; on an accelerator, where that would make the host wait
for the device, what is known without reading values decides (`_generate_without_sync`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..hypernet.conditions import ConditionEncoder, first_rows
from ..hypernetize import original_value


def conditioned_weights(
    encoder: ConditionEncoder,
    generator: nn.Module,
    targets: Mapping[str, nn.Module],
    full_mode: bool,
    batch_size: int | None,
    conditions: Mapping[str, Any],
) -> tuple[dict[str, dict[str, Tensor]], int | None]:
    """(weights, B) for a call: B is None when every row shares one condition and the weights are unbatched.

    Weights are generated once per distinct condition of the batch (unless a condition requires grad: then every
    row is, so each row's condition gets its own gradient), then picked for the rows and, in full mode, cast to the
    pretrained values' dtype."""
    cast = functools.partial(_cast, targets, full_mode)
    checked = encoder.check(conditions, batch_size)
    rows = next(iter(checked.values())).shape[0]
    if rows == 0:  # an empty batch: nothing to generate; the targets compute as the pretrained model would
        return {}, None
    if torch.compiler.is_compiling() or any(v.requires_grad for v in checked.values()):
        # under torch.compile: no data-dependent shapes, so changing conditions never recompile;
        # with conditions that require grad: no deduplication, every row gets its own gradient
        return cast(generator(encoder(checked)), None), rows
    if next(iter(checked.values())).device.type != "cpu":
        return _generate_without_sync(encoder, generator, cast, checked, rows)
    keys = torch.cat([v.reshape(v.shape[0], -1).to(torch.float64) for v in checked.values()], dim=1)  # (B, K)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if unique.shape[0] == keys.shape[0] > 1:  # all rows distinct: generate in batch order, nothing to gather
        return cast(generator(encoder(checked)), None), rows
    first = first_rows(inverse, unique.shape[0])
    z = encoder({k: v[first] for k, v in checked.items()})  # (U, D)
    if unique.shape[0] == 1:
        return cast(generator(z), 0), None  # one condition: shared weights
    return cast(generator(z), inverse), rows  # (U, ...) -> (B, ...)


def _generate_without_sync(
    encoder: ConditionEncoder, generator: nn.Module, cast: Callable, checked: Mapping[str, Tensor], rows: int
) -> tuple[dict[str, dict[str, Tensor]], int | None]:
    """`conditioned_weights` on an accelerator, where finding the distinct rows (`torch.unique`) would make the host
    wait for the device. What is known without reading values decides instead: one value given for the whole batch
    (an expanded tensor, stride 0) -> one generator row, shared; only categorical conditions with fewer than B
    combinations -> every combination once, each row indexing its own; otherwise every row is generated (no
    gathers: as cheap as the table when it would have as many rows)."""
    if all(v.shape[0] == 1 or v.stride(0) == 0 for v in checked.values()):
        z = encoder({k: v[:1] for k, v in checked.items()})
        return cast(generator(z), 0), None
    specs = encoder.specs
    sizes = [specs[k].num if specs[k].type == "categorical" else None for k in checked]
    if None in sizes or math.prod(sizes) >= rows:  # no fewer rows than the batch: generate it as it is
        return cast(generator(encoder(checked)), None), rows
    device = next(iter(checked.values())).device
    grids = torch.meshgrid(*[torch.arange(n, device=device) for n in sizes], indexing="ij")
    table = {k: g.reshape(-1) for k, g in zip(checked, grids)}  # every combination, in row-major order
    index = torch.zeros(rows, dtype=torch.long, device=device)
    for k, n in zip(checked, sizes):
        index = index * n + checked[k]
    return cast(generator(encoder(table)), index), rows


def _cast(
    targets: Mapping[str, nn.Module],
    full_mode: bool,
    generated: dict[str, dict[str, Tensor]],
    pick: Tensor | int | None,
) -> dict[str, dict[str, Tensor]]:
    """Pick the rows for the batch (None: as they are; an int: that one row; a tensor: gathered) and, in
    full mode, cast to the dtype of the pretrained values (lora factors are cast where they are used)."""
    out: dict[str, dict[str, Tensor]] = {}
    for target, tensors in generated.items():
        module = targets[target]
        picked = {}
        for name, value in tensors.items():
            if isinstance(pick, int):
                value = value[pick]
            elif pick is not None:
                value = value.index_select(0, pick)
            if full_mode:
                value = value.to(original_value(module, name).dtype)
            picked[name] = value
        out[target] = picked
    return out
