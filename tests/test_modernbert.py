"""ModernBERT parity with transformers on tiny random configs: logits and every gradient, padded and unpadded,
windows shorter than the sequence, global attention every 2 and 3 layers, cls and mean pooling, biases on and off;
checkpoints both ways; the sliding-window kernels against a hand-built mask; bad configs refused in one line."""

import json

import pytest
import torch
import transformers
from torch.testing import assert_close

import minitune
from minitune.errors import ConfigError
from minitune.models.attention import band, banded_attention
from minitune.models.modernbert import config_from_hf
from tolerance import assert_close_scaled

PAD = 0


def tiny(every=3, window=4, pooling="cls", bias=False, layers=4, **kw):
    return transformers.ModernBertConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=128,
        global_attn_every_n_layers=every,
        local_attention=window,
        global_rope_theta=1000.0,
        local_rope_theta=100.0,
        classifier_pooling=pooling,
        attention_bias=bias,
        mlp_bias=bias,
        norm_bias=bias,
        classifier_bias=bias,
        pad_token_id=PAD,
        bos_token_id=1,
        cls_token_id=1,
        eos_token_id=2,
        sep_token_id=2,
        initializer_range=0.2,
        attn_implementation="sdpa",
        **kw,
    )


def reference(tmp_path, head="sequence", num_labels=3, **cfg):
    torch.manual_seed(1)
    config = tiny(**cfg)
    config.num_labels = num_labels
    cls = transformers.ModernBertForSequenceClassification
    if head == "multiple_choice":
        cls = transformers.ModernBertForMultipleChoice
    ref = cls(config).eval()
    with torch.no_grad():  # the reference initialises norms to 1 and biases to 0: move them so they count
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path)
    return ref


