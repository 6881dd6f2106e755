"""Hyper layers: shared weights equal the torch layer; per-example weights equal running each example alone."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hyperlight import HyperConv1d, HyperConv2d, HyperConv3d, HyperEmbedding, HyperLinear

B = 3


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# (id, hyper layer, torch twin, input shape) -- the twin is the reference, built with the same arguments
CASES = [
    ("linear-2d", lambda: (HyperLinear(5, 4), nn.Linear(5, 4)), (B, 5)),
    ("linear-3d", lambda: (HyperLinear(5, 4), nn.Linear(5, 4)), (B, 7, 5)),
    ("linear-nobias", lambda: (HyperLinear(5, 4, bias=False), nn.Linear(5, 4, bias=False)), (B, 2, 3, 5)),
    ("conv1d-zeros", lambda: (HyperConv1d(4, 6, 3, padding=1), nn.Conv1d(4, 6, 3, padding=1)), (B, 4, 9)),
    (
        "conv1d-same-circular-dilated",
        lambda: (
            HyperConv1d(4, 6, 4, padding="same", dilation=2, padding_mode="circular"),
            nn.Conv1d(4, 6, 4, padding="same", dilation=2, padding_mode="circular"),
        ),
        (B, 4, 11),
    ),
    (
        "conv2d-reflect-stride",
        lambda: (
            HyperConv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"),
            nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"),
        ),
        (B, 3, 7, 8),
    ),
    (
        "conv2d-replicate-groups-dilation",
        lambda: (
            HyperConv2d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode="replicate"),
            nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode="replicate"),
        ),
        (B, 4, 6, 6),
    ),
    (
        "conv2d-same-circular",
        lambda: (
            HyperConv2d(3, 4, (3, 2), padding="same", padding_mode="circular"),
            nn.Conv2d(3, 4, (3, 2), padding="same", padding_mode="circular"),
        ),
        (B, 3, 5, 6),
    ),
    (
        "conv2d-same-zeros",
        lambda: (HyperConv2d(3, 4, 3, padding="same", bias=False), nn.Conv2d(3, 4, 3, padding="same", bias=False)),
        (B, 3, 5, 5),
    ),
    (
        "conv2d-depthwise-asym-stride",
        lambda: (
            HyperConv2d(4, 8, 3, stride=(1, 2), padding=(0, 1), groups=4),
            nn.Conv2d(4, 8, 3, stride=(1, 2), padding=(0, 1), groups=4),
        ),
        (B, 4, 6, 7),
    ),
    ("conv3d-zeros", lambda: (HyperConv3d(2, 3, 3, padding=1), nn.Conv3d(2, 3, 3, padding=1)), (B, 2, 4, 4, 3)),
    (
        "conv3d-replicate-groups",
        lambda: (
            HyperConv3d(4, 4, 2, stride=2, padding=1, groups=2, padding_mode="replicate"),
            nn.Conv3d(4, 4, 2, stride=2, padding=1, groups=2, padding_mode="replicate"),
        ),
        (B, 4, 4, 5, 3),
    ),
]
IDS = [c[0] for c in CASES]


def random_values(ref: nn.Module, batch=None):
    lead = () if batch is None else (batch,)
    return {name: torch.randn(*lead, *p.shape) for name, p in ref.named_parameters()}


def looped(ref: nn.Module, values: dict, x: torch.Tensor) -> torch.Tensor:
    """The reference: example b alone (a batch of one) through the torch layer, with weight b."""
    outs = []
    for b in range(x.shape[0]):
        own = {name: v[b] if v.dim() == ref.get_parameter(name).dim() + 1 else v for name, v in values.items()}
        outs.append(functional_call(ref, own, (x[b : b + 1],)))
    return torch.cat(outs)


@pytest.mark.parametrize("build, in_shape", [c[1:] for c in CASES], ids=IDS)
def test_shared_weights_equal_torch_layer(build, in_shape):
    hyper, ref = build()
    assert hyper.external_shapes() == {n: tuple(p.shape) for n, p in ref.named_parameters()}
    x = torch.randn(in_shape)
    with hyper.using_externals(dict(ref.named_parameters())):
        close(hyper(x), ref(x))


# which externals are per example: both, or one of them with the other shared
PER_EXAMPLE = [
    pytest.param(build, in_shape, combo, id=f"{name}-{combo}")
    for name, build, in_shape in CASES
    for combo in ("both", "weight", "bias")
    if combo != "bias" or build()[1].bias is not None
]


@pytest.mark.parametrize("build, in_shape, combo", PER_EXAMPLE)
def test_per_example_equals_each_example_alone(build, in_shape, combo):
    hyper, ref = build()
    values = random_values(ref, batch=B)
    if combo != "both":  # only `combo` is per example, the other is shared
        values = {n: v if n == combo else v[0] for n, v in values.items()}
    x = torch.randn(in_shape)
    with hyper.using_externals(values):
        y = hyper(x)
    assert y.shape == ref(x).shape
    close(y, looped(ref, values, x))
    # and example b differs from what example b's neighbour's weights give (the weights really are per example)
    if combo in ("both", "weight"):
        neighbour = dict(values, weight=values["weight"][1:2])
        assert not torch.allclose(y[0:1], looped(ref, neighbour, x[0:1]))


GRAD_CASES = ("linear-3d", "conv1d-same-circular-dilated", "conv2d-replicate-groups-dilation", "conv3d-zeros")


@pytest.mark.parametrize("build, in_shape", [c[1:] for c in CASES if c[0] in GRAD_CASES], ids=GRAD_CASES)
def test_per_example_gradients_equal_looped(build, in_shape):
    hyper, ref = build()
    values = {n: v.requires_grad_() for n, v in random_values(ref, batch=B).items()}
    x = torch.randn(in_shape, requires_grad=True)
    with hyper.using_externals(values):
        y = hyper(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x, *values.values()])
    ref_grads = torch.autograd.grad((looped(ref, values, x) * g).sum(), [x, *values.values()])
    for got, want in zip(grads, ref_grads):
        close(got, want)


def test_per_example_weights_need_a_matching_input_batch():
    layer = HyperLinear(4, 2)
    layer.set_externals(weight=torch.randn(3, 2, 4), bias=torch.randn(2))
    with pytest.raises(
        ValueError,
        match=r"linear: per-example weights were given for a batch of 3, but the input has 5 rows; "
        r"its first dimension must be 3 \(or a multiple of 3\)",
    ):
        layer(torch.randn(5, 4))
    conv = HyperConv2d(2, 2, 1)
    conv.set_externals(weight=torch.randn(3, 2, 2, 1, 1), bias=torch.randn(2))
    with pytest.raises(
        ValueError, match=r"conv2d: per-example weights were given for a batch of 3, but the input has 2 rows"
    ):
        conv(torch.randn(2, 2, 4, 4))


# -- embedding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_idx", [None, 0, -1])
def test_embedding_shared_and_per_example(padding_idx):
    hyper, ref = HyperEmbedding(7, 4, padding_idx=padding_idx), nn.Embedding(7, 4, padding_idx=padding_idx)
    assert hyper.padding_idx == ref.padding_idx and hyper.external_shapes() == {"weight": (7, 4)}
    ids = torch.tensor([[0, 6, 2, 6], [1, 0, 0, 3], [6, 5, 4, 0]])
    with hyper.using_externals(weight=ref.weight):
        close(hyper(ids), ref(ids))

    tables = torch.randn(B, 7, 4, requires_grad=True)
    with hyper.using_externals(weight=tables):
        y = hyper(ids)
    expected = torch.stack([F.embedding(ids[b], tables[b], ref.padding_idx) for b in range(B)])
    close(y, expected)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * g).sum(), tables)
    (ref_grad,) = torch.autograd.grad((expected * g).sum(), tables)
    close(grad, ref_grad)
    if padding_idx is not None:  # like F.embedding, the padding row gets no gradient
        assert grad[:, ref.padding_idx].abs().sum() == 0 and grad.abs().sum() > 0


def test_embedding_rejects_bad_padding_idx_and_max_norm_per_example():
    with pytest.raises(ValueError, match=r"padding_idx must be within \[-5, 5\), got 5"):
        HyperEmbedding(5, 2, padding_idx=5)
    emb = HyperEmbedding(5, 2)
    emb.max_norm = 1.0
    emb.set_externals(weight=torch.randn(2, 5, 2))
    with pytest.raises(NotImplementedError, match="max_norm"):
        emb(torch.zeros(2, 3, dtype=torch.long))


# -- construction and repr ------------------------------------------------------------------------------


def test_reprs_match_torch():
    assert repr(HyperLinear(8, 16)) == "HyperLinear(in_features=8, out_features=16, bias=True)"
    conv, ref = (
        HyperConv2d(3, 4, 3, padding="same", padding_mode="reflect"),
        nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"),
    )
    assert repr(conv) == repr(ref).replace("Conv2d", "HyperConv2d")
    assert repr(HyperEmbedding(5, 2, padding_idx=-1)) == "HyperEmbedding(5, 2, padding_idx=4)"


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: HyperLinear(0, 3), ValueError, "in_features must be a positive int, got 0"),
        (lambda: HyperLinear(3, 2.0), ValueError, "out_features must be a positive int, got 2.0"),
        (lambda: HyperConv2d(3, 4, 3, groups=2), ValueError, "in_channels must be divisible by groups"),
        (lambda: HyperConv1d(3, 4, 3, stride=2, padding="same"), ValueError, "padding='same' is not supported"),
        (lambda: HyperConv2d(3, 4, 3, padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    ],
)
def test_invalid_layer_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()
