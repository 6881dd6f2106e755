"""ExternalParameter and HyperModule: declaring, listing, setting, checking and resetting externals."""

import pytest
import torch
from torch import nn

from hyperlight import (
    ExternalParameter,
    HyperConv2d,
    HyperLinear,
    HyperModule,
    UninitializedExternalError,
    hypernetize,
)

UNSET = "Uninitialized External Parameter, please set the value first"


class Net(HyperModule):
    """A hand-written tree of HyperModules: conv -> pool -> out, plus an external of the root itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = HyperConv2d(3, 4, 3)
        self.out = HyperLinear(4, 2)
        self.scale = ExternalParameter((2,))

    def forward(self, x):
        h = self.conv(x).mean(dim=(2, 3))
        return self.out(h) * self.scale


def net_values(batch=None):
    lead = () if batch is None else (batch,)
    return {
        "conv.weight": torch.randn(*lead, 4, 3, 3, 3),
        "conv.bias": torch.randn(*lead, 4),
        "out.weight": torch.randn(*lead, 2, 4),
        "out.bias": torch.randn(*lead, 2),
        "scale": torch.randn(*lead, 2),
    }


# -- ExternalParameter -----------------------------------------------------------------------------

SHAPES = [((16, 8), (16, 8)), ([16, 8], (16, 8)), (5, (5,)), ((), ()), (torch.Size([2, 3]), (2, 3)), ((0, 4), (0, 4))]


@pytest.mark.parametrize("given, expected", SHAPES)
def test_external_shape_forms(given, expected):
    ext = ExternalParameter(given)
    assert ext.shape == expected and isinstance(ext.shape, tuple)
    assert ext.numel == int(torch.Size(expected).numel())
    assert repr(ext) == f"ExternalParameter(shape={expected})"


BAD_SHAPES = [
    ((-1, 3), ValueError, r"non-negative ints, got \(-1, 3\)"),
    ((2.0, 3), ValueError, r"non-negative ints, got \(2.0, 3\)"),
    (("a", 3), ValueError, r"non-negative ints"),
    ((True, 3), ValueError, r"non-negative ints"),
    ("16", TypeError, r"tuple or list of ints, got str '16'"),
    (2.5, TypeError, r"tuple or list of ints, got float 2.5"),
    (None, TypeError, r"tuple or list of ints, got NoneType"),
]


@pytest.mark.parametrize("shape, error, message", BAD_SHAPES)
def test_external_invalid_shapes(shape, error, message):
    with pytest.raises(error, match=message):
        ExternalParameter(shape)


def test_external_dtype_must_be_a_dtype():
    assert ExternalParameter((2,), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(TypeError, match="dtype must be a torch.dtype or None"):
        ExternalParameter((2,), dtype="float32")


def test_external_equality():
    assert ExternalParameter((2, 3)) == ExternalParameter([2, 3])
    assert ExternalParameter((2, 3)) != ExternalParameter((3, 2))
    assert ExternalParameter((2,)) != ExternalParameter((2,), dtype=torch.float16)
    assert len({ExternalParameter((2, 3)), ExternalParameter((2, 3))}) == 1


# -- reading an unset external ---------------------------------------------------------------------


def test_unset_external_raises_attribute_error_with_full_name():
    root = nn.Sequential()
    root.add_module("conv", nn.Conv2d(3, 4, 3))
    model = hypernetize(root, modules=[root.conv])
    assert issubclass(UninitializedExternalError, AttributeError)
    with pytest.raises(UninitializedExternalError) as info:
        model(torch.zeros(1, 3, 5, 5))
    message = str(info.value)
    assert message.startswith(UNSET)
    assert "'conv.weight'" in message and "(4, 3, 3, 3)" in message


def test_unset_external_name_follows_the_root_that_indexed_it():
    net = Net()
    net.external_shapes()
    with pytest.raises(UninitializedExternalError, match=r"'out\.weight'"):
        _ = net.out.weight
    with pytest.raises(UninitializedExternalError, match=r"^" + UNSET + r": 'scale'"):
        _ = net.scale


def test_unset_external_behaves_like_a_missing_attribute():
    layer = HyperLinear(3, 2)
    assert getattr(layer, "weight", "default") == "default"
    assert not hasattr(layer, "bias")
    layer.set_externals(weight=torch.ones(2, 3))
    assert hasattr(layer, "weight") and not hasattr(layer, "bias")


# -- listing -----------------------------------------------------------------------------------------


def test_external_shapes_in_model_order():
    net = Net()
    assert net.external_shapes() == {
        "scale": (2,),
        "conv.weight": (4, 3, 3, 3),
        "conv.bias": (4,),
        "out.weight": (2, 4),
        "out.bias": (2,),
    }
    assert list(net.external_shapes()) == ["scale", "conv.weight", "conv.bias", "out.weight", "out.bias"]


def test_repr_of_unset_hyper_modules():
    text = repr(Net())
    assert "(out): HyperLinear(in_features=4, out_features=2, bias=True)" in text
    assert "(conv): HyperConv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))" in text


def test_named_externals_yield_declarations():
    net = Net()
    named = dict(net.named_externals())
    assert list(named) == list(net.external_shapes())
    assert all(isinstance(ext, ExternalParameter) for ext in named.values())
    assert named["out.weight"] == ExternalParameter((2, 4))


def test_externals_are_not_parameters_nor_state():
    net = Net()
    assert list(net.parameters()) == [] and net.state_dict() == {}
    net.set_externals(net_values())
    assert list(net.parameters()) == [] and net.state_dict() == {}


# -- setting -----------------------------------------------------------------------------------------


def test_set_with_keywords_and_reset():
    layer = HyperLinear(8, 16)
    w, b = torch.randn(16, 8), torch.randn(16)
    layer.set_externals(weight=w, bias=b)
    assert layer.weight is w and layer.bias is b and layer.externals_are_set()
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), x @ w.T + b)
    layer.reset_externals()
    assert not layer.externals_are_set()
    with pytest.raises(UninitializedExternalError):
        layer(x)


def test_set_with_dict_of_dotted_names_and_keywords_together():
    net = Net()
    values = net_values()
    scale = values.pop("scale")
    net.set_externals(values, scale=scale)
    assert net.externals_are_set()
    assert net.conv.weight is values["conv.weight"] and net.scale is scale
    x = torch.randn(2, 3, 5, 5)
    h = torch.nn.functional.conv2d(x, values["conv.weight"], values["conv.bias"]).mean(dim=(2, 3))
    torch.testing.assert_close(net(x), (h @ values["out.weight"].T + values["out.bias"]) * scale)


def test_partial_sets_accumulate():
    layer = HyperLinear(3, 2)
    layer.set_externals(weight=torch.ones(2, 3))
    assert not layer.externals_are_set()
    layer.set_externals(bias=torch.zeros(2))
    assert layer.externals_are_set()


def test_set_by_attribute_assignment():
    layer = HyperLinear(3, 2, bias=False)
    w = torch.randn(2, 3)
    layer.weight = w
    assert layer.weight is w
    with pytest.raises(ValueError, match=r"shape mismatch for 'weight'"):
        layer.weight = torch.randn(3, 3)
    with pytest.raises(TypeError, match=r"'weight' is an external; to remove it use `del module.weight`"):
        layer.weight = None
    del layer.weight
    assert layer.external_shapes() == {}


def test_using_externals_sets_and_resets():
    layer = HyperLinear(3, 2)
    values = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    with layer.using_externals(values):
        assert layer.weight is values["weight"]
    assert not layer.externals_are_set()
    with layer.using_externals(**values):
        assert layer.bias is values["bias"]
    assert not layer.externals_are_set()


def test_using_externals_resets_when_the_body_raises():
    net = Net()
    with pytest.raises(RuntimeError, match="boom"):
        with net.using_externals(net_values()):
            assert net.externals_are_set()
            raise RuntimeError("boom")
    assert not net.externals_are_set()
    assert not any(m.current_externals().values for m in (net, net.conv, net.out))


def test_per_example_values_set_the_batch():
    net = Net()
    values = net_values(batch=3)
    net.set_externals(values)
    assert net.out.current_externals().plan.batch == 3 and net.current_externals().plan.batch == 3
    net.set_externals({"out.weight": torch.randn(2, 4), "out.bias": torch.randn(2)})
    assert net.out.current_externals().plan.batch is None  # shared again
    net.reset_externals()
    assert net.conv.current_externals().plan.batch is None


def hypernetized_linear():
    layer = nn.Linear(4, 3)
    return hypernetize(layer, parameters=[layer.weight])  # the bias stays a cpu parameter


SET_ERRORS = [
    (
        "unknown",
        lambda: (Net(), {"conv.kernel": torch.zeros(1)}),
        KeyError,
        r"unknown external\(s\) \['conv.kernel'\]",
    ),
    (
        "shape",
        lambda: (Net(), {"out.weight": torch.zeros(4, 2)}),
        ValueError,
        r"shape mismatch for 'out.weight': expected \(2, 4\) or \(B, \*\(2, 4\)\) per example, got \(4, 2\)",
    ),
    ("rank", lambda: (Net(), {"scale": torch.zeros(1, 1, 2)}), ValueError, r"shape mismatch for 'scale'"),
    (
        "int dtype",
        lambda: (Net(), {"out.bias": torch.zeros(2, dtype=torch.long)}),
        TypeError,
        r"dtype mismatch for 'out.bias': expected a floating-point tensor, got torch.int64",
    ),
    (
        "declared dtype",
        lambda: (HyperLinear(4, 2, dtype=torch.float64), {"weight": torch.zeros(2, 4)}),
        TypeError,
        r"dtype mismatch for 'weight': expected torch.float64, got torch.float32",
    ),
    (
        "device",
        lambda: (hypernetized_linear(), {"weight": torch.zeros(3, 4, device="meta")}),
        ValueError,
        r"device mismatch for 'weight': the module lives on cpu, the value on meta",
    ),
    (
        "batch sizes",
        lambda: (Net(), {"out.weight": torch.zeros(3, 2, 4), "out.bias": torch.zeros(5, 2)}),
        ValueError,
        r"per-example externals must share one batch size, got \{'out.weight': 3, 'out.bias': 5\}",
    ),
    (
        "not a tensor",
        lambda: (Net(), {"scale": [1.0, 2.0]}),
        TypeError,
        r"external 'scale' must be set to a torch.Tensor, got list",
    ),
]


@pytest.mark.parametrize("case, build, error, message", SET_ERRORS, ids=[c[0] for c in SET_ERRORS])
def test_set_externals_rejects(case, build, error, message):
    module, bad = build()
    good = {name: torch.zeros(shape) for name, shape in module.external_shapes().items() if name not in bad}
    if case == "declared dtype":
        good = {name: v.double() for name, v in good.items()}
    with pytest.raises(error, match=message):
        module.set_externals({**good, **bad})
    # everything is checked before anything is set
    assert not any(name in m.current_externals().values for m, name in module._index().values())


def test_set_externals_rejects_a_name_given_twice():
    layer = HyperLinear(3, 2)
    with pytest.raises(ValueError, match=r"externals given twice \(in the dict and as keywords\): \['bias'\]"):
        layer.set_externals({"bias": torch.zeros(2)}, bias=torch.zeros(2))


def test_declared_dtype_accepts_that_dtype_and_non_float_with_declaration():
    layer = HyperLinear(4, 2, dtype=torch.float64)
    layer.set_externals(weight=torch.zeros(2, 4, dtype=torch.float64), bias=torch.zeros(2, dtype=torch.float64))
    assert layer(torch.ones(1, 4, dtype=torch.float64)).dtype == torch.float64

    class Lookup(HyperModule):
        def __init__(self):
            super().__init__()
            self.index = ExternalParameter((3,), dtype=torch.long)

    lookup = Lookup()
    lookup.set_externals(index=torch.tensor([2, 0, 1]))
    assert lookup.index.tolist() == [2, 0, 1]


def test_register_external_replaces_a_parameter_and_validates():
    class Scale(HyperModule):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.gain

    m = Scale()
    m.gain = ExternalParameter((3,))
    assert "gain" not in dict(m.named_parameters()) and m.external_shapes() == {"gain": (3,)}
    with pytest.raises(KeyError, match="without dots"):
        m.register_external("a.b", ExternalParameter((1,)))
    with pytest.raises(TypeError, match="expected an ExternalParameter for 'c', got Tensor"):
        m.register_external("c", torch.zeros(1))
    with m.using_externals(gain=torch.tensor([1.0, 2.0, 3.0])):
        assert m(torch.ones(3)).tolist() == [1.0, 2.0, 3.0]


def test_declarations_changed_after_indexing_are_seen():
    layer = HyperLinear(3, 2)
    assert list(layer.external_shapes()) == ["weight", "bias"]  # indexed (and cached) here
    layer.register_external("gain", ExternalParameter((2,)))
    layer.set_externals(weight=torch.zeros(2, 3), bias=torch.zeros(2))
    assert not layer.externals_are_set()  # 'gain' is declared and still unset
    layer.set_externals(gain=torch.ones(2))
    assert layer.externals_are_set()
    del layer.weight
    with pytest.raises(
        KeyError,
        match=r"unknown external\(s\) \['weight'\]; this model's externals are "
        r"\['bias', 'gain'\]",
    ):
        layer.set_externals(weight=torch.zeros(2, 3))

    net = Net()
    net.external_shapes()
    net.extra = HyperLinear(2, 2)  # a HyperModule added after indexing
    net.set_externals(net_values())
    assert not net.externals_are_set()
    net.set_externals({"extra.weight": torch.zeros(2, 2), "extra.bias": torch.zeros(2)})
    assert net.externals_are_set()
    net.reset_externals()
    assert not net.extra.current_externals().values
