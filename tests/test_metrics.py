"""Metrics against hand-computed values on small arrays and a brute-force pure-Python scorer on real labels."""

import csv
import json

import numpy as np
import pytest

from minitune.eval.metrics import (
    accuracy,
    accuracy_by_group,
    averages,
    classification_report,
    confusion_matrix,
    jaccard_samples,
    macro_f1,
    micro_f1,
    multilabel_counts,
    precision_recall_f1_support,
    weighted_f1,
)


# ---------------------------------------------------------------- real-data loaders (independent of minitune)
def semeval_dev(data_dir) -> tuple[np.ndarray, list[str]]:
    lines = (data_dir / "semeval2018_ec" / "2018-E-c-En-dev.txt").read_text(encoding="utf-8").splitlines()
    names = lines[0].split("\t")[2:]
    return np.array([[int(v) for v in line.split("\t")[2:]] for line in lines[1:]]), names


def goemotions_dev(data_dir) -> tuple[list[list[int]], list[str]]:
    names = (data_dir / "goemotions" / "emotions.txt").read_text(encoding="utf-8").split("\n")
    with open(data_dir / "goemotions" / "dev.tsv", encoding="utf-8", newline="") as f:
        ids = [[int(v) for v in row[1].split(",")] for row in csv.reader(f, delimiter="\t")]
    return ids, names


def humor_dev(data_dir) -> np.ndarray:
    with open(data_dir / "hahackathon" / "dev.csv", encoding="utf-8", newline="") as f:
        return np.array([int(row["is_humor"]) for row in csv.DictReader(f)])


# ---------------------------------------------------------------- brute force, one element at a time
def brute_prf(gold_sets: list[set], pred_sets: list[set], num_labels: int):
    rows = []
    for c in range(num_labels):
        tp = sum(1 for g, p in zip(gold_sets, pred_sets) if c in g and c in p)
        npred = sum(1 for p in pred_sets if c in p)
        ngold = sum(1 for g in gold_sets if c in g)
        prec = tp / npred if npred else 0.0
        rec = tp / ngold if ngold else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        rows.append((prec, rec, f1, ngold, npred, tp))
    tp, npred, ngold = (sum(r[k] for r in rows) for k in (5, 4, 3))
    mp, mr = tp / npred if npred else 0.0, tp / ngold if ngold else 0.0
    return rows, {
        "macro_f1": sum(r[2] for r in rows) / num_labels,
        "micro_f1": 2 * mp * mr / (mp + mr) if mp + mr else 0.0,
        "weighted_f1": sum(r[2] * r[3] for r in rows) / ngold,
    }


def brute_jaccard(gold_sets, pred_sets) -> float:
    total = 0.0
    for g, p in zip(gold_sets, pred_sets):
        total += 1.0 if not (g | p) else len(g & p) / len(g | p)
    return total / len(gold_sets)


def sets_of(matrix) -> list[set]:
    return [{j for j, v in enumerate(row) if v} for row in np.asarray(matrix).tolist()]


def check_stats(stats, rows):
    for c, (prec, rec, f1, ngold, npred, tp) in enumerate(rows):
        assert stats.precision[c] == pytest.approx(prec, abs=1e-12)
        assert stats.recall[c] == pytest.approx(rec, abs=1e-12)
        assert stats.f1[c] == pytest.approx(f1, abs=1e-12)
        assert (stats.support[c], stats.predicted[c], stats.tp[c]) == (ngold, npred, tp)


# ---------------------------------------------------------------- hand-computed small cases
Y_TRUE = [0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0, 1]


def test_single_label_by_hand():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 7)
    stats = precision_recall_f1_support(Y_TRUE, Y_PRED, 3)
    assert stats.precision.tolist() == pytest.approx([1 / 2, 2 / 4, 1 / 1])
    assert stats.recall.tolist() == pytest.approx([1 / 2, 2 / 2, 1 / 3])
    assert stats.f1.tolist() == pytest.approx([0.5, 2 / 3, 0.5])
    assert stats.support.tolist() == [2, 2, 3]
    assert macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx(5 / 9)
    assert micro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx(4 / 7)
    assert weighted_f1(Y_TRUE, Y_PRED, 3) == pytest.approx((0.5 * 2 + 2 / 3 * 2 + 0.5 * 3) / 7)
    # A fourth class never seen nor predicted: all zeros, and it counts in the macro average.
    stats4 = precision_recall_f1_support(Y_TRUE, Y_PRED, 4)
    assert (stats4.precision[3], stats4.recall[3], stats4.f1[3]) == (0.0, 0.0, 0.0)
    assert macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx(5 / 12)
    assert confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 1, 1]]


