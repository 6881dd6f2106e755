"""The `hyperlight` command: inspect a checkpoint, export one condition as a PEFT adapter, merge one condition into a
plain Transformers model, or distill PEFT adapters into a hyper model.

    hyperlight inspect CHECKPOINT [--json] [--verify]
    hyperlight export-adapter CHECKPOINT --base BASE --condition task=2 --out DIR
    hyperlight merge CHECKPOINT --base BASE --condition task=2 --out DIR
    hyperlight distill --base BASE --adapters 0=DIR0 1=DIR1 --out CHECKPOINT

Bad arguments and refused files end with one line on stderr (`hyperlight: error: ...`) and exit status 2.
Transformers, PEFT and torch's heavier parts are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import struct
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__

PROG = "hyperlight"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# what a tokenizer leaves in a model directory; `merge` copies these next to the merged weights
TOKENIZER_FILES = (
    "tokenizer*.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
MAX_ADAPTER_CONFIG_BYTES = 1 << 20


class UsageError(Exception):
    """A command line that cannot be run as given (reported in one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print the whole usage first; one line that says where to look is enough
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- conditions --------------------------------------------------------------------------------------


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def describe_condition(name: str, spec: Mapping[str, Any]) -> str:
    """`task (categorical: an id in 0..7)`: what a condition takes on the command line."""
    kind = spec.get("type")
    if kind == "categorical":
        return f"{name} (categorical: an id in 0..{spec['num'] - 1})"
    if kind == "scalar":
        lo, hi = spec.get("range", (0.0, 1.0))
        return f"{name} (scalar: a number in [{lo}, {hi}])"
    if kind == "vector":
        return f"{name} (vector: a JSON list of {spec['dim']} numbers)"
    if kind == "text":
        return f"{name} (text: a string)"
    return f"{name} ({kind})"


def parse_condition_value(name: str, spec: Mapping[str, Any], text: str) -> Any:
    """One condition's value from its command-line text, by the condition's type (checked against its spec)."""
    kind = spec.get("type")
    if kind == "categorical":
        if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
            raise ValueError(f"condition '{name}' is categorical: expected an integer id, got {text!r}")
        value = int(text)
        if not 0 <= value < spec["num"]:
            raise ValueError(f"condition '{name}' out of range: expected an id in 0..{spec['num'] - 1}, got {value}")
        return value
    if kind == "scalar":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"condition '{name}' is a scalar: expected a number, got {text!r}") from None
        lo, hi = spec.get("range", (0.0, 1.0))
        # inclusive at both ends in float32, as the model checks it
        if not math.isfinite(value) or not _float32(lo) <= _float32(value) <= _float32(hi):
            raise ValueError(f"condition '{name}' out of range: expected a number in [{lo}, {hi}], got {text!r}")
        return value
    if kind == "vector":
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None
        numbers = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        )
        if not numbers or len(value) != spec["dim"]:
            raise ValueError(
                f"condition '{name}' is a vector of dim {spec['dim']}: expected a JSON list of {spec['dim']} finite "
                f"numbers (e.g. {name}=[0.1,0.2,...]), got {text[:80]!r}"
            )
        return [float(v) for v in value]
    if kind == "text":
        return text
    raise ValueError(f"condition '{name}' has type {kind!r}, which this command line cannot parse; upgrade hyperlight")


