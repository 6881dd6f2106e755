"""Every bad input is a named error: each HyperConfig field, condition spec, condition name and condition value is
checked where it is given, and the message names what is wrong, what was expected and what was given."""

from __future__ import annotations

import copy
import json
import pickle
import re

import pytest
import torch
from hf_models import llama

from hyperlight import HyperConfig, get_hyper_model
from hyperlight.hypernet.conditions import ConditionEncoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TASKS = {"task": {"type": "categorical", "num": 4}}
NAN, INF = float("nan"), float("inf")


def _config(**fields):
    return HyperConfig(**{"conditions": TASKS, **fields})


# -- HyperConfig fields ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, error, match",
    [
        # alpha: a finite positive number
        ({"alpha": NAN}, ValueError, r"alpha must be a finite positive number .*got nan"),
        ({"alpha": INF}, ValueError, r"alpha must be a finite positive number .*got inf"),
        ({"alpha": -INF}, ValueError, r"alpha must be a finite positive number .*got -inf"),
        ({"alpha": -2.0}, ValueError, r"alpha must be a finite positive number .*got -2.0"),
        ({"alpha": 0}, ValueError, r"alpha must be a finite positive number .*got 0"),
        ({"alpha": True}, ValueError, r"alpha must be a finite positive number .*got True"),
        ({"alpha": "16"}, ValueError, r"alpha must be a finite positive number .*got '16'"),
        # positive ints, not bool
        ({"rank": True}, ValueError, r"rank must be a positive int, got True \(a bool\); e.g. rank=8"),
        ({"rank": 4.0}, ValueError, r"rank must be a positive int, got 4.0"),
        ({"rank": -1}, ValueError, r"rank must be a positive int, got -1"),
        ({"condition_dim": 0}, ValueError, r"condition_dim must be a positive int, got 0"),
        ({"hidden_size": False}, ValueError, r"hidden_size must be a positive int, got False"),
        ({"num_layers": "2"}, ValueError, r"num_layers must be a positive int, got '2'"),
        ({"layer_embedding_dim": None}, ValueError, r"layer_embedding_dim must be a positive int, got None"),
        ({"type_embedding_dim": 1.5}, ValueError, r"type_embedding_dim must be a positive int, got 1.5"),
        # dropouts in [0, 1)
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\) .*got 1.0"),
        ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\) .*got -0.1"),
        ({"dropout": NAN}, ValueError, r"dropout must be in \[0, 1\) .*got nan"),
        ({"dropout": True}, ValueError, r"dropout must be in \[0, 1\) .*got True"),
        ({"hypernet_dropout": INF}, ValueError, r"hypernet_dropout must be in \[0, 1\) .*got inf"),
        ({"hypernet_dropout": "0.1"}, ValueError, r"hypernet_dropout must be in \[0, 1\) .*got '0.1'"),
        # choices
        ({"mode": "LoRA"}, ValueError, r"mode must be one of \['lora', 'full'\], got 'LoRA'"),
        ({"mode": ["lora"]}, ValueError, r"mode must be one of \['lora', 'full'\], got \['lora'\]"),
        ({"generator": None}, ValueError, r"generator must be one of \['shared', 'per_target'\], got None"),
        ({"share_heads": 1}, TypeError, r"share_heads must be True or False, got int 1"),
        ({"share_heads": "yes"}, TypeError, r"share_heads must be True or False, got str 'yes'"),
        (
            {"share_heads": True, "generator": "per_target"},
            ValueError,
            r"share_heads=True shares the output heads of generator='shared'; generator='per_target' has",
        ),
        # lists of strings
        (
            {"mode": "full", "target_parameters": "weight"},
            TypeError,
            r"target_parameters must be a list of str.*'weight'",
        ),
        ({"mode": "full", "target_parameters": [1]}, TypeError, r"target_parameters must be a list of non-empty str"),
        ({"mode": "full", "target_parameters": []}, ValueError, r"target_parameters is empty"),
        ({"modules_to_save": "classifier"}, TypeError, r"modules_to_save must be a list of str.*got str 'classifier'"),
        ({"modules_to_save": ["classifier", None]}, TypeError, r"modules_to_save .*whose entries \[None\] are not"),
        ({"base_model_name_or_path": 3}, TypeError, r"base_model_name_or_path must be a str .*got int 3"),
        # target_modules / exclude_modules: str (a valid regex) or list of str
        ({"target_modules": "("}, ValueError, r"target_modules='\(' is not a valid regular expression \(missing \)"),
        ({"target_modules": ""}, ValueError, r"target_modules is an empty string"),
        ({"target_modules": 5}, TypeError, r"target_modules must be a str or a list of str, got int 5"),
        ({"target_modules": ["q_proj", 5]}, TypeError, r"target_modules .*whose entries \[5\] are not"),
        ({"target_modules": None}, TypeError, r"target_modules must be a str or a list of str, got NoneType"),
        ({"exclude_modules": "[a"}, ValueError, r"exclude_modules='\[a' is not a valid regular expression \(unterm"),
        ({"exclude_modules": 5}, TypeError, r"exclude_modules must be a str or a list of str, got int 5"),
        ({"exclude_modules": {"k_proj"}}, TypeError, r"exclude_modules must be a str or a list of str, got set"),
        ({"exclude_modules": [""]}, TypeError, r"exclude_modules .*non-empty module names"),
        # layers_to_transform: an int or a list of non-negative ints, never a bool
        (
            {"layers_to_transform": True},
            TypeError,
            r"layers_to_transform must be an int or a list .*got True \(bool\)",
        ),
        ({"layers_to_transform": [0, False]}, TypeError, r"layers_to_transform .*whose entry False is not an int"),
        ({"layers_to_transform": [0, 1.0]}, TypeError, r"layers_to_transform .*whose entry 1.0 is not an int"),
        ({"layers_to_transform": "0"}, TypeError, r"layers_to_transform must be an int or a list"),
        ({"layers_to_transform": -1}, ValueError, r"layers_to_transform .*negative index -1"),
        ({"layers_to_transform": []}, ValueError, r"layers_to_transform is empty"),
        # conditions
        ({"conditions": None}, TypeError, r"conditions must name at least one condition.*got NoneType"),
        ({"conditions": ["task"]}, TypeError, r"conditions must name at least one condition.*got list"),
    ],
)
def test_bad_fields_are_named(fields, error, match):
    with pytest.raises(error, match=match):
        _config(**fields)


