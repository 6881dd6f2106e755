"""Checkpoint files: `hyper_config.json` + `hyper_model.safetensors`. No pickle; every write is atomic."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

WEIGHTS_NAME = "hyper_model.safetensors"


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
