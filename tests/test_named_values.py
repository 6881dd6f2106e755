"""Named values of categorical conditions: `{"type": "categorical", "values": [...]}`. A name is accepted wherever
an id is, means exactly that id (checked against the id), is saved in the config, and an unknown name is a named
error that lists the known ones."""

from __future__ import annotations

import pytest
import torch
from hf_models import llama

from hyperlight import HyperConfig, HyperModel, HyperNet, get_hyper_model
from hyperlight.hypernet.conditions import ConditionEncoder, ConditionSpec
from hyperlight.training import HyperDataCollator

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
OPS = ["copy", "reverse", "sort", "upper"]
NAMED = {"task": {"type": "categorical", "values": OPS}}
IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])


def _base():
    torch.manual_seed(0)  # the same pretrained weights every time
    return llama()


def _hyper(seed: int = 0) -> HyperModel:
    base = _base()
    torch.manual_seed(seed)
    hyper = get_hyper_model(base, HyperConfig(target_modules=r".*\.(q_proj|v_proj)", conditions=NAMED, rank=4))
    with torch.no_grad():  # lora_B starts at zero: move it so that each condition gives different logits
        for p in hyper.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hyper.eval()


def test_values_imply_num_and_round_trip_through_the_config():
    spec = ConditionSpec.parse("task", NAMED["task"])
    assert spec.num == 4 and spec.values == tuple(OPS)
    config = HyperConfig(conditions=NAMED)
    assert config.conditions["task"] == {"type": "categorical", "num": 4, "values": OPS}
    assert HyperConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"type": "categorical", "values": []}, r"'values' must be a non-empty list of names, got \[\]"),
        ({"type": "categorical", "values": "copy"}, r"'values' must be a non-empty list of names, got 'copy'"),
        ({"type": "categorical", "values": ["a", 3]}, r"every value must be a non-empty str, got \[3\]"),
        ({"type": "categorical", "values": ["a", ""]}, r"every value must be a non-empty str"),
        ({"type": "categorical", "values": ["a", "b", "a"]}, r"values must be distinct, \['a'\] appear more"),
        ({"type": "categorical", "values": ["a", "b"], "num": 3}, r"num=3 but 2 values; num is implied by values"),
        ({"type": "vector", "dim": 2, "values": ["a"]}, r"\(vector\) does not take 'values'"),
    ],
)
def test_bad_values_are_named_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        HyperConfig(conditions={"task": spec})


def test_names_mean_their_ids_in_forward_generate_and_conditioned_blocks():
    hyper = _hyper()
    with torch.no_grad():
        by_id = hyper(input_ids=IDS, task=torch.tensor([2, 0, 3])).logits
        by_name = hyper(input_ids=IDS, task=["sort", "copy", "upper"]).logits
        mixed = hyper(input_ids=IDS, task=["sort", 0, "upper"]).logits
        one = hyper(input_ids=IDS, task="reverse").logits
        one_id = hyper(input_ids=IDS, task=1).logits
        with hyper.conditioned(task="sort"):
            block = hyper.get_base_model()(input_ids=IDS[:1]).logits
        sort_alone = hyper(input_ids=IDS[:1], task=2).logits
    torch.testing.assert_close(by_name, by_id, rtol=0, atol=0)
    torch.testing.assert_close(mixed, by_id, rtol=0, atol=0)
    torch.testing.assert_close(one, one_id, rtol=0, atol=0)
    torch.testing.assert_close(block, sort_alone, rtol=0, atol=0)
    assert not torch.allclose(by_id[0], hyper(input_ids=IDS[:1], task=1).logits[0])  # the names do matter
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(
        hyper.generate(input_ids=IDS, task=["upper", "copy", "sort"], **kwargs),
        hyper.generate(input_ids=IDS, task=torch.tensor([3, 0, 2]), **kwargs),
    )


def test_unknown_names_and_names_without_values_are_named_errors():
    hyper = _hyper()
    with pytest.raises(ValueError, match=r"'task' has no value 'sotr'; its values are .*did you mean 'sort'"):
        hyper(input_ids=IDS[:1], task="sotr")
    with pytest.raises(ValueError, match=r"no value 'nope'; its values are \['copy', 'reverse', 'sort', 'upper'\]"):
        hyper(input_ids=IDS[:2], task=["copy", "nope"])
    ids_only = ConditionEncoder({"task": {"type": "categorical", "num": 4}}, 8)
    with pytest.raises(TypeError, match=r"expected integer ids \(it has no named values\), got str 'sort'; .*values"):
        ids_only.check({"task": "sort"})


