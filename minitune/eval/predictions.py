"""Predictions as files a person (or a leaderboard) reads: one CSV row per example, its columns kept, the predicted
label(s) and one probability per label."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minitune.checkpoints.atomic import atomic_write
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.tasks import Example, TaskData, label_array


def label_predictions(scores: np.ndarray, names: list[str], thresholds: np.ndarray | None) -> list[str]:
    """The predicted label of each row, or (multi-label, with thresholds) its comma-separated labels."""
    if thresholds is None:
        return [names[i] for i in scores.argmax(1)]
    return [",".join(n for n, c in zip(names, row) if c) for row in scores >= thresholds]


def write_predictions(
    path: Path, records: Sequence[dict], labels: list[str], scores: np.ndarray, names: list[str], header: str
) -> None:
    """CSV: the records' columns (an id column first when present), the label column `header`, then prob_<label>."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    ids = [c for c in columns if c.lower() == "id"]
    if ids:  # an id column first, so the file joins back to its input (or goes straight to a leaderboard)
        columns.insert(0, columns.pop(columns.index(ids[0])))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([*columns, header, *(f"prob_{n}" for n in names)])
            for record, label, p in zip(records, labels, scores):
                w.writerow([*(record.get(c, "") for c in columns), label, *(f"{v:.6f}" for v in p)])

    atomic_write(path, write)


def write_example_predictions(path: Path, task: TaskData, examples: list[Example], scores, thresholds) -> None:
    """A labelled split's predictions beside its gold labels: one row per example, with its probabilities."""
    multi = task.kind == MULTI_LABEL
    names = task.label_names if task.kind != MULTIPLE_CHOICE else [f"choice_{i}" for i in range(scores.shape[1])]
    gold = label_array(task, examples)
    records = [
        {
            "line": ex.meta.get("line", i + 1),
            "text": ex.text,
            **({"pair": ex.pair} if ex.pair else {}),
            "gold": ",".join(n for n, g in zip(names, gold[i]) if g) if multi else names[gold[i]],
        }
        for i, ex in enumerate(examples)
    ]
    labels = label_predictions(scores, names, thresholds if multi else None)
    write_predictions(path, records, labels, scores, names, "labels" if multi else "label")
