"""TRL's trainers for hyper models: SFT and DPO with per-example conditions taken from dataset columns.

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

Importing this module imports `trl` (the `trl` extra).
"""

from __future__ import annotations

from typing import Any

import trl
from torch import nn

from ..plugin.model import HyperModel
from .data import HyperDataCollator


def _require_hyper(model: Any, trainer: str) -> HyperModel:
    if not isinstance(model, HyperModel):
        raise TypeError(
            f"{trainer} trains a hyper model: pass model=get_hyper_model(base, HyperConfig(...)) (or "
            f"HyperModel.from_pretrained(...)), got {type(model).__name__}. For a plain or PEFT model use "
            f"trl.{trainer.removeprefix('Hyper')}"
        )
    return model


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
        if not isinstance(self.data_collator, HyperDataCollator):
            self.data_collator = HyperDataCollator(
                self._condition_columns, collator=self.data_collator, repeat=self._rows_per_example
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
