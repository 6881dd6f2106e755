"""`ExternalParameter`: a tensor declared by shape, owned by nobody, set from outside before use."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Shape = tuple[int, ...]


class UninitializedExternalError(AttributeError):
    """Raised when an external is read before `set_externals` gave it a value.

    It subclasses `AttributeError` (as the spec shows), so `getattr(module, name, default)` and
    `hasattr` behave as for any missing attribute.
    """


def as_shape(shape: Sequence[int] | torch.Size | int, *, what: str = "shape") -> Shape:
    """Validate and normalise a shape: a tuple or list of non-negative ints (an int means a 1-D shape)."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{what} must be a tuple or list of ints, got {type(shape).__name__} {shape!r}")
    dims = tuple(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"{what} must hold non-negative ints, got {dims!r}")
    return dims


class ExternalParameter:
    """A placeholder for a tensor that a hypernetwork (or anything else) provides at run time.

    Assign it as an attribute of a `HyperModule`; reading the attribute returns the value given by
    `set_externals` (either `shape` or `(B, *shape)` for per-example values) and raises
    `UninitializedExternalError` until then.

    >>> ExternalParameter((16, 8))
    ExternalParameter(shape=(16, 8))
    """

    __slots__ = ("shape", "dtype")

    def __init__(self, shape: Sequence[int] | torch.Size | int, dtype: torch.dtype | None = None) -> None:
        self.shape: Shape = as_shape(shape)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
        self.dtype = dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __repr__(self) -> str:
        dtype = "" if self.dtype is None else f", dtype={self.dtype}"
        return f"ExternalParameter(shape={self.shape}{dtype})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExternalParameter) and (self.shape, self.dtype) == (other.shape, other.dtype)

    def __hash__(self) -> int:
        return hash((self.shape, self.dtype))

    def __getstate__(self) -> tuple:
        return (self.shape, self.dtype)

    def __setstate__(self, state: tuple) -> None:
        self.shape, self.dtype = state
