"""`hyperlight export-adapter CHECKPOINT --base BASE --condition task=2 --out DIR`: write the weights one condition
generates as a PEFT LoRA adapter, and how closely the adapter reproduces them."""

from __future__ import annotations

import argparse

from .conditions import show_conditions
from .loading import add_hyper_arguments, load_hyper

NAME = "export-adapter"
WHAT = "write one condition as a PEFT LoRA adapter"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The `export-adapter` subcommand's arguments."""
    parser = commands.add_parser(NAME, help=WHAT)
    add_hyper_arguments(parser, WHAT)
    return parser


def run(args: argparse.Namespace) -> None:
    """Load the hyper model, write the adapter, print the relative error of each module's update."""
    hyper, conditions, out = load_hyper(args)
    errors = hyper.export_peft_adapter(out, **conditions)
    config = hyper.hyper_config
    how = "exact (lora mode)" if config.mode == "lora" else f"truncated SVD at rank {config.rank}"
    print(f"relative error per module ({how}):")
    width = max(map(len, errors), default=0)
    for name, error in errors.items():
        print(f"  {name:<{width}}  {error:.3e}")
    print(f"max relative error {max(errors.values(), default=0.0):.3e}")
    print(f"wrote a PEFT LoRA adapter for {show_conditions(conditions)} to {out}")
