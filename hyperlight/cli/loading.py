"""What the commands that load models share: reading a hyper checkpoint (bounded, nothing allocated), checking
BASE and --out before any load, choosing the Transformers class, and loading the base and the hyper model on it.
Transformers and torch are imported inside the functions that load, so `inspect` runs without them."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .conditions import add_condition_argument, parse_conditions, parse_encoders

if TYPE_CHECKING:
    from ..plugin.checkpoint_file import CheckpointHeader
    from ..plugin.config import HyperConfig
    from ..plugin.model import HyperModel

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """--base, --out, --overwrite, --model-class, --dtype, --device: for every command that loads a base model."""
    parser.add_argument("--base", required=True, help="the base model: a Transformers model directory or a Hub id")
    parser.add_argument("--out", required=True, help="the directory to write (created if needed; must be empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into --out even if it is not empty")
    parser.add_argument(
        "--model-class",
        metavar="NAME",
        help="the transformers class to load BASE with (e.g. AutoModelForSeq2SeqLM); default: the class the "
        "checkpoint records (base_model_class), else AutoModelForCausalLM",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="dtype to load BASE in (default: as saved)")
    parser.add_argument("--device", default="cpu", help="device to load BASE on (default: cpu)")


def add_hyper_arguments(parser: argparse.ArgumentParser, what: str, *, condition_required: bool = True) -> None:
    """The arguments of a command that loads a hyper model on its base and writes one condition (`what`)."""
    parser.description = f"Load BASE and the hyper model CHECKPOINT on it, then {what}."
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a save_pretrained directory of a hyper model")
    add_condition_argument(parser, required=condition_required)
    add_loading_arguments(parser)
    parser.add_argument(
        "--encoder",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="text conditions: where the sentence encoder the checkpoint records is now (if it moved)",
    )


def read_hyper_checkpoint(path: str) -> tuple[HyperConfig, dict[str, Any], CheckpointHeader, str]:
    """(HyperConfig, provenance, weights header, where the config came from), through the bounded readers of
    `hyperlight.plugin.checkpoint_file`; nothing is allocated and no base model is loaded."""
    from ..plugin.checkpoint_file import CheckpointError, read_checkpoint
    from ..plugin.config import HyperConfig

    record, header, where = read_checkpoint(Path(path).expanduser())
    provenance = record.pop("hyperlight", {})
    try:
        config = HyperConfig.from_dict(record)
    except (TypeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{where}: {str(error)[:1000]}") from None
    return config, provenance, header, where


def check_base(base: str) -> None:
    """BASE is an existing model directory, or reads as a Hub id (`name` or `org/name`): fail before any loading."""
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"--base {base} is not a Transformers model directory (no config.json in it); give the directory "
                "that save_pretrained wrote for the base model"
            )
        return
    if path.is_absolute() or base.startswith((".", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", base):
        raise ValueError(
            f"--base {base} does not exist; give a Transformers model directory (config.json + weights) or a Hub "
            "model id such as 'org/name'"
        )


def check_out(out: str, *, overwrite: bool, others: Mapping[str, str]) -> Path:
    """The output directory: not a file, not one of the inputs, and empty unless --overwrite."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory (it is created if needed)")
    for what, other in others.items():
        if Path(other).expanduser().exists() and path.resolve() == Path(other).expanduser().resolve():
            raise ValueError(f"--out {out} is the {what}; write to another directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} exists and is not empty; choose a new directory, or pass --overwrite")
    return path


def _transformers_model_class(name: Any) -> type | None:
    """The model class `transformers.<name>`, or None: the name comes from a file, so nothing else is looked up."""
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    if not isinstance(name, str) or not name.isidentifier() or len(name) > 200:
        return None
    try:
        cls = getattr(transformers, name, None)
    except Exception:  # a class whose optional dependency is missing
        return None
    if isinstance(cls, type) and issubclass(cls, (transformers.PreTrainedModel, _BaseAutoModelClass)):
        return cls
    return None


def model_class(recorded: Any, override: str | None) -> type:
    """The Transformers class to load the base with: `--model-class` if given, else the class the checkpoint
    recorded (`base_model_class`), else AutoModelForCausalLM. Only model classes exported by transformers are
    taken."""
    import transformers

    if override is not None:
        cls = _transformers_model_class(override)
        if cls is None:
            raise ValueError(
                f"--model-class {override!r} is not a model class of transformers {transformers.__version__}; "
                "give one such as AutoModelForCausalLM, AutoModelForSeq2SeqLM or LlamaForCausalLM"
            )
        return cls
    return _transformers_model_class(recorded) or transformers.AutoModelForCausalLM


def load_base(args: argparse.Namespace, provenance: Mapping[str, Any]) -> Any:
    """BASE loaded with the class `model_class` picks, in --dtype on --device, after checking its model type
    against the one the checkpoint was trained on."""
    import torch
    import transformers
    from packaging.version import Version

    cls = model_class(provenance.get("base_model_class"), args.model_class)
    config = transformers.AutoConfig.from_pretrained(args.base)
    wanted = provenance.get("model_type")
    # a model class loads a checkpoint of another type with a mere warning: refuse before loading instead
    if wanted is not None and config.model_type != wanted:
        raise ValueError(
            f"--base {args.base} is a {config.model_type} model, but the checkpoint was trained on a {wanted} "
            f"({provenance.get('base_model_class')}); give the base model it was trained with"
        )
    # transformers 4.56 renamed torch_dtype to dtype
    keyword = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    print(f"loading the base model {args.base} with {cls.__name__}", flush=True)
    return cls.from_pretrained(args.base, config=config, **{keyword: dtype}).to(args.device).eval()


def load_hyper(
    args: argparse.Namespace, *, enumerated: Callable[[HyperConfig], str] | None = None
) -> tuple[HyperModel, dict[str, Any], Path]:
    """Check every argument before loading anything (a mistake costs no model load), then load the base and the
    hyper model on it: (hyper model, condition values, output directory). `enumerated(config)` names a condition
    the command writes every value of (`export-adapter --all`): it is not given with --condition."""
    from ..plugin.model import HyperModel

    config, provenance, _, _ = read_hyper_checkpoint(args.checkpoint)
    every = enumerated(config) if enumerated is not None else None
    conditions = parse_conditions(args.condition, config.conditions, enumerated=every)
    check_base(args.base)
    out = check_out(args.out, overwrite=args.overwrite, others={"checkpoint": args.checkpoint, "base": args.base})
    encoder = parse_encoders(args.encoder, config.conditions)
    base = load_base(args, provenance)
    extra = {} if encoder is None else {"encoder": encoder}
    return HyperModel.from_pretrained(base, Path(args.checkpoint).expanduser(), **extra), conditions, out
