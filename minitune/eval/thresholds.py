"""Per-label decision thresholds for multi-label classification, tuned on dev to maximise each label's F1.

Each label is tuned on its own (its F1 depends only on its own column), over one of two candidate sets:
- "grid": 0.05, 0.10, ..., 0.95 — coarse, hard to overfit on small dev sets (the default);
- "unique": every distinct score of that label plus 0.5 — the exact optimum on dev, more prone to overfit.
A label is predicted when score >= threshold (`apply_thresholds`, the same rule as metrics.predict_multilabel).
Ties in F1 go to the threshold closest to 0.5 (then the lower one), so a label whose F1 is flat — e.g. no
positives on dev, where F1 is 0 everywhere — keeps the untuned 0.5.

Both searches are vectorised: the grid scores all (threshold, example, label) triples at once; "unique"
sorts each column once and reads tp and predicted counts at every cut from cumulative sums.
Because thresholds are chosen on dev, dev metrics at tuned thresholds are optimistic; judge them on test.
"""

from __future__ import annotations

import numpy as np

from minitune.data.kinds import MULTI_LABEL
from minitune.eval.metrics import classification_report, predict_multilabel

GRID = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05 .. 0.95; rounded so 0.15 is 0.15, not 0.15000000000000002
DEFAULT_THRESHOLD = 0.5


def _check(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and probs {p.shape} must both be (N, L)")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0/1 values")
    return y.astype(bool), p


def _pick(f1: np.ndarray, candidates: np.ndarray, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per column of f1 (K, L) the candidate (K, L) with the best F1; ties -> nearest `default`, then lower."""
    best = np.nanmax(f1, axis=0, keepdims=True)
    is_best = np.isclose(f1, best, rtol=1e-12, atol=0.0) & ~np.isnan(f1)
    # Lexicographic key: distance to the default first, the threshold itself second; non-best rows are pushed out.
    distance = np.where(is_best, np.abs(candidates - default), np.inf)
    key = np.where(np.isclose(distance, distance.min(axis=0, keepdims=True), rtol=0, atol=1e-12), candidates, np.inf)
    return np.take_along_axis(candidates, key.argmin(axis=0)[None, :], axis=0)[0]


def _grid_f1(y: np.ndarray, p: np.ndarray, grid: np.ndarray) -> np.ndarray:
    pred = p[None, :, :] >= grid[:, None, None]  # (G, N, L)
    tp = (pred & y[None]).sum(axis=1)  # (G, L)
    denom = pred.sum(axis=1) + y.sum(axis=0)[None, :]
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)


def _unique_f1(y: np.ndarray, p: np.ndarray, default: float) -> tuple[np.ndarray, np.ndarray]:
    """F1 at every distinct score of each column: (N + 1, L) values and candidates, NaN where not a cut."""
    n, num_labels = p.shape
    order = np.argsort(-p, axis=0, kind="stable")
    s = np.take_along_axis(p, order, axis=0)  # (N, L) descending
    tp = np.cumsum(np.take_along_axis(y, order, axis=0), axis=0)  # positives among the top k+1
    k = np.arange(1, n + 1)[:, None]  # predicted count when cutting after row k-1
    # Only the last row of a run of equal scores is a valid cut: threshold s predicts all rows >= s.
    last_of_run = np.ones_like(s, dtype=bool)
    last_of_run[:-1] = s[:-1] != s[1:]
    f1 = np.where(last_of_run, 2.0 * tp / (k + y.sum(axis=0)[None, :]), np.nan)
    # Append the default candidate so a flat F1 can fall back to the untuned threshold.
    at_default = _grid_f1(y, p, np.array([default]))
    return np.vstack([f1, at_default]), np.vstack([s, np.full((1, num_labels), default)])


def tune_thresholds(y_true, probs, method: str = "grid", default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-label thresholds (L,) maximising each label's F1 on (y_true, probs), both (N, L); ties and flat curves
    resolve to the candidate nearest `default`.

    method: "grid" (0.05..0.95 step 0.05) or "unique" (each label's distinct scores, plus the default).
    """
    y, p = _check(y_true, probs)
    if p.shape[0] == 0:
        return np.full(p.shape[1], default)
    if method == "grid":
        f1 = _grid_f1(y, p, GRID)
        candidates = np.broadcast_to(GRID[:, None], f1.shape)
    elif method == "unique":
        f1, candidates = _unique_f1(y, p, default)
    else:
        raise ValueError(f"threshold method {method!r} must be 'grid' or 'unique'")
    return _pick(f1, candidates, default)


def apply_thresholds(probs, thr) -> np.ndarray:
    """Bool (N, L) predictions: probs >= thr, thr a scalar or (L,)."""
    return predict_multilabel(probs, thr)


def per_label_f1(y_true, probs, thr) -> np.ndarray:
    """F1 of each label (L,) at thresholds thr (scalar or (L,)); 0 where a label has no gold nor predicted."""
    y, p = _check(y_true, probs)
    pred = apply_thresholds(p, thr)
    tp = (pred & y).sum(axis=0)
    denom = pred.sum(axis=0) + y.sum(axis=0)
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)


