"""`--long-text chunk`: a text longer than max_length is read as overlapping windows, and its logits are the mean of
its windows' logits, in training, evaluation and predict; checked against cutting and running each window by hand."""

import csv
import json

import pytest
import torch
from torch.testing import assert_close

import minitune
from minitune.cli import main
from minitune.data.batching import make_collate
from minitune.data.examples import Example
from minitune.data.features import tokenize
from minitune.data.long_text import pool_windows
from minitune.train.gradients import forward_loss

LONG = (
    "The committee met on a Tuesday to discuss the annual budget, and after three hours of debate about the "
    "price of paper clips it decided, unanimously, to meet again next Tuesday to discuss the length of meetings."
)


def by_hand(tokenizer, text: str, max_length: int, overlap: int) -> list[list[int]]:
    """Windows cut from the text's ids: max_length - 2 text tokens each, each moving on by that minus overlap,
    wrapped in [CLS] ... [SEP]."""
    ids, room = tokenizer.encode_text(text), max_length - 2
    starts = range(0, max(len(ids) - overlap, 1), room - overlap)
    cls_, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    return [[cls_, *ids[s : s + room], sep] for s in starts]


def test_windows_are_the_texts_spans_with_special_tokens():
    tok = minitune.load_tokenizer("minilm")
    feats = tokenize([Example(LONG, label=1), Example("Short.", label=0)], tok, "single_label", 16, chunk_overlap=4)
    assert feats[0]["input_ids"] == by_hand(tok, LONG, 16, 4) and len(feats[0]["input_ids"]) > 3
    assert feats[1]["input_ids"] == [tok.encode("Short.")]  # a short text is one window, as truncation gives it
    assert all(len(w) <= 16 for w in feats[0]["input_ids"])
    batch = make_collate("dynamic", 16, tok.pad_token_id)(feats)
    n = len(feats[0]["input_ids"])
    assert batch["input_ids"].shape == (n + 1, 16) and batch["window_of"].tolist() == [0] * n + [1]
    assert batch["labels"].tolist() == [1, 0]  # one label per text, not per window
    # later calls truncate as before: the tokenizer's window setting does not stay behind
    assert (
        len(tok.encode(LONG, max_length=16)) == 16
        and len(tok.encode_batch([LONG], max_length=20)[0]["input_ids"]) == 20
    )


def test_pooled_logits_are_each_texts_mean_over_its_windows():
    logits = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0], [0.0, -1.0]])
    pooled = pool_windows(logits, {"window_of": torch.tensor([0, 0, 0, 1])})
    assert_close(pooled, torch.tensor([[3.0, 3.0], [0.0, -1.0]]))
    assert pool_windows(logits, {}) is logits


