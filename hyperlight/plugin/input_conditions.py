"""Input conditions: weights generated from the input itself (Hyperdecoders-style), in the call's own forward.

`{"type": "input", "layer": k, "pool": "mean"}` is the base model's hidden state after k blocks, pooled over each
example's prompt: the input of block k (Transformers' `hidden_states[k]`: for k = 0 the embeddings, positions and
embedding norm included), or for k = the number of blocks the last block's output (before the model's final norm,
which `hidden_states[-1]` includes). A hook on that block pools the prompt, generates every target's weights and
binds them for the rest of the call: every target sits in a block at index k or above (checked at build, and at run
time for targets outside the blocks), so none has run yet, and the lower blocks run once. `generate`, merging and
export run the prompt up to layer k once (a probe that stops there) and bind the weights for the whole call, so
generated tokens never change them.

The prompt of an example is its attended tokens (`attention_mask`) and, for a causal LM given token `labels`, only
those before its first labelled token (label != -100): a completion-only loss trains the completion, and what comes
before it is what `generate` is given. An explicit `prompt_mask` (B, T) takes the labels' place. In a causal LM no
token sees a later one, so the pooled prompt never depends on the completion, on padding, or on later tokens.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from ..hypernet.conditions import ConditionSpec

IGNORE_INDEX = -100  # Transformers' label for tokens without a loss
_BLOCK_CONTAINERS = ("layers", "layer", "h", "block", "blocks")  # as selection.py's layer indices name them
# the keywords that give an input-conditioned call its prompt (reserved: no condition may be named so)
PROMPT_KEYWORDS = ("prompt", "prompt_mask")


def input_condition_names(conditions: Mapping[str, Any]) -> list[str]:
    return [n for n, s in conditions.items() if ConditionSpec.parse(n, s).type == "input"]


@dataclass
class _Call:
    """One call's pending input conditions: its prompt mask, what to do with the pooled states once all are there."""

    mask: Tensor  # (B, T) bool: the prompt's tokens
    on_ready: Callable[[dict[str, Tensor]], None]
    grad: bool  # the caller's grad mode (a reentrant checkpoint runs the hooked layer without grad)
    detach: bool  # pool a detached hidden state (see `pending`)
    pooled: dict[str, Tensor] = field(default_factory=dict)
    done: bool = False


# the pending calls of the current context, by InputConditions: hooks of other threads' calls never see them
_CALLS: ContextVar[Mapping[int, _Call]] = ContextVar("hyperlight_input_calls", default=MappingProxyType({}))


class _Probed(Exception):
    """Raised by the probe's hook at layer k: the pooled states are there, the rest of the forward is not needed."""

    def __init__(self, pooled: dict[str, Tensor]) -> None:
        super().__init__("input conditions pooled")
        self.pooled = pooled


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's one stack of numbered blocks (`model.layers`, `transformer.h`, `encoder.layer`, ...)."""
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) and name.rsplit(".", 1)[-1] in _BLOCK_CONTAINERS
    ]
    stacks = [(n, m) for n, m in stacks if not any(n.startswith(f"{o}.") for o, _ in stacks)]  # outermost only
    if len(stacks) != 1:
        found = [n for n, _ in stacks]
        why = (
            f"it has several ({found}: an encoder-decoder, whose encoder and decoder each number their blocks)"
            if stacks
            else "it has none (a ModuleList named 'layers', 'layer', 'h', 'block' or 'blocks')"
        )
        raise ValueError(
            f"input conditions read the hidden state after a number of blocks of the model's one stack of numbered "
            f"blocks, and {type(model).__name__} {why}. Input conditions support decoder-only and encoder-only "
            "Transformers models; use a categorical, vector or text condition for this one"
        )
    name, blocks = stacks[0]
    if len({id(b) for b in blocks}) != len(blocks):
        raise ValueError(f"the blocks of '{name}' share modules (one block run several times): not supported")
    return name, blocks


