"""Pooling as the checkpoint declares it, the pooled head's saving, and the bi-encoder for multiple choice."""

import json

import pytest
import torch
import transformers

import minitune
from minitune.checkpoints.sentence_layout import declared_pooling
from minitune.data.batching import collate
from minitune.data.features import tokenize
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.data.tasks import Example
from minitune.errors import CheckpointError, ParameterError
from minitune.models.pooling import BI_SCALE, pool
from test_encoders import CONFIGS
from tolerance import assert_close_scaled

TEXTS = [
    "A short one.",
    "This is a considerably longer sentence, with more tokens than the others, so the rest are padded.",
    "hi",
    "Cats and dogs living together",
]


def test_pool_equals_a_hand_computation_and_pads_never_count():
    h = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]], [[-1.0, 5.0], [-7.0, -9.0], [-3.0, 2.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # row 0: its last token is a pad holding large values
    assert torch.equal(pool(h, mask, "cls"), torch.tensor([[1.0, -2.0], [-1.0, 5.0]]))
    assert torch.allclose(pool(h, mask, "mean"), torch.tensor([[2.0, 1.0], [-11 / 3, -2 / 3]]))
    assert torch.equal(pool(h, mask, "max"), torch.tensor([[3.0, 4.0], [-1.0, 5.0]]))
    sqrt = torch.tensor([[4.0 / 2**0.5, 2.0 / 2**0.5], [-11 / 3**0.5, -2 / 3**0.5]])
    assert torch.allclose(pool(h, mask, "mean_sqrt_len"), sqrt)
    # An all-negative column: the max over real tokens is negative, a pad (zeros after unpadding) never wins.
    assert pool(torch.tensor([[[-5.0], [0.0]]]), torch.tensor([[1, 0]]), "max").item() == -5.0


def test_packaged_minilm_declares_mean_pooling_and_normalisation(tmp_path):
    d = declared_pooling(minitune.checkpoints.hub.resolve_model("minilm"))
    assert (d.mode, d.normalize) == ("mean", True)
    # The newer sentence-transformers file names the mode in one string; several modes at once are refused.
    (tmp_path / "1_Pooling").mkdir()
    modules = [{"path": "", "type": "x.Transformer"}, {"path": "1_Pooling", "type": "x.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    assert declared_pooling(tmp_path).mode == "max" and not declared_pooling(tmp_path).normalize
    both = {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(both))
    with pytest.raises(CheckpointError, match="not supported"):
        declared_pooling(tmp_path)


@pytest.fixture(scope="module")
def minilm():
    return minitune.load_model("minilm", num_labels=3), minitune.load_tokenizer("minilm")


def test_minilm_embedding_equals_sentence_transformers_encode(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model, tok = minilm
    assert model.pooling == "mean" and model.normalize and isinstance(model.classifier, torch.nn.Linear)
    b = tok(TEXTS, max_length=128)
    reference = sentence_transformers.SentenceTransformer(str(minitune.checkpoints.hub.resolve_model("minilm")))
    expected = torch.tensor(reference.encode(TEXTS))
    for unpadded in (True, False):  # the packed path (pads removed) and the padded one
        model.set_unpadded(unpadded)
        with torch.no_grad():
            got = model.embed(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    model.set_unpadded(0.15)


def tiny_encoder(tmp_path, model_type="bert"):
    torch.manual_seed(0)
    path = tmp_path / model_type
    transformers.AutoModel.from_config(CONFIGS[model_type]()).save_pretrained(path)
    return path


def batch(pad_id=0):
    ids = torch.tensor(
        [[5, 6, 7, 8, 9, 10], [11, 12, pad_id, pad_id, pad_id, pad_id], [13, 14, 15, pad_id, pad_id, pad_id]]
    )
    return ids, (ids != pad_id).long()


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_pooled_head_reads_the_pooled_vector_padded_and_unpadded_alike(tmp_path, model_type, mode):
    model = minitune.load_model(tiny_encoder(tmp_path, model_type), num_labels=3, pooling=mode)
    ids, mask = batch(0 if model_type == "bert" else 1)
    hidden = model.base(ids, mask)  # (B, T, H), padded layout
    keep = mask.bool().unsqueeze(-1)
    if mode == "mean":
        pooled = (hidden * keep).sum(1) / keep.sum(1)
    else:
        pooled = torch.stack([hidden[b][mask[b].bool()].max(0).values for b in range(len(ids))])
    expected = model.classifier(pooled)
    for unpadded in (True, False):
        model.set_unpadded(unpadded)
        with torch.no_grad():
            assert_close_scaled(model(ids, mask), expected.detach(), atol=1e-5, name=f"{mode} unpadded={unpadded}")


def test_pooling_flag_choices_and_families_without_pooled_heads(tmp_path):
    path = tiny_encoder(tmp_path)
    assert minitune.load_model(path).pooling == "cls"  # nothing declared: the family's reference head
    assert minitune.load_model(path, pooling="max").pooling == "max"
    assert minitune.load_model("minilm", pooling="cls").pooling == "cls"  # an explicit choice beats the declaration
    with pytest.raises(ParameterError, match="pooling 'first' is not supported"):
        minitune.load_model(path, pooling="first")
    torch.manual_seed(0)
    distil = transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=4, hidden_dim=37)
    transformers.DistilBertModel(distil).save_pretrained(tmp_path / "distil")
    assert minitune.load_model(tmp_path / "distil").task_head == "sequence"  # auto: its reference head
    with pytest.raises(ParameterError, match="pooling mean is not available for model_type 'distilbert'"):
        minitune.load_model(tmp_path / "distil", pooling="mean")


def test_pooled_head_saves_in_the_sentence_transformers_layout_and_reloads_exactly(tmp_path, minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model, tok = minilm
    torch.manual_seed(1)
    model.classifier.weight.data.normal_()
    model.classifier.bias.data.normal_()
    b = tok(TEXTS, max_length=128)
    with torch.no_grad():
        logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    out = tmp_path / "saved"
    minitune.save_pretrained(model, out, label_names=["a", "b", "c"])
    tok.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["minitune_pooling"] == "mean" and saved["architectures"] == ["BertModel"]
    again = minitune.load_model(out)
    assert again.pooling == "mean" and again.head_trained and again.label_names == ["a", "b", "c"]
    with torch.no_grad():
        assert torch.equal(again(b["input_ids"], b["attention_mask"], b["token_type_ids"]), logits)
    # sentence-transformers loads the same layout and pools the same way: its "embedding" is our logits.
    st = sentence_transformers.SentenceTransformer(str(out))
    assert_close_scaled(torch.tensor(st.encode(TEXTS)), logits, atol=1e-5, name="sentence-transformers encode")
    # transformers' classification class would put its own [CLS] pooler under our head: it finds no head to load.
    _, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert {"classifier.weight", "classifier.bias"} <= set(info["missing_keys"])
    # A [CLS] head (the reference) keeps transformers' own layout and is read by transformers as it is.
    cls_model = minitune.load_model("minilm", num_labels=2, pooling="cls")
    minitune.save_pretrained(cls_model, tmp_path / "cls")
    assert not (tmp_path / "cls" / "modules.json").exists()
    assert json.loads((tmp_path / "cls" / "config.json").read_text())["minitune_pooling"] == "cls"
    assert minitune.load_model(tmp_path / "cls").pooling == "cls"  # the recorded pooling beats nothing declared


def choice_examples():
    return [
        Example(
            text="a quick vegetarian pasta", choices=("beef stew", "tomato pasta with basil", "fish tacos"), label=1
        ),
        Example(
            text="something sweet for dessert", choices=("chocolate cake", "garlic bread", "caesar salad"), label=0
        ),
    ]


def test_bi_encoder_scores_scaled_cosine_of_separate_embeddings_in_one_pass(minilm):
    _, tok = minilm
    model = minitune.load_model("minilm", head="multiple_choice")
    assert model.choice_scorer == "bi" and model.classifier is None and model.head_trained
    examples = choice_examples()
    feats = tokenize(examples, tok, MULTIPLE_CHOICE, 64, bi=True)
    assert len(feats[0]["input_ids"]) == 4  # the query, then each option alone
    b = collate(feats, pad_id=tok.pad_token_id)  # (B, 1 + C, T)
    calls = []
    model.base.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    logits = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
    assert calls == [torch.Size([8, b["input_ids"].shape[-1]])]  # every text of the batch in one pass
    for ex, row in zip(examples, logits):
        enc = tok([ex.text, *ex.choices], max_length=64)
        with torch.no_grad():
            e = model.embed(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        expected = BI_SCALE * torch.nn.functional.cosine_similarity(e[:1], e[1:])
        torch.testing.assert_close(row.detach(), expected, atol=1e-4, rtol=1e-5)
    assert logits.argmax(1).tolist() == [1, 0]  # the pretrained embedding already ranks these right
    torch.nn.functional.cross_entropy(logits, b["labels"]).backward()  # trainable: softmax CE over the options
    assert model.base.embeddings.word_embeddings.weight.grad is not None


def test_bi_encoder_saves_reloads_and_cross_stays_available(tmp_path, minilm):
    _, tok = minilm
    model = minitune.load_model("minilm", head="multiple_choice")
    minitune.save_pretrained(model, tmp_path / "bi")
    saved = json.loads((tmp_path / "bi" / "config.json").read_text())
    assert saved["minitune_choice_scorer"] == "bi"
    modules = json.loads((tmp_path / "bi" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    again = minitune.load_model(tmp_path / "bi", head="multiple_choice")
    assert again.choice_scorer == "bi" and again.normalize
    b = collate(tokenize(choice_examples(), tok, MULTIPLE_CHOICE, 64, bi=True), pad_id=tok.pad_token_id)
    with torch.no_grad():
        args = (b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
        assert torch.equal(again(*args), model(*args))
    cross = minitune.load_model("minilm", head="multiple_choice", choice_scorer="cross")
    assert cross.choice_scorer == "cross" and cross.classifier.out_features == 1
    with pytest.raises(ParameterError, match="choice_scorer 'dual' is not supported"):
        minitune.load_model("minilm", head="multiple_choice", choice_scorer="dual")


def test_mean_pooled_run_saves_and_predicts_with_its_head(tmp_path, data_dir):
    from minitune.cli import main
    from minitune.predict import predict_file

    out = tmp_path / "run"
    small = ["--max-train-samples", "32", "--max-eval-samples", "16", "--epochs", "1", "--max-length", "32"]
    assert main(["--task", "humor", "--data-dir", str(data_dir), "--output-dir", str(out), *small]) == 0
    assert json.loads((out / "model" / "config.json").read_text())["minitune_pooling"] == "mean"
    assert (out / "model" / "modules.json").is_file() and (out / "model" / "2_Dense" / "model.safetensors").is_file()
    texts = tmp_path / "texts.csv"
    texts.write_text("id,text\n1,What do you call a fish with no eyes? A fsh.\n2,The meeting is at noon.\n")
    predict_file(out, texts, tmp_path / "p.csv")
    model, tok = minitune.load_model(out / "model"), minitune.load_tokenizer(out / "model")
    enc = tok(["What do you call a fish with no eyes? A fsh.", "The meeting is at noon."])
    with torch.no_grad():
        probs = torch.softmax(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), -1)
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("id,text,label,prob_")
    got = [float(v) for v in rows[1].split(",")[-2:]]
    assert torch.allclose(torch.tensor(got), probs[0], atol=1e-4)
    # Its card says where it loads, and that transformers' classification classes would not compute this head.
    card = (out / "model" / "README.md").read_text()
    assert "Trained on: humor" in card and "SentenceTransformer(" in card and "random classifier" in card
    # ... which is so: transformers' class loads the encoder and a fresh classifier, with other outputs.
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model", num_labels=2).eval()
    with torch.no_grad():
        theirs = torch.softmax(ref(**dict(enc)).logits, -1)
    assert not torch.allclose(theirs, probs, atol=1e-3)


def test_a_transformers_choice_head_beside_declared_pooling_stays_a_cross_encoder(tmp_path):
    """A checkpoint with a trained BertForMultipleChoice head and sentence-transformers files declaring mean
    pooling: the features (choice_scorer_for) and the model (load_model) must agree on cross, the head's own way."""
    from minitune.checkpoints.load import choice_scorer_for

    torch.manual_seed(0)
    path = tmp_path / "mc"
    transformers.BertForMultipleChoice(CONFIGS["bert"]()).save_pretrained(path)
    (path / "1_Pooling").mkdir()
    modules = [{"path": "", "type": "x.Transformer"}, {"path": "1_Pooling", "type": "x.Pooling"}]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert declared_pooling(path).mode == "mean"
    model = minitune.load_model(path, head="multiple_choice")
    assert choice_scorer_for(path) == "cross" and model.choice_scorer != "bi" and model.head_trained
    # Without the trained head, the declared pooling decides: both say bi.
    bare = tmp_path / "bare"
    transformers.BertModel(CONFIGS["bert"]()).save_pretrained(bare)
    for f in ("modules.json", "1_Pooling"):
        (bare / f).symlink_to(path / f)
    assert choice_scorer_for(bare) == "bi" and minitune.load_model(bare, head="multiple_choice").choice_scorer == "bi"


def test_in_batch_negatives_add_the_other_items_options_while_training_only(minilm):
    _, tok = minilm
    model = minitune.load_model("minilm", head="multiple_choice")
    model.in_batch_negatives = True
    for m in model.modules():  # training mode without dropout's noise, to compare with a hand computation
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attn_dropout"):
            m.attn_dropout = 0.0
    examples = choice_examples()
    b = collate(tokenize(examples, tok, MULTIPLE_CHOICE, 64, bi=True), pad_id=tok.pad_token_id)
    args = (b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
    with torch.no_grad():
        evaluated = model.eval()(*args)
        trained = model.train()(*args)
        model.eval()
        embedded = []
        for ex in examples:
            enc = tok([ex.text, *ex.choices], max_length=64)
            embedded.append(model.embed(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]))
    assert evaluated.shape == (2, 3) and trained.shape == (2, 6)
    for i, j in ((0, 1), (1, 0)):  # item i's query against its own options first (the target's positions), then j's
        options = torch.cat([embedded[i][1:], embedded[j][1:]])
        expected = BI_SCALE * torch.nn.functional.cosine_similarity(embedded[i][:1], options)
        torch.testing.assert_close(trained[i], expected, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(evaluated[i], expected[:3], atol=1e-4, rtol=1e-5)


BI_ONLY = "error: --in-batch-negatives trains a bi-encoder"


@pytest.mark.parametrize(
    "task, extra, message",
    [
        ("humor", [], BI_ONLY),
        ("recipe-mpr", ["--choice-scorer", "cross"], BI_ONLY),
        ("recipe-mpr", ["--model", "ffnn"], BI_ONLY),
        ("recipe-mpr", ["--class-weights", "balanced"], "error: --class-weights and --label-smoothing spread"),
        ("recipe-mpr", ["--label-smoothing", "0.1"], "error: --class-weights and --label-smoothing spread"),
    ],
)
def test_in_batch_negatives_are_refused_where_no_bi_encoder_trains(tmp_path, data_dir, capsys, task, extra, message):
    from minitune.cli import main

    out = tmp_path / "run"
    cmd = ["--task", task, "--data-dir", str(data_dir), "--output-dir", str(out), "--in-batch-negatives", *extra]
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message) and not out.exists()


def test_in_batch_order_for_three_items_and_a_shared_option_text_left_out():
    from minitune.models.pooling import bi_scores

    torch.manual_seed(0)
    table = torch.randn(50, 8)
    ids = torch.randint(1, 50, (3, 1 + 4, 6))  # (B, 1 + C, T)
    ids[2, 3] = ids[0, 1]  # item 2's option 2 has the same tokens as item 0's option 0 (Recipe-MPR reuses texts)
    logits = bi_scores(lambda i, m, t: table[i].mean(1), ids, in_batch=True)
    e = torch.nn.functional.normalize(table[ids].mean(2), dim=-1)  # (B, 1 + C, H)
    for i in range(3):
        order = [i] + [j for j in range(3) if j != i]  # its own options first, then the others' in batch order
        expected = BI_SCALE * torch.cat([e[j, 1:] @ e[i, 0] for j in order])
        shared = {0: 4 + 4 + 2, 2: 4 + 0}  # where the other item's copy of one of its own options sits
        if i in shared:  # it may be this item's answer: no negative
            expected[shared[i]] = float("-inf")
        torch.testing.assert_close(logits[i], expected, atol=1e-5, rtol=1e-5)