def batch(lengths=(23, 5, 17, 23, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 99, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def logits_and_grads(model, ids, mask, ours: bool):
    model.zero_grad()
    logits = model(ids, mask) if ours else model(input_ids=ids, attention_mask=mask).logits
    (logits * torch.arange(1.0, logits.shape[-1] + 1)).square().sum().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


CASES = {
    "every 3, window 4, cls": dict(every=3, window=4, pooling="cls", bias=False),
    "every 2, window 6, mean, biases": dict(every=2, window=6, pooling="mean", bias=True),
    "every 3, window 2, mean": dict(every=3, window=2, pooling="mean", bias=False),
    "every 2, window 8, cls, biases, gelu_tanh": dict(
        every=2, window=8, pooling="cls", bias=True, hidden_activation="gelu_pytorch_tanh"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("head", ["sequence", "multiple_choice"])
def test_logits_and_every_gradient_match_transformers_padded_and_unpadded(case, head, tmp_path):
    ref = reference(tmp_path, head, **CASES[case])
    ours = minitune.load_model(tmp_path, num_labels=3 if head == "sequence" else None, head=head)
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert ours.head_trained and "model.layers.0.attn_norm.weight" not in ours.state_dict()
    ids, mask = batch()  # the longest row (23) is several windows long
    if head == "multiple_choice":  # (2, 5, T): two questions of five options
        ids, mask = torch.stack([ids, ids.flip(0)]), torch.stack([mask, mask.flip(0)])
    expected, ref_grads = logits_and_grads(ref, ids, mask, ours=False)
    for unpadded in (True, False):
        ours.set_unpadded(unpadded)
        got, grads = logits_and_grads(ours, ids, mask, ours=True)
        assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert set(grads) == set(ref_grads)
        for name, g in ref_grads.items():
            assert_close_scaled(grads[name], g, atol=1e-5, rtol=1e-5, name=f"{name} (unpadded={unpadded})")


def test_left_padded_choices_read_their_first_real_token_as_the_reference_does(tmp_path):
    """Left padding (an API caller's choice; minitune's batches pad right): the multiple-choice head reads each row's
    first real token, as transformers' does. (Its sequence head reads column 0 whatever it holds, a pad's state
    under left padding, which no path here computes alike.)"""
    ref = reference(tmp_path, "multiple_choice")
    ours = minitune.load_model(tmp_path, head="multiple_choice")
    ids, mask = batch()
    ids, mask = ids.flip(-1)[None], mask.flip(-1)[None]  # (1, 5, T), pads first
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
        for unpadded in (True, False):
            ours.set_unpadded(unpadded)
            assert_close(ours(ids, mask), expected, atol=1e-5, rtol=1e-5)


def test_windows_decide_what_a_token_sees(tmp_path):
    """A token beyond the window of every sliding layer and not seen by a global layer changes nothing: with one
    global layer (the first) only, a change at the last position reaches position 0's final state through the
    global layer; with every layer sliding but the first removed from the path, it cannot."""
    reference(tmp_path, every=100, window=4, layers=1)  # one layer, global
    ids, mask = batch((20,))
    changed = ids.clone()
    changed[0, -1] = 3 if ids[0, -1] != 3 else 4
    glob = minitune.load_model(tmp_path).base
    assert not torch.allclose(glob(ids, mask)[0, 0], glob(changed, mask)[0, 0])
    hf = json.loads((tmp_path / "config.json").read_text())
    hf["layer_types"] = ["sliding_attention"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    local = minitune.load_model(tmp_path).base
    assert torch.equal(local(ids, mask)[0, 0], local(changed, mask)[0, 0])


@pytest.mark.parametrize("n", [3, 9, 40, 131])
def test_banded_attention_equals_one_masked_call(n):
    """Block by block (long sequences) or with one band mask (short ones): the output and gradients of a full
    n x n masked SDPA call."""
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, n, 8, generator=g, requires_grad=True) for _ in range(3))
    half = 4
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band(n, half, "cpu"))
    got = banded_attention(q, k, v, half, 0.0)
    assert_close(got, full, atol=1e-6, rtol=1e-5)
    w = torch.randn(2, n, 8, generator=g)
    for a, b in zip(torch.autograd.grad((got * w).sum(), (q, k, v)), torch.autograd.grad((full * w).sum(), (q, k, v))):
        assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("per_sequence", [True, False])
def test_packed_window_attention_equals_the_padded_band(per_sequence):
    """Both packed paths under a window (sequence by sequence on CPU; one masked call on the re-padded block, the
    GPU fallback) give the padded band-masked call's outputs and gradients at real tokens."""
    from minitune.models.attention import Packing, packed_attention
    from minitune.models.modernbert import padded_mask

    _, mask = batch((23, 5, 17, 23, 1))
    B, T, h, D, half = *mask.shape, 2, 8, 3
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, h, D, generator=g, requires_grad=True) for _ in range(3))
    padded = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), attn_mask=padded_mask(mask, T, half, "cpu")
    ).transpose(1, 2)  # (B, T, h, D)
    pack = Packing(mask, per_sequence=per_sequence)
    flat = lambda t: pack.unpad(t.flatten(2)).unflatten(-1, (h, D))  # noqa: E731  (N, h, D)
    packed = packed_attention(flat(q), flat(k), flat(v), pack, causal=False, dropout_p=0.0, window=half)
    assert_close(pack.pad(packed.flatten(1)), padded.flatten(2) * mask[..., None], atol=1e-6, rtol=1e-5)
    w = torch.randn(B, T, h * D, generator=torch.Generator().manual_seed(9)) * mask[..., None]
    outs = (padded.flatten(2), pack.pad(packed.flatten(1)))
    grads = [torch.autograd.grad((out * w).sum(), (q, k, v)) for out in outs]
    for name, g_padded, g_packed in zip("qkv", *grads):
        assert_close_scaled(g_packed, g_padded, atol=1e-6, rtol=1e-5, name=f"d{name}")


def test_a_long_padded_batch_has_no_nan_where_a_pad_sees_no_real_token(tmp_path):
    """Right padding far past a short row: a pad query whose window holds only pads must not put NaN anywhere."""
    reference(tmp_path, window=2, pooling="mean")
    ours = minitune.load_model(tmp_path)
    ours.set_unpadded(False)
    ids, mask = batch((40, 2))
    out = ours(ids, mask)
    assert torch.isfinite(out).all()
    assert_close(out[1:], ours(ids[1:, :2], mask[1:, :2]), atol=1e-5, rtol=1e-5)


def test_minitune_saves_and_transformers_loads_the_same_logits(tmp_path):
    reference(tmp_path / "ref", pooling="mean", bias=True)
    ours = minitune.load_model(tmp_path / "ref", num_labels=3)
    minitune.save_pretrained(ours, tmp_path / "saved", label_names=["a", "b", "c"])
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    ids, mask = batch()
    with torch.no_grad():
        assert_close(theirs(input_ids=ids, attention_mask=mask).logits, ours(ids, mask), atol=1e-5, rtol=1e-5)


