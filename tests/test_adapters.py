"""LoRA and QLoRA through load_model and save_pretrained: decoders and encoders, interop with transformers."""

import pytest
import torch
import transformers
from torch.testing import assert_close

import minitune
from minitune.adapters.lora import LoRALinear, apply_adapters
from minitune.adapters.merge import export_state_dict
from minitune.adapters.nf4 import NF4Linear
from minitune.config.sections import AdapterSettings


def tiny_llama(tmp_path, tied=False):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=tied,
        num_labels=3,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
    ref = transformers.AutoModelForSequenceClassification.from_config(cfg).eval()
    ref.save_pretrained(tmp_path / "llama")
    return ref, tmp_path / "llama"


def batch(pad=0, left=False):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, pad, pad, pad]])
    mask = (ids != pad).long()
    if left:
        ids, mask = ids.flip(1), mask.flip(1)
    return ids, mask


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("left", [False, True])
def test_decoder_interop_both_ways(tmp_path, tied, left):
    ref, path = tiny_llama(tmp_path, tied)
    ours = minitune.load_model(path)
    assert ours.label_names == ["LABEL_0", "LABEL_1", "LABEL_2"]  # the checkpoint's head was loaded
    ids, mask = batch(left=left)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
        assert_close(ours(ids, mask), expected, atol=1e-5, rtol=1e-5)
    minitune.save_pretrained(ours, tmp_path / "back", label_names=["a", "b", "c"])
    again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert_close(again(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=1e-5)


def lora_settings(**kw):
    return AdapterSettings(**{"lora_r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "lora_targets": None, **kw})


def perturb_lora(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.normal_(0, 0.1)


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_lora_and_qlora_export_loads_in_transformers_with_equal_logits(tmp_path, quantize):
    ref, path = tiny_llama(tmp_path)
    model = minitune.load_model(path, quantize=quantize)
    names, _, _ = apply_adapters(model, lora_settings())
    assert any(n.endswith("self_attn.q_proj") for n in names) and any(n.endswith("mlp.down_proj") for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "score.weight" in trainable and all("lora_" in n or n == "score.weight" for n in trainable)
    if quantize:
        assert all(isinstance(m.base, NF4Linear) for m in model.modules() if isinstance(m, LoRALinear))
        assert not isinstance(model.score, NF4Linear)
    perturb_lora(model)
    ids, mask = batch()
    with torch.no_grad():
        ours = model(ids, mask)
    minitune.save_pretrained(model, tmp_path / "merged")
    assert not any("lora" in k or "weight_packed" in k for k in export_state_dict(model))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert_close(hf(input_ids=ids, attention_mask=mask).logits, ours, atol=1e-5, rtol=1e-5)
    mine = minitune.load_model(tmp_path / "merged")
    with torch.no_grad():
        assert_close(mine(ids, mask), ours, atol=1e-5, rtol=1e-5)


def test_qlora_quantizes_while_loading_and_stays_close(tmp_path):
    ref, path = tiny_llama(tmp_path)
    q = minitune.load_model(path, quantize="nf4")
    linears = [n for n, m in q.named_modules() if isinstance(m, NF4Linear)]
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers; the score head stays dense
    assert not any(isinstance(m, torch.nn.Linear) and n != "score" for n, m in q.named_modules())
    ids, mask = batch()
    with torch.no_grad():
        full = ref(input_ids=ids, attention_mask=mask).logits
        got = q(ids, mask)
    # 4-bit weights: close to, not equal to, the full-precision logits
    assert (got - full).abs().max() < 0.05 * full.abs().max() + 0.05


def test_lora_on_encoder_gradients_reach_only_adapters_and_head(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=2
    )
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert")
    model = minitune.load_model(tmp_path / "bert")
    apply_adapters(model, lora_settings(lora_targets="query,value"))
    ids = torch.randint(3, 99, (3, 9))
    model.train()(ids, torch.ones_like(ids)).sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert "lora_" in n or n.startswith(("classifier", "bert.pooler")), n
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