def test_merge_and_export_take_names(tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel

    by_name, by_id = _hyper().merge_and_unload(task="sort"), _hyper().merge_and_unload(task=2)
    with torch.no_grad():
        torch.testing.assert_close(by_name(input_ids=IDS).logits, by_id(input_ids=IDS).logits, rtol=0, atol=0)
    hyper = _hyper()
    errors = hyper.export_peft_adapter(tmp_path / "sort", task="sort")
    assert max(errors.values()) == 0.0
    with torch.no_grad():
        expected = hyper(input_ids=IDS, task="sort").logits
        peft_model = PeftModel.from_pretrained(_base(), tmp_path / "sort").eval()
        torch.testing.assert_close(peft_model(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)


def test_names_survive_save_and_reload(tmp_path):
    hyper = _hyper()
    hyper.save_pretrained(tmp_path)
    reloaded = HyperModel.from_pretrained(_base(), tmp_path)
    assert reloaded.hyper_config.conditions["task"]["values"] == OPS
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=IDS, task=["upper", "sort", "copy"]).logits,
            hyper(input_ids=IDS, task=torch.tensor([3, 2, 0])).logits,
            rtol=0,
            atol=0,
        )


def test_the_collator_passes_string_columns_that_the_model_maps_to_ids():
    hyper = _hyper()
    collate = HyperDataCollator(["task"])
    batch = collate([{"input_ids": row.tolist(), "task": name} for row, name in zip(IDS, ["sort", "copy", "sort"])])
    assert batch["task"] == ["sort", "copy", "sort"]
    with torch.no_grad():
        torch.testing.assert_close(
            hyper(**batch).logits, hyper(input_ids=IDS, task=torch.tensor([2, 0, 2])).logits, rtol=0, atol=0
        )


def test_the_core_hypernet_takes_names_too():
    torch.manual_seed(0)
    net = HyperNet(conditions=NAMED, output_shapes={"w": (3, 2)})
    torch.testing.assert_close(net(task=["upper", "copy"])["w"], net(task=torch.tensor([3, 0]))["w"])
    np = pytest.importorskip("numpy")
    torch.testing.assert_close(net(task=np.array(["upper", "copy"]))["w"], net(task=torch.tensor([3, 0]))["w"])


@pytest.mark.parametrize(
    "values, match",
    [
        (["1", "0", "sort"], r"values \['1', '0'\] read as integer ids"),
        (["\u00e9", "e\u0301"], r"values must be distinct, \['\u00e9'\] appear more than once"),  # one name, NFC
    ],
)
def test_names_that_would_read_ambiguously_are_refused(values, match):
    with pytest.raises(ValueError, match=match):
        HyperConfig(conditions={"task": {"type": "categorical", "values": values}})


def test_bools_numpy_arrays_and_empty_lists_of_values():
    np = pytest.importorskip("numpy")
    encoder = ConditionEncoder(NAMED, 8)
    for bad in (["sort", True], [2, True], (False,)):
        with pytest.raises(TypeError, match="got a bool"):
            encoder.check({"task": bad})
    assert encoder.check({"task": np.array(["sort", "copy"])})["task"].tolist() == [2, 0]  # a datasets column
    assert encoder.check({"task": np.array(["upper"], dtype=object)})["task"].tolist() == [3]
    assert encoder.check({"task": []})["task"].shape == (0,)


def test_a_config_edited_in_place_after_the_build_cannot_be_saved(tmp_path):
    hyper = _hyper()
    hyper.hyper_config.conditions["task"]["values"].reverse()  # the model still uses copy=0, ..., upper=3
    with pytest.raises(ValueError, match="is not what this model was built with"):
        hyper.save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="is not what this model was built with"):
        hyper.state_dict()


def test_merge_and_export_name_the_one_value_they_take():
    hyper = _hyper()
    with pytest.raises(ValueError, match=r"take one value per condition \(one example\): condition 'task' has 2"):
        hyper.merge_and_unload(task=["sort", "copy"])
    hyper(input_ids=IDS[:1], task="sort")  # the refused merge left the hyper model as it was
