"""Integrated gradients (eval/attributions.py): completeness on tiny random BERT and decoder score heads, the closed
form on a model linear in its embeddings, a hook that leaves no trace, `minitune explain` end to end with its user
errors, and report.html's highlighted errors."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import minitune
from minitune.adapters.lora import apply_adapters
from minitune.cli import main
from minitune.config.sections import AdapterSettings
from minitune.eval.attributions import (
    ATTRIBUTIONS_FILE,
    BASELINES,
    embeddings_replaced,
    integrated_gradients,
)
from minitune.models import bert, modernbert, word_embedding
from minitune.models import decoder as dec
from minitune.predict import Predictor
from test_decoder import hub as decoder_hub  # tests/ is on sys.path under pytest

# Completeness: |sum of the scores - (F(x) - F(x'))| at most GAP_TOL (1 + |F(x) - F(x')|) at 32 Gauss-Legendre points.
# Measured on these tiny models: 1e-8 to 1e-7 from 16 points on (fp32 rounding), so 1e-4 leaves room for other BLAS
# builds yet fails any wrong weight, node or sign (those miss by 1e-2 and more).
GAP_TOL = 1e-4
# The bag-of-embeddings baseline is piecewise linear (ReLU): at a kink on the path the quadrature's high order is lost,
# so its runs get a looser bound (measured: 2e-4 at 32 points on the fixture's run, where the logits move by 0.09).
FFNN_TOL = 2e-3
CLS, SEP = 2, 3
IDS = [CLS, 17, 42, 8, 91, 55, 23, 60, 11, SEP]


def within_tolerance(a) -> bool:
    return a.gap <= GAP_TOL * (1 + abs(a.logit_difference))


def randomized(model: nn.Module, seed: int = 1) -> nn.Module:
    """Weights large enough that the logits move far along the path (PyTorch's default init keeps them near
    constant), and every embedding row drawn, the pad row too, as in a trained table."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if isinstance(model.get_submodule(name.rpartition(".")[0]), nn.Embedding):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_bert() -> nn.Module:
    cfg = dict(
        model_type="bert",
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        pad_token_id=0,
    )
    return randomized(bert.build(bert.config_from_hf(cfg), "sequence", 3))


@pytest.mark.parametrize("baseline", BASELINES)
def test_completeness_on_tiny_bert_and_the_gap_shrinks_with_steps(baseline):
    model = tiny_bert()
    runs = {
        s: integrated_gradients(model, IDS, steps=s, baseline=baseline, pad_id=0, keep={CLS, SEP})
        for s in (1, 2, 4, 32)
    }
    a = runs[32]
    assert abs(a.logit_difference) > 0.05  # a path along which the logit moves: completeness is not 0 = 0
    assert within_tolerance(a), (a.attribution_sum, a.logit_difference)
    assert runs[1].gap > runs[2].gap > runs[4].gap > a.gap
    assert runs[1].gap > 100 * a.gap  # one point is a poor quadrature; the check can fail
    assert a.scores.shape == (len(IDS),) and len({runs[s].target for s in runs}) == 1
    if baseline == "pad":  # the baseline keeps [CLS] and [SEP]: they never differ from it, so they score 0
        assert a.scores[0] == 0 and a.scores[-1] == 0


def test_explained_logit_is_the_one_a_padded_unpadded_batch_gives():
    """One text alone on the path, with the same logits as in a padded batch run unpadded (the encoders' default)."""
    model = tiny_bert()
    other = [CLS, 5, 6, SEP]
    ids = torch.tensor([IDS, other + [0] * (len(IDS) - len(other))])  # (2, T)
    mask = (ids != 0).long()
    with torch.no_grad():
        batch = model(ids, mask, torch.zeros_like(ids))
    a = integrated_gradients(model, IDS, [0] * len(IDS), steps=8, pad_id=0, keep={CLS, SEP})
    torch.testing.assert_close(torch.from_numpy(a.logits), batch[0], rtol=1e-5, atol=1e-5)
    assert a.target == int(batch[0].argmax())


def test_modernbert_pad_baseline_completes_and_its_zero_baseline_is_degenerate():
    """A norm right after the word embeddings makes the model scale-invariant along a path from zero: it jumps at
    the zero end, which no quadrature resolves (the module docstring's caveat); from the pad baseline it is smooth."""
    cfg = dict(
        model_type="modernbert",
        vocab_size=99,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=128,
        global_attn_every_n_layers=3,
        local_attention=4,
        pad_token_id=0,
    )
    model = randomized(modernbert.build(modernbert.config_from_hf(cfg), "sequence", 3))
    a = integrated_gradients(model, IDS, steps=32, baseline="pad", pad_id=0, keep={CLS, SEP})
    assert abs(a.logit_difference) > 0.05 and within_tolerance(a)
    for steps in (32, 64):
        zero = integrated_gradients(model, IDS, steps=steps, baseline="zero")
        assert zero.gap > 0.1 * abs(zero.logit_difference)


