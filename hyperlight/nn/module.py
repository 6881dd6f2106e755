"""`HyperModule`: an `nn.Module` that holds externals next to its ordinary parameters.

An external is declared by shape (`ExternalParameter`) and read like a parameter. Its value comes from,
in this order:

1. the call the module runs in: a hyper model's forward/generate, or a `using_externals(...)` block
   (see `binding.py`): scoped to that call, invisible to other threads and to calls outside it;
2. the module's own explicit values, set by `set_externals(...)` and kept until `reset_externals()`:
   the user's state, shared by every thread, like an ordinary attribute.

Values are never registered as parameters or buffers, so optimizers, `state_dict`, DDP and FSDP never see
generated tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .binding import UNBOUND, BoundValues, Plan, bind, bound_to_now, bound_values
from .external import ExternalParameter, Shape, UninitializedExternalError

_STATE_KEYS = ("_externals", "_hl_explicit", "_external_prefix")


def init_external_state(module: nn.Module) -> None:
    """Give `module` the (empty) bookkeeping a HyperModule needs; used by `__init__` and by class swaps."""
    d = module.__dict__
    d.setdefault("_externals", {})  # name -> ExternalParameter: the declarations
    d.setdefault("_hl_explicit", UNBOUND)  # the values set by set_externals (the user's own state)
    d.setdefault("_external_prefix", "")  # dotted path from the root that last listed us, for messages only


def drop_external_state(module: nn.Module) -> None:
    for key in _STATE_KEYS:
        module.__dict__.pop(key, None)


def _format_shape(shape: Shape) -> str:
    return str(tuple(shape))


class HyperModule(nn.Module):
    """A module whose tensors may be *externals*: declared by shape, set from outside before use.

    Assign an `ExternalParameter` as an attribute to declare one; read the attribute in `forward` as
    you would a parameter. Values are given for the whole subtree by dotted name, either for a scope
    (`using_externals`, safe under threads and nesting) or as the module's own state (`set_externals`):

    >>> import torch
    >>> from hyperlight import HyperModule, ExternalParameter
    >>> class Scale(HyperModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.gain = ExternalParameter((3,))
    ...     def forward(self, x):
    ...         return x * self.gain
    >>> m = Scale()
    >>> m.external_shapes()
    {'gain': (3,)}
    >>> with m.using_externals(gain=torch.tensor([1.0, 2.0, 3.0])):
    ...     m(torch.ones(3))
    tensor([1., 2., 3.])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        init_external_state(self)

    # -- attribute protocol: externals read like parameters -------------------------------------

    def __getattr__(self, name: str) -> Any:
        externals = self.__dict__.get("_externals")
        if externals is not None and name in externals:
            value = self.current_externals().values.get(name)
            return self._value_when_unset(name) if value is None else value
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ExternalParameter):
            self.register_external(name, value)
            return
        externals = self.__dict__.get("_externals")
        if externals is not None and name in externals:
            if value is None:
                raise TypeError(
                    f"'{self._full_name(name)}' is an external; to remove it use `del module.{name}`, "
                    "to clear its value use reset_externals()"
                )
            self.set_externals({name: value})
            return
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        externals = self.__dict__.get("_externals")
        if externals is not None and name in externals:
            del externals[name]
            explicit = self._hl_explicit
            if name in explicit.values:
                kept = {k: v for k, v in explicit.values.items() if k != name}
                self.__dict__["_hl_explicit"] = _entry(kept, explicit.per_example - {name}) if kept else UNBOUND
            return
        super().__delattr__(name)

    def __getstate__(self) -> dict[str, Any]:
        # Copies (deepcopy, pickle, torch.save) carry the declarations, not the values: values are run-time
        # inputs, usually non-leaf outputs of a hypernetwork that deepcopy refuses ("best = deepcopy(model)"
        # after a training step would fail). Set them again on the copy.
        state = super().__getstate__()
        if "_hl_explicit" in state:
            state["_hl_explicit"] = UNBOUND
        return state

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> HyperModule:
        # `.to(dtype)`, `.cuda()`, `.half()` also convert the values set by set_externals, as they convert parameters
        super()._apply(fn, recurse)
        explicit = self.__dict__.get("_hl_explicit", UNBOUND)
        if explicit.values:
            converted = {name: fn(value) for name, value in explicit.values.items()}
            self.__dict__["_hl_explicit"] = BoundValues(converted, explicit.plan, explicit.per_example)
        return self

    def register_external(self, name: str, external: ExternalParameter) -> None:
        """Declare `name` as an external of this module (replacing a parameter of that name, if any)."""
        if "_externals" not in self.__dict__:
            init_external_state(self)
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"external name must be a non-empty string without dots, got {name!r}")
        if not isinstance(external, ExternalParameter):
            raise TypeError(f"expected an ExternalParameter for '{name}', got {type(external).__name__}")
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
        self.__dict__.pop(name, None)
        self._externals[name] = external

    def _full_name(self, name: str) -> str:
        return f"{self._external_prefix}{name}"

    def _value_when_unset(self, name: str) -> Tensor:
        """What reading an external with no value gives: an error (subclasses may fall back to a default)."""
        shape = _format_shape(self._externals[name].shape)
        raise UninitializedExternalError(
            f"Uninitialized External Parameter, please set the value first: '{self._full_name(name)}' "
            f"of {type(self).__name__} expects shape {shape} (or (B, *{shape}) per example); "
            "call set_externals(...) or use `with model.using_externals(...)`"
        )

    def _expected_dtype(self, name: str) -> torch.dtype | None:
        """The floating dtype a value of external `name` must have (None: any), checked by set/using_externals."""
        return compute_dtype(self)

    def current_externals(self) -> BoundValues:
        """The values this module reads now, with their per-example plan: those of the innermost call that
        binds it, else its own explicit values (`set_externals`)."""
        return bound_values(self) or self.__dict__["_hl_explicit"]

    # -- the subtree API ------------------------------------------------------------------------

    def _index(self) -> dict[str, tuple[HyperModule, str]]:
        """Full dotted name -> (owner, local name) for every external below (and in) this module.

        Walked afresh on each use (never cached), so modules attached or removed at any time are seen.
        """
        index = {}
        for prefix, module in self.named_modules():
            if isinstance(module, HyperModule):
                dotted = f"{prefix}." if prefix else ""
                if dotted:  # only for messages; the root keeps the names it was given
                    module.__dict__["_external_prefix"] = dotted
                for name in module._externals:
                    index[f"{dotted}{name}"] = (module, name)
        return index

    def _hyper_modules(self) -> Iterator[HyperModule]:
        for module in self.modules():
            if isinstance(module, HyperModule):
                yield module

    def named_externals(self) -> Iterator[tuple[str, ExternalParameter]]:
        """Yield `(full dotted name, ExternalParameter)` for every external, in model order."""
        for full, (module, name) in self._index().items():
            yield full, module._externals[name]

    def external_shapes(self) -> dict[str, Shape]:
        """`{full dotted name: shape}` of every external, in model order: what a hypernetwork must predict."""
        return {name: ext.shape for name, ext in self.named_externals()}

    def set_externals(self, values: Mapping[str, Tensor] | None = None, /, **kwargs: Tensor) -> None:
        """Set externals by full dotted name (a dict, keyword arguments, or both) as the modules' own state.

        The values stay until `reset_externals()` and are seen by every thread and call that does not bind
        its own (use `using_externals` for values scoped to a block). Each value has the external's shape,
        or `(B, *shape)` to give example `b` of the input its own value. Everything is checked before
        anything is set: unknown names, shapes, dtypes, devices and inconsistent per-example batch sizes
        raise with the offending name.
        """
        for module, entry in self._entries(values, kwargs, over_current=False).items():
            module.__dict__["_hl_explicit"] = entry

    def reset_externals(self) -> None:
        """Clear the explicit values (`set_externals`) of every external in this subtree; declarations stay.

        Values bound by a running call (`using_externals`, a hyper model's forward) belong to that call and
        end with it."""
        for module in self._hyper_modules():
            module.__dict__["_hl_explicit"] = UNBOUND

    @contextmanager
    def using_externals(self, values: Mapping[str, Tensor] | None = None, /, **kwargs: Tensor) -> Iterator[None]:
        """Bind externals for the duration of a `with` block, in this thread and context only.

        Calls inside the block (nested ones included) read these values; other threads, and code after the
        block, do not. Externals not named keep what they had. Checked like `set_externals`.
        """
        with bind(self._entries(values, kwargs, over_current=True)):
            yield

    def externals_are_set(self) -> bool:
        """True when every external of the subtree has a value here and now."""
        return all(name in module.current_externals().values for module, name in self._index().values())

    def _entries(
        self, values: Mapping[str, Tensor] | None, kwargs: Mapping[str, Tensor], *, over_current: bool
    ) -> dict[HyperModule, BoundValues]:
        """Check the given values and merge them, per module, over what each module has (its explicit values,
        or everything it sees now when `over_current`), deciding each module's per-example plan once."""
        given: dict[str, Tensor] = dict(values or {})
        overlap = given.keys() & kwargs.keys()
        if overlap:
            raise ValueError(f"externals given twice (in the dict and as keywords): {sorted(overlap)}")
        given.update(kwargs)

        index = self._index()
        unknown = [name for name in given if name not in index]
        if unknown:
            raise KeyError(
                f"unknown external(s) {unknown}; this model's externals are {list(index)[:20]}"
                + (" ..." if len(index) > 20 else "")
            )

        batch_sizes: dict[str, int] = {}
        by_module: dict[HyperModule, dict[str, Tensor]] = {}
        given_per_example: dict[HyperModule, set[str]] = {}
        for full, value in given.items():
            module, name = index[full]
            batch = _check_value(full, module._externals[name], value, module)
            if batch is not None:
                batch_sizes[full] = batch
                given_per_example.setdefault(module, set()).add(name)
            by_module.setdefault(module, {})[name] = value
        _check_one_batch(batch_sizes)

        entries: dict[HyperModule, BoundValues] = {}
        for module, own in by_module.items():
            before = module.current_externals() if over_current else module._hl_explicit
            merged = {**before.values, **own}
            per_example = {n for n in before.per_example if n not in own} | given_per_example.get(module, set())
            _check_one_batch({module._full_name(n): merged[n].shape[0] for n in per_example})
            entries[module] = _entry(merged, frozenset(per_example))
        return entries


