"""Adversarial training (train/adversarial.py), adaptive loss weights (train/loss_weighting.py) and augmentation
(data/augment.py): each formula against a hand computation, the weights left bit for bit as they were, and the
settings' mistakes as one line."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
import transformers
from torch import nn

import minitune
from minitune.adapters.lora import apply_adapters
from minitune.cli import main
from minitune.config.sections import AdapterSettings, AdversarySettings, AugmentSettings, LoopSettings, LossSettings
from minitune.data.augment import augmented_copies, chosen_rows, word_ops
from minitune.data.batching import BucketedBatchSampler, collate, length_of
from minitune.data.examples import Example
from minitune.models import word_embedding
from minitune.train import adversarial
from minitune.train.adversarial import Adversary
from minitune.train.amp import DynamicLossScaler
from minitune.train.gradients import accumulate_gradients
from minitune.train.loop import TrainData, fit
from minitune.train.loss_weighting import AdaptiveLoss, adaptive_loss
from minitune.train.losses import build_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(3)
    cfg = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,  # the same forward twice must give the same numbers
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    path = tmp_path_factory.mktemp("tiny")
    transformers.BertForSequenceClassification(cfg).save_pretrained(path)
    return path


def tiny(tiny_dir, lora=False):
    model = minitune.load_model(tiny_dir, num_labels=3)
    if lora:
        apply_adapters(model, AdapterSettings(lora_r=4, lora_alpha=8.0, lora_dropout=0.0))
    return model.train()


def features(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = [2] + torch.randint(5, 90, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist() + [3]
        out.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "label": i % 3})
    return out


def manual(model, batch, loss_fn, delta=None):
    """The loss with `delta` added to the word vectors, and the gradient of the loss w.r.t. those vectors."""
    kept = {}

    def hook(module, args, out):
        out = (out if delta is None else out + delta).detach().requires_grad_()
        kept["e"] = out
        return out

    handle = word_embedding(model).register_forward_hook(hook)
    loss = loss_fn(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"])
    handle.remove()
    (g,) = torch.autograd.grad(loss, kept["e"])
    return loss.detach(), g


def recorded_deltas(monkeypatch) -> list:
    seen = []
    real = adversarial._adding

    def adding(deltas):
        seen.append([d.detach().clone() for d in deltas])
        return real(deltas)

    monkeypatch.setattr(adversarial, "_adding", adding)
    return seen


def attack_once(model, batch, kind, scale=1.0, **settings):
    """One micro-batch's clean and perturbed backward, as the loop runs them; returns (clean, perturbed) loss."""
    adv = Adversary(model, AdversarySettings(adversarial=kind, **settings))
    loss_fn = build_loss("ce", "single_label", 3)
    scaler = DynamicLossScaler(enabled=scale != 1.0, init_scale=scale)
    clean, _ = accumulate_gradients(model, loss_fn, [batch], "fp32", CPU, scaler, None, adv)
    return clean, adv.loss


def test_fgm_perturbation_is_eps_times_the_unit_gradient_per_example(tiny_dir, monkeypatch):
    model, batch = tiny(tiny_dir), collate(features(5), 0)
    loss_fn = build_loss("ce", "single_label", 3)
    _, g = manual(model, batch, loss_fn)
    expected = 0.7 * g / g.flatten(1).norm(dim=1)[:, None, None]  # (B, T, H): one norm per example
    seen = recorded_deltas(monkeypatch)
    clean, perturbed = attack_once(model, batch, "fgm", adv_eps=0.7)
    torch.testing.assert_close(seen[0][0], expected, rtol=1e-5, atol=1e-7)
    assert [float(d.flatten(1).norm(dim=1).max()) for d in seen[0]] == pytest.approx([0.7], rel=1e-5)
    # the perturbed loss is the loss at e + r, and it is higher: r follows the gradient
    assert perturbed == pytest.approx(float(manual(model, batch, loss_fn, expected)[0]), rel=1e-6)
    assert perturbed > clean