def resolve_input_dims(conditions: Mapping[str, Mapping[str, Any]], model: nn.Module) -> dict[str, dict[str, Any]]:
    """`conditions` with each input condition's `dim` (the hidden size at its layer) recorded, or checked where it
    was recorded already (a checkpoint's config on another model)."""
    resolved = {}
    for name, raw in conditions.items():
        spec = ConditionSpec.parse(name, raw)
        if spec.type == "input":
            size = _hidden_size(model, spec.layer)
            if spec.dim is not None and spec.dim != size:
                raise ValueError(
                    f"input condition '{name}' records dim={spec.dim}, but this model's hidden state at layer "
                    f"{spec.layer} has {size} features: the config was made for another model"
                )
            spec = ConditionSpec.parse(name, {**spec.to_dict(), "dim": size})
        resolved[name] = spec.to_dict()
    return resolved


def _hidden_size(model: nn.Module, layer: int) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if layer == 0 and embeddings is not None and hasattr(embeddings, "embedding_dim"):
        return int(embeddings.embedding_dim)
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or getattr(config, "d_model", None)
    if not isinstance(size, int):
        raise ValueError(f"input conditions need the hidden size: {type(model).__name__} has no config.hidden_size")
    return size


class InputConditions:
    """The input conditions of one hyper model: where each is read (a forward hook on the module whose output is
    `hidden_states[k]`), how a call's prompt is found, and the probe that computes them for a prompt alone."""

    def __init__(self, model: nn.Module, specs: Mapping[str, ConditionSpec], targets: list[str]) -> None:
        """Every check runs here, before anything is registered (`attach`); `model` is not changed."""
        self.specs = {n: s for n, s in specs.items() if s.type == "input"}
        reserved = [n for n in specs if n in PROMPT_KEYWORDS]
        if reserved:
            raise ValueError(
                f"condition name(s) {reserved} are reserved in a model with input conditions: prompt= gives merge, "
                "export and conditioned(...) their prompt, and prompt_mask= marks a call's prompt. Rename it"
            )
        blocks_name, blocks = find_blocks(model)
        embeddings = model.get_input_embeddings()
        top = max(s.layer for s in self.specs.values())
        if top > len(blocks):
            raise ValueError(
                f"input condition layer {top} is beyond the model's {len(blocks)} blocks ('{blocks_name}'); layers "
                f"run from 0 (the input embeddings) to {len(blocks)} (the output of the last block)"
            )
        _check_targets_above(model, blocks_name, blocks, targets, self.specs, top)
        # layer k < L: the input of block k (a pre-hook); layer L: the output of the last block (a hook)
        self.layer_modules: dict[int, nn.Module] = {
            s.layer: blocks[min(s.layer, len(blocks) - 1)] for s in self.specs.values()
        }
        self._reads_output = {s.layer: s.layer == len(blocks) for s in self.specs.values()}
        # targets outside the blocks run where the module order says; a hook refuses one that runs too early
        modules = dict(model.named_modules())
        self._outside = {t: modules[t] for t in targets if not t.startswith(f"{blocks_name}.")}
        # what the generator's gradient would reach under reentrant checkpointing, where it cannot (see `hyper`)
        lower = [embeddings, *blocks[:top]]
        self.lower_parameters = [p for m in lower for p in m.parameters()]
        self.causal = bool(getattr(model, "can_generate", lambda: False)())
        self._forward_signature = inspect.signature(model.forward)
        self._handles: list[Any] = []

    def attach(self) -> None:
        for layer, module in self.layer_modules.items():
            if self._reads_output[layer]:
                self._handles.append(module.register_forward_hook(self._on_layer_output))
            else:
                self._handles.append(module.register_forward_pre_hook(self._on_layer_input, with_kwargs=True))
        for name, module in self._outside.items():
            refuse = functools.partial(self._refuse_early_target, name)
            self._handles.append(module.register_forward_pre_hook(refuse))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def describe(self) -> str:
        return ", ".join(f"{n} (layer {s.layer}, {s.pool} over the prompt)" for n, s in self.specs.items())

    # -- what a caller gives ----------------------------------------------------------------------------

    def stand_ins(self, device: torch.device) -> dict[str, Tensor]:
        """One zero vector per input condition: what checking the given conditions needs before the forward."""
        return {n: torch.zeros(1, s.dim, device=device) for n, s in self.specs.items()}

    def refuse_given(self, given: Mapping[str, Any]) -> None:
        named = [n for n in self.specs if n in given]
        if named:
            raise TypeError(
                f"{named} are input conditions ({self.describe()}): computed from the call's own input, never given; "
                f"remove {named[0]}=... (merge, export and conditioned(...) take prompt=... instead)"
            )

    def require_prompt(self, conditions: Mapping[str, Any], what: str) -> None:
        if conditions.get("prompt") is None:
            raise ValueError(
                f"{what}: this model's weights depend on its input ({self.describe()}), so they need the prompt they "
                "are computed from: pass prompt=tokenizer(text, return_tensors='pt') (or its input_ids)"
            )

    def with_prompt(
        self,
        base: nn.Module,
        conditions: Mapping[str, Any],
        what: str,
        accepted: frozenset[str] | None,
        rows: int | None = None,
    ) -> dict[str, Any]:
        """`conditions` without their `prompt=`, plus the input conditions computed from it (the probe); `rows`: how
        many examples the prompt must hold, where the caller knows."""
        given = dict(conditions)
        self.refuse_given(given)
        self.require_prompt(given, what)
        prompt = prompt_inputs(given.pop("prompt"), next(base.parameters()).device)
        pooled = self.probe(base, prompt, accepted)
        count = next(iter(pooled.values())).shape[0] if pooled else 0
        if rows is not None and count != rows:
            raise ValueError(f"{what}: prompt= holds {count} examples (rows), expected {rows}")
        return {**given, **pooled}

    # -- a call ----------------------------------------------------------------------------------------

    @contextmanager
    def pending(
        self, mask: Tensor, on_ready: Callable[[dict[str, Tensor]], None], *, detach: bool = False
    ) -> Iterator[None]:
        """While the block runs the base model, the hook at each condition's layer pools `mask`'s tokens; when all
        are pooled, `on_ready(pooled)` runs (generating and binding the weights). A forward that never reached the
        layer would leave every target unbound, so it raises.

        `detach`: under reentrant checkpointing the generator's gradient is sent by its own backward after the
        outer one (checkpointing.py's sink), which must not walk into the checkpointed layers below k a second
        time; the layers below are frozen there (the caller checks), so nothing is lost."""
        call = _Call(mask, on_ready, torch.is_grad_enabled(), detach)
        token = _CALLS.set({**_CALLS.get(), id(self): call})
        try:
            yield
        finally:
            _CALLS.reset(token)
        if not call.done and mask.shape[0]:
            raise RuntimeError(
                f"the base model's forward never produced the hidden state of the input conditions ({self.describe()})"
                ", so no weights were generated for this call; was the forward cut short (e.g. a cache that skips "
                "the prompt)?"
            )

    def _on_layer_input(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        self._read(module, hidden, output=False)

    def _on_layer_output(self, module: nn.Module, args: Any, output: Any) -> None:
        self._read(module, output if isinstance(output, Tensor) else output[0], output=True)

    def _refuse_early_target(self, name: str, module: nn.Module, args: Any) -> None:
        call = _CALLS.get().get(id(self))
        if call is not None and not call.done:
            raise RuntimeError(
                f"the target '{name}' ran before the hidden state of the input conditions "
                f"({self.describe()}) existed, so it would compute without its generated weights; this model runs a "
                "module registered after its blocks before them. Leave that module out of target_modules"
            )

    def _read(self, module: nn.Module, hidden: Any, *, output: bool) -> None:
        call = _CALLS.get().get(id(self))
        if call is None or call.done:
            return  # the base called outside a call, a recompute during backward, or this call's weights are bound
        if not isinstance(hidden, Tensor):
            raise RuntimeError(
                f"input conditions read the hidden states going into {type(module).__name__}, and found "
                f"{type(hidden).__name__} (expected a tensor as its first argument or hidden_states=)"
            )
        if call.detach:
            hidden = hidden.detach()
        with torch.set_grad_enabled(call.grad):
            for name, spec in self.specs.items():
                here = self.layer_modules[spec.layer] is module and self._reads_output[spec.layer] == output
                if here and name not in call.pooled:
                    call.pooled[name] = pool(hidden, call.mask, spec.pool, name, spec.layer)
            if len(call.pooled) == len(self.specs):
                call.done = True
                call.on_ready(dict(call.pooled))

    def call_mask(self, args: tuple, kwargs: Mapping[str, Any], prompt_mask: Any, *, training: bool) -> Tensor:
        """The prompt tokens (B, T) of a forward call of the base model with `args`/`kwargs`."""
        given = dict(kwargs)
        if args:
            given |= self._forward_signature.bind_partial(*args).arguments
        for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
            if given.get(key) is not None:
                raise NotImplementedError(_PACKED)
        if holds_cache(given):
            raise ValueError(
                "this call continues from a cache of earlier tokens, so it cannot see the prompt its input conditions "
                f"({self.describe()}) are computed from; generate with hyper.generate(...), which fixes the weights "
                "from the prompt for every step, or decode by hand inside `with hyper.conditioned(prompt=...)`, "
                "calling the base model (hyper.get_base_model())"
            )
        labels = given.get("labels") if self.causal and prompt_mask is None else None
        if training and self.causal and labels is None and prompt_mask is None and torch.is_grad_enabled():
            warnings.warn(
                "a training forward of a causal LM with input conditions got neither labels nor prompt_mask, so every "
                "attended token counts as the prompt, completions included. A Trainer takes the labels out when "
                "label_smoothing_factor or compute_loss_func is set: collate with "
                "HyperDataCollator(..., prompt_mask=True), which keeps each row's prompt",
                UserWarning,
                stacklevel=4,
            )
        return prompt_tokens(given, labels=labels, prompt_mask=prompt_mask)

    def probe(self, base: nn.Module, inputs: Mapping[str, Any], accepted: frozenset[str] | None) -> dict[str, Tensor]:
        """The input conditions of a prompt (`input_ids` or `inputs_embeds`, with its `attention_mask`): the base runs
        up to the highest condition's layer, once, and stops there."""
        given = {k: v for k, v in inputs.items() if v is not None}
        mask = prompt_tokens(given, labels=None, prompt_mask=given.pop("prompt_mask", None))
        call = {k: given[k] for k in ("input_ids", "inputs_embeds", "attention_mask") if k in given}
        if "inputs_embeds" in call:  # generate may take both (the ids to extend, the embeddings to start from)
            call.pop("input_ids", None)
        skipped = ("input_ids", "position_ids", "labels")  # the ids were chosen above; positions are made below
        for key, value in given.items():  # per-token inputs the base takes (token_type_ids, ...), as the call has them
            per_token = isinstance(value, Tensor) and value.dim() >= 2 and tuple(value.shape[:2]) == tuple(mask.shape)
            if key not in call and key not in skipped and per_token and _takes(accepted, key):
                call[key] = value
        attention = call.get("attention_mask")
        if isinstance(attention, Tensor) and attention.dim() == 2 and _takes(accepted, "position_ids"):
            # positions as `generate` computes them: a left-padded prompt's first real token is at position 0
            positions = attention.long().cumsum(-1) - 1
            call["position_ids"] = positions.masked_fill(attention == 0, 1)
        if _takes(accepted, "use_cache"):
            call["use_cache"] = False

        def stop(pooled: dict[str, Tensor]) -> None:
            raise _Probed(pooled)

        try:
            with self.pending(mask, stop):
                base(**call)
        except _Probed as probed:
            return probed.pooled
        return {}  # an empty batch: nothing to pool  # pragma: no cover - pending raises for a non-empty one


_PACKED = (
    "input conditions pool each example's prompt, and this batch packs several sequences into a row (padding-free "
    "or packed batches: position_ids that restart, or cu_seq_lens): pooling would mix examples. Train with padding "
    "(TRL: padding_free=False, packing=False)"
)


def holds_cache(given: Mapping[str, Any]) -> bool:
    """Whether a call's arguments hold a cache of earlier tokens (`past_key_values`, `cache`: any name)."""
    return any(callable(getattr(v, "get_seq_length", None)) and v.get_seq_length() > 0 for v in given.values())


def _takes(accepted: frozenset[str] | None, keyword: str) -> bool:
    return accepted is None or keyword in accepted


def prompt_tokens(given: Mapping[str, Any], *, labels: Any, prompt_mask: Any) -> Tensor:
    """(B, T) bool: the attended tokens, before the first labelled one when `labels` are given, within `prompt_mask`
    when it is given. Rows without a prompt token are refused (their pooled state would be undefined)."""
    inputs = given.get("input_ids")
    if not isinstance(inputs, Tensor):
        inputs = given.get("inputs_embeds")
    if not isinstance(inputs, Tensor) or inputs.dim() < 2:
        raise ValueError(
            "input conditions pool the prompt's hidden states, so the call needs input_ids (B, T) or inputs_embeds "
            f"(B, T, H); got {_shape(given.get('input_ids'))} and {_shape(given.get('inputs_embeds'))}"
        )
    size = tuple(inputs.shape[:2])
    mask = torch.ones(size, dtype=torch.bool, device=inputs.device)
    attention = given.get("attention_mask")
    if isinstance(attention, Tensor):
        if attention.dim() == 2:
            _check_shape("attention_mask", attention, size)
            mask &= attention.to(mask.device) != 0
        elif prompt_mask is None:
            raise ValueError(
                f"attention_mask has shape {tuple(attention.shape)}: a custom (4D) mask does not say which tokens are "
                "padding, so input conditions cannot find the prompt; pass prompt_mask=(B, T) (1 on each example's "
                "prompt tokens) with it"
            )
    positions = given.get("position_ids")
    if isinstance(positions, Tensor) and positions.dim() == 2 and positions.shape[-1] == size[1] > 1:
        attended = mask[:, 1:] & mask[:, :-1]
        restarts = (positions[:, 1:] <= positions[:, :-1]).to(mask.device) & attended
        _refuse_rows(restarts.any(-1), _PACKED, lambda rows: NotImplementedError(_PACKED))
    if prompt_mask is not None:
        if not isinstance(prompt_mask, Tensor):
            prompt_mask = torch.as_tensor(prompt_mask)
        _check_shape("prompt_mask", prompt_mask, size)
        mask &= prompt_mask.to(mask.device) != 0
        why = "prompt_mask marks none of their attended tokens"
    elif isinstance(labels, Tensor) and tuple(labels.shape) == size:
        mask &= prompt_mask_from_labels(labels, mask).to(mask.device) != 0
        why = f"{NO_PROMPT_BEFORE_LABELS}, or pass prompt_mask=(B, T)"
    else:
        why = "they have no attended token (attention_mask is all 0)"
    _refuse_rows(~mask.any(-1), f"have no prompt token: {why}", lambda rows: ValueError(rows))
    return mask


# why a row whose prompt is read from its labels has none, and how to give it one
NO_PROMPT_BEFORE_LABELS = (
    "the prompt is the attended tokens before the first labelled one (label != -100), and these rows label their "
    "first token. Mask the prompt's labels with -100 (a completion-only loss, as TRL's SFT does for prompt/completion "
    "data and for messages with assistant_only_loss=True; a plain `text` column labels everything)"
)


def prompt_mask_from_labels(labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(B, T) int64: 1 on each row's prompt, the attended tokens before its first labelled one (label != -100)."""
    attended = labels.new_ones(labels.shape, dtype=torch.bool)
    if attention_mask is not None:
        attended = attention_mask.to(labels.device) != 0
    labelled = (labels != IGNORE_INDEX) & attended
    index = torch.arange(labels.shape[-1], device=labels.device)
    first = torch.where(labelled, index, labels.shape[-1]).amin(-1, keepdim=True)  # T where a row has no label
    return (attended & (index < first)).long()


def _refuse_rows(bad: Tensor, message: str, error: Callable[[str], Exception]) -> None:
    """Raise `error` naming the rows where `bad` is true; on an accelerator, a device-side assertion instead (no
    host synchronisation)."""
    if not bad.numel():
        return
    if bad.device.type != "cpu":
        torch._assert_async(~bad.any(), f"input conditions: some example(s) {message}")
        return
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise error(f"example(s) {rows[:16]} of the batch {message}")


def _check_shape(name: str, value: Tensor, size: tuple[int, int]) -> None:
    if tuple(value.shape) != size:
        raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {size} (batch, tokens) like input_ids")


def _shape(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)[:40]


def pool(hidden: Tensor, mask: Tensor, how: str, name: str, layer: int) -> Tensor:
    """(B, T, H) hidden states -> (B, H) float32, over the prompt's tokens: their mean, or the last one's."""
    if hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(mask.shape):
        raise RuntimeError(
            f"input condition '{name}': the hidden state at layer {layer} has shape {tuple(hidden.shape)}, expected "
            f"(batch, tokens, features) with (batch, tokens) = {tuple(mask.shape)} as the call's input"
        )
    hidden = hidden.float()
    mask = mask.to(hidden.device)
    if how == "mean":
        # where, not a product: a padded position's state may be anything (even nan), and must not reach the sum
        total = torch.where(mask.unsqueeze(-1), hidden, 0.0).sum(1)
        return total / mask.sum(1, keepdim=True).to(hidden.dtype)
    last = torch.where(mask, torch.arange(mask.shape[1], device=mask.device), -1).amax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _check_targets_above(
    model: nn.Module,
    blocks_name: str,
    blocks: nn.ModuleList,
    targets: list[str],
    specs: Mapping[str, ConditionSpec],
    top: int,
) -> None:
    """Every target must run after the highest input condition's hidden state exists: in block `top` or above, or
    after the blocks (the output head). A target below would need its own output to compute its weights."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    last_block = max(order[n] for n in order if n.startswith(f"{blocks_name}.")) if blocks else -1
    prefix = f"{blocks_name}."
    highest = max(specs, key=lambda n: specs[n].layer)
    below = []
    for target in targets:
        if target.startswith(prefix):
            if int(target[len(prefix) :].split(".", 1)[0]) < top:
                below.append(target)
        elif order[target] < last_block:
            below.append(target)
    if below:
        raise ValueError(
            f"target(s) {below[:4]} run before the hidden state of input condition '{highest}' (layer {top}: the "
            f"output of blocks 0..{top - 1} of '{blocks_name}') exists, so their weights would depend on themselves. "
            f"Target blocks {top} and up (layers_to_transform={list(range(top, len(blocks)))}), or read a lower layer"
        )


def prompt_inputs(prompt: Any, device: torch.device) -> dict[str, Any]:
    """`prompt=` (token ids: a tensor or list, one example or a batch; or a tokenizer's output) as the probe's
    inputs on `device`."""
    if isinstance(prompt, Mapping):
        inputs = {k: prompt.get(k) for k in ("input_ids", "attention_mask", "inputs_embeds")}
        inputs |= {k: v.to(device) for k, v in prompt.items() if k not in inputs and isinstance(v, Tensor)}
    else:
        inputs = {"input_ids": prompt, "attention_mask": None, "inputs_embeds": None}
    for key in ("input_ids", "attention_mask"):
        value = inputs[key]
        if value is None:
            continue
        try:
            value = torch.as_tensor(value, device=device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"prompt: {key} must be token ids (a tensor or list of ints, or a tokenizer's output), got "
                f"{type(value).__name__} ({error})"
            ) from None
        if value.is_floating_point() or value.is_complex() or value.dim() not in (1, 2):
            raise TypeError(
                f"prompt: {key} must be integer token ids of shape (T,) or (B, T), got dtype {value.dtype} and "
                f"shape {tuple(value.shape)}"
            )
        inputs[key] = value.unsqueeze(0) if value.dim() == 1 else value
    if isinstance(prompt, Mapping) and getattr(prompt.get("input_ids"), "ndim", 2) == 1:  # one example, unbatched
        inputs |= {
            k: v.unsqueeze(0)
            for k, v in inputs.items()
            if k not in ("input_ids", "attention_mask") and isinstance(v, Tensor) and v.dim() == 1
        }
    if inputs["input_ids"] is None and inputs["inputs_embeds"] is None:
        raise TypeError(
            f"prompt must be token ids or a tokenizer's output holding input_ids, got {type(prompt).__name__}"
        )
    return inputs


def generation_attention_mask(base: nn.Module, input_ids: Tensor, kwargs: Mapping[str, Any]) -> Tensor | None:
    """The attention mask `generate` infers when none is given: padding tokens (`pad_token_id`, when it is in the
    input and is not the end-of-sequence token) are left out; otherwise None (every token counts)."""
    # a keyword, else the given generation config, else the model's own (Transformers fills the fields left None)
    configs = [kwargs.get("generation_config"), getattr(base, "generation_config", None)]

    def setting(name: str) -> Any:
        found = [kwargs.get(name)] + [getattr(c, name, None) for c in configs if c is not None]
        return next((v for v in found if v is not None), None)

    pad, eos = setting("pad_token_id"), setting("eos_token_id")
    if pad is None or not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        return None
    pads = torch.as_tensor(pad, device=input_ids.device).reshape(-1)
    eoses = torch.as_tensor([] if eos is None else eos, device=input_ids.device).reshape(-1)
    if not bool(torch.isin(input_ids, pads).any()) or bool(torch.isin(eoses, pads).any()):
        return None
    return (~torch.isin(input_ids, pads)).long()
