"""The training loop: accumulation equals the large batch, resume equals straight training, non-finite steps skip."""

import json
import math

import pytest
import torch
import transformers

import minitune
from minitune.config.sections import LoopSettings
from minitune.data.batching import BucketedBatchSampler, TokenBudgetBatchSampler, collate, length_of
from minitune.train.amp import DynamicLossScaler
from minitune.train.embedding_grads import SPARSE_MIN_ROWS, sparse_embedding_grads
from minitune.train.gradients import accumulate_gradients
from minitune.train.loop import TrainData, fit
from minitune.train.losses import build_loss


def tiny_bert(tmp_path, dropout=0.1):
    torch.manual_seed(3)
    # A vocabulary above SPARSE_MIN_ROWS, so the loop's sparse embedding gradient is what these tests exercise.
    cfg = transformers.BertConfig(
        vocab_size=SPARSE_MIN_ROWS + 4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=3,
    )
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "tiny")
    return minitune.load_model(tmp_path / "tiny", num_labels=3)


def ragged_features(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = []
    for i in range(n):
        length = int(torch.randint(3, 40, (1,), generator=g))
        ids = [2] + torch.randint(5, 60, (length,), generator=g).tolist() + [3]
        feats.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "label": i % 3})
    return feats


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_four_micro_batches_of_8_equal_one_batch_of_32(tmp_path):
    model = tiny_bert(tmp_path, dropout=0.0).train()
    feats = ragged_features(32)
    loss_fn = build_loss("ce", "single_label", 3)
    scaler = DynamicLossScaler(enabled=False)
    cpu = torch.device("cpu")
    big_loss, _ = accumulate_gradients(model, loss_fn, [collate(feats, 0)], "fp32", cpu, scaler)
    big = grads(model)
    model.zero_grad(set_to_none=True)
    # Micro-batches of different padded lengths: sorted by length, so each pads to a very different width.
    order = sorted(range(32), key=lambda i: length_of(feats[i]))
    micro = [collate([feats[i] for i in order[k : k + 8]], 0) for k in range(0, 32, 8)]
    assert len({b["input_ids"].shape[1] for b in micro}) == 4
    small_loss, _ = accumulate_gradients(model, loss_fn, micro, "fp32", cpu, scaler)
    small = grads(model)
    assert math.isclose(big_loss, small_loss, rel_tol=1e-5)
    for name in big:
        torch.testing.assert_close(small[name], big[name], atol=1e-6, rtol=1e-5)


def test_sparse_embedding_gradient_equals_the_dense_one(tmp_path):
    feats = ragged_features(32)
    micro = [collate(feats[k : k + 8], 0) for k in range(0, 32, 8)]  # padded with id 0, the pad row
    loss_fn = build_loss("ce", "single_label", 3)
    scaler, cpu = DynamicLossScaler(enabled=False), torch.device("cpu")
    dense_model = tiny_bert(tmp_path, dropout=0.0).train()
    accumulate_gradients(dense_model, loss_fn, micro, "fp32", cpu, scaler)
    sparse_model = tiny_bert(tmp_path, dropout=0.0).train()
    ((table, _),) = sparse_embedding_grads(sparse_model)
    accumulate_gradients(sparse_model, loss_fn, micro, "fp32", cpu, scaler)
    assert table.grad.layout == torch.strided and table is sparse_model.bert.embeddings.word_embeddings.weight
    dense, sparse = grads(dense_model), grads(sparse_model)
    assert dense.keys() == sparse.keys()
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-7, rtol=1e-6)
    assert not table.grad[0].any()  # the pad row gets no gradient, as in the reference
    used = torch.zeros(table.shape[0], dtype=torch.bool)
    used[torch.cat([b["input_ids"].flatten() for b in micro])] = True
    assert table.grad[used & (torch.arange(table.shape[0]) != 0)].abs().sum(1).gt(0).all()
    assert not table.grad[~used].any()


def loop_cfg(**kw):
    base = dict(
        epochs=2,
        max_steps=None,
        grad_accum=2,
        lr=1e-3,
        weight_decay=0.01,
        llrd=0.9,
        scheduler="cosine",
        warmup_ratio=0.1,
        precision="fp32",
        clip_grad=1.0,
        eval_every=None,
        log_every=1,
        patience=None,
        metric="score",
    )
    return LoopSettings(**{**base, **kw})


