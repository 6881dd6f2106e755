"""Every example of the spec (the original HyperLight README), run on small models, plus the docstring examples
of the core and the quick-start script.

torchvision is not a dependency, so `resnet18()` is replaced by a small stand-in with the same module names
(conv1, bn1, layer1..layer4 with blocks '0' and '1' holding conv1/conv2, downsample in layer2..4, fc).
"""

import copy
import doctest
import importlib
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperlight import (
    ExternalParameter,
    HyperModule,
    Hypernet,
    find_modules_from_patterns,
    find_modules_of_type,
    find_parameters_from_patterns,
    hypernetize,
    hypernetize_single,
)

ROOT = Path(__file__).resolve().parents[1]
UNSET = "Uninitialized External Parameter, please set the value first"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """resnet18's layout at toy widths."""

    def __init__(self, widths=(4, 8, 8, 16), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, cout in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(pretrained: bool = False) -> TinyResNet:
    model = TinyResNet()
    if pretrained:  # "pretrained": trained-looking batch-norm statistics, eval mode
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.eval()
    return model


CONVS = ["conv1"] + [
    f"layer{i}.{b}.{c}"
    for i in range(1, 5)
    for b in (0, 1)
    for c in ("conv1", "conv2", "downsample.0")
    if not (c == "downsample.0" and (i == 1 or b == 1))
]


# -- Getting Started -----------------------------------------------------------------------------------------


def test_getting_started():
    # First we instantiate the main network and hyperparametrize all convolutional weights
    mainnet = resnet18()
    modules = find_modules_of_type(mainnet, [nn.Conv2d])
    assert list(modules) == CONVS

    # Replace nn.Parameter objects with ExternalParameters
    mainnet = hypernetize(mainnet, modules=modules)

    # Now, we get the spec of the weights we need to predict
    parameter_shapes = mainnet.external_shapes()
    assert list(parameter_shapes) == [f"{name}.weight" for name in CONVS]  # resnet convs have no bias
    assert parameter_shapes["layer2.0.conv1.weight"] == (8, 4, 3, 3)

    # We can predict these shapes any way we want, but hyperlight provides hypernetwork models
    hyperparam_shape = {"h": (10,)}  # 10-dim input
    hypernet = Hypernet(
        input_shapes=hyperparam_shape,
        output_shapes=parameter_shapes,
        hidden_sizes=[16, 64, 128],
    )

    # Now, instead of model(input) we first predict the main network weights
    hyperparameter_input = torch.rand(10)
    parameters = hypernet(h=hyperparameter_input)
    assert {k: tuple(v.shape) for k, v in parameters.items()} == parameter_shapes

    # and then use the main network
    input = torch.randn(2, 3, 32, 32)
    with mainnet.using_externals(parameters):
        # within this context manager, the weights are accessible
        prediction = mainnet(input)
    # after this point, weights are removed
    assert prediction.shape == (2, 10)
    assert not mainnet.externals_are_set()
    with pytest.raises(AttributeError, match=UNSET):
        mainnet(input)

    # one hyperparameter per example: a batch of weights, example b with its own (eval: batch norm per example)
    mainnet.eval()
    per_example = hypernet(h=torch.rand(2, 10))
    with mainnet.using_externals(per_example):
        batched = mainnet(input)
    with mainnet.using_externals({k: v[1] for k, v in per_example.items()}):
        torch.testing.assert_close(batched[1:], mainnet(input[1:]), atol=1e-5, rtol=0)


class HyperResNet18(nn.Module):
    """The spec's wrapped module, with its typos fixed (self.*, return the prediction)."""

    def __init__(self, hidden_sizes=(16, 64, 128)) -> None:
        super().__init__()
        mainnet = resnet18()
        modules = find_modules_of_type(mainnet, [nn.Conv2d])
        self.mainnet = hypernetize(mainnet, modules=modules)
        parameter_shapes = self.mainnet.external_shapes()
        self.hypernet = Hypernet(
            input_shapes={"h": (10,)},
            output_shapes=parameter_shapes,
            hidden_sizes=list(hidden_sizes),
        )

    def forward(self, input, hyper_input):
        parameters = self.hypernet(h=hyper_input)
        with self.mainnet.using_externals(parameters):
            prediction = self.mainnet(input)
        return prediction


class PretrainedHyperResNet18(nn.Module):
    """The spec's pretrained variant: θ0 of the hypernetwork holds the pretrained weights."""

    def __init__(self, mainnet: nn.Module, hidden_sizes=(16, 64, 128), **hypernet_kwargs) -> None:
        super().__init__()
        modules = find_modules_of_type(mainnet, [nn.Conv2d])
        self.mainnet, weights = hypernetize(mainnet, modules=modules, return_values=True)
        parameter_shapes = self.mainnet.external_shapes()
        # Construct from existing
        self.hypernet = Hypernet.from_existing(
            weights,  # The weights encode shape and initialization
            input_shapes={"h": (10,)},
            output_shapes=parameter_shapes,
            **(hypernet_kwargs or {"hidden_sizes": list(hidden_sizes)}),
        )

    def forward(self, input, hyper_input):
        parameters = self.hypernet(h=hyper_input)
        with self.mainnet.using_externals(parameters):
            prediction = self.mainnet(input)
        return prediction


def test_wrapped_module_trains_the_hypernet_only():
    model = HyperResNet18()
    assert [n for n, _ in model.hypernet.named_parameters()] == [
        "theta0",
        "backbone.0.weight",
        "backbone.0.bias",
        "backbone.2.weight",
        "backbone.2.bias",
        "backbone.4.weight",
        "backbone.4.bias",
        "backbone.6.weight",
    ]
    input, h = torch.randn(2, 3, 32, 32), torch.rand(2, 10)
    prediction = model(input, h)
    assert prediction.shape == (2, 10)
    prediction.square().mean().backward()
    for name, p in model.hypernet.named_parameters():
        assert p.grad is not None, name
    assert model.hypernet.theta0.grad.abs().sum() > 0
    # the main network's own parameters left are those of the batch norms and fc
    owners = {type(model.mainnet.get_submodule(n.rsplit(".", 1)[0])) for n, _ in model.mainnet.named_parameters()}
    assert owners == {nn.BatchNorm2d, nn.Linear}


def test_pretrained_variant_reproduces_the_pretrained_model():
    pretrained = resnet18(pretrained=True)
    model = PretrainedHyperResNet18(copy.deepcopy(pretrained)).eval()
    input = torch.randn(3, 3, 32, 32)
    expected = pretrained(input)
    for h in (torch.rand(10), torch.zeros(10), torch.ones(10)):  # shared weights: exactly the pretrained model
        assert torch.equal(model(input, h), expected)
    # per-example weights (grouped convolutions): equal up to float rounding
    torch.testing.assert_close(model(input, torch.rand(3, 10)), expected, atol=1e-5, rtol=0)


def test_spec_layer_sizes_raises_a_type_error_naming_hidden_sizes():
    with pytest.raises(TypeError, match="unexpected keyword argument 'layer_sizes'; did you mean hidden_sizes="):
        PretrainedHyperResNet18(resnet18(pretrained=True), layer_sizes=[16, 64, 128])
    with pytest.raises(TypeError, match="hidden_sizes"):
        Hypernet(input_shapes={"h": (10,)}, output_shapes={"w": (2,)}, layer_sizes=[16, 64, 128])


# -- Tutorial: defining a HyperModule with ExternalParameters -------------------------------------------------


class HyperLinear(HyperModule):
    """Layer that implements a nn.Linear layer but with external parameters
    that will be predicted by a external hypernetwork"""

    in_features: int
    out_features: int

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        assert isinstance(in_features, int) and isinstance(out_features, int)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = ExternalParameter(shape=(out_features, in_features))
        if bias:
            self.bias = ExternalParameter(shape=(out_features,))
        else:
            self.bias = None

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias)


