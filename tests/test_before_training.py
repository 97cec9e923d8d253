"""Every run scores its model before the first optimizer step and reports it beside the best evaluation."""

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


def test_every_run_records_its_start_in_metrics_results_and_report(tmp_path, data_dir):
    out = tmp_path / "ffnn"
    args = ["--task", "humor", "--model", "ffnn", "--data-dir", str(data_dir), "--output-dir", str(out), *SMALL]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start = rows[0]
    assert start["type"] == "eval" and start["step"] == 0 and start["before_training"] is True
    assert [r["step"] for r in rows if r["type"] == "eval"][0] == 0 and sum(
        r.get("before_training", 0) for r in rows
    ) == 1
    train = json.loads((out / "results.json").read_text())["train"]
    assert train["start"]["macro_f1"] == start["macro_f1"] and train["start_is_chance"] is True
    assert train["best_epoch"] == 1 and train["best_step"] > 0  # the start is never the selected weights
    report = (out / "report.txt").read_text()
    assert f"before training: macro_f1 {start['macro_f1']:.4f} (chance level: a fresh, untrained head)" in report
    # --epochs 0: the one evaluation is the score before training, and nothing claims a best epoch.
    zero = tmp_path / "zero"
    assert main([*args[: -len(SMALL)], *SMALL, "--output-dir", str(zero), "--epochs", "0"]) == 0
    train = json.loads((zero / "results.json").read_text())["train"]
    assert train["best"] is None and train["start"]["macro_f1"] is not None
    assert "(nothing trained: this is the run's score)" in (zero / "report.txt").read_text()
