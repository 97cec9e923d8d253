"""Classification metrics in numpy: accuracy, per-class P/R/F1, averaged F1, Jaccard, confusion, group accuracy.

Inputs: single-label / multiple-choice labels and predictions are int class ids (N,); multi-label ones are 0/1
indicator matrices (N, L). `classification_report` takes probabilities and returns one JSON-serialisable dict.

Conventions (chosen to agree with scikit-learn's `precision_recall_fscore_support(..., zero_division=0)`,
which the SemEval-2018 and GoEmotions papers used; sklearn itself is not a dependency):
- Zero division gives 0: precision with no predicted positives, recall with no gold positives, and F1 when
  both are empty. F1 is computed as 2·tp / (pred + gold), identical to 2PR / (P + R) whenever that is defined.
- Macro F1 is the unweighted mean of per-class F1 over *all* classes (sklearn with an explicit `labels=`),
  not the F1 of macro-averaged P and R. Micro F1 pools tp / pred / gold over classes; for single-label data
  it equals accuracy. Weighted F1 weights per-class F1 by gold support.
- Sample-wise Jaccard (SemEval-2018 Task 1 E-c "accuracy", Mohammad et al. 2018): mean over samples of
  |gold ∩ pred| / |gold ∪ pred|. The task paper leaves 0/0 undefined; the official scorer
  (felipebravom/SemEval_2018_Task_1_Eval, utils.py) calls sklearn's old `jaccard_similarity_score`, which sets
  a sample whose gold and predicted sets are both empty to 1.0. We do the same so our numbers are comparable
  with the published ones (dev has 14 all-zero tweets; newer sklearn `jaccard_score(average="samples")` would
  score those 0 instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL, normalize_kind

# The metrics a run may select its best model on, per task kind (all: higher is better).
SELECTION_METRICS: dict[str, tuple[str, ...]] = {
    SINGLE_LABEL: ("macro_f1", "accuracy", "micro_f1", "weighted_f1", "binary_f1"),
    MULTI_LABEL: ("macro_f1", "jaccard", "micro_f1", "weighted_f1", "subset_accuracy"),
    MULTIPLE_CHOICE: ("accuracy", "macro_f1"),
}


def selection_metrics(kind: str, report: dict) -> dict[str, float]:
    """The metrics a run may select on, from a split's report."""
    return {k: report[k] for k in SELECTION_METRICS[kind] if k in report}


@dataclass
class ClassStats:
    """Per-class arrays, each (C,): precision, recall, f1 in [0, 1]; support (gold count), predicted, tp."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray
    tp: np.ndarray


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0 (the zero-division rule above)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _labels_1d(y, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be class ids of shape (N,), got shape {arr.shape}")
    if arr.size and not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{name} must hold integer class ids")
    return arr.astype(np.int64)


def _indicator(y, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 0/1 matrix of shape (N, L), got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 values")
    return arr.astype(bool)


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"y_true has shape {a.shape} but y_pred has shape {b.shape}")


def accuracy(y_true, y_pred) -> float:
    """Share of exact matches: class ids (N,), or whole rows of an (N, L) matrix (subset accuracy)."""
    a, b = np.asarray(y_true), np.asarray(y_pred)
    _same_length(a, b)
    if a.shape[0] == 0:
        return 0.0
    match = a == b if a.ndim == 1 else (a.astype(bool) == b.astype(bool)).all(axis=1)
    return float(match.mean())


def _counts(y_true, y_pred, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, predicted, support) per class; dispatches on 1-D class ids vs 2-D indicator matrices."""
    if np.asarray(y_true).ndim == 2:
        t, p = _indicator(y_true, "y_true"), _indicator(y_pred, "y_pred")
        _same_length(t, p)
        return (t & p).sum(axis=0), p.sum(axis=0), t.sum(axis=0)
    t, p = _labels_1d(y_true, "y_true"), _labels_1d(y_pred, "y_pred")
    _same_length(t, p)
    c = num_classes if num_classes is not None else int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= c):
        raise ValueError(f"class ids must lie in [0, {c})")
    tp = np.bincount(t[t == p], minlength=c)
    return tp, np.bincount(p, minlength=c), np.bincount(t, minlength=c)