def metrics_only(evaluate):
    """fit's evaluate returns (metrics, payload); these tests keep no payload."""
    return lambda m: (evaluate(m), None)


class Crash(Exception):
    pass


class CrashingFeatures(list):
    """Raises on the first access after `after` accesses: a crash in the middle of training."""

    def __init__(self, items, after):
        super().__init__(items)
        self.left = after

    def __getitem__(self, i):
        self.left -= 1
        if self.left < 0:
            raise Crash()
        return super().__getitem__(i)


def run_fit(tmp_path, name, features, cfg, evaluate=None, resume=False):
    model = tiny_bert(tmp_path / name)
    torch.manual_seed(cfg.seed if hasattr(cfg, "seed") else 0)
    data = TrainData(
        features, BucketedBatchSampler([length_of(f) for f in features], 4, seed=1, window=2), lambda b: collate(b, 0)
    )
    evaluate = metrics_only(evaluate or (lambda m: {"score": 0.0}))
    loss = build_loss("ce", "single_label", 3)
    state = fit(model, loss, data, evaluate, cfg, tmp_path / name, torch.device("cpu"), resume=resume).state
    return model, state


def test_two_epochs_equal_one_epoch_then_resume(tmp_path):
    feats = ragged_features(24)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight, _ = run_fit(tmp_path, "a", feats, loop_cfg())
    # Crash in epoch 2 (24 features per epoch, 8 per step) after step 4 was logged, then resume from the
    # epoch-1 checkpoint (step 3).
    with pytest.raises(Crash):
        run_fit(tmp_path, "b", CrashingFeatures(feats, after=24 + 12), loop_cfg())
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["type"] == "train"] == [1, 2, 3, 4]
    resumed, state = run_fit(tmp_path, "b", feats, loop_cfg(), resume=True)
    assert state.epoch == 2 and state.step == 6
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    # Step 4 was trained twice; the log keeps it once, as if training had never stopped.
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in logged if r["type"] == "eval"] == [0, 3, 6]  # step 0: before training, once


def test_token_budget_schedule_counts_every_epoch(tmp_path):
    feats = ragged_features(40, seed=1)
    lengths = [length_of(f) for f in feats]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=120, seed=2, window=2)
    counts = [len(sampler.batches(e)) for e in range(3)]
    assert len(set(counts)) > 1  # the case that matters: the number of batches changes between epochs
    data = TrainData(feats, sampler, lambda b: collate(b, 0))
    cfg = loop_cfg(epochs=3, grad_accum=1, log_every=1, scheduler="linear", warmup_ratio=0.0)
    state = fit(
        tiny_bert(tmp_path),
        build_loss("ce", "single_label", 3),
        data,
        metrics_only(lambda m: {"score": 0.0}),
        cfg,
        tmp_path,
        torch.device("cpu"),
    ).state
    assert state.step == sum(counts) and state.epoch == 3
    logged = map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    lrs = [r["lr"] for r in logged if r["type"] == "train"]
    # linear decay to zero over exactly the steps trained: the last step applies lr / total
    assert math.isclose(lrs[-1], cfg.lr / sum(counts), rel_tol=1e-6)


