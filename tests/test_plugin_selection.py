"""Target selection (PEFT semantics, presets) and every bad input of the plug-in, with its message."""

from __future__ import annotations

import pytest
import torch
from hf_models import CASES, bert_classifier, gpt2, hyper_config, llama, t5

from hyperlight import HyperConfig, get_hyper_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TASKS = {"task": {"type": "categorical", "num": 4}}


def _matched(model, **config):
    return HyperConfig(conditions=TASKS, **config).matched_modules(model)


@pytest.mark.parametrize(
    "factory, config, expected",
    [
        # a string is re.fullmatch on the dotted name
        (
            llama,
            {"target_modules": r".*\.q_proj"},
            ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"],
        ),
        (llama, {"target_modules": r"q_proj"}, None),  # fullmatch: a bare leaf matches nothing
        # a list matches exact names or ".suffix"
        (
            llama,
            {"target_modules": ["v_proj"]},
            ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"],
        ),
        (llama, {"target_modules": ["model.layers.1.mlp.up_proj"]}, ["model.layers.1.mlp.up_proj"]),
        (llama, {"target_modules": ["proj"]}, None),  # no partial-leaf matches
        # layers_to_transform and exclude_modules
        (
            llama,
            {"target_modules": ["q_proj", "k_proj"], "layers_to_transform": [1]},
            ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"],
        ),
        (
            llama,
            {"target_modules": ["q_proj", "k_proj"], "exclude_modules": ["k_proj"]},
            ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"],
        ),
        # presets per architecture
        (
            llama,
            {"target_modules": "mlp", "layers_to_transform": 0},
            ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
        ),
        (
            gpt2,
            {"target_modules": "attention", "layers_to_transform": 0},
            ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"],
        ),
        (
            gpt2,
            {"target_modules": "mlp", "layers_to_transform": 1},
            ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"],
        ),
        (
            bert_classifier,
            {"target_modules": "mlp", "layers_to_transform": 0},
            ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"],
        ),
        (
            bert_classifier,
            {"target_modules": "attention", "layers_to_transform": 1},
            [
                "bert.encoder.layer.1.attention.self.query",
                "bert.encoder.layer.1.attention.self.key",
                "bert.encoder.layer.1.attention.self.value",
                "bert.encoder.layer.1.attention.output.dense",
            ],
        ),
        (
            t5,
            {"target_modules": "attention", "layers_to_transform": 1, "exclude_modules": r"encoder\..*"},
            [
                f"decoder.block.1.layer.{i}.{a}.{p}"
                for i, a in ((0, "SelfAttention"), (1, "EncDecAttention"))
                for p in "qkvo"
            ],
        ),
    ],
)
def test_selection_semantics(factory, config, expected):
    model = factory()
    if expected is None:
        with pytest.raises(ValueError, match="matched no module"):
            _matched(model, **config)
    else:
        assert _matched(model, **config) == expected


def test_all_linear_skips_the_output_head():
    model = llama()
    names = _matched(model, target_modules="all-linear")
    assert "lm_head" not in names and len(names) == 2 * 7
    model = bert_classifier()
    names = _matched(model, target_modules="all-linear")
    assert "classifier" not in names and "bert.pooler.dense" in names


def test_no_match_lists_near_candidates():
    with pytest.raises(ValueError, match=r"matched no module.*Near candidates: \[.*'q_proj'.*\]"):
        _matched(llama(), target_modules=["q_prj"])


def test_lora_on_a_non_linear_module_is_refused_with_the_way_out():
    with pytest.raises(TypeError, match=r"mode='lora' needs linear-like target modules.*LlamaRMSNorm.*mode='full'"):
        get_hyper_model(llama(), HyperConfig(target_modules=r".*input_layernorm", conditions=TASKS))


def test_preset_for_an_unknown_architecture():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"no 'attention' preset for model_type None"):
        _matched(model, target_modules="attention")


def test_a_base_model_cannot_be_wrapped_twice():
    model = llama()
    get_hyper_model(model, hyper_config(CASES[0]))
    with pytest.raises(ValueError, match="already has externals"):
        get_hyper_model(model, hyper_config(CASES[0]))