def precision_recall_f1_support(y_true, y_pred, num_classes: int | None = None) -> ClassStats:
    """Per-class statistics. 1-D class ids need `num_classes` (else the largest id seen + 1); 2-D 0/1
    matrices give one entry per column."""
    tp, pred, gold = _counts(y_true, y_pred, num_classes)
    return ClassStats(
        precision=_div(tp, pred),
        recall=_div(tp, gold),
        f1=_div(2 * tp, pred + gold),
        support=gold.astype(np.int64),
        predicted=pred.astype(np.int64),
        tp=tp.astype(np.int64),
    )


def averages(stats: ClassStats) -> dict[str, float]:
    """macro / micro / weighted F1 and macro / micro precision and recall from per-class statistics."""
    tp, pred, gold = stats.tp.sum(), stats.predicted.sum(), stats.support.sum()
    n = len(stats.f1)
    return {
        "macro_f1": float(stats.f1.mean()) if n else 0.0,
        "micro_f1": float(_div(2 * tp, pred + gold)),
        "weighted_f1": float(_div((stats.f1 * stats.support).sum(), gold)),
        "macro_precision": float(stats.precision.mean()) if n else 0.0,
        "macro_recall": float(stats.recall.mean()) if n else 0.0,
        "micro_precision": float(_div(tp, pred)),
        "micro_recall": float(_div(tp, gold)),
    }


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    return averages(precision_recall_f1_support(y_true, y_pred, num_classes))["macro_f1"]


def micro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    return averages(precision_recall_f1_support(y_true, y_pred, num_classes))["micro_f1"]


def weighted_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    return averages(precision_recall_f1_support(y_true, y_pred, num_classes))["weighted_f1"]