def test_the_training_loss_is_the_task_loss_of_the_mean_window_logits():
    model = minitune.load_model("minilm", num_labels=2).eval()
    tok = minitune.load_tokenizer("minilm")
    examples = [Example(LONG, label=1), Example("Short.", label=0), Example(LONG[:90], label=0)]
    batch = make_collate("dynamic", 16, tok.pad_token_id)(tokenize(examples, tok, "single_label", 16, chunk_overlap=4))
    loss_fn = torch.nn.CrossEntropyLoss()
    loss, _ = forward_loss(model, loss_fn, batch, "fp32", torch.device("cpu"))
    rows = []
    with torch.no_grad():
        for ex in examples:
            windows = by_hand(tok, ex.text, 16, 4)
            rows.append(torch.stack([model(torch.tensor([w]))[0] for w in windows]).mean(0))
    assert_close(loss.detach(), loss_fn(torch.stack(rows), torch.tensor([1, 0, 0])), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("chunk") / "run"
    args = ["--task", "humor", "--model", "minilm", "--data-dir", str(data_dir), "--epochs", "1", "--max-length", "24"]
    args += ["--max-train-samples", "32", "--max-eval-samples", "16", "--long-text", "chunk", "--chunk-overlap", "6"]
    assert main([*args, "--output-dir", str(out)]) == 0
    return out


def test_predict_reads_a_chunked_models_windows_as_it_trained(chunked_run, tmp_path):
    saved = json.loads((chunked_run / "model" / "config.json").read_text())["minitune_chunk"]
    assert saved == {"max_length": 24, "overlap": 6}
    texts = [LONG, "A pun is its own reword."]
    got = minitune.Predictor(chunked_run).predict(texts)
    names = list(got.label_names)
    model, tok = minitune.load_model(chunked_run / "model").eval(), minitune.load_tokenizer(chunked_run / "model")
    with torch.no_grad():
        for text, p in zip(texts, got.probabilities):
            logits = torch.stack([model(torch.tensor([w]))[0] for w in by_hand(tok, text, 24, 6)]).mean(0)
            assert_close(torch.as_tensor(p, dtype=torch.float32), logits.softmax(-1), atol=1e-5, rtol=1e-5)
    import shutil  # a model copied out of its run folder still reads texts in its own windows

    shutil.copytree(chunked_run / "model", tmp_path / "moved")
    assert_close(
        torch.as_tensor(minitune.Predictor(tmp_path / "moved").predict(texts).probabilities),
        torch.as_tensor(got.probabilities),
    )
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "\n".join(f'"{t}"' for t in texts) + "\n")
    assert main(["predict", "--model", str(chunked_run), "--input", str(src), "--output", str(tmp_path / "p.csv")]) == 0
    with (tmp_path / "p.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == texts
    assert [float(r["prob_humor"]) for r in rows] == pytest.approx(
        [p[names.index("humor")] for p in got.probabilities], abs=1e-5
    )


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--chunk-overlap", "4"], "`--chunk-overlap` sets how `--long-text` chunk windows overlap"),
        (["--long-text", "chunk", "--chunk-overlap", "20"], "--chunk-overlap 20 must be from 0 to half"),
        (["--long-text", "chunk", "--model", "ffnn"], "`--model` ffnn reads every token already"),
        (["--long-text", "chunk", "--model", "smollm2"], "smollm2 is a decoder"),
        (["--long-text", "chunk", "--task", "recipe-mpr"], "recipe-mpr's options are short texts"),
        (["--long-text", "chunk", "--pair-col", "b"], "`--pair-col` gives two texts, not one to cut"),
        (["--long-text", "chunk", "--head", "generative"], "`--head` generative reads its prompt whole"),
    ],
)
def test_chunk_options_that_cannot_apply_are_refused_in_one_line(extra, words, tmp_path, data_dir, capsys):
    args = ["--task", "humor", "--model", "minilm", "--data-dir", str(data_dir), "--max-length", "32"]
    args += ["--output-dir", str(tmp_path / "o")]
    assert main([*args, *extra]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert words.replace("`", "") in last.replace("`", "")
    assert not (tmp_path / "o").exists()


def test_a_token_budget_counts_every_window_of_a_text():
    from minitune.data.batching import TokenBudgetBatchSampler, length_of

    tok = minitune.load_tokenizer("minilm")
    texts = [Example(LONG * k, label=0) for k in (1, 2, 3)] + [Example("Short.", label=0)] * 5
    feats = tokenize(texts, tok, "single_label", 16, chunk_overlap=4)
    collate = make_collate("dynamic", 16, tok.pad_token_id)
    budget = 256  # the longest text brings 12 windows of 16
    for batch in TokenBudgetBatchSampler([length_of(f) for f in feats], budget, seed=0):
        rows = collate([feats[i] for i in batch])["input_ids"]
        assert rows.numel() <= budget, (batch, tuple(rows.shape))  # windows x padded length, not texts


def test_a_model_trained_on_whole_texts_from_a_chunked_one_forgets_its_windows(chunked_run, tmp_path, data_dir):
    out = tmp_path / "whole"
    args = ["--task", "humor", "--model", str(chunked_run / "model"), "--data-dir", str(data_dir), "--epochs", "1"]
    assert main([*args, "--max-train-samples", "16", "--max-eval-samples", "8", "--output-dir", str(out)]) == 0
    assert "minitune_chunk" not in json.loads((out / "model" / "config.json").read_text())
