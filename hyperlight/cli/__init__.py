"""The `hyperlight` command: inspect a checkpoint, export one condition as a PEFT adapter, merge one condition into a
plain Transformers model, or distill PEFT adapters into a hyper model.

    hyperlight inspect CHECKPOINT [--json] [--verify]
    hyperlight export-adapter CHECKPOINT --base BASE --condition task=2 --out DIR
    hyperlight merge CHECKPOINT --base BASE --condition task=2 --out DIR
    hyperlight distill --base BASE --adapters 0=DIR0 1=DIR1 --out CHECKPOINT

One module per command (`inspect`, `export_adapter`, `merge`, `distill`), each with `add_parser(commands)` and
`run(args)`; what they share lives in `conditions` (values on the command line) and `loading` (checkpoint, base,
output directory). Bad arguments and refused files end with one line on stderr (`hyperlight: error: ...`) and exit
status 2. Transformers, PEFT and torch's heavier parts are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from .conditions import parse_conditions as parse_conditions
from .errors import UsageError as UsageError

__all__ = ["UsageError", "build_parser", "main", "parse_conditions"]

PROG = "hyperlight"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print the whole usage first; one line that says where to look is enough
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each command module adds its subcommand and is run through `args.run`."""
    # the command modules import nothing heavy at import time: building the parser costs no transformers import
    from . import distill, export_adapter, inspect, merge

    parser = _Parser(prog=PROG, description="Inspect, export, merge and distill hyperlight checkpoints.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--traceback", action="store_true", help="on an error, show the traceback, not one line")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (inspect, export_adapter, merge, distill):
        command.add_parser(commands).set_defaults(run=command.run)
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