@pytest.mark.parametrize(
    "spec, error, match",
    [
        (
            {"type": "scalar", "range": [0, 1, 2]},
            ValueError,
            r"condition 'x' \(scalar\) needs range \[low, high\].*\[0, 1, 2\]",
        ),
        (
            {"type": "scalar", "range": "01"},
            ValueError,
            r"condition 'x' \(scalar\) needs range \[low, high\].*got '01'",
        ),
        ({"type": "scalar", "range": 5}, ValueError, r"condition 'x' \(scalar\) needs range \[low, high\].*got 5"),
        ({"type": "scalar", "range": [0, "1"]}, ValueError, r"condition 'x' \(scalar\) needs range \[low, high\]"),
        (
            {"type": "scalar", "range": [False, True]},
            ValueError,
            r"condition 'x' \(scalar\) needs range \[low, high\]",
        ),
        ({"type": "scalar", "range": [0, NAN]}, ValueError, r"condition 'x' \(scalar\) needs a finite range"),
        ({"type": "scalar", "range": [-INF, 0]}, ValueError, r"condition 'x' \(scalar\) needs a finite range"),
        (
            {"type": "scalar", "range": [0, 1e39]},
            ValueError,
            r"condition 'x' \(scalar\) needs a finite range .*float32",
        ),
        ({"type": "scalar", "range": [1, 1]}, ValueError, r"condition 'x' \(scalar\) needs .*low < high"),
        ({"type": "scalar", "range": [1.0, 1.0 + 1e-12]}, ValueError, r"low < high \(also in float32\)"),
        (
            {"type": "categorical", "num": True},
            ValueError,
            r"condition 'x' \(categorical\) needs a positive int 'num'",
        ),
        ({"type": "categorical", "num": 2.0}, ValueError, r"condition 'x' \(categorical\) needs a positive int 'num'"),
        ({"type": "vector", "dim": -3}, ValueError, r"condition 'x' \(vector\) needs a positive int 'dim', got -3"),
        ({"type": ["vector"], "dim": 3}, ValueError, r"condition 'x' must have type in"),
        ({"type": "vector", "dim": 3, 1: 2}, ValueError, r"condition 'x' has unknown fields \[1\]"),
        ("categorical", TypeError, r"condition 'x' must be a dict like"),
    ],
)
def test_bad_condition_specs_name_the_condition(spec, error, match):
    with pytest.raises(error, match=match):
        _config(conditions={"x": spec})
    with pytest.raises(error, match=match):  # the core's encoder checks the same way
        ConditionEncoder({"x": spec}, 8)