def jaccard_samples(y_true, y_pred) -> float:
    """Mean over samples of |gold ∩ pred| / |gold ∪ pred|; a sample with both sets empty scores 1 (see above)."""
    t, p = _indicator(y_true, "y_true"), _indicator(y_pred, "y_pred")
    _same_length(t, p)
    if t.shape[0] == 0:
        return 0.0
    inter, union = (t & p).sum(axis=1), (t | p).sum(axis=1)
    per_sample = np.where(union == 0, 1.0, _div(inter, union))
    return float(per_sample.mean())


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are gold classes, columns predicted classes."""
    t, p = _labels_1d(y_true, "y_true"), _labels_1d(y_pred, "y_pred")
    _same_length(t, p)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def multilabel_counts(y_true, y_pred) -> dict[str, np.ndarray]:
    """Per label (L,): gold positives ("gold_pos"), predicted positives ("pred_pos"), true positives ("tp")."""
    tp, pred, gold = _counts(y_true, y_pred, None)
    return {"gold_pos": gold.astype(np.int64), "pred_pos": pred.astype(np.int64), "tp": tp.astype(np.int64)}


def accuracy_by_group(correct: np.ndarray, groups: Sequence[Sequence[str]]) -> dict[str, dict[str, float | int]]:
    """Accuracy per group, e.g. Recipe-MPR query types; {"overall": {...}, group: {"n", "correct", "accuracy"}}.

    An example with several groups counts toward each of them, so group sizes can add up to more than the
    total; an example with no group counts only toward "overall". Groups are listed in sorted order.
    """
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    if len(groups) != len(ok):
        raise ValueError(f"{len(ok)} correctness flags but {len(groups)} group lists")
    tally: dict[str, list[int]] = {}
    for flag, names in zip(ok, groups):
        for name in dict.fromkeys(names):  # an example listing a group twice still counts once
            entry = tally.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += int(flag)
    out = {"overall": _group_entry(len(ok), int(ok.sum()))}
    if "overall" in tally:
        raise ValueError("a group may not be named 'overall'")
    for name in sorted(tally):
        out[name] = _group_entry(*tally[name])
    return out


def _group_entry(n: int, n_correct: int) -> dict[str, float | int]:
    return {"n": n, "correct": n_correct, "accuracy": n_correct / n if n else 0.0}


def predict_multilabel(scores, threshold) -> np.ndarray:
    """Bool (N, L): score >= threshold, where threshold is a scalar or one value per label (L,)."""
    s = np.asarray(scores, dtype=np.float64)
    thr = np.asarray(threshold, dtype=np.float64)
    if s.ndim != 2 or thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != s.shape[1]):
        raise ValueError(f"scores {s.shape} and threshold {thr.shape} do not match: need (N, L) and () or (L,)")
    return s >= thr


def classification_report(
    kind: str,
    y_true,
    scores,
    label_names: Sequence[str] | None,
    threshold=0.5,
    *,
    tuned_thresholds=None,
    groups: Sequence[Sequence[str]] | None = None,
) -> dict:
    """All metrics for one split as a JSON-serialisable dict; `scores` are probabilities (N, C) or (N, L).

    Single-label / multiple choice: prediction = argmax; keys accuracy, the F1 averages, per_class,
    confusion_matrix, and for two classes binary_f1 (F1 of class 1, the usual headline for binary tasks).
    Multi-label: prediction = score >= threshold (scalar or per label); keys jaccard, subset_accuracy,
    the F1 averages, per_class (with tp), empty_predictions. With `tuned_thresholds` (L,) a second
    multi-label report at those thresholds is nested under "tuned". With `groups` (one list of group names
    per example) "by_group" holds accuracy_by_group of per-example correctness.
    """
    kind = normalize_kind(kind)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {s.shape}")
    names = list(label_names) if label_names is not None else [str(i) for i in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} label names for {s.shape[1]} score columns")
    if kind == MULTI_LABEL:
        report = _multilabel_report(y_true, s, names, threshold)
        if tuned_thresholds is not None:
            report["tuned"] = _multilabel_report(y_true, s, names, tuned_thresholds)
        correct = (predict_multilabel(s, threshold) == _indicator(y_true, "y_true")).all(axis=1)
    else:
        report = _single_label_report(kind, y_true, s, names)
        correct = s.argmax(axis=1) == _labels_1d(y_true, "y_true")
    if groups is not None:
        report["by_group"] = accuracy_by_group(correct, groups)
    return report


def _per_class_dict(stats: ClassStats, names: list[str], with_tp: bool) -> dict[str, dict]:
    out = {}
    for i, name in enumerate(names):
        entry = {
            "precision": float(stats.precision[i]),
            "recall": float(stats.recall[i]),
            "f1": float(stats.f1[i]),
            "support": int(stats.support[i]),
            "predicted": int(stats.predicted[i]),
        }
        if with_tp:
            entry["tp"] = int(stats.tp[i])
        out[name] = entry
    return out


def _single_label_report(kind: str, y_true, s: np.ndarray, names: list[str]) -> dict:
    t = _labels_1d(y_true, "y_true")
    if len(t) != len(s):
        raise ValueError(f"{len(t)} labels but {len(s)} score rows")
    pred = s.argmax(axis=1)
    stats = precision_recall_f1_support(t, pred, len(names))
    report = {"kind": kind, "n_examples": int(len(t)), "label_names": names, "accuracy": accuracy(t, pred)}
    if len(names) == 2:
        report["binary_f1"] = float(stats.f1[1])
    report.update(averages(stats))
    report["per_class"] = _per_class_dict(stats, names, with_tp=False)
    report["confusion_matrix"] = confusion_matrix(t, pred, len(names)).tolist()
    return report


def _multilabel_report(y_true, s: np.ndarray, names: list[str], threshold) -> dict:
    t = _indicator(y_true, "y_true")
    pred = predict_multilabel(s, threshold)
    _same_length(t, pred)
    stats = precision_recall_f1_support(t, pred)
    thr = np.asarray(threshold, dtype=np.float64)
    report = {
        "kind": MULTI_LABEL,
        "n_examples": int(len(t)),
        "label_names": names,
        "threshold": float(thr) if thr.ndim == 0 else [float(v) for v in thr],
        "jaccard": jaccard_samples(t, pred),
        "subset_accuracy": accuracy(t, pred),
    }
    report.update(averages(stats))
    report["empty_predictions"] = int((~pred.any(axis=1)).sum())
    report["per_class"] = _per_class_dict(stats, names, with_tp=True)
    return report
