"""Externals bound to a call: the one owner of a call's tensors and of its per-example plan.

A call (a hyper model's forward or generate, a `using_externals` block, one example inside the `vmap`
fallback) binds `{module: BoundValues}` for its duration. Layers look their values up in the bindings
of the call they run in, innermost first, so concurrent threads (each has its own context), nested calls
and asyncio tasks never see each other's tensors, and nothing is written on the modules.

The bindings live in a `contextvars.ContextVar`, with the usual semantics: an asyncio task or
`contextvars.copy_context().run` started inside a block keeps its bindings; a plain thread or executor
thread starts with none. A generator that yields inside a block leaves the block's bindings visible to
its caller until it resumes and closes the block (Python generators share their caller's context); a
block exited out of order because of that raises instead of computing with the wrong values.
Compiled code (`torch.compile`) cannot read a ContextVar, so the current chain is mirrored in a
thread-local that dynamo can trace and guard on.

Gradient checkpointing re-runs a layer's forward during backward, after the call returned and possibly on
another thread (autograd's device threads on CUDA): `bound_to_now(fn)` returns `fn` bound to the bindings
of the moment it was made, so the recompute reads the weights of the forward it recomputes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True, slots=True)
class Plan:
    """How a module's bound values map onto the rows of its input, decided once when they are bound.

    `batch` is None when the values are shared by every row. Otherwise value b serves example b, and an
    input of `batch * k` rows (beam search, `num_return_sequences`) uses value b for rows b·k … b·k+k−1,
    the `repeat_interleave` layout; `expand` pins k when the caller knows it (None: any whole multiple).
    """

    batch: int | None = None
    expand: int | None = None

    def rows_per_value(self, rows: int, what: str) -> int:
        """k for an input of `rows` rows: 1 for a plain batch, the expansion factor for an expanded one."""
        batch = self.batch
        assert batch is not None, "rows_per_value is for per-example plans"
        if rows == batch:
            return 1
        if self.expand is None:
            fits = batch > 0 and rows % batch == 0
        else:
            fits = rows == batch * self.expand
        if not fits:
            if self.expand is None:
                allowed = f"{batch} (or a multiple of {batch})"
            elif self.expand == 1:
                allowed = f"{batch}"
            else:
                allowed = f"{batch} or {batch * self.expand}"
            raise ValueError(
                f"{what}: per-example weights were given for a batch of {batch}, but the input has {rows} rows; "
                f"its first dimension must be {allowed}. Give one condition/value per example of the input, "
                "or shared (unbatched) values"
            )
        return rows // batch


SHARED = Plan()


@dataclass(frozen=True, slots=True)
class BoundValues:
    """The values one module reads in one call.

    `values` are as given: `shape`, or `(B, *shape)` for the names in `per_example`. Kernels ask for
    `batched(name)`, which gives every tensor the leading B when the plan is per-example (a view).
    """

    values: Mapping[str, Tensor] = field(default_factory=dict)
    plan: Plan = SHARED
    per_example: frozenset[str] = frozenset()

    def batched(self, name: str, fallback: Tensor | None = None) -> Tensor | None:
        """`name`'s value (or `fallback`, e.g. a parameter that is not an external) shaped for the plan."""
        value = self.values.get(name, fallback)
        batch = self.plan.batch
        if value is None or batch is None or name in self.per_example:
            return value
        return value.expand(batch, *value.shape)


UNBOUND = BoundValues()


class _Scope:
    """One binding in the chain of the current context: its entries, then the enclosing binding's."""

    __slots__ = ("entries", "parent")

    def __init__(self, entries: Mapping[nn.Module, BoundValues], parent: _Scope | None) -> None:
        self.entries = entries
        self.parent = parent


_CURRENT: ContextVar[_Scope | None] = ContextVar("hyperlight_bound_externals", default=None)
# The same chain for code that torch.compile traces (dynamo cannot call ContextVar.get). It is set from the
# context at every enter and leave, so it is exact for the synchronous span of a call; compiled code run in an
# asyncio task that awaited inside a block (another task may have run since) should bind its own values.
_MIRROR = threading.local()


def _enter(scope: _Scope | None) -> Any:
    token = _CURRENT.set(scope)
    _MIRROR.scope = scope
    return token


def _leave(entered: _Scope | None, token: Any) -> None:
    if _CURRENT.get() is not entered:
        raise RuntimeError(
            "externals bound by a block were left out of order: a `using_externals`/`conditioned` block ended while "
            "a block opened after it was still open. This happens when a generator yields inside such a block and "
            "is closed elsewhere; keep the block around the generator's whole use, or outside the generator"
        )
    _CURRENT.reset(token)
    _MIRROR.scope = _CURRENT.get()


def bound_values(module: nn.Module) -> BoundValues | None:
    """What `module` reads in the current call (innermost binding first), or None if no call binds it."""
    scope = getattr(_MIRROR, "scope", None) if torch.compiler.is_compiling() else _CURRENT.get()
    while scope is not None:
        entry = scope.entries.get(module)
        if entry is not None:
            return entry
        scope = scope.parent
    return None


@contextmanager
def bind(entries: Mapping[nn.Module, BoundValues]) -> Iterator[None]:
    """Bind `entries` for the calls made inside the block (in this context only), over the enclosing ones."""
    scope = _Scope(entries, _CURRENT.get())
    token = _enter(scope)
    try:
        yield
    finally:
        _leave(scope, token)


F = TypeVar("F", bound=Callable[..., Any])


def bound_to_now(fn: F, beneath: Mapping[nn.Module, BoundValues] | None = None) -> F:
    """`fn`, bound to the bindings of the current context (over `beneath`): calling it later, from any thread,
    runs it with exactly these. `capture_externals` (module.py) is the public form."""
    scope = _CURRENT.get()
    if beneath:  # one flat scope: `beneath`, then every binding of the chain, innermost last (it wins)
        chain = []
        while scope is not None:
            chain.append(scope)
            scope = scope.parent
        flat = dict(beneath)
        for frame in reversed(chain):
            flat.update(frame.entries)
        scope = _Scope(flat, None)

    def run_bound(*args: Any, **kwargs: Any) -> Any:
        token = _enter(scope)
        try:
            return fn(*args, **kwargs)
        finally:
            _leave(scope, token)

    run_bound.__wrapped__ = fn  # type: ignore[attr-defined]
    return run_bound  # type: ignore[return-value]
