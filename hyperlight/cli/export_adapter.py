"""`hyperlight export-adapter CHECKPOINT --base BASE --condition task=2 --out DIR`: write the weights one condition
generates as a PEFT LoRA adapter, and how closely the adapter reproduces them. With `--all`, one adapter per value
of a categorical condition, each in `DIR/<value>`, for multi-LoRA servers (vLLM, TGI, LoRAX)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .conditions import show_conditions
from .loading import add_hyper_arguments, load_hyper

if TYPE_CHECKING:
    from ..plugin.config import HyperConfig

NAME = "export-adapter"
WHAT = "write one condition as a PEFT LoRA adapter"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The `export-adapter` subcommand's arguments."""
    parser = commands.add_parser(NAME, help=WHAT)
    add_hyper_arguments(parser, WHAT, condition_required=False)
    parser.add_argument(
        "--all",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="write one adapter per value of the categorical condition NAME (default: the one no --condition "
        "gives), each in OUT/<value name or id>: the adapters a multi-LoRA server loads",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    """Load the hyper model, write the adapter(s), print the relative error of each module's update."""
    if args.all is not None:
        return _run_all(args)
    hyper, conditions, out = load_hyper(args)
    errors = hyper.export_peft_adapter(out, **conditions)
    print(f"relative error per module ({_how(hyper.hyper_config)}):")
    width = max(map(len, errors), default=0)
    for name, error in errors.items():
        print(f"  {name:<{width}}  {error:.3e}")
    print(f"max relative error {max(errors.values(), default=0.0):.3e}")
    print(f"wrote a PEFT LoRA adapter for {show_conditions(conditions)} to {out}")


def _run_all(args: argparse.Namespace) -> None:
    chosen: list[str] = []

    def enumerated(config: HyperConfig) -> str:
        from ..hypernet.conditions import ConditionSpec
        from ..plugin.peft_export import enumerated_values

        specs = {n: ConditionSpec.parse(n, s) for n, s in config.conditions.items()}
        given = {name.strip(): text for name, _, text in (pair.partition("=") for pair in args.condition)}
        chosen.append(enumerated_values(specs, args.all or None, given)[0])  # checked before any model loads
        return chosen[0]

    hyper, conditions, out = load_hyper(args, enumerated=enumerated)
    results = hyper.export_peft_adapters(out, condition=chosen[0], **conditions)
    print(f"max relative error per adapter ({_how(hyper.hyper_config)}):")
    width = max(map(len, results), default=0)
    for value, errors in results.items():
        print(f"  {value:<{width}}  {max(errors.values(), default=0.0):.3e}  {out / value}")
    fixed = f" ({show_conditions(conditions)})" if conditions else ""
    print(f"wrote {len(results)} PEFT LoRA adapters, one per value of {chosen[0]}{fixed}, to {out}")


def _how(config: HyperConfig) -> str:
    return "exact (lora mode)" if config.mode == "lora" else f"truncated SVD at rank {config.rank}"
