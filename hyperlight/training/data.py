"""The data side of conditioned training: a collator that keeps condition columns, and temperature-based
multi-task mixing (as HyperFormer and Hyper-X train), usable with `Trainer` and with DDP."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler


class HyperDataCollator:
    """Pads model inputs with `collator` (or `DataCollatorWithPadding(tokenizer)`) and stacks each condition
    column into a tensor (ids -> int64, numbers and vectors -> float32); text columns stay lists of str.

    `repeat=k` tiles the conditions k times along the batch, for collators that make k rows of each example in
    k blocks (TRL's preference collator: all chosen rows, then all rejected rows, so `repeat=2`).

    `prompt_mask=True` (for a model with input conditions) adds each row's prompt, the attended tokens before its
    first labelled one, as a `prompt_mask` column: it stays in the batch when a trainer takes the labels out before
    calling the model (`label_smoothing_factor`, `compute_loss_func`). `conditions` may then be empty.

    >>> collate = HyperDataCollator(["task"])
    >>> batch = collate([{"input_ids": [1, 2], "task": 0}, {"input_ids": [3, 4], "task": 2}])
    >>> batch["task"], batch["input_ids"].shape
    (tensor([0, 2]), torch.Size([2, 2]))
    """

    def __init__(
        self,
        conditions: Sequence[str],
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
        *,
        tokenizer: Any = None,
        repeat: int = 1,
        prompt_mask: bool = False,
    ) -> None:
        if isinstance(conditions, str) or not isinstance(conditions, Sequence) or not (conditions or prompt_mask):
            raise TypeError(f"conditions must be a non-empty list of column names, got {conditions!r}")
        if collator is not None and tokenizer is not None:
            raise ValueError("give either collator= or tokenizer=, not both")
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ValueError(f"repeat must be a positive int (the rows made of each example), got {repeat!r}")
        self.conditions = list(conditions)
        self.prompt_mask = bool(prompt_mask)
        self.repeat = repeat
        self.collator = collator
        self.tokenizer = tokenizer

    def _inner(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if self.collator is not None:
            return self.collator(features)
        if self.tokenizer is not None:
            from transformers import DataCollatorWithPadding

            self.collator = DataCollatorWithPadding(self.tokenizer)
            return self.collator(features)
        from transformers import default_data_collator

        return default_data_collator(features)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [dict(f) for f in features]
        values: dict[str, list[Any]] = {}
        for name in self.conditions:
            missing = [i for i, f in enumerate(features) if name not in f]
            if missing:
                raise KeyError(
                    f"condition column '{name}' is missing from example(s) {missing[:5]}; every example needs "
                    f"its condition values ({self.conditions})"
                )
            values[name] = [f.pop(name) for f in features]
        batch = dict(self._inner(features))
        for name, column in values.items():
            stacked = stack_column(column)
            if self.repeat > 1:
                stacked = (
                    stacked * self.repeat
                    if isinstance(stacked, list)
                    else stacked.repeat(self.repeat, *[1] * (stacked.dim() - 1))
                )
            batch[name] = stacked
        if self.prompt_mask:
            if not isinstance(batch.get("labels"), torch.Tensor) or batch["labels"].dim() != 2:
                raise KeyError(
                    "prompt_mask=True marks each row's prompt by its labels (the tokens before the first labelled "
                    f"one), and this batch has no (B, T) labels (keys: {sorted(batch)}); give the collator labels"
                )
            from ..plugin.input_conditions import NO_PROMPT_BEFORE_LABELS, prompt_mask_from_labels

            prompt = prompt_mask_from_labels(batch["labels"], batch.get("attention_mask"))
            empty = (prompt.sum(-1) == 0).nonzero().flatten().tolist()
            if empty:
                rows = f"example(s) {empty[:16]} of the batch"
                raise ValueError(f"{rows} have no prompt token: {NO_PROMPT_BEFORE_LABELS}")
            batch["prompt_mask"] = prompt
        return batch


def stack_column(column: list[Any]) -> torch.Tensor | list[str]:
    """One condition column of a batch: strings stay a list (text, or named values), numbers become a tensor."""
    if all(isinstance(v, str) for v in column):
        return list(column)  # a text condition: its strings, embedded by the model's sentence encoder
    if all(isinstance(v, torch.Tensor) for v in column):
        return torch.stack(column)
    tensor = torch.as_tensor(column)
    return tensor.float() if tensor.is_floating_point() else tensor.long()


def mixing_weights(sizes: Sequence[int], temperature: float) -> list[float]:
    """Task probabilities `p_t ∝ n_t^(1/T)`: T=1 samples proportionally to size, large T uniformly."""
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError(f"every task needs at least one example, got sizes {list(sizes)}")
    raw = [n ** (1.0 / temperature) for n in sizes]
    total = sum(raw)
    return [r / total for r in raw]


class MultiTaskSampler(Sampler[int]):
    """Samples example indices with temperature-based task mixing; each batch mixes tasks.

    Tasks are drawn with `p_t ∝ n_t^(1/T)`; within a task, examples come in a fresh random order each
    pass. The global order depends only on `seed` and the epoch (`set_epoch`), and under DDP each rank takes
    a disjoint shard of it (`rank::world_size`), read from `torch.distributed` when not given.

    Args:
        tasks: the task of each example (e.g. `dataset["task"]`).
        temperature: T (1 = proportional to size; HyperFormer/Hyper-X use larger T to upsample small tasks).
        num_samples: examples per epoch over all ranks (default: the dataset size).
    """

    def __init__(
        self,
        tasks: Sequence[int],
        *,
        temperature: float = 1.0,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        task_list = [int(t) for t in tasks]
        self.by_task: dict[int, list[int]] = {}
        for index, task in enumerate(task_list):
            self.by_task.setdefault(task, []).append(index)
        self.task_ids = sorted(self.by_task)
        self.weights = mixing_weights([len(self.by_task[t]) for t in self.task_ids], temperature)
        if world_size is None or rank is None:
            dist = torch.distributed
            initialized = dist.is_available() and dist.is_initialized()
            world_size = dist.get_world_size() if initialized else 1
            rank = dist.get_rank() if initialized else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        total = len(task_list) if num_samples is None else int(num_samples)
        self.num_samples = (total // world_size) * world_size  # every rank gets the same number
        if self.num_samples <= 0:
            raise ValueError(f"num_samples ({total}) must be at least world_size ({world_size})")
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        draws = torch.multinomial(torch.tensor(self.weights), self.num_samples, replacement=True, generator=g)
        queues: dict[int, list[int]] = {}
        order = []
        for slot in draws.tolist():
            task = self.task_ids[slot]
            if not queues.get(task):
                members = self.by_task[task]
                queues[task] = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
            order.append(queues[task].pop())
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.world_size])

    def __len__(self) -> int:
        return self.num_samples // self.world_size


def temperature_mixture(
    dataset: Any, task_column: str, *, temperature: float = 1.0, num_samples: int | None = None, seed: int = 0
) -> Any:
    """A `datasets.Dataset` resampled with temperature mixing: hand it to `Trainer` as the train set, and
    Trainer's shuffling (and, under DDP, its per-rank sharding) gives mixed-task batches."""
    if task_column not in dataset.column_names:
        raise KeyError(f"no column '{task_column}' in the dataset; its columns are {dataset.column_names}")
    sampler = MultiTaskSampler(
        dataset[task_column], temperature=temperature, num_samples=num_samples, seed=seed, rank=0, world_size=1
    )
    return dataset.select(sampler.global_order())