def test_multilabel_by_hand():
    gold = [[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]]
    pred = [[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 1]]
    # per sample: 1/3, both empty -> 1, 2/2, 0/2
    assert jaccard_samples(gold, pred) == pytest.approx((1 / 3 + 1 + 1 + 0) / 4)
    assert accuracy(gold, pred) == pytest.approx(0.5)
    stats = precision_recall_f1_support(gold, pred)
    assert stats.f1.tolist() == pytest.approx([1.0, 0.5, 0.0])
    avg = averages(stats)
    assert avg["micro_f1"] == pytest.approx(2 * 3 / (5 + 5))
    assert avg["macro_f1"] == pytest.approx(0.5)
    assert avg["weighted_f1"] == pytest.approx((1.0 * 2 + 0.5 * 2 + 0.0 * 1) / 5)
    counts = multilabel_counts(gold, pred)
    assert counts["gold_pos"].tolist() == [2, 2, 1]
    assert counts["pred_pos"].tolist() == [2, 2, 1]
    assert counts["tp"].tolist() == [2, 1, 0]


def test_zero_division_is_zero():
    stats = precision_recall_f1_support([[0, 1], [0, 1]], [[1, 0], [0, 0]])
    assert stats.precision.tolist() == [0.0, 0.0]  # label 1 never predicted
    assert stats.recall.tolist() == [0.0, 0.0]  # label 0 never gold
    assert np.isfinite(stats.f1).all() and stats.f1.tolist() == [0.0, 0.0]


