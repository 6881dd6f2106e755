"""TRL's trainers for hyper models: SFT, DPO and GRPO with per-example conditions taken from dataset columns.

Given a hyper model, TRL's own trainers would lose the conditions: they keep only the dataset columns they know,
their collators build only the tensors they know, and DPO loads a second reference model from the hub unless the
policy is a PEFT model. `HyperSFTTrainer` and `HyperDPOTrainer` are TRL's trainers, with their arguments,
collators and defaults, changed in exactly three ways:

- the hyper model's condition columns survive `remove_unused_columns` and are collated next to TRL's batch
  (tiled for DPO, whose collator puts all chosen rows, then all rejected rows, in one batch);
- DPO's reference is the pretrained model inside the hyper model, run with the adapter disabled as PEFT's
  reference is (`PretrainedReference`): it shares every weight, so there is no second copy;
- set-ups where one row holds several examples (`packing`, `padding_free`) are refused, since per-example
  conditions need one example per row; so is `sync_ref_model`, which would blend the policy into the shared base.

`HyperGRPOTrainer` also carries each prompt's conditions to generation (the completions are sampled with the
prompt's weights), to the scoring of old, reference and current log-probabilities, and through TRL's shuffling
of the generation batch; reward functions see the condition columns as keyword arguments, as they see any column.

Importing this module imports `trl` (the `trl` extra).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
import trl
from torch import nn

from ..plugin.model import HyperModel
from .data import HyperDataCollator, stack_column


def _require_hyper(model: Any, trainer: str) -> HyperModel:
    if not isinstance(model, HyperModel):
        raise TypeError(
            f"{trainer} trains a hyper model: pass model=get_hyper_model(base, HyperConfig(...)) (or "
            f"HyperModel.from_pretrained(...)), got {type(model).__name__}. For a plain or PEFT model use "
            f"trl.{trainer.removeprefix('Hyper')}"
        )
    return model


def _refuse_input_conditions(hyper: HyperModel, trainer: str) -> None:
    """Preference and RL trainers score prompt + completion rows without labels that mark the prompt: an input
    condition would pool the completion too, and give each completion of one prompt different weights."""
    computed = [n for n, s in hyper.condition_encoder.specs.items() if s.type == "input"]
    if computed:
        raise NotImplementedError(
            f"{trainer} scores prompt + completion rows that do not mark where the prompt ends, so the input "
            f"conditions {computed} would be computed from the completions too. Train input conditions with "
            "HyperSFTTrainer (prompt/completion data) or Trainer (labels -100 on the prompt)"
        )


def _refuse_packed_rows(args: Any, trainer: str) -> None:
    packed = [name for name in ("packing", "padding_free") if getattr(args, name, False)]
    if packed:
        raise ValueError(
            f"{trainer} needs one example per row, since each row gets the weights of its own conditions; "
            f"{' and '.join(f'{n}=True' for n in packed)} would put several examples (with different conditions) "
            f"in one row. Set {', '.join(f'{n}=False' for n in packed)} in the config"
        )


class _ConditionColumns:
    """Keeps the hyper model's condition columns through TRL's column filter and collator."""

    _rows_per_example = 1  # rows TRL's collator makes of each example, in blocks

    def _keep_conditions(self, hyper: HyperModel) -> None:
        self._condition_columns = list(hyper.condition_names)
        # input conditions read each row's prompt from its labels; a prompt_mask column keeps it when TRL takes the
        # labels out before calling the model (label smoothing, a custom loss)
        computed = any(s.type == "input" for s in hyper.condition_encoder.specs.values())
        if not isinstance(self.data_collator, HyperDataCollator):
            self.data_collator = HyperDataCollator(
                self._condition_columns,
                collator=self.data_collator,
                repeat=self._rows_per_example,
                prompt_mask=computed,
            )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        kept = list(self._signature_columns)
        self._signature_columns = kept + [c for c in self._condition_columns if c not in kept]


class HyperSFTTrainer(_ConditionColumns, trl.SFTTrainer):
    """`trl.SFTTrainer` for a hyper model: each example is trained with the conditions in its columns.

    `HyperSFTTrainer(model=hyper, args=SFTConfig(...), train_dataset=ds, processing_class=tok)`, where `ds` has
    TRL's text columns (`text`, `prompt`/`completion` or `messages`) and one column per condition.
    """

    def __init__(self, model: HyperModel, args: Any = None, *rest: Any, **kwargs: Any) -> None:
        hyper = _require_hyper(model, "HyperSFTTrainer")
        _refuse_packed_rows(args, "HyperSFTTrainer")
        if any(s.type == "input" for s in hyper.condition_encoder.specs.values()) and (
            getattr(args, "completion_only_loss", None) is False
        ):
            raise ValueError(
                "the hyper model's input conditions are computed from each example's prompt, which SFT marks by "
                "giving the prompt's tokens no loss; completion_only_loss=False labels the prompt too. Leave "
                "completion_only_loss at None or True and train on prompt/completion data"
            )
        self._condition_columns = list(hyper.condition_names)
        super().__init__(hyper, args, *rest, **kwargs)
        self._keep_conditions(hyper)


class HyperDPOTrainer(_ConditionColumns, trl.DPOTrainer):
    """`trl.DPOTrainer` for a hyper model: each preference pair is scored with the conditions in its columns, and
    the reference is the pretrained model (the adapter disabled, as with PEFT), without a second copy.

    `HyperDPOTrainer(model=hyper, args=DPOConfig(...), train_dataset=pairs, processing_class=tok)`, where `pairs`
    has TRL's preference columns (`prompt`, `chosen`, `rejected`) and one column per condition.
    """

    _rows_per_example = 2  # TRL's preference collator: chosen rows, then rejected rows

    def __init__(
        self, model: HyperModel, ref_model: nn.Module | None = None, args: Any = None, *rest: Any, **kwargs: Any
    ) -> None:
        hyper = _require_hyper(model, "HyperDPOTrainer")
        _refuse_input_conditions(hyper, "HyperDPOTrainer")
        _refuse_packed_rows(args, "HyperDPOTrainer")
        if getattr(args, "sync_ref_model", False) and ref_model is None:
            raise ValueError(
                "sync_ref_model=True would blend the policy's weights into the reference, which here is the "
                "pretrained model the hyper model itself computes with; set sync_ref_model=False, or pass a "
                "separate ref_model"
            )
        self._condition_columns = list(hyper.condition_names)
        if ref_model is None:
            ref_model = PretrainedReference(hyper)
        super().__init__(hyper, ref_model, args, *rest, **kwargs)
        self._keep_conditions(hyper)


# the generation batch's condition values travel with its rows (through TRL's shuffle and split) under these keys
_CONDITION_KEY = "hyperlight_condition_"


class HyperGRPOTrainer(_ConditionColumns, trl.GRPOTrainer):
    """`trl.GRPOTrainer` for a hyper model: each prompt's completions are sampled, scored and trained with the
    conditions in its columns, and the KL reference (when `beta > 0`) is the pretrained model, without a copy.

    `HyperGRPOTrainer(model=hyper, reward_funcs=[...], args=GRPOConfig(...), train_dataset=ds,
    processing_class=tok)`, where `ds` has a `prompt` column and one column per condition. Reward functions are
    called as TRL calls them, with every other column as a keyword argument (so `task=[...]` among them).

    Generation runs through `hyper.generate` (Transformers); vLLM, continuous batching, custom rollouts and tool
    calling generate outside it and are refused, since they would sample from the pretrained weights.
    """

    def __init__(self, model: HyperModel, reward_funcs: Any, args: Any = None, *rest: Any, **kwargs: Any) -> None:
        hyper = _require_hyper(model, "HyperGRPOTrainer")
        _refuse_input_conditions(hyper, "HyperGRPOTrainer")
        _refuse_packed_rows(args, "HyperGRPOTrainer")
        _refuse_outside_generation(args, kwargs)
        self._condition_columns = list(hyper.condition_names)
        self._hyper = hyper
        self._row_conditions: dict[str, Any] | None = None
        # TRL builds a second copy of the policy as the KL reference (from the hub) when beta > 0; the pretrained
        # model inside the hyper model is that reference already, run with the adapter disabled, and TRL prepares it
        # as its own (with beta = 0 there is no reference, and nothing to refuse, e.g. modules_to_save)
        reference = PretrainedReference(hyper) if getattr(args, "beta", 0.0) else None
        with mock.patch.object(trl.trainer.grpo_trainer, "create_model_from_path", lambda *a, **k: reference):
            super().__init__(hyper, reward_funcs, args, *rest, **kwargs)

    @contextmanager
    def _conditions_of_rows(self, conditions: dict[str, Any]) -> Iterator[None]:
        """Generation and scoring inside the block use `conditions`, one value per row of the batch they get."""
        previous, self._row_conditions = self._row_conditions, conditions
        try:
            yield
        finally:
            self._row_conditions = previous

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        conditions = {name: stack_column([row[name] for row in inputs]) for name in self._condition_columns}
        with self._conditions_of_rows(conditions):
            output = super()._generate_and_score_completions(inputs)
        output.update({_CONDITION_KEY + name: value for name, value in conditions.items()})
        return output

    def _compute_loss(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        inputs = dict(inputs)  # TRL buffers this batch and scores it again when num_iterations > 1: leave it whole
        conditions = {name: inputs.pop(_CONDITION_KEY + name) for name in self._condition_columns}
        with self._conditions_of_rows(conditions):
            return super()._compute_loss(model, inputs)

    def _generate_single_turn(self, prompt_ids: Any, *args: Any, **kwargs: Any) -> Any:
        conditions = self._current_conditions(len(prompt_ids))
        with torch.no_grad(), self._hyper.conditioned(**conditions):  # hyper.generate takes the block's conditions
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: Any,
        attention_mask: Any,
        logits_to_keep: int,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> Any:
        given = [k for k, v in kwargs.items() if v is not None and k not in ("compute_entropy", "compute_aux_loss")]
        if given:
            raise NotImplementedError(f"HyperGRPOTrainer scores text only; got the multimodal inputs {given}")
        conditions = self._current_conditions(input_ids.size(0))
        size = batch_size or input_ids.size(0)
        parts = []
        for start in range(0, input_ids.size(0), size):  # TRL's chunks, each called with its rows' conditions
            rows = slice(start, start + size)
            call = functools.partial(model, **{k: v[rows] for k, v in conditions.items()})
            parts.append(
                super()._get_per_token_logps_and_entropies(
                    call, input_ids[rows], attention_mask[rows], logits_to_keep, batch_size=size, **kwargs
                )
            )
        logps = torch.cat([p[0] for p in parts])
        entropies = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
        aux_loss = None if parts[0][2] is None else torch.stack([p[2] for p in parts]).mean()
        return logps, entropies, aux_loss

    def _current_conditions(self, rows: int) -> dict[str, Any]:
        conditions = self._row_conditions
        if conditions is None or any(len(v) != rows for v in conditions.values()):
            raise RuntimeError(
                f"HyperGRPOTrainer was asked to generate or score {rows} rows without their conditions (a TRL code "
                "path it does not cover); please report it with your GRPOConfig"
            )
        return conditions


def _refuse_outside_generation(args: Any, kwargs: Mapping[str, Any]) -> None:
    """Generation that does not run through `hyper.generate` would sample from the pretrained weights."""
    outside = [name for name in ("use_vllm", "use_transformers_continuous_batching") if getattr(args, name, False)]
    outside += [name for name in ("rollout_func", "tools", "environment_factory") if kwargs.get(name) is not None]
    if getattr(args, "sync_ref_model", False):
        raise ValueError(
            "sync_ref_model=True would blend the policy's weights into the reference, which here is the pretrained "
            "model the hyper model itself computes with; set sync_ref_model=False"
        )
    if outside:
        raise NotImplementedError(
            f"HyperGRPOTrainer generates with hyper.generate, so that each prompt's completions use its conditions; "
            f"{outside} generate outside it (from the pretrained weights). Leave them unset"
        )


class PretrainedReference(nn.Module):
    """The pretrained model inside a hyper model, as a model of its own (DPO's reference).

    Every call runs in `hyper.disable_adapter()`, so it computes the pretrained model exactly, and ignores the
    hyper model's condition arguments (a batch built for the policy can be passed as is). It shares every weight
    with the hyper model; the generator is not part of it. Other attributes are the base model's.
    """

    def __init__(self, hyper: HyperModel) -> None:
        super().__init__()
        with hyper.disable_adapter():  # refuses here, not mid-training, what it cannot give back (modules_to_save)
            pass
        self.pretrained = hyper.get_base_model()
        self.__dict__["_hyper"] = hyper  # not a submodule: the reference has no generator

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for name in self._hyper.condition_names:
            kwargs.pop(name, None)
        with self._hyper.disable_adapter():
            return super().__call__(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.pretrained(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "pretrained":
                raise
        return getattr(self.pretrained, name)
