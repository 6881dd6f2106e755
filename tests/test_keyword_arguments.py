"""A keyword argument that is neither a condition nor taken by the base model is a typo: refused with a TypeError
that names it (and the condition it is close to), never ignored. Everything the base model really takes still
passes, with the same result as the base model given it."""

from __future__ import annotations

import functools
import types

import pytest
import torch
from hf_models import bert_classifier, gpt2, llama
from torch import nn

from hyperlight import HyperConfig, get_hyper_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TASKS = {"task": {"type": "categorical", "num": 4}}
IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])


def _hyper(build=llama, conditions=TASKS, targets=r".*\.(q_proj|v_proj)"):
    torch.manual_seed(0)
    return get_hyper_model(build(), HyperConfig(target_modules=targets, conditions=conditions, rank=4)).eval()


@pytest.mark.parametrize(
    "extra, match",
    [
        (
            {"tsk": 1},
            r"unexpected keyword argument\(s\) \['tsk'\]: .* nor an argument of LlamaForCausalLM.forward; "
            r"did you mean 'task'\?",
        ),
        (
            {"other": 1},
            r"unexpected keyword argument\(s\) \['other'\]: neither a condition of this hyper model "
            r"\(task \(categorical\)\)",
        ),
        ({"input_id": IDS}, r"\['input_id'\]"),
        ({"atention_mask": torch.ones_like(IDS)}, r"\['atention_mask'\]"),
    ],
)
def test_typos_are_refused_on_a_model_whose_forward_takes_typed_kwargs(extra, match):
    hyper = _hyper()
    with pytest.raises(TypeError, match=match):
        hyper(input_ids=IDS, task=torch.tensor([0, 1]), **extra)


def test_a_misspelled_optional_condition_is_refused_not_taken_as_the_baseline():
    hyper = _hyper(conditions={"task": {"type": "categorical", "num": 1}, "lang": {"type": "categorical", "num": 3}})
    with pytest.raises(TypeError, match=r"\['tsak'\].*did you mean 'task'\?"):
        hyper(input_ids=IDS, lang=1, tsak=0)


def test_typos_are_refused_on_gpt2_whose_forward_takes_untyped_kwargs():
    hyper = _hyper(gpt2, targets=r".*\.c_attn")
    with pytest.raises(TypeError, match=r"\['tsk'\].*GPT2LMHeadModel.forward; did you mean 'task'"):
        hyper(input_ids=IDS, task=0, tsk=1)


@pytest.mark.parametrize(
    "build, targets, extra",
    [
        (llama, r".*\.(q_proj|v_proj)", {"token_type_ids": torch.zeros_like(IDS)}),  # a tokenizer's output
        (llama, r".*\.(q_proj|v_proj)", {"output_hidden_states": True, "return_dict": True, "use_cache": False}),
        (llama, r".*\.(q_proj|v_proj)", {"position_ids": torch.arange(4).expand(2, 4)}),
        (bert_classifier, r".*\.(query|value)", {"token_type_ids": torch.ones_like(IDS)}),
        (gpt2, r".*\.c_attn", {"output_attentions": True}),
    ],
    ids=["llama-token-type-ids", "llama-output-flags", "llama-position-ids", "bert-token-type-ids", "gpt2-outputs"],
)
def test_what_the_base_takes_still_passes_and_means_the_same(build, targets, extra):
    hyper = _hyper(build, targets=targets)
    with torch.no_grad():
        given = hyper(input_ids=IDS, task=0, **extra)
        with hyper.conditioned(task=0):
            expected = hyper.get_base_model()(input_ids=IDS, **extra)
    first = "logits" if hasattr(given, "logits") else "last_hidden_state"
    torch.testing.assert_close(given[first], expected[first], rtol=0, atol=0)


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.seen: dict = {}

    def forward(self, x, **kwargs):
        self.seen = kwargs
        return self.proj(x)


class _Strict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x, scale=1.0):
        return self.proj(x) * scale


def test_a_plain_model_with_untyped_kwargs_gets_them_and_one_without_refuses_typos():
    torch.manual_seed(0)
    plain = get_hyper_model(_Plain(), HyperConfig(target_modules=["proj"], conditions=TASKS, rank=2))
    plain(torch.randn(2, 4), task=0, anything=3)  # its forward may mean to take anything: it gets it
    assert plain.get_base_model().seen == {"anything": 3}
    strict = get_hyper_model(_Strict(), HyperConfig(target_modules=["proj"], conditions=TASKS, rank=2))
    strict(torch.randn(2, 4), task=0, scale=2.0)
    with pytest.raises(TypeError, match=r"\['scal'\].*_Strict.forward"):
        strict(torch.randn(2, 4), task=0, scal=2.0)


def test_a_forward_a_library_replaced_takes_its_own_keywords():
    """TRL's fused LM head replaces the instance's forward with a wrapper (functools.wraps, which copies the
    wrapped signature) that takes keywords of its own; they pass, and typos are still refused."""
    hyper = _hyper()
    original = hyper.forward

    @functools.wraps(type(hyper).forward)
    def replaced(self, *args, scale_logits=1.0, **kwargs):
        output = original(*args, **kwargs)
        output.logits = output.logits * scale_logits
        return output

    hyper.forward = types.MethodType(replaced, hyper)
    with torch.no_grad():
        doubled = hyper(input_ids=IDS, task=1, scale_logits=2.0).logits
        del hyper.forward
        plain = hyper(input_ids=IDS, task=1).logits
    torch.testing.assert_close(doubled, 2 * plain)
    hyper.forward = types.MethodType(replaced, hyper)
    with pytest.raises(TypeError, match=r"\['scale_logit'\]"):
        hyper(input_ids=IDS, task=1, scale_logit=2.0)


def test_what_the_loss_and_a_tokenizer_pass_through_kwargs_is_taken():
    """`shift_labels` changes the loss (Trainer adds it under context parallelism); a tokenizer's extra outputs are
    ignored by the base, as without a hyper model."""
    hyper = _hyper()
    labels = IDS.clone()
    shifted = torch.full_like(IDS, -100)
    shifted[:, :2] = IDS[:, 1:3]
    with torch.no_grad():
        plain = hyper(input_ids=IDS, labels=labels, task=0).loss
        given = hyper(input_ids=IDS, labels=labels, shift_labels=shifted, task=0).loss
        extras = dict(special_tokens_mask=torch.zeros_like(IDS), offset_mapping=torch.zeros(2, 4, 2), length=[4, 4])
        torch.testing.assert_close(hyper(input_ids=IDS, task=0, **extras).logits, hyper(input_ids=IDS, task=0).logits)
    assert not torch.allclose(plain, given)
