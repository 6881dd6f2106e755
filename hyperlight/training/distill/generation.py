"""Generating the weights of a batch of the library's conditions through the hyper model, batched when the
condition values collate (checked against single calls), and checking every condition value before training."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .adapter_files import Adapter
from .errors import AdapterKeyError

if TYPE_CHECKING:
    from ...plugin.model import HyperModel


def _kind(value: Any) -> tuple:
    """What collation depends on: values of one kind collate alike, whichever subset forms a batch."""
    if isinstance(value, Tensor):
        return (Tensor, tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return (type(value), len(value), *sorted({repr(k) for k in map(_kind, value)}))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (numbers.Real,)  # ints and floats collate together (torch.tensor([0, 0.5]))
    return (type(value),)


def _collate(values: list[Any]) -> Any:
    """One batch value for one condition from per-adapter values (a guess, verified against single calls)."""
    if all(isinstance(v, Tensor) for v in values):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) == 1 and values[0].dim() >= 1 and values[0].shape[0] == 1:
            return torch.cat(values)  # values given as batches of one
        return torch.stack(values)
    if all(isinstance(v, str) for v in values):
        return list(values)
    try:
        return torch.tensor(values)  # numbers, or lists of numbers (vectors)
    except (TypeError, ValueError, RuntimeError):
        return list(values)


class Generation:
    """Generates the weights of a batch of adapters' conditions, `{target: {external: (b, *shape)}}`: in one
    batched call of the hyper model when the values collate into one (checked once against single calls), one
    call per condition otherwise. Condition values are passed through as given."""

    def __init__(self, hyper: HyperModel, conditions: list[dict[str, Any]]) -> None:
        self.hyper = hyper
        self.conditions = conditions
        self.batched = False

    def single(self, index: int) -> dict[str, dict[str, Tensor]]:
        return self._batch_dims(self.hyper.generate_weights(1, **self.conditions[index]))

    def __call__(self, indices: list[int]) -> dict[str, dict[str, Tensor]]:
        if len(indices) == 1:
            return self.single(indices[0])
        if self.batched:
            return self._batch_dims(self.hyper.generate_weights(len(indices), **self._collated(indices)))
        rows = [self.single(i) for i in indices]
        return {t: {n: torch.cat([row[t][n] for row in rows]) for n in rows[0][t]} for t in rows[0]}

    def _collated(self, indices: list[int]) -> dict[str, Any]:
        names = self.conditions[0]
        return {name: _collate([self.conditions[i][name] for i in indices]) for name in names}

    def _batch_dims(self, generated: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
        shapes = self.hyper.target_shapes
        return {
            t: {n: v.unsqueeze(0) if v.dim() == len(shapes[t][n]) else v for n, v in tensors.items()}
            for t, tensors in generated.items()
        }

    def _embedding(self, values: Mapping[str, Any], rows: int) -> Tensor:
        encoder = self.hyper.condition_encoder
        return encoder(encoder.check(values, rows))

    def try_batching(self, indices: list[int]) -> None:
        """Batch from now on if every condition's values are of one kind (type, shape) across the library and the
        collated values of `indices` embed, row by row, as each value alone does (the generator maps rows
        independently, so equal embeddings mean equal weights). Embeddings, not weights, are compared: they differ
        per condition from the start, whereas a fresh full-mode generator gives every condition the same weights,
        which would prove nothing."""
        if len(indices) < 2:
            return
        names = self.conditions[0]
        if any(len({_kind(c[name]) for c in self.conditions}) > 1 for name in names):
            return  # values of mixed kinds: a random batch might not collate as the verified one did
        try:
            with torch.no_grad():
                batch = self._embedding(self._collated(indices), len(indices))
                alone = torch.cat([self._embedding(self.conditions[i], 1) for i in indices])
        except (TypeError, ValueError, RuntimeError, IndexError):
            return  # the hyper model takes these values one at a time only
        if batch.shape == alone.shape and torch.allclose(batch, alone, rtol=1e-5, atol=1e-6):
            self.batched = True


def _canonical(value: Any) -> Any:
    """A hashable stand-in for a condition value, equal for equal values however given (1, 1.0, tensor(1));
    values of unknown kinds stand for themselves only."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().flatten().tolist()
    if isinstance(value, (list, tuple)):
        items = tuple(_canonical(v) for v in value)
        return items[0] if len(items) == 1 else items
    if isinstance(value, (str, bytes, numbers.Number)):
        return value
    return ("object", id(value))


def check_conditions(hyper: HyperModel, generation: Generation, library: list[Adapter]) -> None:
    """No two adapters under the same condition; every condition value through the hyper model itself (one at a
    time, as given); then whether they batch."""
    seen: dict[tuple, Adapter] = {}
    for adapter in library:
        key = tuple(_canonical(v) for v in adapter.conditions.values())
        if key in seen:
            raise AdapterKeyError(
                f"adapters {seen[key].path} and {adapter.path} are both given the condition {adapter.conditions}; "
                "give each adapter its own condition (the hyper model generates one update per condition)"
            )
        seen[key] = adapter
    hyper.condition_encoder.eval()
    hyper.generator.eval()
    with torch.no_grad():
        for i, adapter in enumerate(library):
            try:
                generation.single(i)
            except (TypeError, ValueError) as err:
                raise AdapterKeyError(
                    f"the condition {adapter.conditions} given for adapter {adapter.path} is not valid for this hyper "
                    f"model ({hyper.condition_encoder.describe()}): {err}"
                ) from err
    generation.try_batching(list(range(min(len(library), 8))))
