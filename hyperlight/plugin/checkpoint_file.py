"""Checkpoint files: `hyper_config.json` + `hyper_model.safetensors`. No pickle; nothing in a file runs code.

- **One unit.** The weights file carries its own copy of the config and a SHA-256 digest of its tensors in
  its safetensors metadata, and is renamed into place first; `hyper_config.json` (the readable copy)
  records the digest of the weights it belongs to and is renamed second. Killed between the two renames,
  the directory still loads as exactly the new checkpoint (the weights file's own config wins); killed
  before, as exactly the old one.
- **Atomic writes.** Each file is written in a private working directory beside it (any temporary its writer
  makes lands there too), flushed to disk and renamed into place; what a killed save left is removed by the next
  save. Files get the permissions an ordinary
  `open()` gives (0666 less the umask), as Transformers' files do.
- **Verified, bounded reads.** The header (names, dtypes, shapes, metadata) is read and checked before any
  tensor is allocated; the digest and finiteness of every tensor are checked after. Every error names the
  file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

WEIGHTS_NAME = "hyper_model.safetensors"
CONFIG_NAME = "hyper_config.json"
TRAINER_WEIGHTS_NAME = "model.safetensors"  # what transformers.Trainer writes for a non-PreTrainedModel
CONFIG_KEY = "hyper_config"  # the config travels inside state_dict() as a uint8 tensor of JSON
DIGEST_KEY = "hyperlight_sha256"  # safetensors metadata: digest of the tensors; also in hyper_config.json
MAX_CONFIG_BYTES = 1 << 20  # a config larger than this is not one hyperlight wrote
MAX_HEADER_BYTES = 16 << 20  # a safetensors header (names, shapes, metadata) larger than this neither

# a save's private working directory `.<file>.<pid>.<random>.tmpdir`, where the file is written (with any temporary
# its writer makes itself, as safetensors does) before it is renamed into place; `.tmp` files are older saves'
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp(?P<dir>dir)?$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, inconsistent, or not one hyperlight wrote; the message names it."""


def config_text(record: Mapping[str, Any]) -> str:
    """The canonical JSON of a config record. Keys keep their order: the order of the conditions is the order
    their embeddings are concatenated in, so sorting them would silently change the model."""
    return json.dumps(record)


def config_to_tensor(record: dict[str, Any]) -> Tensor:
    return torch.tensor(list(config_text(record).encode("utf-8")), dtype=torch.uint8)


def config_from_tensor(tensor: Tensor, *, where: str = "<state_dict>") -> dict[str, Any]:
    if tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.numel() > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{where}: '{CONFIG_KEY}' must be a 1-D uint8 tensor of JSON (≤ 1 MiB)")
    return parse_record(bytes(tensor.tolist()).decode("utf-8", errors="replace"), where)


