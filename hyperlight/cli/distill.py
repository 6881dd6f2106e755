"""`hyperlight distill --base BASE --adapters 0=DIR0 1=DIR1 --out CHECKPOINT`: train a hyper model on BASE whose
condition values reproduce PEFT LoRA adapters, one adapter per value, and save it. Target modules, rank and alpha
default to the adapters' own (read from their adapter_config.json before the base is loaded)."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .loading import add_loading_arguments, check_base, check_out, load_base

if TYPE_CHECKING:
    from ..plugin.config import HyperConfig

NAME = "distill"
# a --target-modules word that names a preset of hyperlight, not a module called so
_PRESETS = ("attention", "mlp", "attention+mlp")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The `distill` subcommand's arguments: the adapters, the base, the condition, the hyper model, the training."""
    p = commands.add_parser(NAME, help="train a hyper model that reproduces PEFT adapters, one per value")
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
    add_loading_arguments(p)
    _add_condition_arguments(p)
    _add_model_arguments(p)
    _add_training_arguments(p)
    return p


def _add_condition_arguments(p: argparse.ArgumentParser) -> None:
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


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
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


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> None:
    """Check the arguments and the adapters' configs, load BASE, distill, save, print the report."""
    adapters = parse_adapters(args.adapters, args.condition_type)
    config = distill_config(args, adapters)
    check_base(args.base)
    out = check_out(args.out, overwrite=args.overwrite, others={"base": args.base})
    from ..plugin.model import get_hyper_model
    from ..training.distill import distill_adapters

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


def parse_adapters(pairs: Sequence[str], kind: str) -> dict[Any, Path]:
    """`{condition value: adapter directory}` from `VALUE=DIR` (split at the last '=': text values may hold '=')."""
    adapters: dict[Any, Path] = {}
    for pair in pairs:
        text, sep, directory = pair.rpartition("=")
        if not sep or not directory or (not text and kind != "text"):
            raise UsageError(f"--adapters takes VALUE=DIR (e.g. --adapters 0=out/task0 1=out/task1), got {pair!r}")
        value = _adapter_value(text, pair, kind)
        if value in adapters:
            raise ValueError(f"--adapters: the value {value!r} is given twice")
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise ValueError(f"--adapters: {directory} is not a directory; give PEFT adapter directories")
        adapters[value] = path
    return adapters


def _adapter_value(text: str, pair: str, kind: str) -> Any:
    """The condition value of one `VALUE=DIR` pair: an id, a finite number or the string itself."""
    if kind == "categorical":
        if not re.fullmatch(r"\s*\+?\d+\s*", text):
            raise ValueError(f"--adapters: a categorical condition takes ids (0, 1, ...), got {text!r}")
        return int(text)
    if kind == "scalar":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--adapters: a scalar condition takes numbers, got {text!r} in {pair!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"--adapters: a scalar condition takes finite numbers, got {text!r}")
        return value
    return text


def distill_config(args: argparse.Namespace, adapters: Mapping[Any, Path]) -> HyperConfig:
    """The HyperConfig of `distill`: the options given, the rest from the adapters' adapter_config.json."""
    from ..plugin.config import HyperConfig

    if args.share_heads and args.generator != "shared":  # named by its flags, not by HyperConfig's fields
        raise UsageError(
            f"--share-heads shares the output heads of --generator shared; --generator {args.generator} has one "
            "network per target and no heads to share: drop --share-heads or use --generator shared"
        )
    peft = [_adapter_config(path) for path in adapters.values()]
    spec = _condition_spec(args, adapters)
    fields = {
        "target_modules": _target_modules(args, peft),
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


def _condition_spec(args: argparse.Namespace, adapters: Mapping[Any, Path]) -> dict[str, Any]:
    """The one condition's spec: its number of ids, its range or its encoder, from the options or the values."""
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
    return spec


def _target_modules(args: argparse.Namespace, peft: Sequence[Mapping[str, Any]]) -> Any:
    """--target-regex, --target-modules (a preset name if it is one), else the one set the adapters all name."""
    targets: Any = args.target_regex or args.target_modules
    if targets is None:  # the adapters' own targets (PEFT saves a list of suffixes or a regex)
        found = {json.dumps(sorted(t) if isinstance(t, list) else t) for t in (c.get("target_modules") for c in peft)}
        if len(found) != 1 or found == {"null"}:
            raise ValueError(
                f"the adapters do not name one set of target modules (they give {sorted(found)[:3]}); give "
                "--target-modules or --target-regex"
            )
        return json.loads(found.pop())
    if isinstance(targets, list) and len(targets) == 1 and targets[0] in _PRESETS:
        return targets[0]  # a preset name, not a module called 'attention'
    if isinstance(targets, list) and targets == ["all-linear"]:
        return "all-linear"
    return targets


def _adapter_config(directory: Path) -> dict[str, Any]:
    """The adapter's LoRA config, read by distillation's own reader; its errors name the option they came from."""
    from ..training.distill import AdapterError
    from ..training.distill.adapter_files import read_adapter_config

    try:
        return read_adapter_config(directory)
    except AdapterError as error:
        raise AdapterError(f"--adapters: {error}") from None
