"""Export for multi-LoRA servers: `export_peft_adapters` writes one standard PEFT adapter per value of a categorical
condition, named by the value; each loads with `peft` and gives the hyper model's logits for that value."""

from __future__ import annotations

import pytest
import torch
from hf_models import llama

from hyperlight import HyperConfig, get_hyper_model

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])


def _base():
    torch.manual_seed(0)
    return llama()


def _hyper(conditions):
    hyper = get_hyper_model(_base(), HyperConfig(target_modules=r".*\.(q_proj|v_proj)", conditions=conditions, rank=4))
    torch.manual_seed(1)
    with torch.no_grad():  # away from the zero update of a fresh generator
        for p in hyper.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hyper.eval()


def _served(directory):
    return peft.PeftModel.from_pretrained(_base(), directory).eval()


def test_every_named_value_gets_an_adapter_that_reproduces_it(tmp_path):
    hyper = _hyper({"task": {"type": "categorical", "values": ["copy", "reverse", "sort"]}})
    errors = hyper.export_peft_adapters(tmp_path)
    assert sorted(errors) == ["copy", "reverse", "sort"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "reverse", "sort"]
    assert all(max(e.values()) == 0.0 for e in errors.values())  # lora mode: the factors as they are
    with torch.no_grad():
        for name in errors:
            want = hyper(input_ids=IDS, task=name).logits
            torch.testing.assert_close(_served(tmp_path / name)(input_ids=IDS).logits, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(hyper(input_ids=IDS, task="copy").logits, hyper(input_ids=IDS, task="sort").logits)


def test_ids_name_the_directories_and_other_conditions_are_fixed_by_keyword(tmp_path):
    hyper = _hyper(
        {"task": {"type": "categorical", "num": 2}, "lang": {"type": "categorical", "values": ["en", "de"]}}
    )
    with pytest.raises(ValueError, match=r"one categorical condition; this model has \['task', 'lang'\] left"):
        hyper.export_peft_adapters(tmp_path)
    errors = hyper.export_peft_adapters(tmp_path / "tasks", condition="task", lang="de")
    assert sorted(errors) == ["0", "1"]
    with torch.no_grad():
        want = hyper(input_ids=IDS, task=1, lang="de").logits
        torch.testing.assert_close(_served(tmp_path / "tasks" / "1")(input_ids=IDS).logits, want, rtol=1e-5, atol=1e-5)
    assert sorted(hyper.export_peft_adapters(tmp_path / "langs", task=0)) == ["de", "en"]  # the one left


@pytest.mark.parametrize(
    "conditions, kwargs, error, match",
    [
        (
            {"task": {"type": "categorical", "values": ["a/b", "c"]}},
            {},
            ValueError,
            r"\['a/b'\] .*cannot name adapter",
        ),
        ({"task": {"type": "categorical", "values": [".hidden", "c"]}}, {}, ValueError, r"\['.hidden'\]"),
        ({"task": {"type": "categorical", "num": 2}}, {"condition": "lang"}, ValueError, r"'lang' is no condition"),
        (
            {"task": {"type": "categorical", "num": 2}, "x": {"type": "scalar", "range": [0, 1]}},
            {"condition": "x"},
            ValueError,
            r"condition='x' is a scalar condition",
        ),
        (
            {"task": {"type": "categorical", "num": 2}, "x": {"type": "scalar", "range": [0, 1]}},
            {"x": 5.0},
            ValueError,
            r"'x' out of range",
        ),
        ({"task": {"type": "categorical", "num": 2}}, {"condition": "task", "task": 1}, ValueError, "both enumerated"),
    ],
)
def test_bad_requests_are_named_errors_before_anything_is_written(tmp_path, conditions, kwargs, error, match):
    hyper = _hyper(conditions)
    with pytest.raises(error, match=match):
        hyper.export_peft_adapters(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_killed_exports_leftovers_are_removed_by_the_next_export(tmp_path):
    hyper = _hyper({"task": {"type": "categorical", "values": ["copy", "sort"]}})
    stale = tmp_path / "copy" / ".adapter_model.safetensors.99999999999999999999.abc.tmpdir"  # a dead process's
    stale.mkdir(parents=True)
    (stale / ".tmpXyZ123").write_bytes(b"half an adapter")
    hyper.export_peft_adapters(tmp_path)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_every_categorical_condition_fixed_is_named():
    hyper = _hyper({"task": {"type": "categorical", "num": 2}, "lvl": {"type": "scalar", "range": [0, 1]}})
    with pytest.raises(
        ValueError, match=r"'lvl' is a scalar condition; give a categorical condition, and leave it out"
    ):
        hyper.export_peft_adapters("never", condition="lvl", task=1)
