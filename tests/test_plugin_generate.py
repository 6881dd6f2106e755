"""`generate` with per-example conditions equals per-example runs: greedy, sampling, beams,
num_return_sequences, encoder-decoder."""

from __future__ import annotations

import pytest
import torch
from hf_models import CASES, Case, hyper_config
from test_plugin import _train

from hyperlight import HyperModel, get_hyper_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
GENERATIVE = [c for c in CASES if c.name in ("llama", "gpt2", "t5", "llama-full")]


@pytest.fixture(scope="module")
def hypers():
    cache: dict[str, HyperModel] = {}

    def get(case: Case) -> HyperModel:
        if case.name not in cache:
            hyper = get_hyper_model(case.build(), hyper_config(case))
            _train(hyper, case, steps=6, lr=5e-2)
            cache[case.name] = hyper
        return cache[case.name]

    return get


def _prompt(case: Case, batch: int) -> dict[str, torch.Tensor]:
    inputs = case.inputs(batch, seq=5, seed=7)
    inputs.pop("decoder_input_ids", None)
    return inputs


def _rows(inputs: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i : i + 1] for k, v in inputs.items()}


@pytest.mark.parametrize(
    "settings",
    [
        {"do_sample": False},
        {"do_sample": False, "num_beams": 3},
        {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
    ],
    ids=["greedy", "beam", "beam+num_return_sequences"],
)
@pytest.mark.parametrize("case", GENERATIVE, ids=repr)
def test_deterministic_generate_equals_per_example_runs(case: Case, settings, hypers):
    hyper = hypers(case)
    inputs = _prompt(case, 3)
    task = torch.tensor([0, 3, 1])
    common = {"max_new_tokens": 6, "min_new_tokens": 6, "pad_token_id": 0, **settings}
    batch = hyper.generate(**inputs, task=task, **common)
    k = settings.get("num_return_sequences", 1)
    for i in range(3):
        alone = hyper.generate(**_rows(inputs, i), task=task[i : i + 1], **common)
        assert torch.equal(batch[i * k : (i + 1) * k], alone), f"row {i} differs"
    # and the conditions matter: another task changes the scores
    scores = {"output_logits": True, "return_dict_in_generate": True}
    mine = hyper.generate(**inputs, task=task, **common, **scores).logits[0]
    other = hyper.generate(**inputs, task=torch.tensor([2, 2, 2]), **common, **scores).logits[0]
    assert (mine - other).abs().max() > 1e-4


@pytest.mark.parametrize("case", GENERATIVE, ids=repr)
def test_sampled_sequences_follow_each_rows_own_distribution(case: Case, hypers):
    """Sampling draws different random numbers in a batch than alone, so compare distributions: every
    step's scores for row i equal the scores of row i generated alone on the same prefix."""
    hyper = hypers(case)
    inputs = _prompt(case, 3)
    task = torch.tensor([2, 0, 3])
    torch.manual_seed(0)
    out = hyper.generate(
        **inputs,
        task=task,
        do_sample=True,
        top_k=0,
        max_new_tokens=4,
        min_new_tokens=4,
        num_return_sequences=2,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    seqs = out.sequences  # (3*2, prompt + 4) for decoder-only, (3*2, 1 + 4) for encoder-decoder
    logits = torch.stack(out.logits, dim=1)  # (6, 4, V)
    start = seqs.shape[1] - 4
    for row in range(6):
        i = row // 2
        prefix = seqs[row : row + 1, :start]
        if case.kind == "seq2seq":
            got = hyper(**_rows(inputs, i), decoder_input_ids=seqs[row : row + 1, :-1], task=task[i : i + 1]).logits
            torch.testing.assert_close(got[0, start - 1 :], logits[row], atol=1e-4, rtol=1e-4)
        else:
            full = torch.cat([prefix, seqs[row : row + 1, start:-1]], dim=1)
            mask = torch.ones_like(full)
            got = hyper(input_ids=full, attention_mask=mask, task=task[i : i + 1]).logits
            torch.testing.assert_close(got[0, start - 1 :], logits[row], atol=1e-4, rtol=1e-4)


def test_generate_computes_the_weights_once_per_call(hypers, monkeypatch):
    case = GENERATIVE[0]
    hyper = hypers(case)
    calls = []
    original = hyper.generator.forward
    monkeypatch.setattr(hyper.generator, "forward", lambda z: calls.append(z.shape[0]) or original(z))
    hyper.generate(**_prompt(case, 4), task=torch.tensor([0, 1, 1, 0]), max_new_tokens=8, pad_token_id=0)
    assert calls == [2]  # one pass, for the 2 distinct conditions, not one per decoding step or per row
