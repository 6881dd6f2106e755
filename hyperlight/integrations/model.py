"""`HyperModel`: a pretrained model whose selected weights are predicted per example from conditions.

The PEFT triad: `HyperConfig` (config.py) says what, `hypernetize` (the core) turns the targets into
externals (low-rank `lora_A`/`lora_B` on frozen weights, or full tensors), and this wrapper owns the
condition encoder and generator, sets the externals from the conditions of each call, and saves,
merges and exports.
"""

from __future__ import annotations

import inspect
import typing
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys

from .._version import __version__
from ..hypernet.conditions import ConditionEncoder
from ..hypernet.generators import GeneratorTarget, PerTargetGenerator, SharedGenerator
from ..hypernetize import hypernetize, unhypernetize
from ..nn.module import HyperModule
from .checkpointing import GradientSink, uses_reentrant_checkpointing
from .config import CONFIG_NAME, HyperConfig
from .io import (
    CONFIG_KEY,
    WEIGHTS_NAME,
    config_from_tensor,
    config_to_tensor,
    read_checkpoint,
    save_json,
    save_tensors,
)
from .selection import layer_index, type_key
from .signature import forward_signature, rebuild, signed_class

_BATCH_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_features", "input_values", "attention_mask")


def _accepted_keywords(forward: Any) -> frozenset[str] | None:
    """The keyword arguments `forward` accepts, or None when it takes free-form `**kwargs`.

    Transformers types its `**kwargs` as `Unpack[TypedDict]`; those keys count as accepted.
    """
    names: set[str] = set()
    for param in inspect.signature(forward).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            typed = typing.get_args(param.annotation)
            keys = getattr(typed[0], "__required_keys__", None) if typed else None
            if keys is None:
                return None
            names |= set(keys) | set(typed[0].__optional_keys__)
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(param.name)
    return frozenset(names)


def _batch_size(args: tuple, kwargs: Mapping[str, Any]) -> int | None:
    for key in _BATCH_KEYS:
        value = kwargs.get(key)
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    for value in args:
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def _full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor behind an FSDP2-sharded DTensor (a collective: every rank must call it)."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


def _first_rows(inverse: Tensor, count: int) -> Tensor:
    """For each unique row u, the index of its first occurrence in the batch."""
    positions = torch.arange(inverse.shape[0], device=inverse.device)
    return torch.full((count,), inverse.shape[0], device=inverse.device).scatter_reduce(0, inverse, positions, "amin")


def _full_mode_parameters(model: nn.Module, names: list[str], wanted: list[str] | None) -> dict[str, list[str]]:
    """`{module: [parameter names]}` that full mode generates; refuses selections that would untie weights."""
    modules = dict(model.named_modules())
    chosen: dict[str, list[str]] = {}
    for n in names:
        own = [p for p, v in modules[n]._parameters.items() if v is not None]
        if picked := [p for p in own if wanted is None or p in wanted]:
            chosen[n] = picked
    if not chosen:
        raise ValueError(
            f"target_parameters={wanted} matched no parameter of the selected modules "
            f"{names[:5]}; their parameters are e.g. {list(modules[names[0]]._parameters)}"
        )
    owners: dict[int, list[str]] = {}  # full mode replaces parameters: a tied one must be replaced everywhere
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), []).append(f"{prefix}.{name}" if prefix else name)
    selected = {f"{n}.{p}" for n, ps in chosen.items() for p in ps}
    for n, ps in chosen.items():
        for p in ps:
            others = [o for o in owners[id(modules[n]._parameters[p])] if o not in selected]
            if others:
                raise ValueError(
                    f"'{n}.{p}' is tied to {others} (the same tensor); mode='full' would generate one and leave the "
                    "other, untying them. Target every tied module, or use mode='lora' (which keeps the weights)"
                )
    return chosen