@pytest.mark.parametrize(
    "name, error, match",
    [
        ("", ValueError, r"condition name '' is not a Python identifier"),
        ("task id", ValueError, r"condition name 'task id' is not a Python identifier"),
        ("a.b", ValueError, r"condition name 'a.b' is not a Python identifier"),
        ("1task", ValueError, r"condition name '1task' is not a Python identifier"),
        ("class", ValueError, r"condition name 'class' is not a Python identifier .*not a Python keyword"),
        ("_task", ValueError, r"condition name '_task' starts with '_'"),
        ("forward", ValueError, r"condition name 'forward' is reserved: it is an attribute of torch.nn.ModuleDict"),
        ("keys", ValueError, r"condition name 'keys' is reserved"),
        (3, TypeError, r"condition names must be str, got 3 \(int\)"),
    ],
)
def test_bad_condition_names(name, error, match):
    with pytest.raises(error, match=match):
        _config(conditions={name: {"type": "categorical", "num": 2}})
    with pytest.raises(error, match=match):
        ConditionEncoder({name: {"type": "categorical", "num": 2}}, 8)


def test_encoder_arguments_are_checked():
    with pytest.raises(TypeError, match=r"conditions must be a dict of \{name: spec\}"):
        ConditionEncoder([("task", TASKS["task"])], 8)
    with pytest.raises(ValueError, match=r"embedding_dim must be a positive int, got True"):
        ConditionEncoder(TASKS, True)


def test_assignment_is_checked_and_a_refused_value_changes_nothing():
    config = _config(rank=4)
    with pytest.raises(ValueError, match=r"rank must be a positive int, got 0"):
        config.rank = 0
    with pytest.raises(ValueError, match=r"alpha must be a finite positive number"):
        config.alpha = NAN
    with pytest.raises(ValueError, match=r"target_modules='\(' is not a valid regular expression"):
        config.target_modules = "("
    assert config == _config(rank=4)
    config.rank = 2
    assert config.rank == 2 and config.scaling == 4.0
    assert copy.deepcopy(config) == config and pickle.loads(pickle.dumps(config)) == config


def test_combinations_changed_after_construction_are_checked_before_the_model_changes():
    model = llama()
    before = copy.deepcopy(model.state_dict())
    config = _config(target_modules=["q_proj"], dropout=0.1)
    config.mode = "full"  # each field on its own is fine; together they are not
    with pytest.raises(ValueError, match=r"no meaning in mode='full'"):
        get_hyper_model(model, config)
    config.conditions["bad name"] = {"type": "scalar"}  # changed in place, past the assignment check
    config.mode, config.dropout = "lora", 0.0
    with pytest.raises(ValueError, match=r"condition name 'bad name' is not a Python identifier"):
        get_hyper_model(model, config)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_a_rejected_config_leaves_the_given_objects_as_they_were():
    conditions = {"task": {"type": "categorical", "num": 4}, "x": {"type": "scalar", "range": [0, 1, 2]}}
    targets, layers = ["q_proj", "v_proj"], [0, 1]
    given = copy.deepcopy((conditions, targets, layers))
    with pytest.raises(ValueError, match=r"condition 'x' \(scalar\) needs range"):
        HyperConfig(target_modules=targets, conditions=conditions, layers_to_transform=layers)
    assert (conditions, targets, layers) == given
    # and an accepted one keeps copies, not the caller's lists
    del conditions["x"]
    config = HyperConfig(target_modules=targets, conditions=conditions, layers_to_transform=layers)
    targets.append("k_proj")
    layers.append(7)
    conditions["task"]["num"] = 9
    assert config.target_modules == ["q_proj", "v_proj"] and config.layers_to_transform == [0, 1]
    assert config.conditions == TASKS


