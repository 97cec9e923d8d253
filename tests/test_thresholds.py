"""Threshold tuning against a brute-force per-label search, on real SemEval dev labels and synthetic data."""

import numpy as np
import pytest

from minitune.eval.thresholds import GRID, apply_thresholds, choose_thresholds, per_label_f1, tune_thresholds


def semeval_dev(data_dir) -> np.ndarray:
    lines = (data_dir / "semeval2018_ec" / "2018-E-c-En-dev.txt").read_text(encoding="utf-8").splitlines()
    return np.array([[int(v) for v in line.split("\t")[2:]] for line in lines[1:]])


def realish_probs(gold: np.ndarray, seed: int) -> np.ndarray:
    """Scores that carry signal at a label-dependent offset, rounded to 0.01 so that ties occur."""
    rng = np.random.default_rng(seed)
    shift = np.linspace(-0.25, 0.2, gold.shape[1])[None, :]
    raw = 0.45 + shift + 0.25 * gold + rng.normal(0, 0.18, gold.shape)
    return np.round(np.clip(raw, 0, 1), 2)


def brute_f1(y: list[int], p: list[float], thr: float) -> float:
    tp = sum(1 for yi, pi in zip(y, p) if yi and pi >= thr)
    npred = sum(1 for pi in p if pi >= thr)
    return 2 * tp / (npred + sum(y)) if npred + sum(y) else 0.0


def brute_best(y: list[int], p: list[float], candidates: list[float]) -> float:
    scored = [(brute_f1(y, p, c), c) for c in candidates]
    best = max(f for f, _ in scored)
    tied = [c for f, c in scored if abs(f - best) <= 1e-12]
    return min(tied, key=lambda c: (abs(c - 0.5), c))


@pytest.mark.parametrize("method", ["grid", "unique"])
def test_matches_brute_force_on_semeval_dev(data_dir, method):
    gold = semeval_dev(data_dir)
    probs = realish_probs(gold, seed=0)
    thr = tune_thresholds(gold, probs, method)
    assert thr.shape == (11,)
    for j in range(11):
        y, p = gold[:, j].tolist(), probs[:, j].tolist()
        candidates = [float(g) for g in GRID] if method == "grid" else sorted(set(p) | {0.5})
        assert thr[j] == pytest.approx(brute_best(y, p, candidates), abs=1e-12), j


@pytest.mark.parametrize("method", ["grid", "unique"])
def test_tuned_f1_not_below_fixed(data_dir, method):
    gold = semeval_dev(data_dir)
    probs = realish_probs(gold, seed=1)
    thr = tune_thresholds(gold, probs, method)
    tuned, fixed = per_label_f1(gold, probs, thr), per_label_f1(gold, probs, 0.5)
    assert (tuned >= fixed - 1e-12).all()
    assert (tuned > fixed + 0.01).any()  # the label-dependent offsets make 0.5 wrong for some labels


def test_recovers_known_thresholds_on_separable_data():
    rng = np.random.default_rng(0)
    true_thr = np.array([0.3, 0.55, 0.8])
    y = rng.random((400, 3)) < 0.4
    pos = true_thr + 0.02 + rng.random((400, 3)) * (1 - true_thr - 0.02)
    neg = rng.random((400, 3)) * (true_thr - 0.02)
    probs = np.where(y, pos, neg)
    assert tune_thresholds(y, probs, "grid").tolist() == pytest.approx(true_thr.tolist(), abs=1e-12)
    unique = tune_thresholds(y, probs, "unique")
    # The exact optimum is the smallest positive score, unless 0.5 (nearer the default) also separates.
    for j in range(3):
        lo, hi = probs[~y[:, j], j].max(), probs[y[:, j], j].min()
        assert unique[j] == (0.5 if lo < 0.5 <= hi else hi)
    assert (apply_thresholds(probs, unique) == y).all()


def test_ties_go_to_half_and_empty_labels_keep_half():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    p = np.array([[0.9, 0.7], [0.1, 0.2], [0.8, 0.9]])
    for method in ("grid", "unique"):
        # label 0: every threshold in (0.1, 0.8] is perfect -> 0.5; label 1 has no positives -> 0.5
        assert tune_thresholds(y, p, method).tolist() == [0.5, 0.5]


def test_apply_thresholds_rule_and_shapes():
    p = np.array([[0.5, 0.49], [0.2, 0.7]])
    assert apply_thresholds(p, np.array([0.5, 0.5])).tolist() == [[True, False], [False, True]]
    assert apply_thresholds(p, 0.2).tolist() == [[True, True], [True, True]]
    with pytest.raises(ValueError):
        apply_thresholds(p, np.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError):
        tune_thresholds(np.zeros((2, 2)), p, "median")


def semeval_dev_labels(data_dir):
    from minitune.data.tasks import label_array, load_task

    task = load_task("semeval", data_dir)
    return label_array(task, task.dev), task.label_names


def test_barely_trained_model_keeps_the_fixed_threshold_everywhere(data_dir):
    """The degenerate case seen on a short semeval run: scores all near 0.45 and unrelated to the labels. Tuning
    then picks 0.45 (predict every label for every tweet) for a large F1 'gain'; nothing of that may be saved."""
    y, names = semeval_dev_labels(data_dir)
    probs = 0.45 + 0.004 * np.random.default_rng(0).random(y.shape)
    raw = tune_thresholds(y, probs, default=0.5)
    assert (probs >= raw).all(axis=0).sum() >= 5  # unguarded, tuning predicts several labels for every example
    chosen = choose_thresholds(y, probs, names, threshold=0.5, metric="jaccard")
    assert chosen["use"] == "fixed" and chosen["tuned_labels"] == 0
    assert set(chosen["per_label"].values()) == {0.5}
    assert any("does not rank" in n for n in chosen["notes"]) and any("no label kept" in n for n in chosen["notes"])


def test_a_model_that_ranks_keeps_tuned_thresholds_where_they_beat_the_fixed_one(data_dir):
    y, names = semeval_dev_labels(data_dir)
    rng = np.random.default_rng(1)
    probs = np.clip(0.15 + 0.3 * y + 0.3 * rng.random(y.shape), 0, 1)  # ranks well, but 0.5 misses positives
    chosen = choose_thresholds(y, probs, names, threshold=0.5, metric="macro_f1")
    tuned = np.array(list(chosen["per_label"].values()))
    assert chosen["use"] == "tuned" and chosen["tuned_labels"] >= 8
    assert not (probs >= tuned).all(axis=0).any() and (probs >= tuned).any(axis=0).all()
    kept = tuned != 0.5
    assert (per_label_f1(y, probs, tuned)[kept] > per_label_f1(y, probs, 0.5)[kept]).all()


def test_flat_curves_and_rare_labels_resolve_to_the_fixed_threshold():
    y = np.zeros((40, 2), dtype=np.uint8)
    y[:3, 1] = 1  # label 0: no positives (flat F1 of 0); label 1: 3 positives, perfectly ranked
    probs = np.linspace(0.01, 0.99, 80).reshape(40, 2)
    probs[:3, 1] = 0.99
    assert tune_thresholds(y, probs, default=0.3)[0] == 0.3  # ties go to the fixed threshold, not to 0.5
    chosen = choose_thresholds(y, probs, ["a", "b"], threshold=0.3, metric="macro_f1")
    assert chosen["per_label"] == {"a": 0.3, "b": 0.3} and chosen["use"] == "fixed"
    assert any("fewer than 5 positives" in n and "a, b" in n for n in chosen["notes"])
