"""`HyperModule`: an `nn.Module` that holds externals next to its ordinary parameters.

Externals live in two plain dicts of the module (`_externals`: name -> `ExternalParameter`, and
`_external_values`: name -> Tensor). They are never registered as parameters or buffers, so optimizers,
`state_dict`, DDP and FSDP never see generated tensors. A value stays set until the next
`set_externals`/`reset_externals`: gradient checkpointing re-runs forwards during backward and must
find the same values there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .external import ExternalParameter, Shape, UninitializedExternalError

_STATE_KEYS = (
    "_externals",
    "_external_values",
    "_external_batch",
    "_external_prefix",
    "_external_index",
    "_external_index_gen",
)
# Bumped whenever an external is declared or removed anywhere: cached indexes built before are then stale.
_declarations = [0]


def init_external_state(module: nn.Module) -> None:
    """Give `module` the (empty) bookkeeping a HyperModule needs; used by `__init__` and by class swaps."""
    d = module.__dict__
    d.setdefault("_externals", {})
    d.setdefault("_external_values", {})
    d.setdefault("_external_batch", None)  # B when an own external holds per-example values
    d.setdefault("_external_prefix", "")  # dotted path from the last root that indexed us, for messages
    d.setdefault("_external_index", None)  # cache: full name -> (module, local name)


def drop_external_state(module: nn.Module) -> None:
    for key in _STATE_KEYS:
        module.__dict__.pop(key, None)


def _format_shape(shape: Shape) -> str:
    return str(tuple(shape))


class HyperModule(nn.Module):
    """A module whose tensors may be *externals*: declared by shape, set from outside before use.

    Assign an `ExternalParameter` as an attribute to declare one; read the attribute in `forward` as
    you would a parameter. Values are set for the whole subtree by dotted name:

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
        d = self.__dict__
        externals = d.get("_externals")
        if externals is not None and name in externals:
            try:
                return d["_external_values"][name]
            except KeyError:
                raise self._uninitialized(name) from None
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
            self._external_values.pop(name, None)
            self._refresh_batch()
            _declarations[0] += 1
            return
        super().__delattr__(name)

    def __getstate__(self) -> dict[str, Any]:
        # Copies (deepcopy, pickle, torch.save) carry the declarations, not the values: values are run-time
        # inputs, usually non-leaf outputs of a hypernetwork that deepcopy refuses ("best = deepcopy(model)"
        # after a training step would fail). Set them again on the copy.
        state = super().__getstate__()
        if "_external_values" in state:
            state["_external_values"] = {}
            state["_external_batch"] = None
        return state

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
        self._external_values.pop(name, None)
        _declarations[0] += 1

    def _full_name(self, name: str) -> str:
        return f"{self._external_prefix}{name}"

    def _uninitialized(self, name: str) -> UninitializedExternalError:
        shape = _format_shape(self._externals[name].shape)
        return UninitializedExternalError(
            f"Uninitialized External Parameter, please set the value first: '{self._full_name(name)}' "
            f"of {type(self).__name__} expects shape {shape} (or (B, *{shape}) per example); "
            "call set_externals(...) or use `with model.using_externals(...)`"
        )

    def _refresh_batch(self) -> None:
        batch = None
        for name, value in self._external_values.items():
            if value.dim() == len(self._externals[name].shape) + 1:
                batch = value.shape[0]
        self.__dict__["_external_batch"] = batch

    # -- the subtree API ------------------------------------------------------------------------

    def _index(self, *, refresh: bool = False) -> dict[str, tuple[HyperModule, str]]:
        """Full dotted name -> (owner, local name) for every external below (and in) this module."""
        index = self.__dict__.get("_external_index")
        if index is None or refresh or self.__dict__.get("_external_index_gen") != _declarations[0]:
            index = {}
            for prefix, module in self.named_modules():
                if isinstance(module, HyperModule):
                    dotted = f"{prefix}." if prefix else ""
                    if dotted:  # only for messages; the root keeps the names it was given
                        module.__dict__["_external_prefix"] = dotted
                    for name in module._externals:
                        index[f"{dotted}{name}"] = (module, name)
            self.__dict__["_external_index"] = index
            self.__dict__["_external_index_gen"] = _declarations[0]
        return index

    def _hyper_modules(self) -> Iterator[HyperModule]:
        seen: set[int] = set()
        for module, _ in self._index().values():
            if id(module) not in seen:
                seen.add(id(module))
                yield module

    def named_externals(self) -> Iterator[tuple[str, ExternalParameter]]:
        """Yield `(full dotted name, ExternalParameter)` for every external, in model order."""
        for full, (module, name) in self._index(refresh=True).items():
            yield full, module._externals[name]

    def external_shapes(self) -> dict[str, Shape]:
        """`{full dotted name: shape}` of every external, in model order: what a hypernetwork must predict."""
        return {name: ext.shape for name, ext in self.named_externals()}

    def set_externals(self, values: Mapping[str, Tensor] | None = None, /, **kwargs: Tensor) -> None:
        """Set externals by full dotted name (a dict, keyword arguments, or both).

        Each value has the external's shape, or `(B, *shape)` to give example `b` of the input its own
        value. Everything is checked before anything is set: unknown names, shapes, dtypes, devices and
        inconsistent per-example batch sizes raise with the offending name.
        """
        given: dict[str, Tensor] = dict(values or {})
        overlap = given.keys() & kwargs.keys()
        if overlap:
            raise ValueError(f"externals given twice (in the dict and as keywords): {sorted(overlap)}")
        given.update(kwargs)

        index = self._index()
        if any(name not in index for name in given):
            index = self._index(refresh=True)
        unknown = [name for name in given if name not in index]
        if unknown:
            raise KeyError(
                f"unknown external(s) {unknown}; this model's externals are {list(index)[:20]}"
                + (" ..." if len(index) > 20 else "")
            )

        batch_sizes: dict[str, int] = {}
        for full, value in given.items():
            module, name = index[full]
            batch = _check_value(full, module._externals[name], value, module)
            if batch is not None:
                batch_sizes[full] = batch
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(
                f"per-example externals must share one batch size, got {batch_sizes}; "
                "give every per-example value the same leading dimension B"
            )

        by_module: dict[int, tuple[HyperModule, dict[str, Tensor]]] = {}
        for full, value in given.items():
            module, name = index[full]
            by_module.setdefault(id(module), (module, {}))[1][name] = value
        for module, own in by_module.values():
            module.assign_externals(own)

    def assign_externals(self, values: Mapping[str, Tensor]) -> None:
        """Set this module's own externals by local name, unchecked: for callers that produced the values to
        the declared shapes themselves (the Transformers plug-in's generator). Use `set_externals` otherwise."""
        self._external_values.update(values)
        self._refresh_batch()

    def reset_externals(self) -> None:
        """Clear the values of every external in this subtree (their declarations stay)."""
        for module in self._hyper_modules():
            module._external_values.clear()
            module.__dict__["_external_batch"] = None

    @contextmanager
    def using_externals(self, values: Mapping[str, Tensor] | None = None, /, **kwargs: Tensor) -> Iterator[None]:
        """Set externals for the duration of a `with` block; they are reset on exit, even on error."""
        self.set_externals(values, **kwargs)
        try:
            yield
        finally:
            self.reset_externals()

    def externals_are_set(self) -> bool:
        """True when every external of the subtree has a value."""
        return all(name in module._external_values for module, name in self._index().values())


def _check_value(full: str, external: ExternalParameter, value: Any, module: nn.Module) -> int | None:
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
    reference = next(iter(module.parameters(recurse=False)), None)
    if reference is None:
        reference = next(iter(module.buffers(recurse=False)), None)
    if reference is not None and reference.device.type != "meta" and value.device != reference.device:
        raise ValueError(
            f"device mismatch for '{full}': the module lives on {reference.device}, the value on {value.device}; "
            f"move the value with .to({str(reference.device)!r})"
        )
    return batch
