"""Distilling a library of PEFT LoRA adapters into one hyper model (Text-to-LoRA's reconstruction training).

Given adapters already trained one per task, `distill_adapters` trains the hyper model's generator (and its
condition encoder) so that each adapter's condition generates that adapter's update: afterwards
`hyper(..., task=k)` computes what `PeftModel.from_pretrained(base, dir_k)` computes, for every k in one model,
and conditions between or beyond the library (a new text, an unseen combination) get generated adapters.

What is matched is the update an adapter makes, ΔW = s·B·A, never the raw factors: (B, A) and (B·M, M⁻¹·A) are
the same adapter for any invertible r×r matrix M, so fitting factors would fight a symmetry and would not even
be defined across ranks. With `match="delta"` the loss is the mean over targets of
‖ΔW_gen − ΔW_adapter‖²_F / ‖ΔW_adapter‖²_F, computed from r×r Gram matrices,

    ‖B₁A₁ − B₂A₂‖² = tr(B₁ᵀB₁ · A₁A₁ᵀ) − 2·tr(B₁ᵀB₂ · A₂A₁ᵀ) + tr(B₂ᵀB₂ · A₂A₂ᵀ),

so no out×in product is ever formed (the cost is O(r²·(in + out)) per target, whatever the layer's size) and
adapters of any rank compare with generated factors of the config's rank. `match="outputs"` matches
ΔW·x on sample inputs instead (real activations, when given, weigh the directions the model actually uses).

Everything is checked before the first step (every directory, config field, tensor name and shape, every
condition value, through the hyper model itself), and a call that fails at any point, training included, leaves
the hyper model's parameters exactly as they were.

The package, one job per file: `errors` (AdapterError, AdapterKeyError), `targets` (the hyper model's targets as
distillation sees them), `adapter_files` (reading PEFT adapter directories), `arguments` (checking the call's
arguments), `generation` (the hyper model's weights for the library's conditions), `problem` (the objective, from
Gram matrices), `report` (DistillReport) and `loop` (`distill_adapters`: training and measuring).
"""

from .errors import AdapterError as AdapterError
from .errors import AdapterKeyError as AdapterKeyError
from .loop import distill_adapters as distill_adapters
from .report import DistillReport as DistillReport

__all__ = ["AdapterError", "AdapterKeyError", "DistillReport", "distill_adapters"]