def save_decoder(tmp_path, model_type: str):
    """A tiny random decoder checkpoint (config.json + safetensors), for load_model's sequence head to read."""
    gemma = dict(head_dim=24, hidden_act="gelu", tie_word_embeddings=True) if model_type == "gemma" else {}
    hub = decoder_hub(model_type, rope_theta=10000.0, **gemma)  # test_decoder.py's tiny config
    lm = randomized(dec.DecoderForCausalLM(dec.config_from_hf(hub)))
    (tmp_path / "config.json").write_text(json.dumps(hub))
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma"])
def test_completeness_on_a_decoder_score_head(tmp_path, model_type):
    model = minitune.load_model(str(save_decoder(tmp_path, model_type)), num_labels=3, head="sequence").eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 0.5)  # a fresh head reads near zero; a trained one does not
    ids = [1, *range(20, 31)]  # BOS, then 11 tokens: the head reads the last one
    # Peaked attention makes this path rougher than BERT's: 64 points where BERT's needs 32 (gap 4e-3 at 32 on llama).
    a = integrated_gradients(model, ids, steps=64, baseline="pad", keep={1})
    assert abs(a.logit_difference) > 0.05
    assert within_tolerance(a), (a.attribution_sum, a.logit_difference)
    assert integrated_gradients(model, ids, steps=8, baseline="pad", keep={1}).gap > 100 * a.gap


def test_lora_model_with_frozen_embeddings_is_explained_and_no_parameter_gets_a_gradient():
    model = tiny_bert()
    apply_adapters(model, AdapterSettings(lora_r=4))
    assert not word_embedding(model).weight.requires_grad
    a = integrated_gradients(model, IDS, steps=32, baseline="zero")
    assert within_tolerance(a) and abs(a.logit_difference) > 0.05
    assert all(p.grad is None for p in model.parameters())


def test_the_hook_leaves_the_model_as_it_was():
    model = tiny_bert()
    table = word_embedding(model)
    ids = torch.tensor([IDS])
    with torch.no_grad():
        before = model(ids, torch.ones_like(ids), None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # left in training mode by its caller: IG runs in eval mode and gives the mode back
    integrated_gradients(model, IDS, steps=4, pad_id=0, keep={CLS, SEP})
    assert model.training and not table._forward_hooks and not table._forward_pre_hooks
    model.eval()
    with torch.no_grad():
        after = model(ids, torch.ones_like(ids), None)
    assert torch.equal(before, after)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="path of"), embeddings_replaced(table, torch.zeros(3, 1, 32)):
        model(ids, torch.ones_like(ids), None)  # a path of the wrong shape: refused, and unhooked all the same
    assert not table._forward_hooks


class LinearOverEmbeddings(nn.Module):
    """F(x) = w . sum_t x_t + b: the gradient is w everywhere, so IG_t = (x_t - x'_t) . w exactly."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.out(self.embed(input_ids).sum(1))


@pytest.mark.parametrize("baseline", BASELINES)
def test_closed_form_on_a_model_linear_in_its_embeddings(baseline):
    model = LinearOverEmbeddings().eval()
    ids, pad, keep = [1, 7, 12, 29, 7, 2], 0, {1, 2}
    a = integrated_gradients(model, ids, target=2, steps=3, baseline=baseline, pad_id=pad, keep=keep)
    with torch.no_grad():
        x = model.embed(torch.tensor(ids))  # (T, H)
        base = [i if i in keep else pad for i in ids]
        x0 = torch.zeros_like(x) if baseline == "zero" else model.embed(torch.tensor(base))
        expected = ((x - x0) @ model.out.weight[2]).double().numpy()  # (T,)
    torch.testing.assert_close(torch.from_numpy(a.scores), torch.from_numpy(expected), rtol=1e-5, atol=1e-6)
    assert a.target == 2 and a.gap < 1e-5


def test_multiple_choice_and_a_target_past_the_classes_are_refused():
    model = tiny_bert()
    with pytest.raises(minitune.errors.ParameterError, match="target 3 is not a class"):
        integrated_gradients(model, IDS, target=3, steps=2, pad_id=0)
    model.task_head = "multiple_choice"
    with pytest.raises(minitune.errors.ParameterError, match="model scores questions with options"):
        integrated_gradients(model, IDS, steps=2, pad_id=0)


# ------------------------------------------------------------------------------------- explain and report.html

TRAIN = "great film,pos\nawful film,neg\nsuperb acting,pos\nboring plot,neg\n" * 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished ffnn run whose dev file flips the training labels, so it has confident errors to explain."""
    tmp = tmp_path_factory.mktemp("explain")
    (tmp / "train.csv").write_text("text,label\n" + TRAIN)
    flipped = TRAIN.replace(",pos", ",tmp").replace(",neg", ",pos").replace(",tmp", ",neg")
    (tmp / "dev.csv").write_text("text,label\n" + flipped)
    (tmp / "texts.csv").write_text("id,text\na,great acting\nb,\nc,awful boring film\n")
    files = ["--train-file", str(tmp / "train.csv"), "--dev-file", str(tmp / "dev.csv")]
    args = ["--task", "custom", *files, "--model", "ffnn", "--epochs", "3", "--lr", "3e-3"]
    assert main([*args, "--output-dir", str(tmp / "run"), "--ig-steps", "64"]) == 0
    return tmp / "run"


