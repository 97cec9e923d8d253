"""Train/validation splits that keep label proportions (stratified holdout, iterative stratification, k-fold), and
seeded subsampling.

References:
- Sechidis, Tsoumakas, Vlahavas (2011), "On the Stratification of Multi-Label Data", ECML PKDD (Algorithm 1).
  Desired count per fold and label = ratio x label count; the label with the fewest remaining positives goes
  first; each of its unassigned examples goes to the fold that still wants that label most (ties: the fold
  that wants the most examples overall, then random), and the fold's desires drop for every label the
  example carries; examples without labels go to the fold with the largest remaining total desire.
- Stratified single-label splits follow the usual per-class shuffle-and-cut (as in scikit-learn's
  StratifiedKFold / StratifiedShuffleSplit), with largest-remainder rounding so the total is exact.

Vectorisation of the greedy step: while one label's examples are handed out, every pick lowers the chosen
fold's desire for that label and its total desire by exactly one, so (total - label desire) is fixed per fold
and the whole sequence of picks is the top-m of the candidate values {desire_j - s : s = 0..m-1}, ordered by
(value, fixed total-minus-label term, random priority). One sort per label replaces m sequential argmaxes.
The random tie-break is drawn once per label instead of once per pick; the assignments have the same
distribution because the examples are handed out in a random order.
"""

from __future__ import annotations

import numpy as np

from minitune.errors import ConfigError

_DECIMALS = 9  # desires are fractional; round before comparing so equal desires tie exactly


def _check_fraction(test_size: float) -> float:
    if not 0.0 < float(test_size) < 1.0:
        raise ConfigError(f"holdout fraction {test_size} must be between 0 and 1 (exclusive); e.g. 0.1")
    return float(test_size)


def _as_multi_hot(Y: np.ndarray) -> np.ndarray:
    """(N, L) 0/1 matrix as bool; anything else is a caller bug."""
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"expected an (N, L) multi-hot matrix, got shape {Y.shape}")
    if Y.size and not np.isin(Y, (0, 1)).all():
        raise ValueError("multi-hot matrix must hold only 0 and 1")
    return Y.astype(bool)


