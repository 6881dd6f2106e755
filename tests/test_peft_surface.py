"""What a PEFT user reaches for first: keyword arguments as the base model takes them, disable_adapter,
parameter counts as PEFT reports them, errors that name the hyper model."""

from __future__ import annotations

import pytest
import torch
from hf_models import CASES, hyper_config
from torch import nn

from hyperlight import HyperConfig, get_hyper_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
LLAMA = CASES[0]
TASKS = {"task": {"type": "categorical", "num": 4}}


def _hyper(case=LLAMA, **overrides):
    torch.manual_seed(0)
    hyper = get_hyper_model(case.build(), hyper_config(case, **overrides))
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hyper.eval()


def test_keywords_pass_through_as_the_base_model_takes_them():
    hyper, plain = _hyper(), LLAMA.build().eval()
    inputs = LLAMA.inputs(2)
    tokenizer_output = {**inputs, "token_type_ids": torch.zeros_like(inputs["input_ids"])}  # as a BERT tokenizer gives
    with torch.no_grad():
        assert torch.equal(plain(**tokenizer_output).logits, plain(**inputs).logits)  # Llama takes and ignores it
        got = hyper(**tokenizer_output, task=torch.tensor([1, 2])).logits
        assert torch.equal(got, hyper(**inputs, task=torch.tensor([1, 2])).logits)


def test_a_base_without_var_keywords_refuses_unknown_keywords_naming_the_hyper_model():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    hyper = get_hyper_model(mlp, HyperConfig(target_modules=["0"], conditions=TASKS, rank=2))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['lang'\]: neither a condition"):
        hyper(torch.randn(2, 4), task=torch.tensor([0, 1]), lang=torch.tensor([0, 1]))


@pytest.mark.parametrize("name", ["llama", "llama-full"])
def test_disable_adapter_runs_the_pretrained_model_exactly(name):
    case = next(c for c in CASES if c.name == name)
    hyper, plain = _hyper(case), case.build().eval()
    inputs = case.inputs(2)
    with torch.no_grad():
        conditioned = hyper(**inputs, task=torch.tensor([1, 3])).logits
        want = plain(**inputs).logits
        assert not torch.equal(conditioned, want)
        with hyper.disable_adapter():
            assert torch.equal(hyper(**inputs).logits, want)  # no condition needed
            assert torch.equal(hyper(**inputs, task=torch.tensor([1, 3])).logits, want)  # given ones are ignored
            greedy = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0}
            assert torch.equal(hyper.generate(**inputs, **greedy), plain.generate(**inputs, **greedy))
            with hyper.conditioned(task=torch.tensor([1, 3])):  # a nested block conditions again
                assert torch.equal(hyper.get_base_model()(**inputs).logits, conditioned)
        assert torch.equal(hyper(**inputs, task=torch.tensor([1, 3])).logits, conditioned)


def test_disable_adapter_gives_the_reference_gradient_path_of_dpo():
    hyper = _hyper().train()
    inputs = LLAMA.inputs(2)
    with hyper.disable_adapter(), torch.no_grad():
        reference = hyper(**inputs, labels=inputs["input_ids"]).loss  # TRL computes reference log-probs like this
    loss = hyper(**inputs, labels=inputs["input_ids"], task=torch.tensor([0, 1])).loss - reference
    loss.backward()
    assert all(p.grad is not None for p in hyper.generator.parameters())


def test_disable_adapter_refuses_modules_to_save_it_cannot_restore():
    case = next(c for c in CASES if c.name == "bert")
    hyper = _hyper(case)
    with pytest.raises(
        NotImplementedError, match=r"disable_adapter\(\) cannot give back the pretrained \['classifier'\]"
    ):
        with hyper.disable_adapter():
            pass


def test_parameter_counts_match_peft_and_the_module():
    hyper = _hyper()
    trainable, total = hyper.get_nb_trainable_parameters()
    assert trainable == sum(p.numel() for p in hyper.generator.parameters()) + sum(
        p.numel() for p in hyper.condition_encoder.parameters()
    )
    assert total == sum(p.numel() for p in hyper.parameters())


def test_missing_attributes_name_the_hyper_model():
    hyper = _hyper()
    assert hyper.config is hyper.get_base_model().config  # looked up on the base model
    with pytest.raises(
        AttributeError, match=r"'HyperLlamaForCausalLM' object \(a hyper model around LlamaForCausalLM\)"
    ):
        _ = hyper.no_such_thing
