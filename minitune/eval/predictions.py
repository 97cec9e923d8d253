"""What a run keeps of its scored examples, so figures and report.html can be redrawn without the model.

`predictions_<split>.jsonl` in the output directory: one JSON object per example, in the split's order:
    {"text": ..., "pair": ... (if any), "choices": [...] (multiple choice), "gold": label id | multi-hot list,
     "probs": [probability per class / label / option]}
Probabilities are rounded to 6 decimals (what `minitune predict` writes too). `train_label_counts` gives the
training label counts that results.json keeps under train.label_counts (the class-imbalance chart).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minitune.checkpoints.atomic import atomic_write_text
from minitune.data.kinds import MULTI_LABEL


def predictions_path(run_dir: Path, split: str) -> Path:
    return Path(run_dir) / f"predictions_{split}.jsonl"


def write_predictions(run_dir: Path, split: str, examples: Sequence, gold: np.ndarray, scores: np.ndarray) -> Path:
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


def read_predictions(run_dir: Path, split: str) -> list[dict] | None:
    """The records of `write_predictions`, or None when the run kept none for `split`."""
    path = predictions_path(run_dir, split)
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_label_counts(kind: str, labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """Examples per label in the training labels: class ids (N,) or a multi-hot matrix (N, L)."""
    labels = np.asarray(labels)
    if kind == MULTI_LABEL:
        counts = labels.reshape(len(labels), len(names)).sum(axis=0)
    else:
        counts = np.bincount(labels.astype(np.int64), minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts)}