def test_numpy_style_numbers_are_accepted_and_stored_as_plain_python():
    np = pytest.importorskip("numpy")
    config = _config(
        rank=np.int64(4), alpha=np.float32(8.0), layers_to_transform=[np.int32(1)], dropout=np.float64(0.1)
    )
    assert (config.rank, config.alpha, config.layers_to_transform, config.dropout) == (4, 8.0, [1], 0.1)
    assert type(config.rank) is int and type(config.alpha) is float and type(config.layers_to_transform[0]) is int
    json.dumps(config.to_dict())


# -- the model: selection and condition names ----------------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    return llama()


@pytest.mark.parametrize(
    "fields, error, match",
    [
        (
            {"layers_to_transform": [1, 5]},
            ValueError,
            r"layers_to_transform=\[1, 5\] names layer\(s\) \[5\] that the model does not have; "
            r"its layer indices are \[0, 1\]",
        ),
        ({"layers_to_transform": 2}, ValueError, r"names layer\(s\) \[2\] .*its layer indices are \[0, 1\]"),
        (
            {"conditions": {"max_new_tokens": {"type": "scalar", "range": [1, 64]}}},
            ValueError,
            r"condition name\(s\) \['max_new_tokens'\] collide with arguments of LlamaForCausalLM.generate",
        ),
        ({"conditions": {"num_beams": TASKS["task"]}}, ValueError, r"\['num_beams'\] collide with .*\.generate"),
        ({"conditions": {"do_sample": TASKS["task"]}}, ValueError, r"\['do_sample'\] collide with .*\.generate"),
        ({"conditions": {"streamer": TASKS["task"]}}, ValueError, r"\['streamer'\] collide with .*\.generate"),
        ({"conditions": {"generation_config": TASKS["task"]}}, ValueError, r"collide with .*\.generate"),
        ({"conditions": {"temperature": TASKS["task"]}}, ValueError, r"\['temperature'\] collide with .*\.generate"),
        ({"conditions": {"labels": TASKS["task"]}}, ValueError, r"\['labels'\] collide with .*\.forward"),
        ({"conditions": {"self": TASKS["task"]}}, ValueError, r"\['self'\] collide with .*\.forward"),
        ({"conditions": {"kwargs": TASKS["task"]}}, ValueError, r"\['kwargs'\] collide with .*\.forward"),
        # the keys of forward's typed **kwargs (Trainer passes num_items_in_batch) are arguments too
        (
            {"conditions": {"num_items_in_batch": TASKS["task"]}},
            ValueError,
            r"collide with .*LlamaForCausalLM\.forward",
        ),
    ],
)
def test_bad_selections_and_names_leave_the_model_untouched(base, fields, error, match):
    before = {n: type(m) for n, m in base.named_modules()}
    grads = [p.requires_grad for p in base.parameters()]
    with pytest.raises(error, match=match):
        get_hyper_model(base, _config(target_modules=["q_proj"], **fields))
    assert {n: type(m) for n, m in base.named_modules()} == before
    assert [p.requires_grad for p in base.parameters()] == grads


def test_a_model_without_generate_takes_generation_names_as_conditions():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    hyper = get_hyper_model(model, _config(target_modules=["0"], conditions={"max_new_tokens": TASKS["task"]}))
    assert hyper(torch.ones(2, 4), max_new_tokens=torch.tensor([0, 1])).shape == (2, 4)


def test_exclude_modules_takes_the_same_forms_as_target_modules(base):
    """Presets and "all-linear" exclude too (a preset name is not taken as a literal regex that matches nothing)."""
    names = _config(target_modules="attention+mlp", exclude_modules="mlp", layers_to_transform=0).matched_modules(base)
    assert names == [f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"]
    with pytest.raises(ValueError, match=r"matched no module .*after exclude_modules='all-linear'"):
        _config(target_modules="attention", exclude_modules="all-linear").matched_modules(base)
    with pytest.raises(ValueError, match=r"no 'mlp' preset for model_type None.*Give exclude_modules as a regex"):
        _config(target_modules=["0"], exclude_modules="mlp").matched_modules(
            torch.nn.Sequential(torch.nn.Linear(2, 2))
        )


def test_layers_on_a_model_without_numbered_layers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"names layer\(s\) \[0\] .*it has no numbered layers"):
        _config(target_modules=["0"], layers_to_transform=0).matched_modules(model)