def parse_conditions(pairs: Sequence[str], specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """`{name: value}` from `--condition NAME=VALUE` arguments: every condition of `specs` exactly once."""
    takes = ", ".join(describe_condition(n, s) for n, s in specs.items())
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--condition takes NAME=VALUE (e.g. --condition {next(iter(specs))}=0), got {pair!r}")
        if name not in specs:
            raise ValueError(f"unknown condition {name!r}: this checkpoint takes {takes}")
        if name in values:
            raise ValueError(f"condition {name!r} is given twice; give each condition once")
        values[name] = parse_condition_value(name, specs[name], text)
    missing = [n for n in specs if n not in values]
    if missing:
        raise ValueError(
            f"missing condition(s) {missing}: this checkpoint takes {takes}; add --condition {missing[0]}=VALUE"
        )
    return values


# -- checkpoint, base and output paths -------------------------------------------------------------


def read_hyper_checkpoint(path: str) -> tuple[Any, dict[str, Any], Any, str]:
    """(HyperConfig, provenance, weights header, where the config came from), through the bounded readers of
    `hyperlight.integrations.io`; nothing is allocated and no base model is loaded."""
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


def model_class(recorded: Any, override: str | None) -> Any:
    """The Transformers class to load the base with: `--model-class` if given, else the class the checkpoint
    recorded (`base_model_class`), else AutoModelForCausalLM. Only model classes exported by transformers are
    taken (the name comes from a file: nothing else is looked up)."""
    import transformers

    def lookup(name: Any) -> Any:
        if not isinstance(name, str) or not name.isidentifier() or len(name) > 200:
            return None
        from transformers.models.auto.auto_factory import _BaseAutoModelClass

        try:
            cls = getattr(transformers, name, None)
        except Exception:  # a class whose optional dependency is missing
            return None
        if isinstance(cls, type) and issubclass(cls, (transformers.PreTrainedModel, _BaseAutoModelClass)):
            return cls
        return None

    if override is not None:
        cls = lookup(override)
        if cls is None:
            raise ValueError(
                f"--model-class {override!r} is not a model class of transformers {transformers.__version__}; "
                "give one such as AutoModelForCausalLM, AutoModelForSeq2SeqLM or LlamaForCausalLM"
            )
        return cls
    return lookup(recorded) or transformers.AutoModelForCausalLM


def load_base(args: argparse.Namespace, provenance: Mapping[str, Any]) -> Any:
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


def load_hyper(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Path]:
    """Check every argument before loading anything (a mistake costs no model load), then load the base and the
    hyper model on it: (hyper model, condition values, output directory)."""
    from ..plugin.model import HyperModel

    config, provenance, _, _ = read_hyper_checkpoint(args.checkpoint)
    conditions = parse_conditions(args.condition, config.conditions)
    check_base(args.base)
    out = check_out(args.out, overwrite=args.overwrite, others={"checkpoint": args.checkpoint, "base": args.base})
    encoder = parse_encoders(args.encoder, config.conditions)
    base = load_base(args, provenance)
    extra = {} if encoder is None else {"encoder": encoder}
    return HyperModel.from_pretrained(base, Path(args.checkpoint).expanduser(), **extra), conditions, out


def parse_encoders(given: Sequence[str], specs: Mapping[str, Mapping[str, Any]]) -> str | dict[str, str] | None:
    """`--encoder PATH` (every text condition) or `--encoder NAME=PATH` (repeated): where sentence encoders moved."""
    texts = [n for n, s in specs.items() if s.get("type") == "text"]
    if not given:
        return None
    if not texts:
        raise ValueError("--encoder gives the sentence encoder of a text condition, and this checkpoint has none")
    named = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or name not in texts:
            if len(given) > 1:
                raise ValueError(f"--encoder given several times takes NAME=PATH with NAME in {texts}, got {item!r}")
            return item
        named[name] = path
    return named


# -- commands --------------------------------------------------------------------------------------


def _bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def inspect_record(path: str, *, verify: bool = False) -> dict[str, Any]:
    """What `inspect` reports, as a JSON-ready dict."""
    from ..plugin.checkpoint_file import CONFIG_NAME, DIGEST_KEY

    config, provenance, header, where = read_hyper_checkpoint(path)
    directory = Path(path).expanduser()
    files = {p.name: p.stat().st_size for p in (header.path, directory / CONFIG_NAME) if p.is_file()}
    counts: dict[str, int] = {}
    for key, shape in header.shapes.items():
        if key == "hyper_config":  # a Trainer checkpoint's config, stored as a tensor
            continue
        part = {"condition_encoder": "condition_encoder", "generator": "generator"}.get(key.split(".")[0])
        counts[part or "modules_to_save"] = counts.get(part or "modules_to_save", 0) + math.prod(shape)
    dtypes = sorted({d for k, d in header.dtypes.items() if k != "hyper_config"})
    record = {
        "checkpoint": str(directory),
        "format": "save_pretrained" if header.path.name == "hyper_model.safetensors" else "trainer",
        "config_from": where,
        "files": files,
        "saved_with_hyperlight": provenance.get("version") or header.metadata.get("hyperlight"),
        "base": {"class": provenance.get("base_model_class"), "model_type": provenance.get("model_type")},
        "config": config.to_dict(),
        "targets": provenance.get("targets", {}),
        "parameters": {"total": sum(counts.values()), **counts},
        "tensors": len([k for k in header.shapes if k != "hyper_config"]),
        "dtypes": dtypes,
        "digest": header.metadata.get(DIGEST_KEY),
        "verified": None,
    }
    if verify:
        header.load()  # checks the digest and that every tensor is finite; raises CheckpointError otherwise
        record["verified"] = True
    return record


def _inspect_text(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [f"checkpoint {r['checkpoint']} ({r['format']}, saved with hyperlight {r['saved_with_hyperlight']})"]
    lines += [f"  {name}  {_bytes(size)}" for name, size in r["files"].items()]
    lines.append(f"base: {r['base']['class']} (model_type {r['base']['model_type']})")
    lines.append("conditions:")
    for name, spec in c["conditions"].items():
        detail = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "type")
        lines.append(f"  {name}: {spec['type']}{f' ({detail})' if detail else ''}")
    lines.append(f"mode: {c['mode']}" + (f", rank {c['rank']}, alpha {c['alpha']}" if c["mode"] == "lora" else ""))
    shown = {k: c[k] for k in ("target_modules", "exclude_modules", "layers_to_transform", "target_parameters")}
    lines += [f"{k}: {json.dumps(v)}" for k, v in shown.items() if v is not None]
    if c["modules_to_save"]:
        lines.append(f"modules_to_save: {json.dumps(c['modules_to_save'])}")
    sizes = ("condition_dim", "hidden_size", "num_layers", "layer_embedding_dim", "type_embedding_dim")
    shared = ", share_heads" if c.get("share_heads") else ""  # checkpoints from before the field have none
    lines.append(f"generator: {c['generator']}{shared}, " + ", ".join(f"{k} {c[k]}" for k in sizes))
    lines.append(f"targets ({len(r['targets'])}):")
    for name, shapes in r["targets"].items():
        lines.append(f"  {name}  " + "  ".join(f"{k} {tuple(v)}" for k, v in shapes.items()))
    p = r["parameters"]
    parts = ", ".join(f"{k} {v:,}" for k, v in p.items() if k != "total")
    lines.append(f"parameters: {p['total']:,} in {r['tensors']} tensors ({parts}), {'/'.join(r['dtypes'])}")
    if r["digest"]:
        state = "verified" if r["verified"] else "not checked; --verify reads the tensors and checks it"
        lines.append(f"digest: sha256 {r['digest']} ({state})")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> None:
    record = inspect_record(args.checkpoint, verify=args.verify)
    print(json.dumps(record, indent=2) if args.json else _inspect_text(record))


def cmd_export_adapter(args: argparse.Namespace) -> None:
    hyper, conditions, out = load_hyper(args)
    errors = hyper.export_peft_adapter(out, **conditions)
    config = hyper.hyper_config
    how = "exact (lora mode)" if config.mode == "lora" else f"truncated SVD at rank {config.rank}"
    print(f"relative error per module ({how}):")
    width = max(map(len, errors), default=0)
    for name, error in errors.items():
        print(f"  {name:<{width}}  {error:.3e}")
    print(f"max relative error {max(errors.values(), default=0.0):.3e}")
    print(f"wrote a PEFT LoRA adapter for {_shown(conditions)} to {out}")


def cmd_merge(args: argparse.Namespace) -> None:
    hyper, conditions, out = load_hyper(args)
    merged = hyper.merge_and_unload(**conditions)
    merged.save_pretrained(out)
    copied = copy_tokenizer_files(args.base, out)
    print(f"wrote {type(merged).__name__} with {_shown(conditions)} merged to {out}")
    print(f"tokenizer files copied from the base: {', '.join(copied)}" if copied else "no tokenizer files in the base")


def copy_tokenizer_files(base: str, out: Path) -> list[str]:
    """Copy the tokenizer files of a local base directory next to the merged model (a Hub id: none)."""
    source = Path(base).expanduser()
    if not source.is_dir():
        return []
    names = sorted({p.name for pattern in TOKENIZER_FILES for p in source.glob(pattern) if p.is_file()})
    for name in names:
        shutil.copyfile(source / name, out / name)
    return names


def _shown(conditions: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in conditions.items())


def _adapter_config(directory: Path) -> dict[str, Any]:
    path = directory / "adapter_config.json"
    if not path.is_file():
        raise ValueError(f"--adapters: {directory} holds no adapter_config.json; give PEFT adapter directories")
    if path.stat().st_size > MAX_ADAPTER_CONFIG_BYTES:
        raise ValueError(f"{path} is larger than 1 MiB; it is not a PEFT adapter config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON ({str(error)[:200]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object (a PEFT LoraConfig), got {type(data).__name__}")
    return data


def parse_adapters(pairs: Sequence[str], kind: str) -> dict[Any, Path]:
    """`{condition value: adapter directory}` from `VALUE=DIR` (split at the last '=': text values may hold '=')."""
    adapters: dict[Any, Path] = {}
    for pair in pairs:
        text, sep, directory = pair.rpartition("=")
        if not sep or not directory or (not text and kind != "text"):
            raise UsageError(f"--adapters takes VALUE=DIR (e.g. --adapters 0=out/task0 1=out/task1), got {pair!r}")
        if kind == "categorical":
            if not re.fullmatch(r"\s*\+?\d+\s*", text):
                raise ValueError(f"--adapters: a categorical condition takes ids (0, 1, ...), got {text!r}")
            value: Any = int(text)
        elif kind == "scalar":
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"--adapters: a scalar condition takes numbers, got {text!r} in {pair!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"--adapters: a scalar condition takes finite numbers, got {text!r}")
        else:
            value = text
        if value in adapters:
            raise ValueError(f"--adapters: the value {value!r} is given twice")
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise ValueError(f"--adapters: {directory} is not a directory; give PEFT adapter directories")
        adapters[value] = path
    return adapters


def distill_config(args: argparse.Namespace, adapters: Mapping[Any, Path]) -> Any:
    """The HyperConfig of `distill`: the options given, the rest from the adapters' adapter_config.json."""
    from ..plugin.config import HyperConfig

    if args.share_heads and args.generator != "shared":  # named by its flags, not by HyperConfig's fields
        raise UsageError(
            f"--share-heads shares the output heads of --generator shared; --generator {args.generator} has one "
            "network per target and no heads to share: drop --share-heads or use --generator shared"
        )
    peft = [_adapter_config(path) for path in adapters.values()]
    spec: dict[str, Any] = {"type": args.condition_type}
    if args.condition_type == "categorical":
        spec["num"] = args.num if args.num is not None else max(adapters) + 1
    elif args.condition_type == "scalar":
        if args.range is None and len(set(adapters)) < 2:
            raise ValueError("--range LOW HIGH is needed for a scalar condition with a single adapter value")
        spec["range"] = list(args.range) if args.range is not None else [min(adapters), max(adapters)]
    else:
        if args.encoder is None:
            raise UsageError("a text condition needs --encoder PATH (the sentence encoder that embeds the strings)")
        spec["encoder"] = args.encoder
    targets: Any = args.target_regex or args.target_modules
    if targets is None:  # the adapters' own targets (PEFT saves a list of suffixes or a regex)
        found = {json.dumps(sorted(t) if isinstance(t, list) else t) for t in (c.get("target_modules") for c in peft)}
        if len(found) != 1 or found == {"null"}:
            raise ValueError(
                f"the adapters do not name one set of target modules (they give {sorted(found)[:3]}); give "
                "--target-modules or --target-regex"
            )
        targets = json.loads(found.pop())
    elif isinstance(targets, list) and len(targets) == 1 and targets[0] in ("attention", "mlp", "attention+mlp"):
        targets = targets[0]  # a preset name, not a module called 'attention'
    elif isinstance(targets, list) and targets == ["all-linear"]:
        targets = "all-linear"
    fields = {
        "target_modules": targets,
        "conditions": {args.condition_name: spec},
        "mode": args.mode,
        "target_parameters": ["weight"] if args.mode == "full" else None,  # an adapter changes weights only
        "rank": args.rank if args.rank is not None else max(int(c.get("r", 8)) for c in peft),
        "alpha": args.alpha if args.alpha is not None else float(peft[0].get("lora_alpha", 8.0)),
        "generator": args.generator,
        "share_heads": args.share_heads or None,
        "condition_dim": args.condition_dim,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "base_model_name_or_path": args.base,
    }
    return HyperConfig(**{k: v for k, v in fields.items() if v is not None})


def cmd_distill(args: argparse.Namespace) -> None:
    adapters = parse_adapters(args.adapters, args.condition_type)
    config = distill_config(args, adapters)
    check_base(args.base)
    out = check_out(args.out, overwrite=args.overwrite, others={"base": args.base})
    try:
        from ..training.distill import distill_adapters
    except ModuleNotFoundError as error:
        if error.name != "hyperlight.integrations.distill":
            raise
        raise RuntimeError("this installation of hyperlight has no hyperlight.integrations.distill") from None
    from ..plugin.model import get_hyper_model

    base = load_base(args, {"base_model_class": None})
    hyper = get_hyper_model(base, config)
    report = distill_adapters(
        hyper,
        {value: str(path) for value, path in adapters.items()},
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        match=args.match,
        weight_decay=args.weight_decay,
        seed=args.seed,
        progress=not args.quiet,
    )
    hyper.save_pretrained(out)
    print(str(report))
    print(f"wrote the hyper model ({len(adapters)} adapters distilled) to {out}")


# -- the parser ------------------------------------------------------------------------------------


def _add_loading(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="the base model: a Transformers model directory or a Hub id")
    p.add_argument("--out", required=True, help="the directory to write (created if needed; must be empty)")
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it is not empty")
    p.add_argument(
        "--model-class",
        metavar="NAME",
        help="the transformers class to load BASE with (e.g. AutoModelForSeq2SeqLM); default: the class the "
        "checkpoint records (base_model_class), else AutoModelForCausalLM",
    )
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="dtype to load BASE in (default: as saved)")
    p.add_argument("--device", default="cpu", help="device to load BASE on (default: cpu)")