F = TypeVar("F", bound=Callable[..., Any])


def capture_externals(fn: F) -> F:
    """`fn`, bound to the externals visible now: calling it later (a gradient-checkpointing recompute during
    backward, another thread) runs it with exactly these values.

    The values bound by calls and `using_externals` blocks are captured; so are the explicit
    (`set_externals`) values of every HyperModule below `fn` when `fn` is a module.

    >>> import torch
    >>> from hyperlight import HyperLinear
    >>> layer = HyperLinear(2, 1, bias=False)
    >>> with layer.using_externals(weight=torch.ones(1, 2)):
    ...     later = capture_externals(layer)
    >>> later(torch.ones(1, 2))   # the block has ended; the captured values still apply
    tensor([[2.]])
    """
    explicit: dict[nn.Module, BoundValues] = {}
    if isinstance(fn, nn.Module):
        for module in fn.modules():
            own = module.__dict__.get("_hl_explicit") if isinstance(module, HyperModule) else None
            if own is not None and own.values:
                explicit[module] = own
    return bound_to_now(fn, explicit)


def _entry(values: Mapping[str, Tensor], per_example: frozenset[str]) -> BoundValues:
    batch = next((values[n].shape[0] for n in per_example), None)
    return BoundValues(dict(values), Plan(batch), per_example)