MIN_POSITIVES = 5  # a label with fewer positives on dev keeps the fixed threshold: its F1 curve is noise


def guard_thresholds(y_true, probs, tuned, default: float) -> tuple[np.ndarray, dict[str, list[int]]]:
    """The tuned thresholds where tuning means something, else `default`, label by label; and why not, by label.

    A tuned threshold is kept only if the label has at least MIN_POSITIVES positives on dev, the threshold neither
    predicts the label for every dev example nor for none, and its F1 beats both the fixed threshold's and the F1 of
    predicting the label for every example (what a threshold below every score gives: a model that does not rank
    the examples earns nothing from tuning).
    """
    y, p = _check(y_true, probs)
    tuned = np.asarray(tuned, dtype=np.float64)
    n_pred = (p >= tuned).sum(axis=0)
    prevalence = y.mean(axis=0) if len(y) else np.zeros(y.shape[1])
    predict_all = 2 * prevalence / (1 + prevalence)
    f1_tuned, f1_fixed = per_label_f1(y, p, tuned), per_label_f1(y, p, default)
    reasons = {
        "few_positives": y.sum(axis=0) < MIN_POSITIVES,
        "degenerate": (n_pred == 0) | (n_pred == len(y)),
        "no_gain": (f1_tuned <= f1_fixed + 1e-12) | (f1_tuned <= predict_all + 1e-12),
    }
    keep = ~(reasons["few_positives"] | reasons["degenerate"] | reasons["no_gain"])
    return np.where(keep, tuned, default), {k: np.flatnonzero(v & ~keep).tolist() for k, v in reasons.items()}


TUNED_ON = {"dev": "dev", "oof": "out-of-fold predictions", "held_out": "held-out {split:g} of train"}


def choose_thresholds(
    y_true, probs, label_names: list[str], threshold: float, metric: str, on: str = "dev", split: float | None = None
) -> dict:
    """Per-label thresholds tuned for each label's F1 on the examples given, guarded by `guard_thresholds`; used for
    prediction ("use": "tuned") only if they also do at least as well as the fixed `threshold` on `metric` over all
    labels and some label kept its tuned value. Both are recorded either way, with notes saying what was rejected
    and why. `on`: what the examples are (TUNED_ON): dev, cv's out-of-fold predictions, or the fraction `split` of
    train held out from training (--threshold-split)."""
    y, p = _check(y_true, probs)
    chosen, rejected = guard_thresholds(y, p, tune_thresholds(y, p, default=threshold), threshold)
    rep = classification_report(MULTI_LABEL, y, p, label_names, threshold=threshold, tuned_thresholds=chosen)
    kept = int((chosen != threshold).sum())
    use = "tuned" if kept and rep["tuned"][metric] >= rep[metric] else "fixed"
    names = lambda idx: ", ".join(label_names[i] for i in idx)  # noqa: E731
    where = TUNED_ON[on].format(split=split or 0)
    notes = [_first_note(on, len(y), split)]
    if rejected["few_positives"]:
        among = {"dev": "on dev", "oof": "in the out-of-fold predictions", "held_out": "in the held-out examples"}[on]
        notes.append(f"fewer than {MIN_POSITIVES} positives {among}, fixed threshold kept: "
                     f"{names(rejected['few_positives'])}")  # fmt: skip
    weak = sorted((set(rejected["degenerate"]) | set(rejected["no_gain"])) - set(rejected["few_positives"]))
    if weak:
        notes.append(
            f"tuning did no better than the fixed threshold or than predicting the label for every example "
            f"(the model does not rank these yet), fixed threshold kept: {names(weak)}"
        )
    if not kept:
        notes.append(
            "no label kept a tuned threshold: predictions use the fixed threshold; train longer or on more "
            "data before tuning"
        )
    return {
        "threshold": threshold,
        "per_label": dict(zip(label_names, map(float, chosen))),
        "use": use,
        "metric": metric,
        "tuned_labels": kept,
        "tuned_on": where,
        "notes": notes,
    }


def _first_note(on: str, n: int, split: float | None) -> str:
    """Where the thresholds were tuned, and so how far their tuned score can be trusted."""
    if on == "oof":
        return (f"tuned on the {n} out-of-fold predictions: no model saw the examples its thresholds were tuned on, "
                "so the tuned score is honest")  # fmt: skip
    if on == "held_out":
        return (f"tuned on {n} training examples held out from training ({split:g} of train, stratified; "
                "--threshold-split), not on dev: the tuned dev score is an honest estimate")  # fmt: skip
    return f"tuned on the {n} dev examples and scored on them: the tuned dev score is optimistic"