# -- condition values at call time ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hyper():
    return get_hyper_model(
        llama(),
        HyperConfig(
            target_modules=["q_proj"],
            conditions={
                "task": {"type": "categorical", "num": 4},
                "desc": {"type": "vector", "dim": 3},
                "temp": {"type": "scalar", "range": [0.0, 0.1]},
                "mix": {"type": "scalar", "range": [-0.3, 0.7]},
            },
        ),
    )


GOOD = {"task": torch.tensor([0, 1]), "desc": torch.zeros(2, 3), "temp": torch.tensor([0.0, 0.05]), "mix": 0.2}
IDS = torch.arange(3, 11).reshape(2, 4)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            {"task": None},
            TypeError,
            r"condition 'task' is categorical: expected integer ids \(a tensor, list or int\), got None$",
        ),
        ({"task": "0"}, TypeError, r"condition 'task' is categorical: expected integer ids .*got str '0'"),
        ({"task": b"0"}, TypeError, r"condition 'task' is categorical: expected integer ids .*got bytes"),
        (
            {"task": [0, None]},
            TypeError,
            r"condition 'task' is categorical: expected integer ids .*got list \[0, None\]",
        ),
        ({"task": {"id": 0}}, TypeError, r"condition 'task' is categorical: expected integer ids .*got dict"),
        ({"task": object()}, TypeError, r"condition 'task' is categorical: expected integer ids .*got object"),
        ({"task": 1.0}, TypeError, r"condition 'task' is categorical: expected integer ids, got dtype torch.float32"),
        ({"desc": None}, TypeError, r"condition 'desc' is a vector of dim 3: expected numbers .*got None"),
        ({"desc": "abc"}, TypeError, r"condition 'desc' is a vector of dim 3: expected numbers .*got str 'abc'"),
        ({"desc": [[1, 2, 3], [1, 2]]}, TypeError, r"condition 'desc' is a vector of dim 3: expected numbers"),
        ({"desc": torch.ones(2, 3, dtype=torch.bool)}, TypeError, r"condition 'desc' is a vector .*got torch.bool"),
        ({"temp": None}, TypeError, r"condition 'temp' is a scalar: expected numbers .*got None"),
        ({"temp": "0.05"}, TypeError, r"condition 'temp' is a scalar: expected numbers .*got str '0.05'"),
        ({"temp": [True, False]}, TypeError, r"condition 'temp' is a scalar: expected real numbers .*got torch.bool"),
        ({"temp": 1j}, TypeError, r"condition 'temp' is a scalar: expected real numbers .*got torch.complex64"),
        ({"temp": torch.tensor([0.0, NAN])}, ValueError, r"condition 'temp' out of range"),
        ({"temp": 0.1001}, ValueError, r"condition 'temp' out of range: expected values in \[0.0, 0.1\]"),
        ({"mix": -0.30001}, ValueError, r"condition 'mix' out of range: expected values in \[-0.3, 0.7\]"),
        (
            {"task": torch.zeros(2, dtype=torch.long, device="meta")},
            ValueError,
            r"condition 'task' is on device meta and the model on cpu; .*\.to\('cpu'\)",
        ),
        (
            {"temp": torch.zeros(2, device="meta")},
            ValueError,
            r"condition 'temp' is on device meta and the model on cpu",
        ),
    ],
)
def test_bad_condition_values_name_the_condition(hyper, change, error, match):
    with pytest.raises(error, match=match):
        hyper(input_ids=IDS, **{**GOOD, **change})


@pytest.mark.parametrize(
    "name, value",
    [
        ("temp", 0.0),
        ("temp", 0.1),
        ("temp", [0.1, 0.0]),
        ("temp", torch.tensor([0.1, 0.0], dtype=torch.float64)),
        ("temp", torch.tensor(0.1, dtype=torch.float16)),  # rounds to 0.0999755859375: inside
        ("mix", -0.3),
        ("mix", 0.7),
        ("mix", [-0.3, 0.7]),
        ("mix", torch.tensor([0.7, -0.3], dtype=torch.float64)),
    ],
)
def test_a_scalar_range_is_inclusive_at_both_ends(hyper, name, value):
    """Ranges are inclusive for values that round-trip through float32 (0.1 is 0.10000000149 there)."""
    with torch.no_grad():
        hyper(input_ids=IDS, **{**GOOD, name: value})