def _check_one_batch(batch_sizes: Mapping[str, int]) -> None:
    if len(set(batch_sizes.values())) > 1:
        raise ValueError(
            f"per-example externals must share one batch size, got {dict(batch_sizes)}; "
            "give every per-example value the same leading dimension B"
        )


def compute_dtype(module: nn.Module) -> torch.dtype | None:
    """The floating dtype `module` computes in (that of its own first floating parameter or buffer), if any."""
    for tensor in (*module._parameters.values(), *module._buffers.values()):
        if tensor is not None and tensor.is_floating_point():
            return tensor.dtype
    return None


def name_of(full: str) -> str:
    return full.rsplit(".", 1)[-1]


def _check_value(full: str, external: ExternalParameter, value: Any, module: HyperModule) -> int | None:
    """Check one value against its declaration; return its per-example batch size (None if shared)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"external '{full}' must be set to a torch.Tensor, got {type(value).__name__}")
    shape = tuple(value.shape)
    batch: int | None = None
    if shape == external.shape:
        batch = None
    elif len(shape) == len(external.shape) + 1 and shape[1:] == external.shape:
        batch = shape[0]
    else:
        expected = _format_shape(external.shape)
        raise ValueError(
            f"shape mismatch for '{full}': expected {expected} or (B, *{expected}) per example, got {shape}"
        )
    if external.dtype is not None and value.dtype != external.dtype:
        raise TypeError(f"dtype mismatch for '{full}': expected {external.dtype}, got {value.dtype}")
    if external.dtype is None and not (value.is_floating_point() or value.is_complex()):
        raise TypeError(
            f"dtype mismatch for '{full}': expected a floating-point tensor, got {value.dtype}; "
            "declare ExternalParameter(shape, dtype=...) for other dtypes"
        )
    reference = module._expected_dtype(name_of(full))
    if external.dtype is None and reference is not None and value.is_floating_point() and value.dtype != reference:
        raise TypeError(
            f"dtype mismatch for '{full}': {type(module).__name__} computes in {reference}, the value is "
            f"{value.dtype}; cast it with .to({reference}) (or convert the module with .to(...))"
        )
    device = next((t.device for t in (*module._parameters.values(), *module._buffers.values()) if t is not None), None)
    if device is not None and device.type != "meta" and value.device != device:
        raise ValueError(
            f"device mismatch for '{full}': the module lives on {device}, the value on {value.device}; "
            f"move the value with .to({str(device)!r})"
        )
    return batch