def _modules_to_save(model: nn.Module, wanted: list[str], targets: list[str]) -> dict[str, nn.Module]:
    """The base modules named by `modules_to_save` (exact names or suffixes), checked against the targets."""
    found = {n: m for n, m in model.named_modules() if n and any(n == w or n.endswith(f".{w}") for w in wanted)}
    missing = [w for w in wanted if not any(n == w or n.endswith(f".{w}") for n in found)]
    if missing:
        raise ValueError(f"modules_to_save {missing} matched no module of the model")
    both = [n for n in found if any(t == n or t.startswith(f"{n}.") for t in targets)]
    if both:
        raise ValueError(f"{both} hold targets and are in modules_to_save; a module is either generated or trained")
    return found


class HyperModel(nn.Module):
    """A base model + a generator that predicts its target weights from conditions, per example.

    Build it with `get_hyper_model(model, HyperConfig(...))`. Call it like the base model, adding one
    keyword argument per condition (`hyper(input_ids=ids, task=torch.tensor([0, 3]))`); every row of a
    batch gets the weights of its own condition. Attributes not found here are looked up on the base model.
    """

    def __init__(self, model: nn.Module, config: HyperConfig) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be an nn.Module (e.g. AutoModelForCausalLM.from_pretrained(...)), got {model!r}"
            )
        if not isinstance(config, HyperConfig):
            raise TypeError(f"config must be a HyperConfig, got {type(config).__name__}")
        if any(isinstance(m, HyperModule) for m in model.modules()):
            raise ValueError("this model already has externals (is it a HyperModel's base already?); load a fresh one")
        self.hyper_config = config
        # every check runs before the model changes, so a bad config leaves it untouched
        names = config.matched_modules(model)
        saved = _modules_to_save(model, config.modules_to_save or [], names)
        forward_signature(type(model), tuple(config.conditions))  # condition names must not shadow arguments
        if config.mode == "full":
            _full_mode_parameters(model, names, config.target_parameters)

        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        model.requires_grad_(False)  # the base is frozen: only the generator (and what the config names) trains
        targets = self._hypernetize(model, names)
        self.base_model = model
        self._checkpointable = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        for module in saved.values():
            module.requires_grad_(True)
        self._saved_modules = saved
        # unload() gives back the base as it was: keep the pretrained state of what will train
        self._saved_originals = {
            n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in saved.items()
        }
        self._base_keywords = _accepted_keywords(model.forward)

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.device(device):
            self.condition_encoder = ConditionEncoder(config.conditions, config.condition_dim)
            dim = self.condition_encoder.out_features
            if config.generator == "shared":
                self.generator: nn.Module = SharedGenerator(
                    targets,
                    dim,
                    hidden_size=config.hidden_size,
                    num_layers=config.num_layers,
                    layer_embedding_dim=config.layer_embedding_dim,
                    type_embedding_dim=config.type_embedding_dim,
                    dropout=config.hypernet_dropout,
                )
            else:
                self.generator = PerTargetGenerator(targets, dim, hidden_size=config.hidden_size)
        modules = dict(model.named_modules())
        self._target_modules = {t.name: modules[t.name] for t in targets}
        self._target_shapes = {t.name: {k: list(v) for k, v in t.shapes.items()} for t in targets}
        self.__class__ = signed_class(type(self), type(model), tuple(self.condition_names))
        # full mode: generated tensors take the dtype of the pretrained values (kept as buffers, so they follow .to())
        self._full_originals = {t.name: {k: f"hl_original_{k}" for k in t.base} for t in targets if t.base}

    # -- construction -------------------------------------------------------------------------------

    def _hypernetize(self, model: nn.Module, names: list[str]) -> list[GeneratorTarget]:
        config = self.hyper_config
        modules = dict(model.named_modules())
        if config.mode == "lora":
            hypernetize(
                model,
                modules=[modules[n] for n in names],
                rank=config.rank,
                alpha=config.alpha,
                dropout=config.dropout,
                convert_root=False,
            )
            targets = [
                GeneratorTarget(n, type_key(n), layer_index(n) or 0, dict(modules[n].external_shapes())) for n in names
            ]
        else:
            chosen = _full_mode_parameters(model, names, config.target_parameters)
            params = [modules[n]._parameters[p] for n, ps in chosen.items() for p in ps]
            _, values = hypernetize(model, parameters=params, return_values=True, convert_root=False)
            targets = []
            for n, ps in chosen.items():
                base = {p: values[f"{n}.{p}"] for p in ps}
                shapes = {p: tuple(v.shape) for p, v in base.items()}
                targets.append(GeneratorTarget(n, type_key(n), layer_index(n) or 0, shapes, base))
        # modules that share a name pattern but not shapes (rare) get their own head
        by_key: dict[str, set] = {}
        for t in targets:
            by_key.setdefault(t.type_key, set()).add(tuple(sorted(t.shapes.items())))
        for t in targets:
            if len(by_key[t.type_key]) > 1:
                t.type_key = f"{t.type_key}|{sorted(t.shapes.items())}"
        return targets

    # -- conditions -> externals --------------------------------------------------------------------

    @property
    def targeted_module_names(self) -> list[str]:
        """The dotted names of the modules whose weights the generator predicts (as PEFT names it)."""
        return list(self._target_modules)

    @property
    def condition_names(self) -> list[str]:
        return self.condition_encoder.names

    def generate_weights(self, batch_size: int | None = None, **conditions: Any) -> dict[str, dict[str, Tensor]]:
        """`{target module: {external: tensor}}` for the given conditions.

        Weights are computed once per distinct condition in the batch; a batch with one distinct
        condition gets shared (unbatched) tensors, otherwise `(B, *shape)`.
        """
        checked = self.condition_encoder.check(conditions, batch_size)
        if torch.compiler.is_compiling():
            # under torch.compile: no data-dependent shapes, so changing conditions never recompile
            generated = self.generator(self.condition_encoder(checked))  # (B, ...) per example
            return self._cast(generated, lambda value: value)
        keys = torch.cat([v.reshape(v.shape[0], -1).to(torch.float64) for v in checked.values()], dim=1)  # (B, K)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        if unique.shape[0] == keys.shape[0] > 1:  # all rows distinct: generate in batch order, nothing to gather
            return self._cast(self.generator(self.condition_encoder(checked)), lambda value: value)
        first = _first_rows(inverse, unique.shape[0])
        z = self.condition_encoder({k: v[first] for k, v in checked.items()})  # (U, D)
        if unique.shape[0] == 1:
            return self._cast(self.generator(z), lambda value: value[0])  # one condition: shared weights
        return self._cast(self.generator(z), lambda value: value.index_select(0, inverse))  # (U, ...) -> (B, ...)

    def _cast(self, generated: dict[str, dict[str, Tensor]], pick: Any) -> dict[str, dict[str, Tensor]]:
        out: dict[str, dict[str, Tensor]] = {}
        for target, tensors in generated.items():
            originals = self._full_originals.get(target)
            if originals is None:  # lora mode: factors are cast to the activations' dtype where they are used
                out[target] = {name: pick(value) for name, value in tensors.items()}
            else:
                buffers = self._target_modules[target]._buffers
                out[target] = {name: pick(value).to(buffers[originals[name]].dtype) for name, value in tensors.items()}
        return out

    def set_conditions(self, batch_size: int | None = None, **conditions: Any) -> None:
        """Generate the weights for `conditions` and set them on the base model, where they stay until the
        next call (gradient checkpointing re-runs forwards during backward and must see the same weights).

        Calling the hyper model does this itself; call it directly to run the base model (or a pipeline
        around it) with one set of conditions. With reentrant gradient checkpointing, go through
        `hyper(...)`, which routes the generator's gradients around the nested backward passes.
        """
        self._set_conditions(batch_size, conditions, sink=None)

    def _set_conditions(
        self, batch_size: int | None, conditions: Mapping[str, Any], sink: GradientSink | None
    ) -> None:
        for target, tensors in self.generate_weights(batch_size, **conditions).items():
            module = self._target_modules[target]
            if sink is not None:
                tensors = {name: sink.leaf(value) for name, value in tensors.items()}
            module.assign_externals(tensors)

    def reset_conditions(self) -> None:
        """Clear the generated weights from the base model."""
        for module in self._target_modules.values():
            module.reset_externals()

    def _pop_conditions(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {name: kwargs.pop(name) for name in self.condition_names if name in kwargs}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        conditions = self._pop_conditions(kwargs)
        unknown = [k for k in kwargs if self._base_keywords is not None and k not in self._base_keywords]
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {unknown}: neither a condition of this hyper model "
                f"({self.condition_encoder.describe()}) nor an argument of {type(self.base_model).__name__}.forward"
            )
        sink = None
        if torch.is_grad_enabled() and uses_reentrant_checkpointing(self._checkpointable):
            sink = GradientSink()  # see checkpointing.py: layers read leaf copies, flushed after backward
        self._set_conditions(_batch_size(args, kwargs), conditions, sink)
        output = self.base_model(*args, **kwargs)
        if sink is not None:
            sink.attach(output)
        return output

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """`base_model.generate` with per-example conditions as keyword arguments. The weights are generated
        once per call; beams and `num_return_sequences` reuse row b's weights for b's expanded rows."""
        conditions = self._pop_conditions(kwargs)
        self.set_conditions(_batch_size(args, kwargs), **conditions)
        return self.base_model.generate(*args, **kwargs)

    # -- parameters ----------------------------------------------------------------------------------

    def hyper_state_dict(self, *, keep_vars: bool = False) -> dict[str, Tensor]:
        """The trained state: condition encoder, generator and `modules_to_save` (never the frozen base)."""
        parts = [("condition_encoder.", self.condition_encoder), ("generator.", self.generator)]
        parts += [(f"base_model.{name}.", module) for name, module in self._saved_modules.items()]
        state: dict[str, Tensor] = {}
        for prefix, module in parts:
            state.update({prefix + k: v for k, v in nn.Module.state_dict(module, keep_vars=keep_vars).items()})
        return state

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters), as PEFT reports them."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def __reduce_ex__(self, protocol: Any) -> tuple:
        base_cls, conditions = type(self)._hl_signature_key
        return (rebuild, (type(self)._hl_unsigned, base_cls, conditions), self.__dict__.copy())

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- save / load ----------------------------------------------------------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "base_model_class": type(self.base_model).__name__,
            "model_type": getattr(getattr(self.base_model, "config", None), "model_type", None),
            "targets": self._target_shapes,
        }

    def save_pretrained(self, save_directory: str | Path, *, is_main_process: bool = True, **_: Any) -> None:
        """Write `hyper_config.json` and `hyper_model.safetensors` (the hyper weights only; atomic writes).

        Under FSDP call it on every process (sharded weights are gathered), with `is_main_process` true on one.
        """
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"save_pretrained needs a directory, got the file {directory}")
        state = {k: _full_tensor(v) for k, v in self.hyper_state_dict().items()}
        if not is_main_process:
            return
        save_tensors(directory / WEIGHTS_NAME, state, {"format": "pt", "hyperlight": __version__})
        save_json(directory / CONFIG_NAME, self._config_record())

    def _config_record(self) -> dict[str, Any]:
        return {**self.hyper_config.to_dict(), "hyperlight": self._fingerprint()}

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path, *, is_trainable: bool = False) -> HyperModel:
        """Rebuild a hyper model on `model` (a fresh base model) from a `save_pretrained` directory or a
        `Trainer` checkpoint directory (whose `model.safetensors` holds the hyper weights and config).

        Fails with a clear error if `model` is not the architecture (targets and shapes) it was trained on.
        With `is_trainable=False` (the default, as in PEFT) the generator is frozen and in eval mode.
        """
        directory = Path(path)
        saved, state = read_checkpoint(directory)
        provenance = saved.pop("hyperlight", {})
        hyper = cls(model, HyperConfig.from_dict(saved))
        try:
            hyper._check_provenance(provenance, directory)
        except ValueError:
            hyper.unload()
            raise
        hyper._load_hyper_state(state)
        if not is_trainable:
            hyper.requires_grad_(False)
            hyper.eval()
        return hyper

    def _check_provenance(self, provenance: Mapping[str, Any], directory: Path) -> None:
        saved_type, model_type = provenance.get("model_type"), self._fingerprint()["model_type"]
        where = f"the checkpoint in {directory} was trained on a {provenance.get('base_model_class')}"
        if saved_type != model_type:
            raise ValueError(
                f"{where} (model_type {saved_type!r}), not on a {type(self.base_model).__name__} "
                f"(model_type {model_type!r}); load it onto the base model it was trained with"
            )
        expected, actual = provenance.get("targets"), self._target_shapes
        if expected is not None and expected != actual:
            missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
            differ = [n for n in expected if n in actual and expected[n] != actual[n]]
            detail = f"missing {missing[:4]}, unexpected {extra[:4]}, different shapes {differ[:4]}"
            if differ:
                detail += f" (e.g. '{differ[0]}': saved {expected[differ[0]]}, model {actual[differ[0]]})"
            raise ValueError(
                f"{where} ({saved_type}) whose targets do not match this {type(self.base_model).__name__}: "
                f"{detail}. Load it onto the base model it was trained with"
            )

    # -- nn.Module state: the hyper weights only, so Trainer checkpoints stay small -----------------

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """The hyper weights (never the frozen base) plus the config as a tensor, so that a plain
        `Trainer` checkpoint (`model.safetensors`) is small and loads with `HyperModel.from_pretrained`.
        `base_state_dict()` gives the base model's."""
        if args:
            raise TypeError("state_dict takes keyword arguments only (destination=, prefix=, keep_vars=)")
        destination = OrderedDict() if destination is None else destination
        for key, value in self.hyper_state_dict(keep_vars=keep_vars).items():
            destination[prefix + key] = value
        destination[prefix + CONFIG_KEY] = config_to_tensor(self._config_record())
        return destination

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load what `state_dict()` gives (the config entry, if present, must match this model's)."""
        state = dict(state_dict)
        record = state.pop(CONFIG_KEY, None)
        if record is not None:
            saved = config_from_tensor(record)
            provenance = saved.pop("hyperlight", {})
            if HyperConfig.from_dict(saved) != self.hyper_config:
                raise ValueError("the state dict was saved from a hyper model with another HyperConfig")
            self._check_provenance(provenance, Path("<state_dict>"))
        return self._load_hyper_state(state, strict=strict)

    def base_state_dict(self) -> dict[str, Tensor]:
        """The base model's own state dict (its hypernetized targets' frozen weights included)."""
        return self.base_model.state_dict()

    def _load_hyper_state(self, state: Mapping[str, Tensor], *, strict: bool = True) -> Any:
        own = self.hyper_state_dict()
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

    # -- merge / unload / export ----------------------------------------------------------------------

    def _single_condition_values(self, conditions: Mapping[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad():
            generated = self.generate_weights(1, **conditions)
        values = {}
        for target, tensors in generated.items():
            for name, value in tensors.items():
                if value.dim() != len(self._target_shapes[target][name]):
                    raise ValueError("merge/export needs a single condition value (one example), got several")
                values[f"{target}.{name}"] = value.detach()
        return values

    def _release_base(self, values: Mapping[str, Tensor] | None, *, keep_trained: bool) -> nn.Module:
        base = self.base_model
        unhypernetize(base, values)
        if not keep_trained:
            for name, module in self._saved_modules.items():
                module.load_state_dict(self._saved_originals[name])
        for name, param in base.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, True))
        return base

    def merge_and_unload(self, **conditions: Any) -> nn.Module:
        """A plain base model (no hyperlight class left) with the weights of one condition baked in (and the
        trained `modules_to_save`)."""
        return self._release_base(self._single_condition_values(conditions), keep_trained=True)

    def unload(self) -> nn.Module:
        """The base model as it was before `get_hyper_model`: original classes, weights (`modules_to_save`
        included) and trainability."""
        return self._release_base(None, keep_trained=False)

    def export_peft_adapter(self, save_directory: str | Path, **conditions: Any) -> dict[str, float]:
        """Write a standard PEFT LoRA adapter for one condition; returns `{module: relative error}`.

        In lora mode the predicted factors are written as they are (errors are 0). In full mode the
        change `W - W0` of each linear target's weight is truncated by SVD to `rank`, and the relative
        Frobenius error of that approximation is reported.
        """
        from .peft_export import export_lora_adapter

        return export_lora_adapter(self, Path(save_directory), self._single_condition_values(conditions))


def get_hyper_model(model: nn.Module, config: HyperConfig) -> HyperModel:
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
    """
    return HyperModel(model, config)