def test_non_finite_loss_skips_the_step_and_keeps_weights(tmp_path):
    feats = ragged_features(8)
    model = tiny_bert(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ce = build_loss("ce", "single_label", 3)
    data = TrainData(feats, BucketedBatchSampler([length_of(f) for f in feats], 8, seed=0), lambda b: collate(b, 0))
    for precision in ("fp32", "fp16"):
        state = fit(
            model,
            lambda logits, y: ce(logits, y) * float("nan"),
            data,
            metrics_only(lambda m: {"score": 0.0}),
            loop_cfg(epochs=1, grad_accum=1, precision=precision),
            tmp_path,
            torch.device("cpu"),
        ).state
        assert state.skipped_steps == 1 and state.step == 0
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k


def test_early_stopping_keeps_the_best_weights(tmp_path):
    feats = ragged_features(16)
    # The first evaluation is before training: higher than any later one, and still never the best (not kept).
    scores = iter([0.95, 0.5, 0.9, 0.4, 0.3, 0.2, 0.1])
    snapshots = []

    def evaluate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"score": next(scores)}

    (tmp_path / "c").mkdir()
    model, state = run_fit(tmp_path, "c", feats, loop_cfg(epochs=6, patience=2, grad_accum=1), evaluate)
    assert state.stopped_early and state.epoch == 4 and state.best == 0.9 and state.start == {"score": 0.95}
    for k, v in model.state_dict().items():  # the model holds epoch 2's weights, the best
        assert torch.equal(v, snapshots[2][k]), k
    lines = (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()
    assert sum('"type": "eval"' in line for line in lines) == 5


def test_eval_every_n_steps_and_once_more_at_the_end(tmp_path):
    feats = ragged_features(24)  # 6 batches of 4 per epoch, 2 per step: 3 steps an epoch, 6 in all
    (tmp_path / "e").mkdir()
    _, state = run_fit(tmp_path, "e", feats, loop_cfg(eval_every=4))
    logged = [json.loads(line) for line in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    assert state.step == 6 and [r["step"] for r in logged if r["type"] == "eval"] == [0, 4, 6]


@pytest.mark.parametrize("clip", [0.0, 1e-12])
def test_gradient_clipping_acts_before_the_optimizer_step(tmp_path, clip):
    """AdamW divides by sqrt(v) + eps: gradients clipped to norm 1e-12 sit far below eps=1e-8, so the first step
    barely moves the weights; unclipped (0 = off) it moves them by about lr."""
    feats = ragged_features(8)
    model = tiny_bert(tmp_path)
    before = {k: v.clone() for k, v in model.named_parameters()}
    data = TrainData(feats, BucketedBatchSampler([length_of(f) for f in feats], 8, seed=0), lambda b: collate(b, 0))
    cfg = loop_cfg(epochs=1, grad_accum=1, clip_grad=clip, weight_decay=0.0, warmup_ratio=0.0, scheduler="constant")
    evaluate = metrics_only(lambda m: {"score": 0.0})
    fit(model, build_loss("ce", "single_label", 3), data, evaluate, cfg, tmp_path, torch.device("cpu"))
    moved = max(float((p.detach() - before[k]).abs().max()) for k, p in model.named_parameters())
    assert (moved > 0.5 * cfg.lr) if clip == 0 else (0 < moved < 1e-3 * cfg.lr)


def test_checkpoint_survives_a_crash_while_writing_and_between_renames(tmp_path, monkeypatch):
    from minitune.train import checkpoint as ckpt

    feats = ragged_features(24)
    (tmp_path / "a").mkdir()
    run_fit(tmp_path, "a", feats, loop_cfg())  # 2 epochs: the checkpoint holds step 6
    directory = tmp_path / "a" / "checkpoint"
    saved = (directory / ckpt.WEIGHTS).read_bytes()
    model = tiny_bert(tmp_path / "m")
    opt = torch.optim.AdamW(model.parameters())
    sampler = BucketedBatchSampler([length_of(f) for f in feats], 4, seed=1, window=2)

    def refuse(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", refuse)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(
            directory,
            model,
            opt,
            torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
            DynamicLossScaler(enabled=False),
            sampler,
            {},
            {},
        )
    monkeypatch.undo()
    assert (directory / ckpt.WEIGHTS).read_bytes() == saved  # the last good checkpoint is untouched
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".")) == []  # no temp dirs left
    # A crash between save_checkpoint's two renames leaves only checkpoint.old: resume still finds it.
    directory.rename(directory.with_name("checkpoint.old"))
    _, state = run_fit(tmp_path, "a", feats, loop_cfg(), resume=True)
    assert state.step == 6 and state.epoch == 2


class SignalAt(list):
    """Sends `sig` to this process on access `at`: a Ctrl-C (or SIGTERM) while a batch is being collated."""

    def __init__(self, items, at, sig=None):
        super().__init__(items)
        self.left, self.sig = at, sig

    def __getitem__(self, i):
        self.left -= 1
        if self.left == 0:
            import os
            import signal

            os.kill(os.getpid(), self.sig or signal.SIGINT)
        return super().__getitem__(i)