def test_fgm_gradient_is_the_clean_plus_the_perturbed_gradient(tiny_dir):
    batch = collate(features(4), 0)
    model = tiny(tiny_dir)
    attack_once(model, batch, "fgm", adv_eps=0.5)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref = tiny(tiny_dir)
    loss_fn = build_loss("ce", "single_label", 3)
    _, g = manual(ref, batch, loss_fn)
    r = 0.5 * g / g.flatten(1).norm(dim=1)[:, None, None]
    loss = loss_fn(ref(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"])
    loss.backward()
    handle = word_embedding(ref).register_forward_hook(lambda m, a, out: out + r)
    loss_fn(ref(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"]).backward()
    handle.remove()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("kind", ["fgm", "pgd", "awp"])
@pytest.mark.parametrize("lora", [False, True])
def test_weights_and_embeddings_are_bit_identical_after_each_attack(tiny_dir, kind, lora):
    model, batch = tiny(tiny_dir, lora), collate(features(6), 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        clean, perturbed = attack_once(model, batch, kind, adv_eps=0.05 if kind == "awp" else 1.0)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert perturbed > clean  # the attack did perturb (else the test could not fail)
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))  # hooks removed


def test_frozen_embeddings_under_lora_are_perturbed_too(tiny_dir, monkeypatch):
    model, batch = tiny(tiny_dir, lora=True), collate(features(3), 0)
    assert not word_embedding(model).weight.requires_grad
    seen = recorded_deltas(monkeypatch)
    attack_once(model, batch, "fgm")
    assert float(seen[0][0].flatten(1).norm(dim=1).min()) == pytest.approx(0.1, rel=1e-5)  # the default eps


def test_pgd_steps_stay_in_the_eps_ball_and_climb_the_loss(tiny_dir, monkeypatch):
    model, batch = tiny(tiny_dir), collate(features(5), 0)
    seen = recorded_deltas(monkeypatch)
    clean, perturbed = attack_once(model, batch, "pgd", adv_eps=0.5, adv_alpha=0.3, adv_steps=3)
    assert len(seen) == 3  # two inner steps, then the perturbation trained on
    norms = [float(d[0].flatten(1).norm(dim=1).max()) for d in seen]
    assert norms[0] == pytest.approx(0.3, rel=1e-5) and max(norms) <= 0.5 + 1e-6
    assert norms[-1] == pytest.approx(0.5, rel=1e-5)  # 3 steps of 0.3 reach the ball's edge
    loss_fn = build_loss("ce", "single_label", 3)
    step1 = float(manual(model, batch, loss_fn, seen[0][0])[0])
    assert clean < step1 < perturbed  # each step climbs


def test_awp_moves_each_matrix_by_eps_times_its_norm(tiny_dir):
    model, batch = tiny(tiny_dir), collate(features(4), 0)
    w = model.bert.encoder["layer"][0].attention["self"]["query"].weight
    loss_fn = build_loss("ce", "single_label", 3)
    loss_fn(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"]).backward()
    g, w0 = w.grad.clone(), w.detach().clone()
    with Adversary(model, AdversarySettings(adversarial="awp", adv_eps=0.01)).weights_perturbed():
        moved = w.detach().clone()
    torch.testing.assert_close(moved - w0, 0.01 * w0.norm() * g / g.norm(), rtol=1e-4, atol=1e-8)
    assert torch.equal(w, w0)


@pytest.mark.parametrize("kind", ["fgm", "awp"])
def test_the_step_does_not_depend_on_how_the_window_is_cut(tiny_dir, kind):
    """One batch of 8 and micro-batches of 3 and 5 give the same gradient: FGM's perturbation is per example, AWP's
    comes from the window's whole clean gradient."""
    feats = features(8)
    loss_fn, scaler = build_loss("ce", "single_label", 3), DynamicLossScaler(enabled=False)
    one, two = tiny(tiny_dir), tiny(tiny_dir)
    settings = AdversarySettings(adversarial=kind, adv_eps=0.05 if kind == "awp" else None)
    accumulate_gradients(one, loss_fn, [collate(feats, 0)], "fp32", CPU, scaler, None, Adversary(one, settings))
    micro = [collate(feats[:3], 0), collate(feats[3:], 0)]
    accumulate_gradients(two, loss_fn, micro, "fp32", CPU, scaler, None, Adversary(two, settings))
    for (n, a), (_, b) in zip(one.named_parameters(), two.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_the_loss_scale_cancels_in_the_perturbation(tiny_dir, monkeypatch):
    batch = collate(features(4), 0)
    seen = recorded_deltas(monkeypatch)
    attack_once(tiny(tiny_dir), batch, "fgm")
    attack_once(tiny(tiny_dir), batch, "fgm", scale=2.0**12)  # fp16's scaler multiplies the loss
    torch.testing.assert_close(seen[0][0], seen[1][0], rtol=1e-5, atol=1e-7)


def fit_tiny(tiny_dir, out, loop: LoopSettings, loss_fn=None, feats=None):
    out.mkdir(parents=True, exist_ok=True)
    model = tiny(tiny_dir)
    feats = feats or features(24)
    sampler = BucketedBatchSampler([length_of(f) for f in feats], 4, seed=1, window=2)
    data = TrainData(feats, sampler, lambda b: collate(b, 0))
    fitted = fit(
        model, loss_fn or build_loss("ce", "single_label", 3), data, lambda m: ({"score": 0.0}, None), loop, out, CPU
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return model, fitted.state, [r for r in records if r["type"] == "train"]


def test_adversarial_training_starts_at_its_epoch(tiny_dir, tmp_path):
    loop = LoopSettings(metric="score", epochs=2, log_every=1, adversary=AdversarySettings("fgm", adv_start_epoch=2))
    _, _, train = fit_tiny(tiny_dir, tmp_path, loop)
    assert [("adv_loss" in r) for r in train] == [r["epoch"] == 2 for r in train]
    assert all(r["adv_loss"] > 0 for r in train if r["epoch"] == 2)


# ----------------------------------------------------------------------------------------------- loss weights


def combined(weighting="uncertainty", end=None, lr=0.01):
    loss = build_loss("bce:0.3+asl:0.7", "multi_label", 4)
    return AdaptiveLoss(loss, ["bce", "asl"], weighting, end, lr), loss


def test_uncertainty_loss_is_its_formula():
    adaptive, fixed = combined()
    adaptive.load_state([0.4, -0.2])
    logits, y = torch.randn(5, 4), (torch.rand(5, 4) > 0.5).float()
    terms = torch.stack([loss(logits, y) for loss in fixed.losses])
    s = torch.tensor([0.4, -0.2])
    expected = (torch.tensor([0.3, 0.7]) * torch.exp(-s) * terms + s / 2).sum()
    torch.testing.assert_close(adaptive(logits, y), expected)
    assert adaptive.logged() == pytest.approx(
        {"loss_weight_bce": 0.3 * np.exp(-0.4), "loss_weight_asl": 0.7 * np.exp(0.2)}, rel=1e-5
    )


def test_learned_log_variances_reach_their_optimum():
    """With the terms held fixed, s_k settles where exp(-s_k) = 1 / (2 w_k L_k): a larger loss gets less weight."""
    adaptive, fixed = combined()
    logits, y = torch.randn(16, 4), (torch.rand(16, 4) > 0.5).float()
    terms = torch.stack([loss(logits, y) for loss in fixed.losses]).detach()
    opt = torch.optim.SGD(adaptive.parameters(), lr=0.2)
    for _ in range(500):
        opt.zero_grad()
        adaptive(logits, y).backward()
        opt.step()
    optimum = torch.log(2 * torch.tensor([0.3, 0.7]) * terms)
    torch.testing.assert_close(adaptive.log_vars.detach(), optimum, rtol=1e-3, atol=1e-3)


def test_scheduled_weights_move_linearly_with_progress():
    adaptive, fixed = combined("schedule", [0.9, 0.1])
    logits, y = torch.randn(5, 4), (torch.rand(5, 4) > 0.5).float()
    terms = [float(loss(logits, y)) for loss in fixed.losses]
    for progress, w in ((0.0, (0.3, 0.7)), (0.5, (0.6, 0.4)), (1.0, (0.9, 0.1))):
        adaptive.set_progress(progress)
        assert float(adaptive(logits, y)) == pytest.approx(w[0] * terms[0] + w[1] * terms[1], rel=1e-6)
    assert not [p for p in adaptive.parameters() if p.requires_grad]  # nothing learned


def resumed_from_first_epoch(tiny_dir, tmp_path, loop: LoopSettings, loss_fn) -> nn.Module:
    """The run of tmp_path / "a" (2 epochs, its first epoch's checkpoint kept) resumed from that checkpoint."""
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint")
    min((tmp_path / "b").glob("checkpoint-step*")).rename(tmp_path / "b" / "checkpoint")
    model, feats = tiny(tiny_dir), features(24)
    sampler = BucketedBatchSampler([length_of(f) for f in feats], 4, seed=1, window=2)
    data = TrainData(feats, sampler, lambda b: collate(b, 0))
    fit(model, loss_fn, data, lambda m: ({"score": 0.0}, None), loop, tmp_path / "b", CPU, resume=True)
    return model


def test_loss_weights_are_logged_learned_and_resumed_exactly(tiny_dir, tmp_path):
    """A run resumed from its first epoch's checkpoint ends with the log-variances and weights of the straight run."""
    settings = LossSettings(loss="focal:0.5+ce:0.5", loss_weighting="uncertainty", loss_weight_lr=0.05)
    make = lambda: adaptive_loss(settings, build_loss(settings.loss, "single_label", 3))  # noqa: E731
    loop = LoopSettings(metric="score", epochs=2, log_every=1, keep_checkpoints=2)  # keeps epoch 1's checkpoint
    straight_loss = make()
    straight, state, train = fit_tiny(tiny_dir, tmp_path / "a", loop, straight_loss)
    assert len({r["loss_weight_focal"] for r in train}) == len(train)  # learned: a new weight every step
    assert state.loss_log_vars == straight_loss.state() != [0.0, 0.0]
    resumed_loss = make()
    model = resumed_from_first_epoch(tiny_dir, tmp_path, loop, resumed_loss)
    assert resumed_loss.state() == straight_loss.state()
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("kind", ["fgm", "pgd", "awp"])
def test_adversarial_training_resumes_exactly(tiny_dir, tmp_path, kind):
    adversary = AdversarySettings(kind, adv_eps=0.05 if kind == "awp" else 1.0)
    loop = LoopSettings(metric="score", epochs=2, log_every=1, keep_checkpoints=2, grad_accum=2, adversary=adversary)
    straight, _, _ = fit_tiny(tiny_dir, tmp_path / "a", loop)
    model = resumed_from_first_epoch(tiny_dir, tmp_path, loop, build_loss("ce", "single_label", 3))
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), model.state_dict().values()))
    logged = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [r["adv_loss"] for r in logged] == [r["adv_loss"] for r in _train_records(tmp_path / "a")]


def _train_records(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


# ----------------------------------------------------------------------------------------------- augmentation


def test_each_word_operation_alone():
    text, vocab = "the quick brown fox jumps over the lazy dog", ["zebra", "apple"]
    rng = lambda: random.Random(1)  # noqa: E731
    deleted = word_ops(text, ["delete"], 0.3, rng(), vocab).split()
    assert 0 < len(deleted) < 9 and _subsequence(deleted, text.split())
    swapped = word_ops(text, ["swap"], 0.3, rng(), vocab).split()
    assert sorted(swapped) == sorted(text.split()) and swapped != text.split()
    inserted = word_ops(text, ["insert"], 0.3, rng(), vocab).split()
    assert len(inserted) > 9 and _subsequence(text.split(), inserted)
    assert set(inserted) - set(text.split()) <= set(vocab)
    assert word_ops("alone", ["delete"], 0.99, rng(), vocab) == "alone"  # a text keeps a word
    assert word_ops(text, ["delete", "swap", "insert"], 0.2, rng(), vocab) == word_ops(
        text, ["delete", "swap", "insert"], 0.2, rng(), vocab
    )


def _subsequence(short, long):
    it = iter(long)
    return all(w in it for w in short)


def test_rare_rows_are_those_with_a_rare_label():
    multi = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 0, 0]])
    assert chosen_rows("multi_label", multi, 2).tolist() == [1, 2]
    assert chosen_rows("multi_label", multi, 0).tolist() == [0, 1, 2, 3]
    single = np.array([0, 0, 0, 1, 2, 2])
    assert chosen_rows("single_label", single, 3).tolist() == [3, 4, 5]


def test_copies_keep_labels_and_do_not_depend_on_order():
    examples = [Example(f"text number {i} with some words", label=[i % 2, 1, 0], meta={"id": i}) for i in range(6)]
    labels = np.array([ex.label for ex in examples])
    s = AugmentSettings(augment="tokens", augment_copies=2, augment_prob=0.3)
    copies = augmented_copies(s, "multi_label", examples, labels, 7, CPU)
    assert len(copies) == 12 and [c.meta["augmented"] for c in copies[:2]] == [1, 2]
    assert all(c.label == examples[i // 2].label for i, c in enumerate(copies))
    assert sum(c.text != examples[i // 2].text for i, c in enumerate(copies)) >= 10
    reordered = augmented_copies(s, "multi_label", examples[::-1], labels[::-1], 7, CPU)
    assert sorted(c.text for c in reordered) == sorted(c.text for c in copies)
    rare = AugmentSettings(augment="tokens", augment_rare=4)
    assert [c.meta["id"] for c in augmented_copies(rare, "multi_label", examples, labels, 7, CPU)] == [1, 3, 5]


# ----------------------------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--task", "humor", "--adversarial", "fgm", "--adv-eps", "0"],
            "--adv-eps must be a finite number > 0, got 0.0",
        ),
        (["--task", "humor", "--adversarial", "pgd", "--adv-eps", "-1"], "--adv-eps must be a finite number > 0"),
        (["--task", "humor", "--adversarial", "pgd", "--adv-alpha", "inf"], "--adv-alpha must be a finite number > 0"),
        (
            ["--task", "humor", "--adversarial", "awp", "--adv-start-epoch", "9"],
            "--adv-start-epoch 9 is after the last",
        ),
        (
            ["--task", "semeval", "--loss", "bce+asl", "--loss-weighting", "schedule", "--loss-weights-end", "0,0"],
            "every weight must be a finite number >= 0, and one above 0",
        ),
        (
            ["--task", "humor", "--model", "smollm2", "--head", "generative", "--adversarial", "fgm"],
            "--head generative",
        ),
        (["--task", "recipe-mpr", "--augment", "tokens"], "recipe-mpr is multiple choice (not supported)"),
        (["--task", "humor", "--augment", "paraphrase"], "--augment paraphrase needs --paraphrase-model"),
        (
            ["--task", "humor", "--augment", "paraphrase", "--paraphrase-model", "minilm"],
            "--paraphrase-model minilm: model_type bert is not a decoder",
        ),
        (["--task", "humor", "--augment", "tokens", "--augment-ops", "delete,shout"], "--augment-ops 'delete,shout'"),
        (["--task", "semeval", "--loss-weighting", "uncertainty"], "--loss-weighting uncertainty weighs the terms"),
        (
            ["--task", "semeval", "--loss", "bce+asl", "--loss-weighting", "schedule", "--loss-weights-end", "1"],
            "--loss-weights-end '1' gives 1 weights for the 2 terms",
        ),
        (["--task", "semeval", "--loss", "bce+asl", "--loss-weights-end", "1,0"], "--loss-weights-end goes with"),
    ],
)
def test_mistakes_end_in_one_line(tmp_path, capsys, data_dir, args, message):
    assert main([*args, "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_robust_run_end_to_end(tmp_path, data_dir):
    """FGM, augmented copies and learned loss weights together in one real run: logged, drawn and reported."""
    out = tmp_path / "run"
    args = ["--task", "semeval", "--model", "ffnn", "--data-dir", str(data_dir), "--max-train-samples", "48"]
    args += ["--max-eval-samples", "24", "--epochs", "2", "--log-every", "1", "--output-dir", str(out)]
    args += ["--adversarial", "fgm", "--augment", "tokens", "--augment-rare", "10", "--loss", "bce:0.5+asl:0.5"]
    args += ["--loss-weighting", "uncertainty", "--explain-errors", "0"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train"]["augmented_copies"] > 0 and results["dev"]["n_examples"] == 24  # dev is never augmented
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert all("adv_loss" in r and "loss_weight_asl" in r for r in train)
    assert (out / "figures" / "loss_weights.png").is_file()


def test_unpadded_and_padded_batches_get_the_same_perturbation(tiny_dir, monkeypatch):
    batch = collate(features(6), 0)
    seen = recorded_deltas(monkeypatch)
    for share in (0.0, 1.1):  # 0: every batch runs unpadded; above 1: none does
        model = tiny(tiny_dir)
        model.bert.unpad_min_share = share
        attack_once(model, batch, "fgm")
    torch.testing.assert_close(seen[0][0], seen[1][0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["fgm", "awp"])
def test_adversarial_under_bf16_autocast_restores_the_weights(tiny_dir, kind):
    model, batch = tiny(tiny_dir), collate(features(4), 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adv = Adversary(model, AdversarySettings(adversarial=kind, adv_eps=0.05 if kind == "awp" else 1.0))
    loss_fn = build_loss("ce", "single_label", 3)
    clean, _ = accumulate_gradients(model, loss_fn, [batch], "bf16", CPU, DynamicLossScaler(enabled=False), None, adv)
    assert adv.loss > clean and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