def test_accuracy_by_group_by_hand():
    out = accuracy_by_group(np.array([True, False, True, True]), [["A"], ["A", "B"], [], ["B"]])
    assert out["overall"] == {"n": 4, "correct": 3, "accuracy": 0.75}
    assert out["A"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert out["B"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert list(out) == ["overall", "A", "B"]


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError):
        jaccard_samples([[0, 2]], [[0, 1]])
    with pytest.raises(ValueError):
        precision_recall_f1_support([0, 3], [0, 1], 3)


# ---------------------------------------------------------------- real labels vs brute force
def perturb(matrix: np.ndarray, rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(matrix.shape) < rate, 1 - matrix, matrix)


def test_semeval_dev_against_brute_force(data_dir):
    gold, names = semeval_dev(data_dir)
    assert gold.shape == (886, 11)
    pred = perturb(gold, 0.15, seed=1)
    pred[:, names.index("trust")] = 0  # a label never predicted: exercises zero division
    rows, avg = brute_prf(sets_of(gold), sets_of(pred), 11)
    stats = precision_recall_f1_support(gold, pred)
    check_stats(stats, rows)
    mine = averages(stats)
    for key in avg:
        assert mine[key] == pytest.approx(avg[key], abs=1e-12)
    assert jaccard_samples(gold, pred) == pytest.approx(brute_jaccard(sets_of(gold), sets_of(pred)), abs=1e-12)
    # The 14 all-zero dev tweets: predicting nothing for them is scored 1 each, as in the official scorer.
    empty = gold.sum(axis=1) == 0
    assert empty.sum() == 14
    assert jaccard_samples(gold[empty], np.zeros_like(gold[empty])) == 1.0


def test_goemotions_single_label_subset_against_brute_force(data_dir):
    ids, names = goemotions_dev(data_dir)
    gold = np.array([row[0] for row in ids if len(row) == 1])
    assert len(gold) == 4548  # PROVENANCE.md: dev examples with exactly one label
    rng = np.random.default_rng(2)
    pred = np.where(rng.random(len(gold)) < 0.3, rng.integers(0, 28, len(gold)), gold)
    grief = names.index("grief")
    pred[pred == grief] = names.index("sadness")  # grief never predicted
    rows, avg = brute_prf([{g} for g in gold], [{p} for p in pred], 28)
    stats = precision_recall_f1_support(gold, pred, 28)
    check_stats(stats, rows)
    for key in avg:
        assert averages(stats)[key] == pytest.approx(avg[key], abs=1e-12)
    assert micro_f1(gold, pred, 28) == pytest.approx(accuracy(gold, pred), abs=1e-12)
    cm = confusion_matrix(gold, pred, 28)
    for i, j in [(0, 0), (grief, names.index("sadness")), (27, 3)]:
        assert cm[i, j] == sum(1 for g, p in zip(gold, pred) if g == i and p == j)
    assert cm.sum() == len(gold) and cm[:, grief].sum() == 0


def test_classification_report_multilabel_real(data_dir):
    gold, names = semeval_dev(data_dir)
    rng = np.random.default_rng(3)
    probs = np.clip(0.35 * gold + rng.random(gold.shape) * 0.65, 0, 1)  # noisy but informative
    tuned = np.full(11, 0.45)
    rep = classification_report("multi_label", gold, probs, names, 0.5, tuned_thresholds=tuned)
    json.dumps(rep, allow_nan=False)
    pred_sets = [{j for j in range(11) if probs[i, j] >= 0.5} for i in range(len(gold))]
    rows, avg = brute_prf(sets_of(gold), pred_sets, 11)
    assert rep["jaccard"] == pytest.approx(brute_jaccard(sets_of(gold), pred_sets), abs=1e-12)
    assert rep["macro_f1"] == pytest.approx(avg["macro_f1"], abs=1e-12)
    assert rep["per_class"]["anger"]["support"] == 315  # PROVENANCE.md
    assert rep["per_class"]["surprise"]["f1"] == pytest.approx(rows[names.index("surprise")][2], abs=1e-12)
    assert rep["empty_predictions"] == sum(1 for s in pred_sets if not s)
    assert rep["tuned"]["threshold"] == [0.45] * 11
    tuned_sets = [{j for j in range(11) if probs[i, j] >= 0.45} for i in range(len(gold))]
    assert rep["tuned"]["jaccard"] == pytest.approx(brute_jaccard(sets_of(gold), tuned_sets), abs=1e-12)
    assert "confusion_matrix" not in rep


def test_classification_report_single_label_real(data_dir):
    gold = humor_dev(data_dir)
    rng = np.random.default_rng(4)
    p1 = np.clip(0.3 * gold + rng.random(len(gold)) * 0.7, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    rep = classification_report("single-label", gold, probs, ["not_humor", "humor"])
    json.dumps(rep, allow_nan=False)
    pred = (p1 > 0.5).astype(int)  # argmax of [1-p, p]; p == 0.5 does not occur with these draws
    tp = int(((pred == 1) & (gold == 1)).sum())
    fp, fn = int(((pred == 1) & (gold == 0)).sum()), int(((pred == 0) & (gold == 1)).sum())
    assert rep["binary_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert rep["accuracy"] == pytest.approx(float((pred == gold).mean()))
    assert rep["confusion_matrix"][1] == [fn, tp]
    assert rep["per_class"]["humor"]["support"] == int(gold.sum())
    assert "jaccard" not in rep


def test_classification_report_recipe_groups(data_dir):
    items = json.loads((data_dir / "recipe_mpr" / "500QA.json").read_text(encoding="utf-8"))
    groups = [[k for k, v in item["query_type"].items() if v] for item in items]
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 5, len(items))
    scores = rng.random((len(items), 5))
    rep = classification_report("multiple_choice", gold, scores, None, groups=groups)
    by = rep["by_group"]
    # PROVENANCE.md counts per query type
    assert {k: by[k]["n"] for k in by} == {
        "overall": 500,
        "Analogical": 30,
        "Commonsense": 268,
        "Negated": 109,
        "Specific": 151,
        "Temporal": 32,
    }
    correct = scores.argmax(axis=1) == gold
    neg = [i for i, g in enumerate(groups) if "Negated" in g]
    assert by["Negated"]["accuracy"] == pytest.approx(sum(correct[i] for i in neg) / len(neg))
    assert by["overall"]["accuracy"] == pytest.approx(rep["accuracy"])
    assert rep["label_names"] == ["0", "1", "2", "3", "4"]