def test_mean_pooling_asked_of_a_cls_checkpoint_is_written_back_for_transformers(tmp_path):
    reference(tmp_path / "ref", pooling="cls")
    ours = minitune.load_model(tmp_path / "ref", num_labels=3, pooling="mean")
    minitune.save_pretrained(ours, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["classifier_pooling"] == "mean"
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    again = minitune.load_model(tmp_path / "saved")
    ids, mask = batch()
    with torch.no_grad():
        mine = ours(ids, mask)
        assert_close(theirs(input_ids=ids, attention_mask=mask).logits, mine, atol=1e-5, rtol=1e-5)
        assert_close(again(ids, mask), mine, atol=1e-5, rtol=1e-5)


def test_pooling_chooses_the_heads_classifier_pooling_and_keeps_a_head_trained_on_it(tmp_path):
    """`auto` and the checkpoint's own choice load its trained head; the other choice starts a fresh one."""
    reference(tmp_path, pooling="mean")
    for pooling, trained, pools in (("auto", True, "mean"), ("mean", True, "mean"), ("cls", False, "cls")):
        model = minitune.load_model(tmp_path, num_labels=3, pooling=pooling)
        assert (model.head_trained, model.classifier_pooling) == (trained, pools), pooling
        assert model.hf_config["classifier_pooling"] == pools


def test_a_masked_lm_checkpoint_keeps_its_prediction_head_as_the_reference_does(tmp_path):
    """The published checkpoints are ModernBertForMaskedLM: its `head.` (dense, norm) is the classifier's head
    too; only `classifier` starts fresh, and the MLM decoder is dropped."""
    torch.manual_seed(0)
    mlm = transformers.ModernBertForMaskedLM(tiny(bias=True))
    mlm.save_pretrained(tmp_path)
    ours = minitune.load_model(tmp_path, num_labels=4)
    assert not ours.head_trained
    theirs = transformers.ModernBertForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    for name in ("head.dense.weight", "head.dense.bias", "head.norm.weight", "model.final_norm.weight"):
        assert torch.equal(ours.state_dict()[name], theirs.state_dict()[name]), name
    w = ours.state_dict()["classifier.weight"]
    assert w.abs().max() <= 2 * 32**-0.5 and 0.5 * 32**-0.5 < w.std() < 32**-0.5  # truncated N(0, 1/sqrt(H))


def test_the_bi_scorer_reads_mean_pooled_embeddings(tmp_path):
    reference(tmp_path)
    ours = minitune.load_model(tmp_path, head="multiple_choice", choice_scorer="bi")
    ids, mask = batch((7, 5, 9))
    scores = ours(ids[None], mask[None])  # (1, 2): the query against two options
    v = minitune.load_model(tmp_path).base(ids, mask)
    emb = (v * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(emb[:1], emb[1:])
    assert_close(scores[0], 20 * cos, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"local_attention": 7}, "local_attention=7 must be an even number"),
        ({"local_attention": 0}, "local_attention=0 must be an even number"),
        ({"global_attn_every_n_layers": 0}, "global_attn_every_n_layers=0 must be a positive integer"),
        ({"classifier_pooling": "max"}, "classifier_pooling='max' is not supported"),
        ({"layer_types": ["full_attention"]}, "layer_types must give"),
    ],
)
def test_configs_the_module_cannot_honour_are_refused(change, words):
    with pytest.raises(ConfigError, match=words):
        config_from_hf({"model_type": "modernbert", "num_hidden_layers": 2, **change})


def test_both_config_spellings_read_the_same_thetas():
    old = config_from_hf({"global_rope_theta": 5.0, "local_rope_theta": 7.0, "global_attn_every_n_layers": 2})
    new = config_from_hf(tiny(every=2).to_dict() | {"rope_parameters": None})
    assert (old.global_rope_theta, old.local_rope_theta) == (5.0, 7.0)
    saved = config_from_hf(tiny(every=2).to_dict())
    assert (saved.global_rope_theta, saved.local_rope_theta, saved.layer_types) == (1000.0, 100.0, new.layer_types)