def parse_record(text: str, where: str) -> dict[str, Any]:
    """A config record from JSON text: a dict, or a CheckpointError naming `where`."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, over-long integers, absurd nesting
        raise CheckpointError(f"{where} is not valid JSON ({str(error)[:200]}); the checkpoint is damaged") from None
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{where} must hold a JSON object (the HyperConfig fields and a 'hyperlight' block), "
            f"got a {type(record).__name__}"
        )
    provenance = record.get("hyperlight", {})
    if not isinstance(provenance, dict):
        raise CheckpointError(
            f"{where}: 'hyperlight' must be an object (what the model was trained on), got {provenance!r:.80}"
        )
    targets = provenance.get("targets", {})
    if not isinstance(targets, dict) or not all(
        isinstance(n, str) and isinstance(s, dict) and all(_is_shape(v) for v in s.values())
        for n, s in targets.items()
    ):
        raise CheckpointError(f"{where}: 'hyperlight.targets' must map module names to {{external: shape}}")
    return record


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def tensors_digest(tensors: Mapping[str, Tensor], config: str = "") -> str:
    """SHA-256 over the config text and every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    digest.update(f"{len(config)}|{config}|".encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- writing ---------------------------------------------------------------------------------------------


def remove_stale_temporaries(directory: Path, names: tuple[str, ...] = (WEIGHTS_NAME, CONFIG_NAME)) -> None:
    """Remove what killed saves of the files `names` left in `directory` (their working directories, and the
    temporary files of older versions), for processes no longer alive: a save in progress elsewhere keeps its own."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or match["name"] not in names:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue  # a save in progress (another thread of this process, or another process)
        if match["dir"] and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif not match["dir"] and path.is_file():
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # no such process (or no such pid at all)
        return False
    except PermissionError:
        return True
    return True


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through `write(tmp_path)` in a private working directory beside `path`, flush it to disk, then
    rename it into place, so an interrupted save leaves the previous file intact. Whatever the writer creates
    (safetensors writes its own `.tmpXXXXXX` and renames it) stays inside that directory, which the next write of
    the same file removes if this process was killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, (path.name,))  # what a killed write of this file left
    work = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmpdir"
    os.mkdir(work)
    tmp = str(work / path.name)
    try:
        # created as open() creates files (0666 less the umask), unlike mkstemp's 0600
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0666 less the umask, read without touching the umask
        if path.exists():  # a file saved before keeps the permissions its owner gave it
            mode = stat.S_IMODE(path.stat().st_mode)
        write(tmp)
        os.chmod(tmp, mode)  # writers that replace the file (safetensors) may have changed it
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        os.rmdir(work)  # empty now, unless the writer left something of its own in it
    except OSError:
        shutil.rmtree(work, ignore_errors=True)


def _sync_directory(directory: Path) -> None:
    """Make the renames themselves durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata or {"format": "pt"}))


