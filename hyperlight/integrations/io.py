"""Checkpoint files: `hyper_config.json` + `hyper_model.safetensors`. No pickle; every write is atomic."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

WEIGHTS_NAME = "hyper_model.safetensors"
CONFIG_NAME = "hyper_config.json"
TRAINER_WEIGHTS_NAME = "model.safetensors"  # what transformers.Trainer writes for a non-PreTrainedModel
CONFIG_KEY = "hyper_config"  # the config travels inside state_dict() as a uint8 tensor of JSON


def config_to_tensor(record: dict[str, Any]) -> Tensor:
    return torch.tensor(list(json.dumps(record, sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def config_from_tensor(tensor: Tensor) -> dict[str, Any]:
    return json.loads(bytes(tensor.to(torch.uint8).tolist()).decode("utf-8"))


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config record, hyper weights) from a save_pretrained directory or a Trainer checkpoint."""
    if (directory / CONFIG_NAME).is_file():
        with open(directory / CONFIG_NAME, encoding="utf-8") as f:
            record = json.load(f)
        return record, load_tensors(directory / WEIGHTS_NAME)
    if (directory / TRAINER_WEIGHTS_NAME).is_file():
        state = load_tensors(directory / TRAINER_WEIGHTS_NAME)
        if CONFIG_KEY in state:
            return config_from_tensor(state.pop(CONFIG_KEY)), state
    raise FileNotFoundError(
        f"no hyper model in {directory}: expected {CONFIG_NAME} + {WEIGHTS_NAME} (save_pretrained) or a Trainer "
        f"checkpoint whose {TRAINER_WEIGHTS_NAME} holds a hyper model's state_dict"
    )


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through `write(tmp_path)` to a temporary file beside `path`, then rename it into place, so an
    interrupted save leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata or {"format": "pt"}))


def load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {path.parent}: is this a directory written by save_pretrained?")
    return load_file(str(path))


def save_json(path: Path, data: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)
