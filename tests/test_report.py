"""The text report and results.json, on reports that classification_report builds from real labels."""

import csv
import json
import os
import re

import numpy as np
import pytest

from minitune.checkpoints.atomic import atomic_dir
from minitune.checkpoints.rundir import write_results
from minitune.errors import ConfigError
from minitune.eval.metrics import classification_report
from minitune.eval.report import format_report
from minitune.eval.thresholds import tune_thresholds


def semeval_results(data_dir) -> dict:
    lines = (data_dir / "semeval2018_ec" / "2018-E-c-En-dev.txt").read_text(encoding="utf-8").splitlines()
    names = lines[0].split("\t")[2:]
    gold = np.array([[int(v) for v in line.split("\t")[2:]] for line in lines[1:]])
    rng = np.random.default_rng(0)
    probs = np.clip(0.3 + np.linspace(-0.2, 0.1, 11) + 0.3 * gold + rng.normal(0, 0.15, gold.shape), 0, 1)
    probs[:, names.index("trust")] *= 0.4  # trust never reaches 0.5
    thr = tune_thresholds(gold, probs)
    dev = classification_report("multi_label", gold, probs, names, 0.5, tuned_thresholds=thr)
    return {"task": "semeval", "model": "minilm", "settings": {"lr": 5e-5, "epochs": 3}, "dev": dev}


def humor_results(data_dir) -> dict:
    with open(data_dir / "hahackathon" / "dev.csv", encoding="utf-8", newline="") as f:
        gold = np.array([int(row["is_humor"]) for row in csv.DictReader(f)])
    rng = np.random.default_rng(1)
    p1 = np.clip(0.25 * gold + rng.random(len(gold)) * 0.75, 0, 1)
    dev = classification_report("single_label", gold, np.stack([1 - p1, p1], 1), ["not_humor", "humor"])
    return {"task": "humor", "model": "minilm", "dev": dev}


def test_multilabel_report(data_dir):
    results = semeval_results(data_dir)
    dev = results["dev"]
    text = format_report(results)
    for name in dev["label_names"]:
        assert re.search(rf"^{name}\s", text, re.M), name
    assert "task: semeval  (multi-label, 11 labels)" in text
    assert f"jaccard {dev['jaccard']:.4f}" in text
    assert f"macro-F1 {dev['tuned']['macro_f1']:.4f}" in text
    assert "never predicted although present: trust" in text
    assert "optimistic" in text and "lr=5e-05" in text
    # Per-class rows: each row's f1 is the fixed-threshold F1 with 4 decimals; columns line up.
    rows = [ln for ln in text.splitlines() if ln.split(" ")[0] in dev["label_names"]][:11]
    for ln in rows:
        name = ln.split()[0]
        c = dev["per_class"][name]
        assert ln.split()[1:6] == [
            f"{c['precision']:.4f}",
            f"{c['recall']:.4f}",
            f"{c['f1']:.4f}",
            str(c["support"]),
            str(c["predicted"]),
        ]
    assert len({[m.end() for m in re.finditer(r"\S+", ln)][3] for ln in rows}) == 1  # right-aligned f1
    # Threshold table: tuned threshold and both F1s for anger.
    i = dev["label_names"].index("anger")
    line = [ln for ln in text.splitlines() if ln.startswith("anger") and f"{dev['tuned']['threshold'][i]:.4f}" in ln]
    assert line and f"{dev['tuned']['per_class']['anger']['f1']:.4f}" in line[0]


def test_single_label_report_has_confusion_matrix(data_dir):
    results = humor_results(data_dir)
    dev = results["dev"]
    text = format_report(results)
    cm = dev["confusion_matrix"]
    assert re.search(rf"^0 not_humor\s+{cm[0][0]}\s+{cm[0][1]}$", text, re.M)
    assert re.search(rf"^1 humor\s+{cm[1][0]}\s+{cm[1][1]}$", text, re.M)
    assert f"F1(humor) {dev['binary_f1']:.4f}" in text
    majority = dev["per_class"]["humor"]["support"] / dev["n_examples"]
    assert f"always 'humor'): accuracy {majority:.4f}" in text
    assert "thresholds: fixed vs tuned" not in text


def test_recipe_groups_report(data_dir):
    items = json.loads((data_dir / "recipe_mpr" / "500QA.json").read_text(encoding="utf-8"))
    groups = [[k for k, v in item["query_type"].items() if v] for item in items]
    rng = np.random.default_rng(2)
    rep = classification_report("multiple_choice", rng.integers(0, 5, 500), rng.random((500, 5)), None, groups=groups)
    text = format_report({"task": "recipe-mpr", "test": rep})
    for group, n in {"Specific": 151, "Commonsense": 268, "Negated": 109, "Analogical": 30, "Temporal": 32}.items():
        g = rep["by_group"][group]
        assert re.search(rf"^{group}\s+{n}\s+{g['correct']}\s+{g['accuracy']:.4f}$", text, re.M)
    assert "(chance 0.2000)" in text and "model: ?" in text and "position bias" in text


