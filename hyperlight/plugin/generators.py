"""Generators: map a condition embedding `z (U, D)` to every external of a hypernetized model.

`SharedGenerator` (the default): one trunk shared by all targets, fed with z plus a learned layer-index
embedding and a module-type embedding, and one head per module type (or, with `share_heads`, one head per
distinct set of external shapes, shared by the module types that have it). Its size does not grow with depth,
and all layers of a type are generated in one batched pass (layers are a batch dimension).

`PerTargetGenerator`: one `HyperNet` per target module, for small models or when targets must not share.

Both start at identity: low-rank `lora_B` is exactly zero and full tensors are exactly the pretrained
values, so the hyper model reproduces the base model for every condition before training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..hypernet import HyperNet
from ..hypernet.init import initial_value
from ..nn.external import Shape


@dataclass
class GeneratorTarget:
    """One module whose externals a generator predicts."""

    name: str  # dotted module name in the base model
    type_key: str  # module name with the layer index wildcarded: targets of one type share a head
    layer: int  # layer index (0 for modules outside numbered layers)
    shapes: dict[str, Shape]  # external local name -> shape
    base: dict[str, Tensor] = field(default_factory=dict)  # full mode: pretrained values (θ = base + Δ)


def _numel(shape: Shape) -> int:
    return math.prod(shape)


class _TypeHead(nn.Module):
    """Emits every external of the targets of one module type: `(N, U, numel)` -> per target slices."""

    def __init__(self, targets: list[GeneratorTarget], hidden: int) -> None:
        super().__init__()
        self.target_names = [t.name for t in targets]
        self.shapes = dict(targets[0].shapes)
        self.sizes = [_numel(shape) for shape in self.shapes.values()]  # each external's block of the output
        self.proj = nn.Linear(hidden, sum(self.sizes), bias=False)
        full = bool(targets[0].base)
        with torch.no_grad():
            self.proj.weight.zero_()
            if full:
                base = torch.stack([torch.cat([t.base[n].flatten() for n in self.shapes]) for t in targets])
                self.register_buffer("base", base, persistent=False)  # (N, numel), frozen pretrained values
                self.theta0 = None
            else:
                self.base = None
                theta0 = [initial_value(n, s).flatten() for n, s in self.shapes.items()]
                self.theta0 = nn.Parameter(torch.cat(theta0))  # shared start for every layer of this type
                for (name, shape), rows in zip(self.shapes.items(), self.proj.weight.split(self.sizes)):
                    if name == "lora_A":  # per-layer, per-condition variety of A; B's rows stay zero (identity)
                        rows.normal_(0.0, 1.0 / math.sqrt(3 * shape[-1]) / math.sqrt(hidden))

    def forward(self, h: Tensor) -> dict[str, dict[str, Tensor]]:
        """`h (N, U, H)` (target-major) -> `{target: {external: (U, *shape)}}`."""
        rows = h.reshape(-1, h.shape[-1])  # (N·U, H), a view: this head's block of the trunk's output
        if self.base is not None:  # pretrained values + Δ
            flat = self.base.to(h.dtype).unsqueeze(1) + self.proj(rows).view(*h.shape[:2], -1)
        else:  # θ0 added inside the matmul, not in a second pass over the output
            flat = torch.addmm(self.theta0, rows, self.proj.weight.t()).view(*h.shape[:2], -1)  # (N, U, numel)
        out: dict[str, dict[str, Tensor]] = {t: {} for t in self.target_names}
        # one split and one unbind per external: their backwards are one cat and one stack, where a slice per
        # target would give each target's gradient a zero-filled buffer of the whole (N, U, numel) output
        for (name, shape), piece in zip(self.shapes.items(), flat.split(self.sizes, -1)):
            for target, value in zip(self.target_names, piece.unflatten(-1, shape).unbind(0)):
                out[target][name] = value  # (U, *shape)
        return out


class SharedGenerator(nn.Module):
    """One trunk for all targets: h = MLP([z; layer embedding; type embedding]), then a head per type.

    `share_heads=True` gives module types whose externals have the same shapes one head between them
    (HyperFormer++ shares one generator across layers and adapter positions): the type embedding still tells
    them apart, but their generated weights share one `hidden_size`-dim span (plus θ0) instead of one each. The
    heads hold nearly all of the generator's parameters, so this divides its size, and the memory traffic of
    reading, differentiating and updating them, by the number of types sharing (4 for q,k,v,o of equal width);
    its multiply-adds stay as they were (one head runs over all the sharing types' rows). Measured alone at the
    benchmark's small shape: forward, backward and AdamW 3.9 -> 3.0 ms.
    """

    def __init__(
        self,
        targets: Sequence[GeneratorTarget],
        condition_dim: int,
        *,
        hidden_size: int = 64,
        num_layers: int = 2,
        layer_embedding_dim: int = 16,
        type_embedding_dim: int = 16,
        dropout: float = 0.0,
        share_heads: bool = False,
    ) -> None:
        super().__init__()
        if not targets:
            raise ValueError("a generator needs at least one target")
        types: dict[str, list[GeneratorTarget]] = {}
        for t in targets:
            types.setdefault(t.type_key, []).append(t)
        for key, members in types.items():
            if any(m.shapes != members[0].shapes for m in members):
                raise ValueError(f"targets of type '{key}' have different external shapes; they cannot share a head")
        type_index = {key: i for i, key in enumerate(types)}
        groups = types  # one head per module type, or per distinct set of shapes when types share heads
        if share_heads:
            by_shapes: dict[tuple, list[GeneratorTarget]] = {}
            for t in targets:
                by_shapes.setdefault(tuple(sorted((n, tuple(s)) for n, s in t.shapes.items())), []).append(t)
            groups = {"+".join(dict.fromkeys(t.type_key for t in g)): g for g in by_shapes.values()}
        self.type_keys = list(groups)
        num_layers_seen = max(t.layer for t in targets) + 1
        self.layer_embedding = nn.Embedding(num_layers_seen, layer_embedding_dim)
        self.type_embedding = nn.Embedding(len(types), type_embedding_dim)
        nn.init.normal_(self.layer_embedding.weight, std=1.0)
        nn.init.normal_(self.type_embedding.weight, std=1.0)
        # the first trunk layer is split by input part, so z is projected once per example, not per target
        self.z_proj = nn.Linear(condition_dim, hidden_size)
        self.position_proj = nn.Linear(layer_embedding_dim + type_embedding_dim, hidden_size, bias=False)
        self.act = nn.SiLU()
        blocks: list[nn.Module] = []
        for _ in range(max(num_layers - 1, 0)):
            blocks += [nn.Linear(hidden_size, hidden_size), nn.SiLU()]
            if dropout:
                blocks.append(nn.Dropout(dropout))
        self.trunk = nn.Sequential(*blocks)
        self.heads = nn.ModuleList(_TypeHead(groups[k], hidden_size) for k in self.type_keys)
        # every target's (layer, type), grouped by head: the trunk runs once over all of them
        self.head_sizes = [len(groups[k]) for k in self.type_keys]
        layers = [t.layer for k in self.type_keys for t in groups[k]]
        kinds = [type_index[t.type_key] for k in self.type_keys for t in groups[k]]
        self.register_buffer("target_layers", torch.tensor(layers), persistent=False)
        self.register_buffer("target_types", torch.tensor(kinds), persistent=False)

    def forward(self, z: Tensor) -> dict[str, dict[str, Tensor]]:
        """`z (U, D)` -> `{target module: {external: (U, *shape)}}` for every target."""
        hz = self.z_proj(z)  # (U, H)
        where = torch.cat([self.layer_embedding(self.target_layers), self.type_embedding(self.target_types)], dim=-1)
        # all targets at once, target-major (N, U, H): each head's rows are one contiguous block of it
        h = self.trunk(self.act(self.position_proj(where).unsqueeze(1) + hz))
        out: dict[str, dict[str, Tensor]] = {}
        for head, part in zip(self.heads, h.split(self.head_sizes, dim=0)):
            out.update(head(part))
        return out


class PerTargetGenerator(nn.Module):
    """One `HyperNet` per target module, each mapping z to that module's externals."""

    def __init__(self, targets: Sequence[GeneratorTarget], condition_dim: int, *, hidden_size: int = 64) -> None:
        super().__init__()
        self.nets = nn.ModuleDict()
        self.target_names: dict[str, str] = {}
        for t in targets:
            initial = t.base or {n: initial_value(n, s) for n, s in t.shapes.items()}
            key = t.name.replace(".", "__")
            self.nets[key] = HyperNet.from_existing(
                {n: v.float() for n, v in initial.items()}, {"z": (condition_dim,)}, [hidden_size], encoding=None
            )
            self.target_names[key] = t.name

    def forward(self, z: Tensor) -> dict[str, dict[str, Tensor]]:
        return {self.target_names[key]: net(z=z) for key, net in self.nets.items()}
