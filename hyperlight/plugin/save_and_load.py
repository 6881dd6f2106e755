"""Saving and loading a hyper model, as functions over it (PEFT's `save_and_load.py` shape): its trained state only
(condition encoder, generator, `modules_to_save`), as `save_pretrained` files (`checkpoint_file.py` writes and
verifies them) or as `state_dict()` (so a plain `Trainer` checkpoint is small and loadable). `HyperModel`'s
methods of the same names call these. A load checks the file against the model before anything is built."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys

from .._version import __version__
from ..hypernet.conditions import ConditionSpec
from .checkpoint_file import (
    CONFIG_KEY,
    CheckpointError,
    CheckpointHeader,
    config_from_tensor,
    config_to_tensor,
    read_checkpoint,
    save_checkpoint,
)
from .config import HyperConfig
from .planning import expected_state_shapes, target_shapes_of


def _full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor behind an FSDP2-sharded DTensor (a collective: every rank must call it)."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


def hyper_state_dict(hyper: nn.Module, *, keep_vars: bool = False) -> dict[str, Tensor]:
    """The trained state: condition encoder, generator and `modules_to_save` (never the frozen base)."""
    parts = [("condition_encoder.", hyper.condition_encoder), ("generator.", hyper.generator)]
    parts += [(f"base_model.{name}.", module) for name, module in hyper.saved_modules.items()]
    state: dict[str, Tensor] = {}
    for prefix, module in parts:
        state.update({prefix + k: v for k, v in nn.Module.state_dict(module, keep_vars=keep_vars).items()})
    return state


def checkpoint_record(hyper: nn.Module) -> dict[str, Any]:
    """The config a checkpoint stores, with what it records of the model it was trained on (checked at load)."""
    config, used = hyper.hyper_config, {n: s.to_dict() for n, s in hyper.condition_encoder.specs.items()}
    if {n: ConditionSpec.parse(n, s).to_dict() for n, s in config.conditions.items()} != used:
        raise ValueError(
            f"hyper_config.conditions {config.conditions} is not what this model was built with ({used}): it was "
            "changed after get_hyper_model (in place?), and a checkpoint of it would give names and sizes other "
            "meanings. Build a new hyper model with the conditions you want"
        )
    base = hyper.get_base_model()
    provenance = {
        "version": __version__,
        "base_model_class": type(base).__name__,
        "model_type": getattr(getattr(base, "config", None), "model_type", None),
        "targets": hyper.target_shapes,
    }
    return {**config.to_dict(), "hyperlight": provenance}


def save_pretrained(hyper: nn.Module, save_directory: str | Path, *, is_main_process: bool = True) -> None:
    """Write `hyper_config.json` and `hyper_model.safetensors` (the hyper weights only; atomic writes).

    Under FSDP call it on every process (sharded weights are gathered), with `is_main_process` true on one.
    """
    hyper.require_loaded()
    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained needs a directory, got the file {directory}")
    state = {k: _full_tensor(v) for k, v in hyper_state_dict(hyper).items()}
    if not is_main_process:
        return
    save_checkpoint(directory, state, checkpoint_record(hyper), __version__)


def load_pretrained(
    cls: type[nn.Module], model: nn.Module, path: str | Path, *, is_trainable: bool = False, encoder: Any = None
) -> Any:
    """`cls.from_pretrained(model, path)`: rebuild a hyper model of class `cls` on `model` (a fresh base model)
    from a `save_pretrained` directory or a `Trainer` checkpoint directory (see `HyperModel.from_pretrained`)."""
    directory = Path(path)
    record, header, where = read_checkpoint(directory)
    provenance = record.pop("hyperlight", {})
    try:
        config = HyperConfig.from_dict(record)
        _check_sizes_against(header, config)
        recorded_names = set(provenance.get("targets", {}))
        recorded = [n for n, _ in model.named_modules() if n in recorded_names]  # in model order
        if recorded_names:
            _check_recorded_targets(model, config, provenance, where, directory)
            build_config = dataclasses.replace(
                config, target_modules=recorded, exclude_modules=None, layers_to_transform=None
            )
        else:  # a checkpoint from before targets were recorded: select as the config says
            build_config = config
            recorded = _select_bounded(model, config, where)
        _check_header(header, expected_state_shapes(model, build_config, recorded))
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, OverflowError, RecursionError, RuntimeError) as error:
        raise CheckpointError(f"{where}: {str(error)[:1000]}") from None

    hyper = cls(model, build_config, encoder=encoder)
    try:
        # the config as saved (its target pattern), with the text encoders as resolved (where they were found)
        hyper.hyper_config = dataclasses.replace(config, conditions=hyper.hyper_config.conditions)
        _check_provenance(provenance, model, hyper.target_shapes, directory)
        state = header.load()
        state.pop(CONFIG_KEY, None)
        load_hyper_state(hyper, state)
    except BaseException:
        hyper.unload()  # the given model goes back exactly as it was
        raise
    if not is_trainable:
        hyper.requires_grad_(False)
        hyper.eval()
    return hyper


# -- nn.Module state: the hyper weights only, so Trainer checkpoints stay small -----------------------------


def state_dict_with_config(
    hyper: nn.Module, destination: Any = None, prefix: str = "", keep_vars: bool = False
) -> dict[str, Any]:
    """The hyper weights (never the frozen base) plus the config as a tensor, so that a plain `Trainer`
    checkpoint (`model.safetensors`) is small and loads with `HyperModel.from_pretrained`."""
    destination = OrderedDict() if destination is None else destination
    for key, value in hyper_state_dict(hyper, keep_vars=keep_vars).items():
        destination[prefix + key] = value
    destination[prefix + CONFIG_KEY] = config_to_tensor(checkpoint_record(hyper))
    return destination


def load_state_dict_with_config(hyper: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True) -> Any:
    """Load what `state_dict_with_config` gives (the config entry, if present, must match this model's)."""
    state = dict(state_dict)
    record = state.pop(CONFIG_KEY, None)
    if record is not None:
        saved = config_from_tensor(record)
        provenance = saved.pop("hyperlight", {})
        loaded = HyperConfig.from_dict(saved)
        if loaded != hyper.hyper_config or list(loaded.conditions) != list(hyper.hyper_config.conditions):
            raise ValueError("the state dict was saved from a hyper model with another HyperConfig")
        _check_provenance(provenance, hyper.get_base_model(), hyper.target_shapes, Path("<state_dict>"))
    return load_hyper_state(hyper, state, strict=strict)


def load_hyper_state(hyper: nn.Module, state: Mapping[str, Tensor], *, strict: bool = True) -> Any:
    """Copy `state` into the hyper weights, refusing missing, unexpected (when strict) or misshapen tensors."""
    own = hyper_state_dict(hyper)
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad or (strict and (missing or extra)):
        raise ValueError(
            f"hyper weights do not fit this model: missing {missing[:4]}, unexpected {extra[:4]}, "
            f"wrong shapes {bad[:4]}"
        )
    with torch.no_grad():
        for key, value in state.items():
            if key in own:
                own[key].copy_(value)
    return _IncompatibleKeys(missing, extra)


def _check_provenance(
    provenance: Mapping[str, Any], model: nn.Module, actual: Mapping[str, Any], directory: Path
) -> None:
    """A checkpoint's recorded model type and `{target: {external: shape}}` must be `model`'s and `actual`."""
    saved_type = provenance.get("model_type")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    where = f"the checkpoint in {directory} was trained on a {provenance.get('base_model_class')}"
    if saved_type != model_type:
        raise CheckpointError(
            f"{where} (model_type {saved_type!r}), not on a {type(model).__name__} "
            f"(model_type {model_type!r}); load it onto the base model it was trained with"
        )
    expected = provenance.get("targets")
    if expected is not None and expected != actual:
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        differ = [n for n in expected if n in actual and expected[n] != actual[n]]
        detail = f"missing {missing[:4]}, unexpected {extra[:4]}, different shapes {differ[:4]}"
        if differ:
            detail += f" (e.g. '{differ[0]}': saved {expected[differ[0]]}, model {actual[differ[0]]})"
        raise CheckpointError(
            f"{where} ({saved_type}) whose targets do not match this {type(model).__name__}: "
            f"{detail}. Load it onto the base model it was trained with"
        )


def _check_recorded_targets(
    model: nn.Module, config: HyperConfig, provenance: Mapping[str, Any], where: str, directory: Path
) -> None:
    """Before anything is built: the checkpoint's recorded targets must be modules of `model` with the shapes
    the config gives them there, and the config's own selection (evaluated with a time bound: the pattern comes
    from a file) must be exactly them."""
    modules = dict(model.named_modules())
    recorded = [n for n in provenance["targets"] if n in modules]
    if len(recorded) == len(provenance["targets"]):
        _check_provenance(provenance, model, target_shapes_of(model, config, recorded), directory)
    else:
        _check_provenance(provenance, model, {}, directory)  # names the missing targets
    selected = _select_bounded(model, config, where)
    if set(selected) != set(recorded):  # (the record's JSON keys are sorted; the selection is in model order)
        extra, absent = sorted(set(selected) - set(recorded)), sorted(set(recorded) - set(selected))
        raise CheckpointError(
            f"{where}: its target_modules select {extra[:4]} beyond, and not {absent[:4]} of, the targets it "
            "recorded; the config was edited or belongs to another checkpoint"
        )


def _check_sizes_against(header: CheckpointHeader, config: HyperConfig) -> None:
    """Cheap bounds before anything is built, even on the meta device: every size the config gives appears as a
    tensor dimension in the file, and the generator's depth is at most the number of its tensors."""
    largest = max((d for shape in header.shapes.values() for d in shape), default=0)
    sizes = {
        "rank": config.rank,
        "condition_dim": config.condition_dim,
        "hidden_size": config.hidden_size,
        "layer_embedding_dim": config.layer_embedding_dim,
        "type_embedding_dim": config.type_embedding_dim,
    }
    for name, raw in config.conditions.items():
        spec = ConditionSpec.parse(name, raw)
        if spec.num is not None or spec.dim is not None:  # an embedding table's rows, or a projection's inputs
            sizes[f"conditions.{name}"] = spec.num if spec.num is not None else spec.dim
    too_large = {k: v for k, v in sizes.items() if v > largest}
    if too_large or config.num_layers > len(header.shapes) or len(config.conditions) > len(header.shapes):
        raise CheckpointError(
            f"{header.path}: its config describes sizes its tensors do not have ({too_large or 'depth'}; the largest "
            f"dimension in the file is {largest}, it holds {len(header.shapes)} tensors); the file or its config "
            "was changed"
        )


def _check_header(header: CheckpointHeader, expected: dict[str, tuple[int, ...]]) -> None:
    """The file's tensors must be exactly those the config implies, by name and shape (before any is read)."""
    found = {k: v for k, v in header.shapes.items() if k != CONFIG_KEY}
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or extra or wrong:
        detail = f"missing {missing[:4]}, unexpected {extra[:4]}, wrong shapes {wrong[:4]}"
        if wrong:
            detail += f" (e.g. '{wrong[0]}': file {found[wrong[0]]}, config {expected[wrong[0]]})"
        raise CheckpointError(
            f"{header.path} does not hold the tensors its config describes: {detail}. The file or its config was "
            "changed, or they come from different saves"
        )


def _select_bounded(model: nn.Module, config: HyperConfig, where: str, time_limit: float = 2.0) -> list[str]:
    """The config's selection on `model`, its patterns evaluated within `time_limit` seconds in all."""
    try:
        return config.matched_modules(model, time_limit=time_limit)
    except TimeoutError:
        raise CheckpointError(
            f"{where}: its target_modules/exclude_modules pattern took too long to evaluate on this model's module "
            f"names (over {time_limit} s: a pattern with catastrophic backtracking?); refusing it"
        ) from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: {error}") from None
