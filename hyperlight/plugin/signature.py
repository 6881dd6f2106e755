"""A hyper model's `forward` shows the base model's arguments plus one keyword per condition.

Transformers' `Trainer` reads `inspect.signature(model.forward)` to decide which dataset columns to keep
(`remove_unused_columns=True`) and which are labels; with this signature it keeps the condition columns
and finds the labels without any flag or subclass. The signature lives on a per-(base class, conditions)
subclass, `Hyper<BaseClass>`, made by the core's one class factory (which also pickles it).

Also read from the base model's forward: the keyword arguments it accepts, and a call's batch size.
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..hypernet.conditions import check_condition_name
from ..nn.derived import derived_class

# keyword arguments that `GenerationMixin.generate` reads from its **kwargs without naming them
_GENERATE_KWARGS = ("tokenizer", "assistant_tokenizer", "trust_remote_code")
# the inputs whose first dimension is a call's batch size, in the order they are looked for
_BATCH_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_features", "input_values", "attention_mask")


def _keywords(function: Any, *, variadic: bool = True) -> set[str]:
    """The argument names of `function` (`*args`/`**kwargs` themselves only with `variadic`), with the keys of a
    typed `**kwargs: Unpack[TypedDict]` (as Transformers types them)."""
    names: set[str] = set()
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return names
    for param in params:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            typed = typing.get_args(param.annotation)
            for key in ("__required_keys__", "__optional_keys__"):
                names |= set(getattr(typed[0], key, ())) if typed else set()
        if variadic or param.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            names.add(param.name)
    return names


@functools.cache
def _transformers_generate_keywords() -> frozenset[str]:
    """`GenerationMixin.generate`'s arguments and every `GenerationConfig` field (generate takes both as keywords)."""
    from transformers import GenerationConfig, GenerationMixin

    fields = {k for k in vars(GenerationConfig()) if not k.startswith("_")}
    return frozenset((_keywords(GenerationMixin.generate, variadic=False) - {"self"}) | fields | set(_GENERATE_KWARGS))


def _generate_keywords(base_cls: type[nn.Module]) -> set[str]:
    """The keywords the base model's `generate` takes (none without one); Transformers' in full for its models."""
    generate = getattr(base_cls, "generate", None)
    if not callable(generate):
        return set()
    names = _keywords(generate, variadic=False) - {"self"}
    transformers = sys.modules.get("transformers")  # a Transformers model means it is imported already
    mixin = getattr(transformers, "GenerationMixin", None) if transformers is not None else None
    if isinstance(mixin, type) and issubclass(base_cls, mixin):
        names |= _transformers_generate_keywords()
    return names


def check_condition_names(base_cls: type[nn.Module], conditions: tuple[str, ...]) -> None:
    """Raise unless every condition name is a valid name that shadows no argument of the base model's `forward`
    (its typed `**kwargs` included) nor, where it has one, of its `generate` (GenerationConfig fields included):
    a hyper model takes the conditions as keyword arguments beside those, so a clash would swallow one."""
    for name in conditions:
        check_condition_name(name)
    forward = _keywords(base_cls.forward)
    clash = [n for n in conditions if n in forward]
    if clash:
        raise ValueError(
            f"condition name(s) {clash} collide with arguments of {base_cls.__name__}.forward; rename the condition "
            f"(e.g. '{clash[0]}_cond'): a hyper model takes its conditions as keyword arguments beside the model's"
        )
    generate = _generate_keywords(base_cls)
    clash = [n for n in conditions if n in generate]
    if clash:
        raise ValueError(
            f"condition name(s) {clash} collide with arguments of {base_cls.__name__}.generate (or fields of "
            f"GenerationConfig, which generate takes as keywords): hyper.generate(..., {clash[0]}=...) would take "
            f"it as the condition and never pass it on. Rename the condition (e.g. '{clash[0]}_cond')"
        )


def forward_signature(base_cls: type[nn.Module], conditions: tuple[str, ...]) -> inspect.Signature:
    check_condition_names(base_cls, conditions)
    base = list(inspect.signature(base_cls.forward).parameters.values())
    var_keyword = [p for p in base if p.kind is inspect.Parameter.VAR_KEYWORD]
    plain = [p for p in base if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in conditions]
    return inspect.Signature(plain + extra + var_keyword)


def _signed_recipe(
    cls: type[nn.Module], base_cls: type[nn.Module], conditions: tuple[str, ...]
) -> tuple[str, tuple[type, ...], dict[str, Any]]:
    parent_forward = cls.forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return parent_forward(self, *args, **kwargs)

    forward.__signature__ = forward_signature(base_cls, conditions)  # type: ignore[attr-defined]
    forward.__doc__ = parent_forward.__doc__
    namespace = {"forward": forward, "__module__": cls.__module__, "__doc__": cls.__doc__, "_hl_unsigned": cls}
    return f"Hyper{base_cls.__name__}", (cls,), namespace