def _add_conditions(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        required=True,
        help="one condition's value, repeated for several: categorical an int id, scalar a number, vector a JSON "
        "list, text a string (`hyperlight inspect` lists them)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Inspect, export, merge and distill hyperlight checkpoints.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--traceback", action="store_true", help="on an error, show the traceback, not one line")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("inspect", help="describe a checkpoint (no base model is loaded)")
    p.description = "Describe a checkpoint: conditions, targets and shapes, the base it expects, sizes. No base model."
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a save_pretrained directory or a Trainer checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="also read the tensors: check the digest and finiteness")
    p.set_defaults(run=cmd_inspect)

    for name, run, what in (
        ("export-adapter", cmd_export_adapter, "write one condition as a PEFT LoRA adapter"),
        ("merge", cmd_merge, "merge one condition into a plain Transformers model directory"),
    ):
        p = commands.add_parser(name, help=what)
        p.description = f"Load BASE and the hyper model CHECKPOINT on it, then {what}."
        p.add_argument("checkpoint", metavar="CHECKPOINT", help="a save_pretrained directory of a hyper model")
        _add_conditions(p)
        _add_loading(p)
        p.add_argument(
            "--encoder",
            action="append",
            default=[],
            metavar="[NAME=]PATH",
            help="text conditions: where the sentence encoder the checkpoint records is now (if it moved)",
        )
        p.set_defaults(run=run)

    p = commands.add_parser("distill", help="train a hyper model that reproduces PEFT adapters, one per value")
    p.description = (
        "Train a hyper model on BASE whose condition value VALUE reproduces the PEFT adapter in DIR, and save it. "
        "Target modules, rank and alpha default to the adapters' own."
    )
    p.add_argument(
        "--adapters",
        nargs="+",
        action="extend",
        required=True,
        metavar="VALUE=DIR",
        help="PEFT LoRA adapter directories, each with the condition value it belongs to (split at the last '=')",
    )
    _add_loading(p)
    p.add_argument("--condition-name", default="task", help="the condition's name (default: task)")
    p.add_argument(
        "--condition-type",
        choices=("categorical", "scalar", "text"),
        default="categorical",
        help="VALUEs are int ids, numbers or strings (default: categorical)",
    )
    p.add_argument("--num", type=int, metavar="N", help="categorical: number of ids (default: the largest VALUE + 1)")
    p.add_argument(
        "--range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="scalar: (default: the VALUEs' min and max)"
    )
    p.add_argument("--encoder", metavar="PATH", help="text: the sentence encoder that embeds the strings")
    targets = p.add_mutually_exclusive_group()
    targets.add_argument("--target-modules", nargs="+", metavar="NAME", help="names or suffixes, or a preset")
    targets.add_argument("--target-regex", metavar="PATTERN", help="a regex, re.fullmatch on dotted module names")
    p.add_argument(
        "--mode",
        choices=("lora", "full"),
        default="lora",
        help="generate low-rank factors (default) or full weights (of the targets' 'weight' only)",
    )
    p.add_argument("--rank", type=int, metavar="R", help="lora mode's rank (default: the adapters' largest r)")
    p.add_argument("--alpha", type=float, metavar="A", help="lora scaling alpha (default: the adapters' lora_alpha)")
    p.add_argument("--generator", choices=("shared", "per_target"), default="shared", help="(default: shared)")
    p.add_argument("--share-heads", action="store_true", help="module types of equal shapes share one generator head")
    p.add_argument("--condition-dim", type=int, metavar="N", help="embedding size of the condition (default 32)")
    p.add_argument("--hidden-size", type=int, metavar="N", help="the generator's trunk width (default 64)")
    p.add_argument("--num-layers", type=int, metavar="N", help="the generator's trunk depth (default 2)")
    p.add_argument("--steps", type=int, default=500, metavar="N", help="optimizer steps (default 500)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate, cosine-decayed (default 1e-3)")
    p.add_argument("--batch-size", type=int, metavar="N", help="adapters per step (default: all)")
    p.add_argument(
        "--match",
        choices=("delta", "outputs"),
        default="delta",
        help="fit the weight updates ΔW (default) or their outputs on random inputs",
    )
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="WD", help="AdamW weight decay (default 0)")
    p.add_argument("--seed", type=int, default=0, help="batch order, sample inputs, dropout (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_distill)
    return parser


def _one_line(error: BaseException | str) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 2000 else text[:1997] + "..."


def _show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 after one `hyperlight: error: ...` line)."""
    from ..plugin.checkpoint_file import CheckpointError

    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        with warnings.catch_warnings():
            # a warning is one line too, not the file and source line Python shows by default
            warnings.showwarning = _show_warning
            args.run(args)
    except SystemExit as exit_:  # --help, --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, CheckpointError, ValueError, TypeError, OSError, RuntimeError, ImportError) as error:
        if args is not None and args.traceback:
            raise
        hint = ""
        if isinstance(error, ModuleNotFoundError) and error.name in ("transformers", "peft", "safetensors"):
            hint = "; the plug-in needs its extras: pip install '.[transformers]' in a clone of hyperlight"
        print(f"{PROG}: error: {_one_line(error)}{hint}", file=sys.stderr)
        return 2
    return 0
