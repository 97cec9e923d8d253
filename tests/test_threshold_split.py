"""--threshold-split: per-label thresholds tuned on held-out training examples, so the tuned dev score is honest."""

import json

import pytest

from minitune.cli import main
from minitune.config.load import make_config
from minitune.errors import ConfigError


def test_thresholds_tuned_on_held_out_train_not_on_dev(tmp_path, data_dir):
    out = tmp_path / "ge"
    small = ["--max-train-samples", "120", "--max-eval-samples", "40", "--epochs", "1", "--max-length", "24"]
    args = ["--task", "goemotions", "--model", "ffnn", "--data-dir", str(data_dir), "--output-dir", str(out)]
    assert main([*args, *small, "--threshold-split", "0.25"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["thresholds"]["tuned_on"] == "held-out 0.25 of train"
    note = results["thresholds"]["notes"][0]  # about a quarter of the 120 (iterative stratification rounds)
    assert note.startswith("tuned on ") and 20 <= int(note.split()[2]) <= 40 and "held out from training" in note
    assert "held out from training" in (out / "report.txt").read_text()


def test_threshold_split_must_be_a_fraction():
    with pytest.raises(ConfigError, match="threshold_split must be a fraction"):
        make_config(task="goemotions", threshold_split=1.5)
