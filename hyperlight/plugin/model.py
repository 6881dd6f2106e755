"""`HyperModel`: a pretrained model whose selected weights are predicted per example from conditions.

The PEFT triad: `HyperConfig` (config.py) says what, `hypernetize` (the core) turns the targets into
externals (low-rank `lora_A`/`lora_B` on frozen weights, or full tensors), and this wrapper owns the
condition encoder and generator. Each call generates its weights and binds them to itself (one owner,
`hyperlight.nn.binding`): concurrent and nested calls never share them, and nothing stays on the base
model afterwards. This file builds the model (from `planning.py`'s plan) and runs calls;
`save_and_load.py` saves and loads it, `release.py` merges and unloads, `peft_export.py` exports. The path of
one call is written down in docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from ..hypernet.conditions import ConditionSpec
from ..nn.binding import BoundValues, Plan, bind, bound_values
from ..nn.derived import reduce_derived
from ..nn.module import HyperModule
from . import planning, save_and_load, signature
from .checkpointing import GradientSink, bind_checkpointing, unbind_checkpointing, uses_reentrant_checkpointing
from .config import HyperConfig
from .input_conditions import (
    InputConditions,
    generation_attention_mask,
    holds_cache,
    input_condition_names,
    resolve_input_dims,
)
from .peft_export import enumerated_values, write_peft_adapter
from .release import PretrainedState, refuse_quantized_merge, release_base, single_condition_values
from .replaced_forward import REPLACED, bind_replaced_forward, unbind_replaced_forward
from .text import resolve_text_encoders, text_condition_names
from .weights import conditioned_weights

# the conditions of the enclosing `conditioned(...)` blocks, per hyper model: the default of calls that give none
_BLOCK_CONDITIONS: ContextVar[Mapping[int, dict[str, Any]]] = ContextVar(
    "hyperlight_block_conditions", default=MappingProxyType({})
)
# the base model's methods that generate outside `forward`/`generate` (continuous batching): never handed through
_OUTSIDE_THE_CALL = frozenset({"generate_batch", "init_continuous_batching", "continuous_batching_context_manager"})
# bound to every target inside `disable_adapter()`: no values, so the targets compute as the pretrained model
ADAPTER_DISABLED = BoundValues()


class HyperModel(nn.Module):
    """A base model + a generator that predicts its target weights from conditions, per example.

    Build it with `get_hyper_model(model, HyperConfig(...))`. Call it like the base model, adding one
    keyword argument per condition (`hyper(input_ids=ids, task=torch.tensor([0, 3]))`); every row of a
    batch gets the weights of its own condition. Attributes not found here are looked up on the base model.

    Each call owns the weights it generates: calls from several threads, nested calls, and gradient-
    checkpointing recomputes (which re-enter the binding of the forward they recompute) never see another
    call's weights. Called directly, outside any call, `base_model` computes as the pretrained model.
    """

    def __init__(self, model: nn.Module, config: HyperConfig, *, encoder: Any = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be an nn.Module (e.g. AutoModelForCausalLM.from_pretrained(...)), got {model!r}"
            )
        if not isinstance(config, HyperConfig):
            raise TypeError(f"config must be a HyperConfig, got {type(config).__name__}")
        if any(isinstance(m, HyperModule) for m in model.modules()):
            raise ValueError("this model already has externals (is it a HyperModel's base already?); load a fresh one")
        text_encoders: dict[str, Any] = {}
        if text_condition_names(config.conditions) or encoder is not None:
            # text conditions: load each sentence encoder, and record its dim and fingerprint in (a copy of) config
            resolved, text_encoders = resolve_text_encoders(config.conditions, encoder)
            config = dataclasses.replace(config, conditions=resolved)
        if input_condition_names(config.conditions):  # computed from the input: their size is the hidden size
            config = dataclasses.replace(config, conditions=resolve_input_dims(config.conditions, model))
        self.hyper_config = config
        # every check runs before the model changes, so a bad config leaves it untouched
        names = config.matched_modules(model)
        saved = planning.modules_to_save(model, config.modules_to_save or [], names)
        signature.forward_signature(type(model), tuple(config.conditions))  # condition names must not shadow arguments
        chosen = planning.full_mode_parameters(model, names, config.target_parameters) if config.mode == "full" else {}
        specs = {n: ConditionSpec.parse(n, s) for n, s in config.conditions.items()}
        inputs = InputConditions(model, specs, names) if input_condition_names(specs) else None

        # unload() gives back the base as it was: what it was, before anything changes
        self._pretrained = PretrainedState.record(model, saved)
        # the generator (the allocation that can fail) is built from the unchanged model, before it changes
        modules = dict(model.named_modules())
        pretrained = {f"{n}.{p}": modules[n]._parameters[p].detach() for n, ps in chosen.items() for p in ps}
        targets = planning.plan_targets(model, config, names, chosen, values=pretrained if chosen else None)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.condition_encoder, self.generator = planning.build_generator(config, targets, device, text_encoders)

        model.requires_grad_(False)  # the base is frozen: only the generator (and what the config names) trains
        planning.hypernetize_targets(model, config, names, chosen)  # checks every target before changing any
        self._base = model
        self._released = False
        self._checkpointable = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        for module in saved.values():
            module.requires_grad_(True)
        self._saved_modules = saved
        self._base_keywords = signature.accepted_keywords(model)
        modules = dict(model.named_modules())
        self._target_modules = {t.name: modules[t.name] for t in targets}
        self._target_shapes = {t.name: {k: list(v) for k, v in t.shapes.items()} for t in targets}
        self._external_names = {t.name: frozenset(t.shapes) for t in targets}
        # full mode: generated tensors take the dtype of the pretrained values (which follow .to())
        self._full_mode = config.mode == "full"
        self._inputs = inputs  # last: from here on, a call's input computes its input conditions
        if inputs is not None:
            inputs.attach()
        signed = tuple(self.condition_names) + (("prompt_mask",) if inputs is not None else ())
        self.__class__ = signature.signed_class(type(self), type(model), signed)
        self.register_forward_pre_hook(bind_replaced_forward, with_kwargs=True)
        self.register_forward_hook(unbind_replaced_forward, always_call=True)

    # -- the model's surface ----------------------------------------------------------------------------

    @property
    def targeted_module_names(self) -> list[str]:
        """The dotted names of the modules whose weights the generator predicts (as PEFT names it)."""
        return list(self._target_modules)

    @property
    def targeted_modules(self) -> dict[str, nn.Module]:
        """`{dotted name: module}` of the targets, in model order."""
        return dict(self._target_modules)

    @property
    def target_shapes(self) -> dict[str, dict[str, list[int]]]:
        """`{target: {external: shape}}`: what the generator predicts for each target."""
        return {name: dict(shapes) for name, shapes in self._target_shapes.items()}

    @property
    def saved_modules(self) -> dict[str, nn.Module]:
        """The base modules trained whole (`modules_to_save`), by dotted name."""
        return dict(self._saved_modules)

    @property
    def condition_names(self) -> list[str]:
        """The conditions a call gives as keyword arguments (input conditions are computed from the input)."""
        return [n for n, s in self.condition_encoder.specs.items() if s.type != "input"]

    def require_loaded(self) -> None:
        """Raise if `unload()` / `merge_and_unload()` already gave the base model back."""
        if self.__dict__.get("_released"):
            raise RuntimeError(
                "this HyperModel was unloaded: unload() or merge_and_unload() gave its base model back as a plain "
                "model, so it has no targets left. Use the model they returned, or build a new hyper model with "
                "get_hyper_model(...) / HyperModel.from_pretrained(...)"
            )

    # -- saving and loading (save_and_load.py) ----------------------------------------------------------

    def hyper_state_dict(self, *, keep_vars: bool = False) -> dict[str, Tensor]:
        """The trained state: condition encoder, generator and `modules_to_save` (never the frozen base)."""
        return save_and_load.hyper_state_dict(self, keep_vars=keep_vars)

    def save_pretrained(self, save_directory: str | Path, *, is_main_process: bool = True, **_: Any) -> None:
        """Write `hyper_config.json` and `hyper_model.safetensors` (the hyper weights only; atomic writes).

        Under FSDP call it on every process (sharded weights are gathered), with `is_main_process` true on one.
        """
        save_and_load.save_pretrained(self, save_directory, is_main_process=is_main_process)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, path: str | Path, *, is_trainable: bool = False, encoder: Any = None
    ) -> HyperModel:
        """Rebuild a hyper model on `model` (a fresh base model) from a `save_pretrained` directory or a
        `Trainer` checkpoint directory (whose `model.safetensors` holds the hyper weights and config).

        The checkpoint is checked before anything is built or allocated: its config is validated, its recorded
        targets must be this model's modules with these shapes, and the tensor shapes the config implies must be
        the file's. The targets are selected by the exact names the checkpoint recorded (the config's pattern
        must select the same, evaluated with a time bound). The tensors are then verified against the digest
        recorded at save and must be finite. Any failure raises naming the file and leaves `model` exactly as it
        was. With `is_trainable=False` (the default, as in PEFT) the generator is frozen and in eval mode.

        Text conditions load the sentence encoder the checkpoint records (its path or name) and check its
        fingerprint; `encoder=PATH` (or a dict by condition name) gives it where it moved.
        """
        return save_and_load.load_pretrained(cls, model, path, is_trainable=is_trainable, encoder=encoder)

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """The hyper weights (never the frozen base) plus the config as a tensor, so that a plain
        `Trainer` checkpoint (`model.safetensors`) is small and loads with `HyperModel.from_pretrained`.
        `base_state_dict()` gives the base model's."""
        if args:
            raise TypeError("state_dict takes keyword arguments only (destination=, prefix=, keep_vars=)")
        return save_and_load.state_dict_with_config(self, destination, prefix, keep_vars)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load what `state_dict()` gives (the config entry, if present, must match this model's)."""
        return save_and_load.load_state_dict_with_config(self, state_dict, strict=strict)

    def base_state_dict(self) -> dict[str, Tensor]:
        """The base model's own state dict (its hypernetized targets' frozen weights included)."""
        return self._base.state_dict()

    # -- giving the base back (release.py, peft_export.py) ----------------------------------------------

    def merge_and_unload(self, **conditions: Any) -> nn.Module:
        """A plain base model (no hyperlight class left) with the weights of one condition baked in (and the
        trained `modules_to_save`). This hyper model is unusable afterwards. With input conditions, `prompt=`
        (token ids, or a tokenizer's output for one example) gives the input they are computed from."""
        self.require_loaded()
        self._require_prompt(conditions, "merge_and_unload")
        refuse_quantized_merge(self._target_modules)
        return self._release(single_condition_values(self, conditions), keep_trained=True)

    def unload(self) -> nn.Module:
        """The base model as it was before `get_hyper_model`: original classes, weights (`modules_to_save`
        included) and trainability. This hyper model is unusable afterwards."""
        self.require_loaded()
        return self._release(None, keep_trained=False)

    def export_peft_adapter(self, save_directory: str | Path, **conditions: Any) -> dict[str, float]:
        """Write a standard PEFT LoRA adapter for one condition; returns `{module: relative error}`.

        With input conditions, `prompt=` gives the input they are computed from, as for `merge_and_unload`.
        In lora mode the predicted factors are written as they are (errors are 0). In full mode the
        change `W - W0` of each linear target's weight is truncated by SVD to `rank`, and the relative
        Frobenius error of that approximation is reported.
        """
        self.require_loaded()
        self._require_prompt(conditions, "export_peft_adapter")
        return write_peft_adapter(self, Path(save_directory), single_condition_values(self, conditions))

    def export_peft_adapters(
        self, save_directory: str | Path, *, condition: str | None = None, **conditions: Any
    ) -> dict[str, dict[str, float]]:
        """One standard PEFT LoRA adapter per value of a categorical condition, for multi-LoRA servers (vLLM, TGI,
        LoRAX): `save_directory/<value>` for each (its name where the condition has named values, else its id).
        `condition` picks the condition when there are several; the others are fixed by keyword. Returns
        `{value: {module: relative error}}`."""
        self.require_loaded()
        name, values = enumerated_values(self.condition_encoder.specs, condition, conditions)
        fixed = self._with_input_conditions(conditions, "export_peft_adapters", 1)
        self.condition_encoder.check({**fixed, name: 0}, 1)  # the fixed conditions, before anything is written
        directory = Path(save_directory)
        return {
            label: self.export_peft_adapter(directory / label, **conditions, **{name: value})
            for label, value in values.items()
        }

    def _release(self, values: Mapping[str, Tensor] | None, *, keep_trained: bool) -> nn.Module:
        self._released = True
        unbind_checkpointing(self._checkpointable)
        if self._inputs is not None:
            self._inputs.detach()
        return release_base(self._base, self._pretrained, self._saved_modules, values, keep_trained=keep_trained)

    # -- conditions -> weights, bound to one call ---------------------------------------------------

    def generate_weights(self, batch_size: int | None = None, **conditions: Any) -> dict[str, dict[str, Tensor]]:
        """`{target module: {external: tensor}}` for the given conditions.

        Weights are computed once per distinct condition in the batch (unless a condition requires grad:
        then every row is generated, so each row's condition gets its own gradient); a batch with one
        distinct condition gets shared (unbatched) tensors, otherwise `(B, *shape)`. With input conditions,
        `prompt=` (token ids or a tokenizer's output, one row per example) gives the input they are computed from.
        """
        self.require_loaded()
        return self._generate(batch_size, self._with_input_conditions(conditions, "generate_weights", batch_size))[0]

    def _with_input_conditions(
        self, conditions: Mapping[str, Any], what: str, rows: int | None = None
    ) -> dict[str, Any]:
        """The given conditions, plus the input conditions of their `prompt=` (run up to the conditions' layer)."""
        if self._inputs is None:
            return dict(conditions)
        return self._inputs.with_prompt(self._base, conditions, what, self._base_keywords, rows)

    def _require_prompt(self, conditions: Mapping[str, Any], what: str) -> None:
        if self._inputs is not None:
            self._inputs.require_prompt(conditions, what)

    def _refuse_given_inputs(self, given: Mapping[str, Any]) -> None:
        if self._inputs is not None:
            self._inputs.refuse_given(given)

    def _generate(
        self, batch_size: int | None, conditions: Mapping[str, Any]
    ) -> tuple[dict[str, dict[str, Tensor]], int | None]:
        """(weights, B): B is None when every row shares one condition and the weights are unbatched."""
        return conditioned_weights(
            self.condition_encoder, self.generator, self._target_modules, self._full_mode, batch_size, conditions
        )

    def _bind(
        self,
        batch_size: int | None,
        conditions: Mapping[str, Any],
        *,
        expand: int | None,
        sink: GradientSink | None = None,
    ) -> dict[nn.Module, BoundValues]:
        """The bindings of one call: every target's generated tensors, with the call's per-example plan."""
        generated, batch = self._generate(batch_size, conditions)
        plan = Plan(batch, expand)
        entries: dict[nn.Module, BoundValues] = {}
        for target, tensors in generated.items():
            if sink is not None:
                tensors = {name: sink.leaf(value) for name, value in tensors.items()}
            per_example = self._external_names[target] if batch is not None else frozenset()
            entries[self._target_modules[target]] = BoundValues(tensors, plan, per_example)
        return entries

    @contextmanager
    def conditioned(self, batch_size: int | None = None, **conditions: Any) -> Iterator[None]:
        """Run code with the weights of `conditions` (a `with` block, in this thread and context only).

        Calls of the base model inside the block use these weights; calls of this hyper model that give no
        conditions use these conditions (so a `pipeline` around it that cannot pass them works); nothing remains
        after it. Base-model inputs must have the conditions' batch size (one value fits any); training through the
        block works without checkpointing or with non-reentrant checkpointing (reentrant checkpointing
        needs `hyper(...)`, which routes the generator's gradients around its nested backward passes).
        """
        self.require_loaded()
        if torch.is_grad_enabled() and uses_reentrant_checkpointing(self._checkpointable):
            raise RuntimeError(
                "conditioned(...) cannot train through reentrant gradient checkpointing (its nested backward passes "
                "would each walk into the generator); call hyper(...) instead, use "
                "gradient_checkpointing_kwargs={'use_reentrant': False}, or wrap the block in torch.no_grad()"
            )
        full = self._with_input_conditions(conditions, "conditioned(...)", batch_size)
        bind_checkpointing(self._checkpointable)
        defaults = _BLOCK_CONDITIONS.get()
        # calls of this model inside the block take these (their input conditions come from their own input)
        given = {k: v for k, v in conditions.items() if self._inputs is None or k != "prompt"}
        token = _BLOCK_CONDITIONS.set({**defaults, id(self): given})
        try:
            with bind(self._bind(batch_size, full, expand=1)):
                yield
        finally:
            _BLOCK_CONDITIONS.reset(token)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the pretrained model exactly inside the block (as PEFT's `disable_adapter`): calls of this hyper
        model need no conditions (given ones are ignored), and nested or concurrent calls elsewhere keep theirs.
        TRL's DPO uses this for the reference model, so no second copy is needed."""
        self.require_loaded()
        if self._saved_modules:
            raise NotImplementedError(
                f"disable_adapter() cannot give back the pretrained {sorted(self._saved_modules)}: modules_to_save "
                "are trained in place. Keep a copy of the base model for a reference, or train without them"
            )
        with bind(dict.fromkeys(self._target_modules.values(), ADAPTER_DISABLED)):
            yield

    def _adapter_disabled(self) -> bool:
        first = next(iter(self._target_modules.values()))
        return bound_values(first) is ADAPTER_DISABLED

    def get_base_model(self) -> nn.Module:
        """The base model (as PEFT's `get_base_model`). Called directly, outside any call of this hyper model or
        `conditioned(...)` block, it computes as the pretrained model: generated weights live in calls only."""
        return self._base

    def _pop_conditions(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's conditions: its keyword arguments, or those of an enclosing `conditioned` block."""
        given = {name: kwargs.pop(name) for name in self.condition_names if name in kwargs}
        return given or dict(_BLOCK_CONDITIONS.get().get(id(self), {}))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward, inside the weights this call generates from its conditions."""
        if REPLACED.bound is self:  # a replaced forward is running, and its hooks already bound this call
            REPLACED.bound = None  # a nested call of this model inside the base binds afresh
            return self._base(*args, **kwargs)
        with self._bound_call(args, kwargs) as sink:
            output = self._base(*args, **kwargs)
        if sink is not None:
            sink.attach(output)
        return output

    @contextmanager
    def _bound_call(self, args: tuple, kwargs: dict[str, Any]) -> Iterator[GradientSink | None]:
        """Binds one call's weights for the block, taking its conditions out of `kwargs` (changed in place); yields
        the reentrant-checkpointing gradient sink to attach to the output, if any."""
        self.require_loaded()
        conditions = self._pop_conditions(kwargs)
        prompt_mask = kwargs.pop("prompt_mask", None) if self._inputs is not None else None
        self._refuse_given_inputs(kwargs)
        if self._adapter_disabled():
            yield None
            return
        if kwargs.get("fused_lm_head") and self._output_head_targeted():
            raise NotImplementedError(
                "a fused LM head (TRL's trainers call the model with fused_lm_head=True) reads the output "
                "embedding's weight directly, so it cannot use the weights this hyper model generates for it: "
                "leave the LM head out of target_modules to train with TRL"
            )
        self._refuse_unknown_keywords(kwargs)
        bind_checkpointing(self._checkpointable)  # recomputes re-enter this call's binding
        sink = None
        if torch.is_grad_enabled() and uses_reentrant_checkpointing(self._checkpointable):
            sink = GradientSink()  # see checkpointing.py: layers read leaf copies, flushed after backward
        if self._inputs is None:
            with bind(self._bind(signature.batch_size_of(args, kwargs), conditions, expand=1, sink=sink)):
                yield sink
            return
        if sink is not None and any(p.requires_grad for p in self._inputs.lower_parameters):
            raise NotImplementedError(
                "reentrant gradient checkpointing runs each layer without grad in the forward, so the generator's "
                "gradient could not reach the trainable layers below the input conditions' layer; use "
                "gradient_checkpointing_kwargs={'use_reentrant': False}, or freeze those layers"
            )
        mask = self._inputs.call_mask(args, kwargs, prompt_mask, training=self.training)
        # the given conditions are checked before the base runs (the input ones, which stand in here, in the hook)
        self.condition_encoder.check({**conditions, **self._inputs.stand_ins(mask.device)}, mask.shape[0])
        with ExitStack() as bound:  # the hook at the conditions' layer binds the weights here, for the rest of it

            def generated(pooled: dict[str, Tensor]) -> None:
                bound.enter_context(bind(self._bind(mask.shape[0], {**conditions, **pooled}, expand=1, sink=sink)))

            with self._inputs.pending(mask, generated, detach=sink is not None):
                yield sink

    def _refuse_unknown_keywords(self, kwargs: Mapping[str, Any]) -> None:
        """A keyword that is neither a condition nor taken by the base model is a typo: refused, not ignored."""
        accepted = self._base_keywords
        if accepted is None:
            return  # the base forward takes **kwargs whose keys cannot be known
        replaced = self.__dict__.get("forward")
        if replaced is not None:  # a library's forward runs (see replaced_forward.py): it takes its own keywords
            accepted = accepted | signature.replaced_forward_keywords(replaced)
        unknown = [k for k in kwargs if k not in accepted]
        if not unknown:
            return
        close = [m for k in unknown for m in difflib.get_close_matches(k, self.condition_names, n=1)]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"unexpected keyword argument(s) {unknown}: neither a condition of this hyper model "
            f"({self.condition_encoder.describe()}) nor an argument of {type(self._base).__name__}.forward{hint}"
        )

    def _output_head_targeted(self) -> bool:
        head = getattr(self._base, "get_output_embeddings", lambda: None)()
        return head is not None and any(head is m for m in self._target_modules.values())

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """`base_model.generate` with per-example conditions as keyword arguments. The weights are generated
        once per call; beams and `num_return_sequences` reuse row b's weights for b's expanded rows."""
        self.require_loaded()
        conditions = self._pop_conditions(kwargs)
        prompt_mask = kwargs.pop("prompt_mask", None) if self._inputs is not None else None
        self._refuse_given_inputs(kwargs)
        if self._adapter_disabled():
            return self._base.generate(*args, **kwargs)
        paged = getattr(kwargs.get("generation_config"), "cache_implementation", None) == "paged"
        if kwargs.get("cache_implementation") == "paged" or paged:
            raise ValueError(
                "cache_implementation='paged' makes Transformers generate through continuous batching, on a worker "
                "thread outside this call, with the pretrained weights; use the default cache"
            )
        if self._inputs is not None:  # from the prompt, once: generated tokens never change the weights
            if holds_cache(kwargs):
                raise ValueError(
                    "generate was given a cache of earlier tokens (prefix caching), computed without the weights this "
                    f"prompt's input conditions ({self._inputs.describe()}) generate; build the prefix's cache inside "
                    "`with hyper.conditioned(prompt=<the whole prompt>)` with the base model, or generate without it"
                )
            prompt = {k: kwargs.get(k) for k in ("input_ids", "attention_mask", "inputs_embeds")}
            if prompt["input_ids"] is None:
                prompt["input_ids"] = kwargs.get("inputs", args[0] if args else None)
            if prompt["attention_mask"] is None:  # as generate infers it: padding never counts
                prompt["attention_mask"] = generation_attention_mask(self._base, prompt["input_ids"], kwargs)
            per_token = {k: v for k, v in kwargs.items() if k not in prompt and isinstance(v, Tensor)}
            prompt |= {"prompt_mask": prompt_mask, **per_token}  # the probe keeps those the base takes per token
            conditions = {**conditions, **self._inputs.probe(self._base, prompt, self._base_keywords)}
        expand = signature.generation_expansion(self._base, kwargs)  # beams reuse their row's weights
        with bind(self._bind(signature.batch_size_of(args, kwargs), conditions, expand=expand)):
            return self._base.generate(*args, **kwargs)

    # -- parameters ----------------------------------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters), counted as PEFT counts them (see `count_parameters`)."""
        return planning.count_parameters(self)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return reduce_derived(self, self.__dict__.copy())

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "_base":
                raise
        if name in _OUTSIDE_THE_CALL:  # they would run the pretrained weights (no call of this model binds any)
            raise AttributeError(
                f"{name} (Transformers' continuous batching) runs the base model outside any call of this hyper "
                "model, so it would generate with the pretrained weights; use hyper.generate(...), which takes "
                "per-example conditions"
            )
        base = self._base
        try:
            return getattr(base, name)
        except AttributeError:
            raise AttributeError(
                f"'{type(self).__name__}' object (a hyper model around {type(base).__name__}) has no attribute "
                f"'{name}', and neither has its base model"
            ) from None


def get_hyper_model(model: nn.Module, config: HyperConfig, *, encoder: Any = None) -> HyperModel:
    """Turn a pretrained model into a conditioned one, as `peft.get_peft_model` does for adapters.

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from hyperlight import HyperConfig, get_hyper_model
    >>> base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    >>> hyper = get_hyper_model(base, HyperConfig(target_modules=r".*\\.(q_proj|v_proj)",
    ...     conditions={"task": {"type": "categorical", "num": 4}}, rank=4))
    >>> hyper(input_ids=torch.randint(64, (2, 5)), task=torch.tensor([0, 3])).logits.shape
    torch.Size([2, 5, 64])

    Text conditions (`{"type": "text", "encoder": PATH}`) load their sentence encoder from PATH, or take
    `encoder=` (a path or `SentenceEncoder`, or a dict of them by condition name).
    """
    return HyperModel(model, config, encoder=encoder)