def test_tutorial_custom_hyper_linear():
    layer = HyperLinear(in_features=8, out_features=16)
    assert layer.external_shapes() == {"weight": (16, 8), "bias": (16,)}
    x = torch.zeros(1, 8)

    # Layer cannot be used until weights are set
    with pytest.raises(AttributeError) as info:
        layer(x)
    assert str(info.value).startswith(UNSET)

    # We need to set the external weights first
    layer.set_externals(weight=torch.rand(size=(16, 8)), bias=torch.zeros((16,)))
    assert layer(x).shape == torch.Size([1, 16])

    # Once we are done, we reset the external parameter values
    layer.reset_externals()
    with pytest.raises(AttributeError, match=UNSET):
        layer(x)

    # Alternatively, the using_externals context manager sets and resets them
    params = dict(weight=torch.rand(size=(16, 8)), bias=torch.zeros((16,)))
    with layer.using_externals(params):
        y = layer(x + 1)
    assert torch.equal(y, F.linear(x + 1, params["weight"], params["bias"]))
    assert not layer.externals_are_set()

    no_bias = HyperLinear(4, 2, bias=False)
    assert no_bias.external_shapes() == {"weight": (2, 4)}
    with no_bias.using_externals(weight=torch.ones(2, 4)):
        assert no_bias(torch.ones(1, 4)).tolist() == [[4.0, 4.0]]


