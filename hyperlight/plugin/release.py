"""Giving the base model back: merged for one condition, unloaded as it was, or exported as a PEFT adapter."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..hypernetize import unhypernetize

if TYPE_CHECKING:
    from .model import HyperModel


class HyperModelRelease:
    """The merge/unload/export half of `HyperModel` (a mixin: it uses the model's public surface only)."""

    def single_condition_values(self: HyperModel, conditions: Mapping[str, Any]) -> dict[str, Tensor]:
        """`{target.external: tensor}` for one condition (one example), detached: what merging bakes in."""
        with torch.no_grad():
            generated = self.generate_weights(1, **conditions)
        values = {}
        for target, tensors in generated.items():
            for name, value in tensors.items():
                if value.dim() != len(self.target_shapes[target][name]):
                    raise ValueError("merge/export needs a single condition value (one example), got several")
                values[f"{target}.{name}"] = value.detach()
        return values

    def merge_and_unload(self: HyperModel, **conditions: Any) -> nn.Module:
        """A plain base model (no hyperlight class left) with the weights of one condition baked in (and the
        trained `modules_to_save`). This hyper model is unusable afterwards."""
        self.require_loaded()
        return self.release_base(self.single_condition_values(conditions), keep_trained=True)

    def unload(self: HyperModel) -> nn.Module:
        """The base model as it was before `get_hyper_model`: original classes, weights (`modules_to_save`
        included) and trainability. This hyper model is unusable afterwards."""
        self.require_loaded()
        return self.release_base(None, keep_trained=False)

    def export_peft_adapter(self: HyperModel, save_directory: str | Path, **conditions: Any) -> dict[str, float]:
        """Write a standard PEFT LoRA adapter for one condition; returns `{module: relative error}`.

        In lora mode the predicted factors are written as they are (errors are 0). In full mode the
        change `W - W0` of each linear target's weight is truncated by SVD to `rank`, and the relative
        Frobenius error of that approximation is reported.
        """
        from .peft_export import export_lora_adapter

        self.require_loaded()
        return export_lora_adapter(self, Path(save_directory), self.single_condition_values(conditions))

    def release_base(self: HyperModel, values: Mapping[str, Tensor] | None, *, keep_trained: bool) -> nn.Module:
        base = self._base
        self._detach_from_base()
        unhypernetize(base, values)
        if not keep_trained:
            for name, module in self.saved_modules.items():
                module.load_state_dict(self._saved_originals[name])
        for name, param in base.named_parameters():
            param.requires_grad_(self._base_requires_grad.get(name, True))
        return base