def test_settings_wrapped_and_fold_table(data_dir):
    results = humor_results(data_dir)
    results["settings"] = {f"option_{i}": f"value_{i}" for i in range(30)}
    results["train"] = {
        "folds": [
            {"fold": 0, "best_epoch": 2, "test_accuracy": 0.61},
            {"fold": 1, "best_epoch": 4, "test_accuracy": 0.58},
        ],
        "wall_seconds": 12.5,
    }
    text = format_report(results)
    assert all(len(ln) <= 100 for ln in text.splitlines())
    assert all(f"option_{i}=value_{i}" in text for i in range(30))
    assert re.search(r"^\s+fold\s+best_epoch\s+test_accuracy$", text, re.M)
    assert re.search(r"^\s+1\s+4\s+0.5800$", text, re.M) and "wall_seconds=12.5" in text  # floats at 4 places


def test_format_report_needs_a_split():
    with pytest.raises(ValueError):
        format_report({"task": "x"})


def test_write_results_atomic_roundtrip(tmp_path, data_dir):
    results = semeval_results(data_dir)
    results["train"] = {"loss": float("nan"), "thresholds": np.array([0.25, 0.5]), "best": np.float32(0.5)}
    path = tmp_path / "run" / "results.json"
    write_results(path, results)
    back = json.loads(path.read_text(encoding="utf-8"))
    assert back["dev"]["jaccard"] == results["dev"]["jaccard"]
    assert back["train"] == {"loss": None, "thresholds": [0.25, 0.5], "best": 0.5}
    assert os.listdir(path.parent) == ["results.json"]
    # A failing write leaves the previous file intact and no temporary file behind.
    with pytest.raises(TypeError):
        write_results(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8"))["task"] == "semeval"
    assert os.listdir(path.parent) == ["results.json"]


def test_atomic_dir_swaps_whole_directories(tmp_path):
    target = tmp_path / "model"
    atomic_dir(target, lambda d: (d / "a.txt").write_text("old"))
    (target / "stray.txt").write_text("from an earlier run")
    atomic_dir(target, lambda d: (d / "b.txt").write_text("new"))
    assert sorted(os.listdir(target)) == ["b.txt"] and os.listdir(tmp_path) == ["model"]

    def broken(d):
        (d / "c.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_dir(target, broken)
    assert sorted(os.listdir(target)) == ["b.txt"] and os.listdir(tmp_path) == ["model"]


def test_write_results_unwritable_is_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="writable output_dir"):
        write_results(blocker / "results.json", {"a": 1})


def test_training_summary_in_words_with_early_stop_losses_and_advice(data_dir):
    results = humor_results(data_dir)
    results["config"] = {"focal_gamma": 2.0, "asl_clip": 0.05}  # all settings: config.json's, not the report's
    results["train"] = dict(step=60, epoch=3, total_steps=64, best=0.61, best_step=30, metric="macro_f1")
    results["train"] |= dict(stopped_early=True, patience=5, seconds=12.0, losses={"train": 0.5, "dev": 0.7})
    dev = results["dev"]
    majority = max(dev["per_class"], key=lambda k: dev["per_class"][k]["support"])
    for name, c in dev["per_class"].items():  # a model that predicts the majority class for every example
        c["predicted"] = dev["n_examples"] if name == majority else 0
    dev["accuracy"] = dev["per_class"][majority]["support"] / dev["n_examples"]
    text = format_report(results)
    assert "focal_gamma" not in text and "asl_clip" not in text
    assert "training: 60 of 64 optimizer steps, 3 epoch(s) completed, 12.0 s" in text
    assert "best macro_f1: 0.6100 at step 30" in text
    assert "stopped early at step 60 of 64: no improvement in 5 evaluations" in text
    assert "loss at the best step: train 0.5000, dev 0.7000" in text
    assert f"the model predicts only '{majority}'" in text and "--lr 5e-5" in text


def test_a_protocol_report_has_no_python_reprs_and_keeps_the_columns_a_reader_compares(data_dir):
    results = humor_results(data_dir)
    fold = dict(fold=0, n_train=180, step=12, tokens=5120, bad_evals=1, window_loss=0.3, best=0.61, best_step=6)
    fold |= dict(start_macro_f1=0.4, start_is_chance=True, macro_f1=0.6, seconds=1.5, label_counts={"a": 1})
    results["train"] = {"k": 2, "folds": [fold, fold | {"fold": 1}], "start": {"macro_f1": 0.4}, "metric": "macro_f1"}
    results["train"] |= {"best": 0.61, "start_is_chance": True}
    text = format_report(results)
    assert "{'" not in text and "[" not in text.split("=" * 72)[1]  # no dict or list reprs
    header = next(line for line in text.splitlines() if line.strip().startswith("fold "))
    assert header.split() == ["fold", "n_train", "best_step", "best", "seconds", "start_macro_f1", "macro_f1"]
    assert "before training: macro_f1 0.4000 (chance level: a fresh, untrained head), best: 0.6100" in text


def test_no_note_says_the_same_thing_twice(data_dir):
    results = humor_results(data_dir)
    dev = results["dev"]
    for name, c in dev["per_class"].items():  # a model that predicts the majority class for every example
        c["predicted"] = dev["n_examples"] if name == "humor" else 0
    text = format_report(results)
    assert "predicts only 'humor'" in text and "never predicted although present" not in text
    multi = semeval_results(data_dir)
    multi["dev"]["threshold_notes"] = [
        "tuned on the 886 dev examples and scored on them: the tuned dev score is optimistic"
    ]
    assert format_report(multi).count("optimistic") == 1
