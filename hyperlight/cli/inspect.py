"""`hyperlight inspect CHECKPOINT [--json] [--verify]`: describe a checkpoint without loading a base model (and
without importing transformers): conditions, targets and shapes, the base it expects, sizes, the digest."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from .loading import read_hyper_checkpoint

NAME = "inspect"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The `inspect` subcommand's arguments."""
    parser = commands.add_parser(NAME, help="describe a checkpoint (no base model is loaded)")
    parser.description = (
        "Describe a checkpoint: conditions, targets and shapes, the base it expects, sizes. No base model."
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a save_pretrained directory or a Trainer checkpoint")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--verify", action="store_true", help="also read the tensors: check the digest and finiteness")
    return parser


def run(args: argparse.Namespace) -> None:
    """Print the checkpoint's description, as text or as one JSON object (--json)."""
    record = inspect_record(args.checkpoint, verify=args.verify)
    print(json.dumps(record, indent=2) if args.json else _inspect_text(record))


def inspect_record(path: str, *, verify: bool = False) -> dict[str, Any]:
    """What `inspect` reports, as a JSON-ready dict."""
    from ..plugin.checkpoint_file import CONFIG_NAME, DIGEST_KEY

    config, provenance, header, where = read_hyper_checkpoint(path)
    directory = Path(path).expanduser()
    files = {p.name: p.stat().st_size for p in (header.path, directory / CONFIG_NAME) if p.is_file()}
    record = {
        "checkpoint": str(directory),
        "format": "save_pretrained" if header.path.name == "hyper_model.safetensors" else "trainer",
        "config_from": where,
        "files": files,
        "saved_with_hyperlight": provenance.get("version") or header.metadata.get("hyperlight"),
        "base": {"class": provenance.get("base_model_class"), "model_type": provenance.get("model_type")},
        "config": config.to_dict(),
        "targets": provenance.get("targets", {}),
        "parameters": _parameter_counts(header.shapes),
        "tensors": len([k for k in header.shapes if k != "hyper_config"]),
        "dtypes": sorted({d for k, d in header.dtypes.items() if k != "hyper_config"}),
        "digest": header.metadata.get(DIGEST_KEY),
        "verified": None,
    }
    if verify:
        header.load()  # checks the digest and that every tensor is finite; raises CheckpointError otherwise
        record["verified"] = True
    return record


def _parameter_counts(shapes: dict[str, Any]) -> dict[str, int]:
    """Parameters per part (condition_encoder, generator, modules_to_save), in the order the tensors name them,
    after their total."""
    counts: dict[str, int] = {}
    for key, shape in shapes.items():
        if key == "hyper_config":  # a Trainer checkpoint's config, stored as a tensor
            continue
        part = {"condition_encoder": "condition_encoder", "generator": "generator"}.get(key.split(".")[0])
        counts[part or "modules_to_save"] = counts.get(part or "modules_to_save", 0) + math.prod(shape)
    return {"total": sum(counts.values()), **counts}


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _inspect_text(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [f"checkpoint {r['checkpoint']} ({r['format']}, saved with hyperlight {r['saved_with_hyperlight']})"]
    lines += [f"  {name}  {_bytes(size)}" for name, size in r["files"].items()]
    lines.append(f"base: {r['base']['class']} (model_type {r['base']['model_type']})")
    lines.append("conditions:")
    for name, spec in c["conditions"].items():
        detail = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("type", "values"))
        if spec.get("values"):  # which id is which value
            detail += "; " + ", ".join(f"{i}={v}" for i, v in enumerate(spec["values"]))
        lines.append(f"  {name}: {spec['type']}{f' ({detail})' if detail else ''}")
    lines += _config_lines(c)
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


def _config_lines(c: dict[str, Any]) -> list[str]:
    """The mode, the targets' selection and the generator's sizes of a HyperConfig's dict."""
    lines = [f"mode: {c['mode']}" + (f", rank {c['rank']}, alpha {c['alpha']}" if c["mode"] == "lora" else "")]
    shown = {k: c[k] for k in ("target_modules", "exclude_modules", "layers_to_transform", "target_parameters")}
    lines += [f"{k}: {json.dumps(v)}" for k, v in shown.items() if v is not None]
    if c["modules_to_save"]:
        lines.append(f"modules_to_save: {json.dumps(c['modules_to_save'])}")
    sizes = ("condition_dim", "hidden_size", "num_layers", "layer_embedding_dim", "type_embedding_dim")
    shared = ", share_heads" if c.get("share_heads") else ""  # checkpoints from before the field have none
    lines.append(f"generator: {c['generator']}{shared}, " + ", ".join(f"{k} {c[k]}" for k in sizes))
    return lines
