"""4-bit and 8-bit bitsandbytes bases (QLoRA-style, on CPU): lora mode trains generated factors beside the
quantized weights. Forward, backward, generate, save and reload work; a mixed batch equals each example alone; an
exported adapter loads with `peft` on the same quantized base and gives the same logits; merging into quantized
weights and full mode on them are refused with named errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from hf_models import llama

pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")

from transformers import BitsAndBytesConfig, LlamaForCausalLM  # noqa: E402

from hyperlight import HyperConfig, HyperModel, get_hyper_model  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]
TASKS = {"task": {"type": "categorical", "values": ["a", "b", "c"]}}
IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
QUANTIZATION = {
    "4bit": lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
    "8bit": lambda: BitsAndBytesConfig(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory):
    directory = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    llama(hidden=64, intermediate=128).save_pretrained(directory)  # 64: bitsandbytes' CPU 4-bit block size
    return directory


def _load(saved_base, bits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {} if bits is None else {"quantization_config": QUANTIZATION[bits](), "device_map": "cpu"}
        return LlamaForCausalLM.from_pretrained(saved_base, **kwargs).eval()


def _hyper(base):
    hyper = get_hyper_model(base, HyperConfig(target_modules=["q_proj", "v_proj"], conditions=TASKS, rank=4))
    torch.manual_seed(1)
    with torch.no_grad():  # away from the zero update of a fresh generator
        for p in hyper.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hyper


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_a_quantized_base_trains_generates_and_reloads(saved_base, bits, tmp_path):
    hyper = _hyper(_load(saved_base, bits))
    assert not hyper.get_base_model().model.layers[0].self_attn.q_proj.weight.is_floating_point()  # quantized
    out = hyper(input_ids=IDS, task=["a", "c"], labels=IDS)
    out.loss.backward()
    grads = [p.grad for p in hyper.generator.parameters()]
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)
    assert all(not p.requires_grad for p in hyper.get_base_model().parameters())
    with torch.no_grad():
        mixed = hyper(input_ids=IDS, task=["a", "c"]).logits
        for row, task in enumerate(["a", "c"]):
            alone = hyper(input_ids=IDS[row : row + 1], task=task).logits[0]
            torch.testing.assert_close(mixed[row], alone, rtol=1e-3, atol=1e-3)  # the quantized kernels' rounding
        assert not torch.allclose(mixed[0], hyper(input_ids=IDS[:1], task="b").logits[0], atol=1e-3)
    generated = hyper.generate(input_ids=IDS, task=["a", "c"], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 7)
    hyper.save_pretrained(tmp_path / "ckpt")
    reloaded = HyperModel.from_pretrained(_load(saved_base, bits), tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS, task=["a", "c"]).logits, mixed, rtol=0, atol=0)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_an_exported_adapter_reproduces_the_condition_on_the_quantized_base(saved_base, bits, tmp_path):
    hyper = _hyper(_load(saved_base, bits))
    hyper.export_peft_adapters(tmp_path)
    for task in ["a", "b", "c"]:
        served = peft.PeftModel.from_pretrained(_load(saved_base, bits), tmp_path / task).eval()
        with torch.no_grad():
            want = hyper(input_ids=IDS, task=task).logits
            torch.testing.assert_close(served(input_ids=IDS).logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_merging_into_quantized_weights_is_refused_and_works_on_the_float_base(saved_base, bits, tmp_path):
    hyper = _hyper(_load(saved_base, bits))
    with pytest.raises(NotImplementedError, match=r"cannot bake generated weights into the quantized .* targets"):
        hyper.merge_and_unload(task="b")
    hyper(input_ids=IDS, task="b")  # the refusal changed nothing: the hyper model still runs
    hyper.save_pretrained(tmp_path / "ckpt")
    on_float = HyperModel.from_pretrained(_load(saved_base, None), tmp_path / "ckpt")  # the documented way
    with torch.no_grad():
        want = on_float(input_ids=IDS, task="b").logits
        merged = on_float.merge_and_unload(task="b")
        torch.testing.assert_close(merged(input_ids=IDS).logits, want, rtol=1e-5, atol=1e-5)


def test_full_mode_on_quantized_weights_is_refused_before_the_model_changes(saved_base):
    base = _load(saved_base, "4bit")
    classes = {n: type(m) for n, m in base.named_modules()}
    with pytest.raises(ValueError, match=r"mode='full' generates whole tensors, and .* are quantized"):
        get_hyper_model(base, HyperConfig(target_modules=["q_proj"], conditions=TASKS, mode="full"))
    assert {n: type(m) for n, m in base.named_modules()} == classes
