"""`hyperlight merge CHECKPOINT --base BASE --condition task=2 --out DIR`: merge the weights one condition
generates into the base and save a plain Transformers model, with the base's tokenizer files beside it."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .conditions import show_conditions
from .loading import add_hyper_arguments, load_hyper

NAME = "merge"
WHAT = "merge one condition into a plain Transformers model directory"
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


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The `merge` subcommand's arguments."""
    parser = commands.add_parser(NAME, help=WHAT)
    add_hyper_arguments(parser, WHAT)
    return parser


def run(args: argparse.Namespace) -> None:
    """Load the hyper model, merge the condition, save the plain model and the base's tokenizer files."""
    hyper, conditions, out = load_hyper(args)
    merged = hyper.merge_and_unload(**conditions)
    merged.save_pretrained(out)
    copied = copy_tokenizer_files(args.base, out)
    print(f"wrote {type(merged).__name__} with {show_conditions(conditions)} merged to {out}")
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
