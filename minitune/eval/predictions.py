"""What a run keeps of its scored examples: CSV files a person (or a leaderboard) reads, and the JSON records that
let figures and report.html be redrawn without the model.

- `dev_predictions.csv` / `test_predictions.csv` / `predictions.csv`: one row per example, its columns kept (an id
  first), the predicted label(s) and one probability per label (`write_predictions`, `write_example_predictions`).
- `predictions_<split>.jsonl`: one JSON object per example, in the split's order:
    {"text": ..., "pair": ... (if any), "choices": [...] (multiple choice), "gold": label id | multi-hot list,
     "probs": [probability per class / label / option]}
  Probabilities are rounded to 6 decimals (as in the CSV files). The training label counts that results.json keeps
  under train.label_counts (the class-imbalance chart) come from data/tasks.label_counts.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minitune.checkpoints.atomic import atomic_write, atomic_write_text
from minitune.checkpoints.rundir import read_jsonl
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
    columns = record_columns(records)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([*columns, header, *(f"prob_{n}" for n in names)])
            for record, label, p in zip(records, labels, scores):  # NaN: a row with no prediction (an empty text)
                probs = (f"{v:.6f}" if np.isfinite(v) else "" for v in p)
                w.writerow([*(record.get(c, "") for c in columns), label, *probs])

    atomic_write(path, write)


def rows_predicted(rows: Sequence, n_labels: int, predict) -> tuple[list[str], np.ndarray]:
    """(label, probabilities) for every row of an input file, in its order: `predict(rows)` -> (labels, scores) on
    the rows with a text; a row whose text is empty keeps its place with an empty label and no probabilities."""
    filled = [i for i, r in enumerate(rows) if r.text.strip()]
    labels, scores = [""] * len(rows), np.full((len(rows), n_labels), np.nan)
    got_labels, got_scores = predict([rows[i] for i in filled])
    for i, label, p in zip(filled, got_labels, got_scores):
        labels[i], scores[i] = label, p
    return labels, scores


def record_columns(records: Sequence[dict]) -> list[str]:
    """Every key of the records, an id column first when present, so the file joins back to its input (or goes
    straight to a leaderboard)."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    ids = [c for c in columns if c.lower() == "id"]
    if ids:
        columns.insert(0, columns.pop(columns.index(ids[0])))
    return columns


def write_choice_predictions(
    path: Path, records: Sequence[dict], option_ids: Sequence[list[str]], options: Sequence[list[str]], scores
) -> None:
    """Multiple choice: the records' columns, the chosen option's id (`choice`) and text (`choice_text`), then
    prob_0.. for the options in the input's order (empty past an item's own options)."""
    columns = record_columns(records)
    width = scores.shape[1]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([*columns, "choice", "choice_text", *(f"prob_{i}" for i in range(width))])
            for record, ids, texts, p in zip(records, option_ids, options, scores):
                best = int(np.argmax(p[: len(ids)]))
                probs = (f"{v:.6f}" if i < len(ids) else "" for i, v in enumerate(p))
                w.writerow([*(record.get(c, "") for c in columns), ids[best], texts[best], *probs])

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


def predictions_path(run_dir: Path, split: str) -> Path:
    return Path(run_dir) / f"predictions_{split}.jsonl"


def write_prediction_records(
    run_dir: Path, split: str, examples: Sequence, gold: np.ndarray, scores: np.ndarray
) -> Path:
    """Write one split's examples (data.tasks.Example), gold labels and probabilities (N, C); return the path."""
    lines = []
    for ex, g, p in zip(examples, np.asarray(gold).tolist(), np.asarray(scores, dtype=np.float64)):
        rec = {"text": ex.text}
        if ex.pair is not None:
            rec["pair"] = ex.pair
        if ex.choices is not None:
            rec["choices"] = list(ex.choices)
        rec["gold"] = g
        rec["probs"] = [round(float(v), 6) for v in p]
        lines.append(json.dumps(rec, ensure_ascii=False))
    path = predictions_path(run_dir, split)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def read_prediction_records(run_dir: Path, split: str) -> list[dict] | None:
    """The records of `write_prediction_records`, or None when the run kept none for `split`."""
    path = predictions_path(run_dir, split)
    if not path.is_file():
        return None
    return read_jsonl(path)