def stratified_holdout(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Single-label holdout: each class contributes test_size of its examples to the test side.

    Per-class quotas are rounded by largest remainder (ties random) so the test side has exactly
    round(test_size * N) examples. Returns sorted (train_idx, test_idx).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"expected one label per example, got shape {labels.shape}")
    fraction = _check_fraction(test_size)
    n = len(labels)
    n_test = int(round(fraction * n))
    if not 0 < n_test < n:
        raise ConfigError(
            f"holdout fraction {fraction} of {n} examples leaves one side empty; use more examples or another fraction"
        )
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    # Largest remainders get the leftover test places (random among equal remainders).
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))
    take[order[: n_test - take.sum()]] += 1
    grouped, rank = _shuffled_by_class(inverse, counts, rng)
    test_mask = np.zeros(n, dtype=bool)
    test_mask[grouped[rank < take[inverse[grouped]]]] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def _shuffled_by_class(
    inverse: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices grouped by class (random order inside each class) and each one's rank inside its class."""
    perm = rng.permutation(len(inverse))
    grouped = perm[np.argsort(inverse[perm], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(inverse)) - starts[inverse[grouped]]
    return grouped, rank


def _greedy_picks(desire: np.ndarray, total: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Folds chosen by m successive greedy picks (largest desire, then largest total, then random).

    Each pick lowers the chosen fold's desire and total by one; see the module docstring for why the
    sequence equals a single sort of the candidate values.
    """
    k = len(desire)
    steps = np.arange(m)
    values = np.round(desire[:, None] - steps[None, :], _DECIMALS)  # (k, m): value at the fold's (s+1)-th pick
    offset = np.round(total - desire, _DECIMALS)  # (k,): fixed during this label's picks
    priority = rng.random(k)
    folds = np.repeat(np.arange(k), m)
    order = np.lexsort((-priority[folds], -offset[folds], -values.ravel()))[:m]
    return folds[order]


def iterative_stratification(Y: np.ndarray, ratios: list[float], seed: int) -> np.ndarray:
    """Sechidis et al. (2011) iterative stratification; returns the fold id (0..len(ratios)-1) per example."""
    Y = _as_multi_hot(Y)
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or len(r) < 2 or (r <= 0).any():
        raise ConfigError(f"split ratios {list(ratios)} must be two or more positive numbers")
    r = r / r.sum()
    rng = np.random.default_rng(seed)
    n, n_labels = Y.shape
    label_desire = np.outer(r, Y.sum(axis=0))  # (k, L)
    total_desire = r * n  # (k,)
    fold = np.full(n, -1, dtype=np.int64)
    remaining = Y.sum(axis=0).astype(np.int64)  # positives per label among unassigned examples
    while remaining.any():
        live = np.flatnonzero(remaining)
        fewest = live[remaining[live] == remaining[live].min()]
        label = fewest[rng.integers(len(fewest))]
        members = rng.permutation(np.flatnonzero(Y[:, label] & (fold < 0)))
        picks = _greedy_picks(label_desire[:, label], total_desire, len(members), rng)
        fold[members] = picks
        onehot = np.eye(len(r))[picks]  # (m, k)
        label_desire -= onehot.T @ Y[members]  # (k, L): every label the example carries
        total_desire -= onehot.sum(axis=0)
        remaining -= Y[members].sum(axis=0)
    unlabelled = rng.permutation(np.flatnonzero(fold < 0))
    fold[unlabelled] = _greedy_picks(total_desire, total_desire, len(unlabelled), rng)
    return fold


def multilabel_holdout(Y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label holdout by iterative stratification; returns sorted (train_idx, test_idx)."""
    fraction = _check_fraction(test_size)
    fold = iterative_stratification(Y, [1.0 - fraction, fraction], seed)
    return np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)


def kfold(labels_or_Y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, val_idx) pairs whose val sets partition the examples.

    1-D labels: stratified (each class spread round-robin over the folds, so per-class and total fold sizes
    differ by at most one). 2-D multi-hot: iterative stratification with equal ratios.
    """
    data = np.asarray(labels_or_Y)
    n = len(data)
    if not 2 <= int(k) <= n:
        raise ConfigError(f"k-fold needs 2 <= k <= number of examples ({n}), got k={k}")
    if data.ndim == 2:
        fold = iterative_stratification(data, [1.0] * k, seed)
    elif data.ndim == 1:
        rng = np.random.default_rng(seed)
        _, inverse, counts = np.unique(data, return_inverse=True, return_counts=True)
        grouped, _ = _shuffled_by_class(inverse, counts, rng)
        fold = np.empty(n, dtype=np.int64)
        fold[grouped] = np.arange(n) % k  # position runs on across classes: balanced totals too
    else:
        raise ValueError(f"expected labels (N,) or a multi-hot matrix (N, L), got shape {data.shape}")
    return [(np.flatnonzero(fold != j), np.flatnonzero(fold == j)) for j in range(k)]


def subsample(examples: list, n: int | None, seed: int | None) -> list:
    """The first n examples after a seeded shuffle (kept in their original order); with seed None, the first n."""
    if not n or n >= len(examples):
        return list(examples)
    if seed is None:
        return list(examples[:n])
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
    return [examples[i] for i in keep]


def holdout_examples(examples: list, labels: np.ndarray, share: float, seed: int) -> tuple[list, list]:
    """Split examples into (train, held-out), stratified by their labels: (N,) class ids, or an (N, L) multi-hot
    matrix, split by iterative stratification."""
    split = multilabel_holdout if np.asarray(labels).ndim == 2 else stratified_holdout
    tr, te = split(labels, share, seed)
    return [examples[i] for i in tr], [examples[i] for i in te]


SELECTION_SHARE = 0.1  # of train held out to select on when a task has no dev set
# With extra training sources and no dev file, the merged data is split 80/20, as the GoEmotions source system split
# its merged data sets (data/sources.py).
MERGED_SELECTION_SHARE = 0.2


def selection_split(
    train: list,
    dev: list,
    train_labels: np.ndarray,
    max_eval_samples: int | None,
    seed: int,
    share: float | None = None,
) -> tuple[list, list]:
    """(train, dev) to train on and select on, the same rule in every protocol: the dev set given, else `share`
    (default 10%) of train held out (stratified); either capped at its first `max_eval_samples`."""
    if not dev:
        train, dev = holdout_examples(train, train_labels, share or SELECTION_SHARE, seed)
    return train, subsample(dev, max_eval_samples, None)
