"""A run scores its model before the first optimizer step, and reports it beside the best evaluation, where that
score means something: not for a freshly initialised head, whose score is chance."""

import json

from minitune.cli import main
from minitune.eval.report_parts import start_lines

SMALL = ["--max-train-samples", "48", "--max-eval-samples", "24", "--epochs", "1", "--max-length", "32"]


def test_report_lines_say_chance_level_and_a_run_that_got_worse():
    fresh = {"metric": "macro_f1", "start": {"macro_f1": 0.31}, "best": 0.52, "best_epoch": 2, "best_step": 40}
    assert start_lines(fresh | {"start_is_chance": True}) == [
        "before training: macro_f1 0.3100 (chance level: a fresh, untrained head), best: 0.5200 at epoch 2 (step 40)"
    ]
    worse = start_lines(fresh | {"start": {"macro_f1": 0.6}})
    assert worse[0] == "before training: macro_f1 0.6000, best: 0.5200 at epoch 2 (step 40)"
    assert worse[1].startswith("training made it worse: the best macro_f1 after training (0.5200) is below")
    # A run without a recorded start (resumed from an older checkpoint) still states its best.
    assert start_lines({"metric": "accuracy", "best": 0.5, "best_epoch": 1, "best_step": 3}) == [
        "best accuracy: 0.5000 at epoch 1 (step 3)"
    ]
    # Nothing trained (--epochs 0, the zero-shot generative run): the start is the run's score.
    zero = start_lines({"metric": "accuracy", "start": {"accuracy": 0.42}})
    assert zero == ["before training: accuracy 0.4200 (nothing trained: this is the run's score)"]


def test_a_fresh_head_is_not_scored_before_training_but_a_trained_one_is(tmp_path, data_dir, monkeypatch):
    """A freshly initialised head scores chance: that pass over dev is skipped, so dev is scored once per epoch. A
    checkpoint whose head was trained (here the first run's model, trained further) is scored before training."""
    import minitune.finetune as finetune

    calls = []
    real = finetune.predict_logits
    monkeypatch.setattr(finetune, "predict_logits", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    out = tmp_path / "fresh"
    data = ["--task", "humor", "--data-dir", str(data_dir), *SMALL, "--epochs", "2"]
    assert main([*data, "--model", "minilm", "--output-dir", str(out)]) == 0
    assert calls == [24, 24]  # one dev pass per epoch, none before training
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any(r.get("before_training") for r in rows) and [r["step"] for r in rows if r["type"] == "eval"][0] > 0
    train = json.loads((out / "results.json").read_text())["train"]
    assert train["start"] is None and train["start_is_chance"] is True and train["best_step"] > 0
    assert "before training" not in (out / "report.txt").read_text()

    calls.clear()
    again = tmp_path / "again"
    assert main([*data, "--model", str(out / "model"), "--output-dir", str(again)]) == 0
    assert calls == [24, 24, 24]  # before training, then each epoch
    rows = [json.loads(line) for line in (again / "metrics.jsonl").read_text().splitlines()]
    start = rows[0]
    assert start["type"] == "eval" and start["step"] == 0 and start["before_training"] is True
    train = json.loads((again / "results.json").read_text())["train"]
    assert train["start"]["macro_f1"] == start["macro_f1"] and train["start_is_chance"] is False
    report = (again / "report.txt").read_text()
    assert f"before training: macro_f1 {start['macro_f1']:.4f}, best" in report


def test_zero_epochs_score_the_model_once_as_the_runs_score(tmp_path, data_dir):
    args = ["--task", "humor", "--model", "ffnn", "--data-dir", str(data_dir), *SMALL]
    zero = tmp_path / "zero"
    assert main([*args, "--output-dir", str(zero), "--epochs", "0"]) == 0
    train = json.loads((zero / "results.json").read_text())["train"]
    assert train["best"] is None and train["start"]["macro_f1"] is not None
    assert "(nothing trained: this is the run's score)" in (zero / "report.txt").read_text()