def test_lora_nf4_and_llrd_see_the_blocks(tmp_path):
    from minitune.adapters.lora import apply_lora
    from minitune.adapters.nf4 import NF4Linear
    from minitune.train.optim import param_groups

    reference(tmp_path, bias=True)
    ours = minitune.load_model(tmp_path, num_labels=3)
    wrapped = apply_lora(ours, lora_r=4, lora_alpha=8)
    assert {n.split("layers.1.", 1)[1] for n in wrapped if ".layers.1." in n} == {
        "attn.Wqkv",
        "attn.Wo",
        "mlp.Wi",
        "mlp.Wo",
    }
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert {"head.dense.weight", "head.norm.weight", "classifier.weight"} <= trainable  # the head trains whole
    ids, mask = batch()
    ours(ids, mask).sum().backward()
    names = [g["name"] for g in param_groups(ours, 1e-3, 0.01, llrd=0.9)]
    assert {"layer0.decay", "layer3.decay", "head.decay"} <= set(names)
    # NF4: every block linear is quantized, the head is not, and the model computes what the full-precision model
    # computes with those weights dequantized.
    q = minitune.load_model(tmp_path, num_labels=3, quantize="nf4")
    full = minitune.load_model(tmp_path, num_labels=3)
    quantized = {n: m for n, m in q.named_modules() if isinstance(m, NF4Linear)}
    assert "model.layers.2.attn.Wqkv" in quantized and not {"head.dense", "classifier"} & set(quantized)
    with torch.no_grad():
        for name, m in quantized.items():
            full.get_submodule(name).weight.copy_(m.dequantize(torch.float32))
        assert_close(q(ids, mask), full(ids, mask), atol=1e-5, rtol=1e-5)


def tiny_checkpoint(directory, texts):
    """A ModernBERT MLM checkpoint with a byte-level BPE tokenizer in the published layout, trained here."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    named = {f"{n}_token": f"[{n.upper()}]" for n in ("unk", "cls", "sep", "pad", "mask")}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192, **named}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    cfg = tiny(window=8)
    cfg.vocab_size, cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id = tok.get_vocab_size(), 3, 1, 2
    cfg.max_position_embeddings = 1024
    transformers.ModernBertForMaskedLM(cfg).save_pretrained(directory)
    return directory


def test_a_run_trains_predicts_and_refuses_a_length_past_its_positions(tmp_path, data_dir, capsys):
    import csv

    from minitune.cli import main

    with open(data_dir / "hahackathon" / "train.csv", encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:500]
    model = tiny_checkpoint(tmp_path / "tiny-modernbert", texts)
    args = ["--task", "humor", "--model", str(model), "--data-dir", str(data_dir), "--epochs", "1"]
    args += ["--max-train-samples", "48", "--max-eval-samples", "16", "--batch-size", "8"]
    out = tmp_path / "run"
    assert main([*args, "--max-length", "768", "--output-dir", str(out)]) == 0  # past 512: the checkpoint has 1,024
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == [
        "ModernBertForSequenceClassification"
    ]
    src = tmp_path / "in.csv"
    src.write_text("text\nA long day.\nWhy did the chicken cross the road?\n")
    assert main(["predict", "--model", str(out), "--input", str(src), "--output", str(tmp_path / "p.csv")]) == 0
    capsys.readouterr()
    assert main([*args, "--max-length", "2000", "--output-dir", str(tmp_path / "too-long")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--max-length 2000 exceeds" in last and "1024 positions; use at most 1024" in last
    assert not (tmp_path / "too-long").exists()
    hf = json.loads((model / "config.json").read_text())  # a window the module cannot honour: one line, no folder
    (model / "config.json").write_text(json.dumps({**hf, "layer_types": None, "local_attention": 7}))
    assert main([*args, "--output-dir", str(tmp_path / "odd")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{model / 'config.json'}: local_attention=7 must be an even number" in last
    assert not (tmp_path / "odd").exists()


def test_goemotions_recipe_config_parses_and_names_the_missing_model(tmp_path, data_dir, monkeypatch, capsys):
    from pathlib import Path

    from huggingface_hub import constants

    from minitune.cli import main, parse_config

    toml = Path(__file__).resolve().parents[1] / "configs" / "goemotions-modernbert-large.toml"
    cfg = parse_config(["--config", str(toml)]).flat()
    assert (cfg["model"], cfg["lr"], cfg["batch_size"], cfg["precision"]) == ("modernbert-large", 2e-5, 16, "bf16")
    assert (cfg["loss"], cfg["threshold"], cfg["oversample_rare"]) == ("asl:0.5+focal:0.5", 0.2, 100)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache, offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = main(["--config", str(toml), "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "model 'answerdotai/ModernBERT-large' is not in the Hugging Face cache" in last
    assert not (tmp_path / "o").exists()