def test_explain_writes_token_scores_for_every_row(run, tmp_path, capsys):
    out = tmp_path / "tokens.jsonl"
    texts = run.parent / "texts.csv"
    assert main(["explain", "--model", str(run), "--input", str(texts), "--output", str(out), "--steps", "32"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == [0, 1, 2] and rows[1]["tokens"] == [] and rows[1]["predicted"] is None
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    labels = Predictor(run).predict(["great acting", "awful boring film"]).labels
    for r, label in zip((rows[0], rows[2]), labels):
        assert r["predicted"] == label == r["target"]  # no --label: each text's most probable label
        assert r["tokens"][0] == "[CLS]" and r["tokens"][-1] == "[SEP]" and len(r["scores"]) == len(r["tokens"])
        assert r["scores"][0] == 0 and r["scores"][-1] == 0  # kept by the pad baseline
        assert r["completeness_gap"] <= FFNN_TOL and abs(sum(r["scores"]) - r["logit_difference"]) <= FFNN_TOL
    assert rows[2]["id"] == "c" and rows[2]["tokens"][1:-1] == ["awful", "boring", "film"]
    printed = capsys.readouterr().out
    assert "row 0: predicted" in printed and "wrote 3 rows" in printed
    assert main(["explain", "--model", str(run), "--input", str(texts), "--output", str(out), "--label", "neg"]) == 0
    assert {json.loads(line).get("target") for line in out.read_text().splitlines()} == {"neg", None}


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model", "/no/such/run"], "--model /no/such/run: no such directory"),
        (["--input", "/no/such.csv"], "/no/such.csv: file not found"),
        (["--label", "postive"], "--label 'postive' is not one of the model's labels (neg, pos) (did you mean 'pos'?)"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--baseline", "mean"], "argument --baseline: invalid choice: 'mean'"),
    ],
)
def test_explain_user_errors_end_in_one_line(run, tmp_path, capsys, change, message):
    args = {"--model": str(run), "--input": str(run.parent / "texts.csv"), "--output": str(tmp_path / "o.jsonl")}
    args |= dict(zip(change[::2], change[1::2]))
    assert main(["explain", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_report_highlights_the_surest_errors_and_redraws_them_from_the_files(run):
    explained = [json.loads(line) for line in (run / ATTRIBUTIONS_FILE).read_text().splitlines()]
    records = [json.loads(line) for line in (run / "predictions_dev.jsonl").read_text().splitlines()]
    wrong = sorted((max(r["probs"]) for r in records if r["probs"].index(max(r["probs"])) != r["gold"]), reverse=True)
    assert [e["confidence"] for e in explained] == pytest.approx(wrong[:5], abs=1e-6)  # explain_errors defaults to 5
    assert all(e["target"] == e["predicted"] != e["gold"] and e["steps"] == 64 for e in explained)
    assert all(e["completeness_gap"] <= FFNN_TOL for e in explained)
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert f"Why: the {len(explained)} surest errors, token by token" in page and "<script" not in page
    spans = re.findall(r'<span class="tok[^"]*" style="background:rgba\(([\d,]+),([\d.]+)\)" title="([^"]+)">', page)
    assert len(spans) == sum(len(e["tokens"]) for e in explained)
    top = max(abs(s) for s in explained[0]["scores"])
    first = spans[: len(explained[0]["tokens"])]
    for (rgb, alpha, title), score in zip(first, explained[0]["scores"]):
        assert float(title) == pytest.approx(score, abs=1e-4)
        assert float(alpha) == pytest.approx(0.85 * abs(score) / top, abs=0.006)
        assert rgb == ("26,152,80" if score > 0 else "215,48,39")


def test_no_explanations_when_explain_errors_is_zero(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + TRAIN)
    args = ["--task", "custom", "--train-file", str(tmp_path / "train.csv"), "--model", "ffnn", "--epochs", "1"]
    assert main([*args, "--output-dir", str(tmp_path / "run"), "--explain-errors", "0"]) == 0
    assert not (tmp_path / "run" / ATTRIBUTIONS_FILE).exists()
    assert "surest errors, token by token" not in (tmp_path / "run" / "report.html").read_text()