@pytest.fixture(scope="module")
def hyper():
    return get_hyper_model(
        llama(),
        HyperConfig(
            target_modules=["q_proj"],
            conditions={
                "task": {"type": "categorical", "num": 4},
                "desc": {"type": "vector", "dim": 3},
                "temp": {"type": "scalar", "range": [0.0, 2.0]},
            },
        ),
    )


GOOD = {"task": torch.tensor([0, 1]), "desc": torch.zeros(2, 3), "temp": torch.tensor([0.5, 1.5])}


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"task": None}, TypeError, r"missing condition\(s\) \['task'\]; this model takes task \(categorical\)"),
        (
            {"task": torch.tensor([0, 4])},
            ValueError,
            r"condition 'task' out of range: expected ids in \[0, 4\), got \[0, 4\]",
        ),
        ({"task": torch.tensor([-1, 0])}, ValueError, r"condition 'task' out of range"),
        ({"task": torch.tensor([0.0, 1.0])}, TypeError, "condition 'task' is categorical: expected integer ids"),
        ({"task": torch.tensor([0, 1, 2])}, ValueError, r"condition 'task' has 3 values but the input batch has 2"),
        ({"desc": torch.zeros(2, 4)}, ValueError, r"condition 'desc' is a vector of dim 3: expected shape \(B, 3\)"),
        ({"desc": torch.full((2, 3), float("nan"))}, ValueError, "condition 'desc' holds non-finite values"),
        (
            {"temp": torch.tensor([0.5, 2.5])},
            ValueError,
            r"condition 'temp' out of range: expected values in \[0.0, 2.0\]",
        ),
        ({"temp": torch.zeros(2, 2)}, ValueError, r"condition 'temp' is a scalar: expected shape \(B,\)"),
    ],
)
def test_bad_conditions_name_the_condition(hyper, change, error, match):
    conditions = {**GOOD, **change}
    conditions = {k: v for k, v in conditions.items() if v is not None}
    with pytest.raises(error, match=match):
        hyper(input_ids=torch.randint(3, 90, (2, 4)), **conditions)


def test_one_value_broadcasts_to_the_batch(hyper):
    ids = torch.randint(3, 90, (2, 4))
    one = {"task": 3, "desc": torch.ones(3), "temp": 1.0}
    many = {"task": torch.tensor([3, 3]), "desc": torch.ones(2, 3), "temp": torch.tensor([1.0, 1.0])}
    with torch.no_grad():
        torch.testing.assert_close(hyper(input_ids=ids, **one).logits, hyper(input_ids=ids, **many).logits)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"target_modules": ["nothing_here"]}, "matched no module"),
        ({"modules_to_save": ["head"]}, r"modules_to_save \['head'\] matched no module"),
        ({"modules_to_save": ["layers"]}, "hold targets and are in modules_to_save"),
        ({"conditions": {"labels": {"type": "categorical", "num": 2}}}, "collide with arguments"),
        ({"target_modules": ["q_proj"], "mode": "full", "target_parameters": ["bias"]}, "matched no parameter"),
    ],
)
def test_a_rejected_config_leaves_the_model_untouched(overrides, match):
    model = llama()
    before = {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)]) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match=match):
        get_hyper_model(model, hyper_config(CASES[0], **overrides))
    after = {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)]) for n, m in model.named_modules()}
    assert after == before


def test_full_mode_refuses_to_untie_tied_weights():
    model = gpt2()  # GPT-2 ties lm_head.weight to transformer.wte.weight
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ValueError, match=r"'lm_head.weight' is tied to \['transformer.wte.weight'\]"):
        get_hyper_model(model, HyperConfig(target_modules=["lm_head"], mode="full", conditions=TASKS))
    # both sides selected: each would get its own generated tensor inside the call, so it is refused too
    with pytest.raises(ValueError, match=r"'transformer.wte.weight' is tied to \['lm_head.weight'\]"):
        get_hyper_model(model, HyperConfig(target_modules=["wte", "lm_head"], mode="full", conditions=TASKS))
    assert model.lm_head.weight is model.transformer.wte.weight  # untouched, trainable as before
    assert all(p.requires_grad for p in model.parameters())