def save_json(path: Path, data: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    atomic_write(path, write)


def save_checkpoint(directory: Path, tensors: dict[str, Tensor], record: dict[str, Any], version: str) -> None:
    """Write one consistent checkpoint: the weights (with their config and digest), then the readable config."""
    text = config_text(record)
    digest = tensors_digest(tensors, text)  # covers the config too: an edited config is a changed checkpoint
    metadata = {"format": "pt", "hyperlight": version, CONFIG_KEY: text, DIGEST_KEY: digest}
    save_tensors(directory / WEIGHTS_NAME, tensors, metadata)
    save_json(directory / CONFIG_NAME, {**record, DIGEST_KEY: digest})
    _sync_directory(directory)


# -- reading ---------------------------------------------------------------------------------------------


class CheckpointHeader:
    """What a weights file declares, read without allocating its tensors: names, shapes, dtypes, metadata."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        self.expected: tuple[str, str] | None = None  # (config text, digest) to verify the tensors against
        if not path.is_file():
            raise CheckpointError(f"no {path.name} in {path.parent}: is this a directory written by save_pretrained?")
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path} declares a {length}-byte header (more than {MAX_HEADER_BYTES} bytes): not a checkpoint "
                "hyperlight wrote; refusing to read it"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                self.metadata: dict[str, str] = dict(f.metadata() or {})
                self.shapes: dict[str, tuple[int, ...]] = {}
                self.dtypes: dict[str, str] = {}
                for key in f.keys():
                    view = f.get_slice(key)
                    self.shapes[key], self.dtypes[key] = tuple(view.get_shape()), str(view.get_dtype())
        except Exception as error:  # safetensors raises its own error types for truncated or garbled files
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({error}); the checkpoint is damaged"
            ) from None

    def load(self) -> dict[str, Tensor]:
        """Every tensor, verified against the recorded digest (when there is one) and checked to be finite."""
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(self.path))
        except Exception as error:
            raise CheckpointError(f"{self.path} could not be read ({error}); the checkpoint is damaged") from None
        if self.expected is not None and tensors_digest(tensors, self.expected[0]) != self.expected[1]:
            raise CheckpointError(
                f"{self.path} does not match the digest recorded when it was saved: its tensors or its config were "
                "changed or corrupted. Restore it from a copy, or save the model again"
            )
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{self.path}: tensor '{name}' holds NaN or infinite values; refusing to load it"
                )
        return tensors


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], CheckpointHeader, str]:
    """(config record, weights header, where the record came from) of a save_pretrained directory or a Trainer
    checkpoint; nothing is allocated yet (`header.load()` reads the tensors and verifies them)."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; give the directory save_pretrained wrote")
    if (directory / WEIGHTS_NAME).is_file() or (directory / CONFIG_NAME).is_file():
        header = CheckpointHeader(directory / WEIGHTS_NAME)
        embedded, digest = header.metadata.get(CONFIG_KEY), header.metadata.get(DIGEST_KEY)
        if embedded is not None:  # the weights file's own config: always the one saved with these weights
            where = f"the config inside {header.path}"
            if len(embedded) > MAX_CONFIG_BYTES:
                raise CheckpointError(f"{header.path}: its embedded config is larger than 1 MiB")
            record = parse_record(embedded, where)
            if digest is None:
                raise CheckpointError(
                    f"{header.path} holds a config but no '{DIGEST_KEY}': it was not written by save_pretrained or "
                    "was stripped; refusing to load it unverified"
                )
            header.expected = (embedded, digest)
            _check_readable_copy(directory / CONFIG_NAME, record, digest)
            return record, header, str(header.path)
        # weights without an embedded config: written before digests (unverifiable), or a JSON of another save
        path = directory / CONFIG_NAME
        record = _read_json(path)
        digest = record.pop(DIGEST_KEY, None)
        if digest is not None:
            header.expected = (config_text(record), digest)  # a mix of saves fails this when the tensors are read
        return record, header, str(path)
    if (directory / TRAINER_WEIGHTS_NAME).is_file():
        header = CheckpointHeader(directory / TRAINER_WEIGHTS_NAME)
        if CONFIG_KEY in header.shapes:
            shape = header.shapes[CONFIG_KEY]
            if len(shape) != 1 or shape[0] > MAX_CONFIG_BYTES or header.dtypes[CONFIG_KEY] != "U8":
                raise CheckpointError(f"{header.path}: '{CONFIG_KEY}' must be a 1-D uint8 tensor of JSON (≤ 1 MiB)")
            from safetensors import safe_open

            with safe_open(str(header.path), framework="pt") as f:
                record = config_from_tensor(f.get_tensor(CONFIG_KEY), where=f"'{CONFIG_KEY}' in {header.path}")
            return record, header, str(header.path)
    raise CheckpointError(
        f"no hyper model in {directory}: expected {CONFIG_NAME} + {WEIGHTS_NAME} (save_pretrained) or a Trainer "
        f"checkpoint whose {TRAINER_WEIGHTS_NAME} holds a hyper model's state_dict"
    )


def _check_readable_copy(path: Path, record: Mapping[str, Any], digest: str) -> None:
    """`hyper_config.json` must be the config saved with the weights: stale after an interrupted save (a warning:
    the weights' own config is loaded), or edited by hand (an error: the edit would be ignored)."""
    try:
        copy = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        copy = {}
    if not isinstance(copy, dict):
        copy = {} if copy is not None else None
    if copy is None:
        return  # only the weights file: it is complete on its own
    if copy.get(DIGEST_KEY) != digest:
        warnings.warn(
            f"{path} is from another save than {WEIGHTS_NAME} beside it (a save interrupted between its two files, "
            f"or a damaged file); loading the config saved inside {WEIGHTS_NAME}. Save again to make them agree",
            UserWarning,
            stacklevel=4,
        )
        return
    copy.pop(DIGEST_KEY)
    if copy != record:
        changed = sorted(k for k in set(copy) | set(record) if copy.get(k) != record.get(k))
        raise CheckpointError(
            f"{path} and the config inside {WEIGHTS_NAME} name the same save but differ in fields {changed[:6]}: one "
            "of them was edited after it was saved (an edit would not take effect). Change the config in Python "
            "(HyperConfig) and save again, or restore the files"
        )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no {path.name} in {path.parent}: is this a directory written by save_pretrained?")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is larger than 1 MiB; it is not a config hyperlight wrote")
    return parse_record(path.read_text(encoding="utf-8", errors="replace"), str(path))