def signed_class(cls: type[nn.Module], base_cls: type[nn.Module], conditions: tuple[str, ...]) -> type[nn.Module]:
    """`cls` with a `forward` whose signature is `base_cls.forward`'s plus the conditions."""
    return derived_class(_signed_recipe, getattr(cls, "_hl_unsigned", cls), base_cls, conditions)


def accepted_keywords(model: nn.Module) -> frozenset[str] | None:
    """The keyword arguments `model`'s forward really takes, or None when that cannot be known (a model outside
    Transformers whose forward takes untyped `**kwargs`: anything may be meant for it).

    Its named parameters; for `**kwargs`, the keys of its `Unpack[TypedDict]` annotation and, for Transformers
    models (typed or not), the keys Transformers routes through every forward (`TransformersKwargs`), those its
    decorators consume (`return_dict`, ...) and the tokenizer outputs a model takes and ignores
    (`token_type_ids`)."""
    names, var_keyword = _named_keywords(model.forward)
    if var_keyword is None:
        return frozenset(names)
    typed = _typed_dict_keys(var_keyword.annotation)
    from_transformers = any(c.__module__.startswith("transformers.") for c in type(model).__mro__)
    if not from_transformers:
        return None if typed is None else frozenset(names | typed)
    return frozenset(names | (typed or set()) | _transformers_keywords())


def replaced_forward_keywords(forward: Any) -> frozenset[str]:
    """The named parameters of every function in the chain of wrappers a library put on an instance as its
    forward (TRL's fused LM head adds `fused_lm_head`, `shift_labels`, ...; Accelerate wraps that again). Read
    from the code objects: `functools.wraps` copies the wrapped forward's `__signature__` onto each wrapper."""
    names: set[str] = set()
    function, seen = forward, 0
    while function is not None and seen < 16:  # a bounded walk: a wrapper chain could loop
        function = getattr(function, "__func__", function)
        code = getattr(function, "__code__", None)
        if code is not None:
            names.update(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
        function, seen = getattr(function, "__wrapped__", None), seen + 1
    return frozenset(names)


def _named_keywords(forward: Any) -> tuple[set[str], inspect.Parameter | None]:
    names: set[str] = set()
    var_keyword = None
    for param in inspect.signature(forward).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = param
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(param.name)
    return names, var_keyword


def _typed_dict_keys(annotation: Any) -> set[str] | None:
    """The keys of `**kwargs: Unpack[SomeTypedDict]`, or None when the annotation names no TypedDict."""
    if isinstance(annotation, str):
        return None  # a postponed annotation: not evaluated here
    origin = typing.get_origin(annotation)  # typing's or typing_extensions' Unpack, whichever the model used
    args = typing.get_args(annotation) if getattr(origin, "_name", None) == "Unpack" else ()
    return _keys_of(args[0]) if args else None


def _keys_of(fields: Any) -> set[str] | None:
    keys = getattr(fields, "__required_keys__", None)
    if keys is None:
        return None
    return set(keys) | set(getattr(fields, "__optional_keys__", ()))


@functools.cache
def _transformers_keywords() -> set[str]:
    """What any Transformers forward with `**kwargs` takes beyond its named parameters."""
    # decorators' keywords; what the loss functions read from **kwargs (`shift_labels`: Trainer adds it under context
    # parallelism); old names Transformers renames or ignores (`past_key_values` -> `cache`, `cache_position`)
    keys = {"return_dict", "output_attentions", "output_hidden_states", "use_cache", "shift_labels"}
    keys |= {"past_key_values", "cache_params", "cache_position", "head_mask"}
    # what a tokenizer returns, which a model with **kwargs takes and ignores (`hyper(**tokenizer(text, ...))`)
    keys |= {"token_type_ids", "special_tokens_mask", "offset_mapping", "length", "overflow_to_sample_mapping"}
    try:
        from transformers.utils.generic import TransformersKwargs
    except ImportError:  # an older Transformers: the named parameters and the keys above
        return keys
    return keys | (_keys_of(TransformersKwargs) or set())


def batch_size_of(args: tuple, kwargs: Mapping[str, Any]) -> int | None:
    """The batch size of a call of the base model: the first dimension of its first batch input."""
    for key in _BATCH_KEYS:
        value = kwargs.get(key)
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    for value in args:
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def generation_expansion(base: nn.Module, kwargs: Mapping[str, Any]) -> int:
    """How many rows `generate` makes of each example: max(num_beams, num_return_sequences), as Transformers
    expands its inputs (a layout it changes is then refused loudly, never computed with the wrong rows).

    A keyword wins; otherwise Transformers merges a given `generation_config` over the model's own, so the
    larger of the two counts."""
    configs = [kwargs.get("generation_config"), getattr(base, "generation_config", None)]

    def setting(name: str) -> int:
        if kwargs.get(name) is not None:
            return int(kwargs[name])
        return max([int(getattr(c, name, None) or 1) for c in configs if c is not None] or [1])

    return max(setting("num_beams"), setting("num_return_sequences"))