def test_generate_weights_checks_batch_size(hyper):
    with pytest.raises(ValueError, match=r"batch_size must be None or a non-negative int, got '2'"):
        hyper.generate_weights(batch_size="2", **GOOD)


# -- HyperConfig.from_dict / from_json_file ------------------------------------------------------------------

FIELDS = {"conditions": TASKS, "rank": 4}


@pytest.mark.parametrize(
    "data, error, match",
    [
        ([FIELDS], TypeError, r"HyperConfig.from_dict needs a dict of config fields like .*got list"),
        ("rank=4", TypeError, r"HyperConfig.from_dict needs a dict of config fields like .*got str 'rank=4'"),
        (None, TypeError, r"HyperConfig.from_dict needs a dict of config fields"),
        (
            {**FIELDS, "lora_rank": 8, "foo": 1},
            ValueError,
            r"unknown HyperConfig field\(s\) \['foo', 'lora_rank'\]; known fields are \['alpha', ",
        ),
        (
            {**FIELDS, "hyperlight": 3},
            TypeError,
            r"the 'hyperlight' entry of a config is the provenance block .*got int 3",
        ),
        ({**FIELDS, "hyperlight": None}, TypeError, r"the 'hyperlight' entry .*got NoneType"),
        ({**FIELDS, "rank": "4"}, ValueError, r"rank must be a positive int, got '4'"),
    ],
)
def test_from_dict_names_what_is_wrong(data, error, match):
    given = copy.deepcopy(data)
    with pytest.raises(error, match=match):
        HyperConfig.from_dict(data)
    assert data == given


def test_from_dict_ignores_a_provenance_block_and_leaves_the_dict_alone():
    data = {**FIELDS, "hyperlight": {"model_type": "llama"}}
    assert HyperConfig.from_dict(data) == HyperConfig(**FIELDS)
    assert "hyperlight" in data


@pytest.mark.parametrize(
    "text, error, match",
    [
        (json.dumps([FIELDS]), TypeError, r"holds an array, not an object; a HyperConfig JSON file holds one object"),
        (json.dumps("rank=4"), TypeError, r"holds a string, not an object"),
        ("4", TypeError, r"holds a number, not an object"),
        ("null", TypeError, r"holds null, not an object"),
        ("{nope", ValueError, r"is not valid UTF-8 JSON \(Expecting property name"),
        (b"\xff\xfe{}", ValueError, r"is not valid UTF-8 JSON"),
        (json.dumps({**FIELDS, "foo": 1}), ValueError, r"c.json: unknown HyperConfig field\(s\) \['foo'\]; known"),
        (json.dumps({**FIELDS, "hyperlight": [1]}), TypeError, r"c.json: the 'hyperlight' entry .*got list"),
        (json.dumps({**FIELDS, "alpha": NAN}), ValueError, r"c.json: alpha must be a finite positive number"),
        (json.dumps({**FIELDS, "conditions": {"": {"type": "scalar"}}}), ValueError, r"c.json: condition name ''"),
    ],
)
def test_from_json_file_names_the_file_and_what_is_wrong(tmp_path, text, error, match):
    path = tmp_path / "c.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(error, match=match) as caught:
        HyperConfig.from_json_file(path)
    assert str(path) in str(caught.value)


def test_a_saved_config_record_with_provenance_round_trips(tmp_path):
    config = HyperConfig(**FIELDS, layers_to_transform=[0], exclude_modules=r".*\.1\..*")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**config.to_dict(), "hyperlight": {"model_type": "llama"}}))
    assert HyperConfig.from_json_file(path) == config


def test_messages_stay_readable():
    """A long bad value is shortened in the message, not dumped whole."""
    with pytest.raises(TypeError) as caught:
        HyperConfig.from_dict(list(range(1000)))
    assert len(str(caught.value)) < 300 and re.search(r"got list \[0, 1, 2", str(caught.value))