def rising():
    """An evaluate whose score rises at every call, across the processes of one run: the last evaluation is best."""
    calls = iter(range(1, 100))
    return lambda m: {"score": next(calls) / 100}


@pytest.mark.parametrize("at, sig", [(5, "SIGINT"), (29, "SIGTERM"), (45, "SIGINT")])
def test_interrupt_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path, at, sig):
    import signal

    from minitune.train.checkpoint import read_progress
    from minitune.train.interrupt import TrainingInterrupted

    feats = ragged_features(24)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight, done = run_fit(tmp_path, "a", feats, loop_cfg(), evaluate=rising())
    # Inside the first epoch (access 5: step 1), the second (access 29: step 4), or on the very last step (access
    # 45: step 6, whose evaluation the stop skips): the step under way finishes and is checkpointed.
    evaluate = rising()  # one run in two processes: its scores go on rising across the interruption
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a job started in the background
    with pytest.raises(TrainingInterrupted) as stopped:
        run_fit(tmp_path, "b", SignalAt(feats, at, getattr(signal, sig)), loop_cfg(), evaluate=evaluate)
    step = stopped.value.step
    assert step == {5: 1, 29: 4, 45: 6}[at] and stopped.value.checkpoint == str(tmp_path / "b" / "checkpoint")
    assert read_progress(tmp_path / "b" / "checkpoint") == {"step": step, "epoch": at // 24, "finished": at == 45}
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    resumed, state = run_fit(tmp_path, "b", feats, loop_cfg(), evaluate=evaluate, resume=True)
    assert state.step == 6 and state.best_step == done.best_step == 6
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


def test_save_every_keeps_the_newest_checkpoints_and_no_checkpoint_writes_none(tmp_path):
    from minitune.train.checkpoint import read_progress, rotated

    feats = ragged_features(24)
    (tmp_path / "k").mkdir(), (tmp_path / "n").mkdir()
    run_fit(tmp_path, "k", feats, loop_cfg(grad_accum=1, save_every=2, keep_checkpoints=3))
    # 6 steps per epoch, 2 epochs: checkpoints at steps 2, 4, 6 (save_every and the epoch end), 8, 10, 12.
    kept = [read_progress(d)["step"] for d in rotated(tmp_path / "k" / "checkpoint")]
    assert read_progress(tmp_path / "k" / "checkpoint") == {"step": 12, "epoch": 2, "finished": True}
    assert kept == [10, 8]  # the newest three in all
    run_fit(tmp_path, "n", feats, loop_cfg(checkpoint=False))
    assert not list((tmp_path / "n").glob("checkpoint*"))


def test_epochs_numbered_alike_in_train_and_eval_rows_and_eval_loss_logged(tmp_path):
    feats = ragged_features(24)
    (tmp_path / "e").mkdir()
    run_fit(tmp_path, "e", feats, loop_cfg(), evaluate=lambda m: {"score": 0.5, "loss": 1.25})
    rows = [json.loads(line) for line in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    # Steps 1-3 are epoch 1 (3 steps of 8 examples), 4-6 epoch 2, in train rows and in the eval row ending each.
    assert [(r["type"], r["step"], r["epoch"]) for r in rows] == [
        ("eval", 0, 0),
        ("train", 1, 1), ("train", 2, 1), ("train", 3, 1), ("eval", 3, 1),
        ("train", 4, 2), ("train", 5, 2), ("train", 6, 2), ("eval", 6, 2),
    ]  # fmt: skip
    assert all(r["loss"] == 1.25 for r in rows if r["type"] == "eval")


def test_early_stop_is_announced_and_only_when_steps_remain(tmp_path, capsys):
    feats = ragged_features(24)
    (tmp_path / "s").mkdir(), (tmp_path / "t").mkdir()
    scores = iter([0.0, 0.9, 0.1, 0.1, 0.1])  # the first: before training
    _, state = run_fit(tmp_path, "s", feats, loop_cfg(eval_every=1, patience=2, grad_accum=1),
                       evaluate=lambda m: {"score": next(scores)})  # fmt: skip
    assert state.stopped_early and state.step == 3 and state.total_steps == 12
    printed = capsys.readouterr()
    assert "early stop at step 3 of 12: no improvement in 2 evaluations" in printed.out + printed.err
    # Patience reached at the very last evaluation is no early stop: nothing was left to train.
    scores = iter([0.0, 0.9, 0.1])
    _, state = run_fit(tmp_path, "t", feats, loop_cfg(patience=1), evaluate=lambda m: {"score": next(scores)})
    assert not state.stopped_early and state.step == 6


def fit_with(tmp_path, name, features, evaluate, resume=False, epochs=2):
    model = tiny_bert(tmp_path / name)
    data = TrainData(
        features, BucketedBatchSampler([length_of(f) for f in features], 4, seed=1, window=2), lambda b: collate(b, 0)
    )
    loss = build_loss("ce", "single_label", 3)
    fitted = fit(
        model, loss, data, evaluate, loop_cfg(epochs=epochs), tmp_path / name, torch.device("cpu"), resume=resume
    )
    return model, fitted


def fingerprint(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def test_fit_returns_the_start_and_the_best_evaluations_payload(tmp_path):
    """evaluate returns (metrics, payload): fit keeps the start's metrics apart and returns the best one's payload."""
    values, calls = iter([0.2, 0.5, 0.9, 0.3]), []

    def evaluate(m):
        calls.append(fingerprint(m))
        return {"score": next(values)}, len(calls) - 1

    model, fitted = fit_with(tmp_path, "p", ragged_features(24), evaluate, epochs=3)
    assert fitted.state.start == {"score": 0.2} and fitted.state.best == 0.9 and fitted.payload == 2
    assert len(calls) == 4 and fingerprint(model) == calls[2]  # the model holds the weights the payload scored


def test_a_resumed_fit_scores_the_restored_best_weights_when_their_evaluation_came_before(tmp_path):
    """The best evaluation happened in the interrupted process: the resumed one evaluates the restored best weights
    once more for the payload (and only then)."""
    feats = ragged_features(24)
    values = iter([0.1, 0.9, 0.5, 0.4])  # one run in two processes: best after epoch 1, in the first process

    def evaluate(m):
        return {"score": next(values)}, fingerprint(m)

    with pytest.raises(Crash):
        fit_with(tmp_path, "r", CrashingFeatures(feats, after=24 + 12), evaluate)
    model, fitted = fit_with(tmp_path, "r", feats, evaluate, resume=True)
    assert fitted.state.best == 0.9 and fitted.payload == fingerprint(model)
    assert next(values, None) is None  # start, epoch 1 | epoch 2, then the restored weights: 4 evaluations


def train_logs(run_dir) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_the_logged_loss_is_the_mean_over_its_logging_window_also_across_a_resume(tmp_path):
    """As the Trainer logs it: each train record's loss is the mean of the steps' losses since the one before, and
    a resume at a step inside a window (the epoch-1 checkpoint, step 3) continues that window."""
    feats = ragged_features(24)
    run_fit(tmp_path, "each", feats, loop_cfg(epochs=4))  # log_every 1: every step's own loss
    every = [r["loss"] for r in train_logs(tmp_path / "each")]
    run_fit(tmp_path, "win", feats, loop_cfg(epochs=4, log_every=4))
    assert [r["step"] for r in train_logs(tmp_path / "win")] == [4, 8, 12]
    expected = [sum(every[i : i + 4]) / 4 for i in (0, 4, 8)]
    assert [r["loss"] for r in train_logs(tmp_path / "win")] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(Crash):  # epoch 2 crashes after step 5; the checkpoint holds step 3, mid-window
        run_fit(tmp_path, "cut", CrashingFeatures(feats, after=24 + 16), loop_cfg(epochs=4, log_every=4))
    run_fit(tmp_path, "cut", feats, loop_cfg(epochs=4, log_every=4), resume=True)
    assert [r["loss"] for r in train_logs(tmp_path / "cut")] == pytest.approx(expected, rel=1e-12)