# -- Tutorial: dynamically hypernetizing modules -------------------------------------------------------------


def test_tutorial_hypernetize():
    layer = nn.Linear(in_features=8, out_features=16)
    layer = hypernetize(layer, parameters=[layer.weight, layer.bias])
    assert repr(layer) == "HypernetizedLinear()"
    assert layer.external_shapes() == {"weight": (16, 8), "bias": (16,)}

    single = hypernetize_single(nn.Linear(in_features=8, out_features=16), ["weight"])
    assert single.external_shapes() == {"weight": (16, 8)}

    model = nn.Sequential(
        OrderedDict(
            {
                "conv": nn.Conv2d(3, 128, 3),
                "norm": nn.BatchNorm2d(128),
                "relu": nn.ReLU(),
                "pool": nn.AdaptiveAvgPool2d((1, 1)),
                "out": nn.Linear(128, 10),
            }
        )
    )
    model = hypernetize(model, modules=[model.conv, model.out])
    assert model.external_shapes() == {
        "conv.weight": (128, 3, 3, 3),
        "conv.bias": (128,),
        "out.weight": (10, 128),
        "out.bias": (10,),
    }


# -- Tutorial: finding modules and parameters (on the resnet18 stand-in) ---------------------------------------


def test_tutorial_find_on_resnet():
    model = resnet18()
    # All convolutions
    convs = find_modules_of_type(model, [nn.Conv2d])
    assert list(convs)[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert convs["conv1"] is model.conv1 and repr(convs["conv1"]).startswith("Conv2d(3, 4, kernel_size=(7, 7)")

    # First convolution of every ResNet block
    first = find_modules_from_patterns(model, regex=[r"^layer\d.0.conv1"])
    assert list(first) == ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    assert [m.stride for m in first.values()] == [(1, 1), (2, 2), (2, 2), (2, 2)]

    # Getting just the convolutional weights of the first block (no biases)
    weights = find_parameters_from_patterns(model, globs=["layer1*conv*.weight"])
    assert sorted(weights.keys()) == sorted(
        ["layer1.0.conv2.weight", "layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer1.1.conv2.weight"]
    )
    assert list(weights) == [
        "layer1.0.conv1.weight",
        "layer1.0.conv2.weight",
        "layer1.1.conv1.weight",
        "layer1.1.conv2.weight",
    ]  # model order

    # and they feed hypernetize directly
    hyper = hypernetize(model, parameters=weights)
    assert list(hyper.external_shapes()) == list(weights)


# -- docstring examples of the core, and the quick start ------------------------------------------------------

CORE_MODULES = [
    "hyperlight.nn.external",
    "hyperlight.nn.module",
    "hyperlight.nn.layers",
    "hyperlight.hypernetize",
    "hyperlight.restore",
    "hyperlight.find",
    "hyperlight.hypernet.hypernet",
]


@pytest.mark.parametrize("name", CORE_MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or name == "hyperlight.hypernet.hypernet"


def test_quickstart_core_script():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart_core.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("hypernetized: ['0', '2'] -> {'0.weight': (8, 1, 3, 3)")
    assert any(line.startswith("at init, max |hypernetized - pretrained| = ") for line in lines)
    start, end = (float(v) for v in next(line for line in lines if line.startswith("validation loss")).split()[2::2])
    assert end < start
    assert lines[-1] == "exported a plain Sequential for h=0.5"
