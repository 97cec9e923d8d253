"""`minitune predict`: a trained model + a file of texts -> a CSV of labels and probabilities, joined to its input.

Reads what the task readers read: .csv, .tsv, .txt (the separator sniffed from the header, so SemEval's official
tab-separated .txt reads as it is) or .jsonl, with a text column (and, with `pair_col`, the second segment a pair
model needs). The output keeps every input column (an `id` column first when there is one), then the predicted
label(s) and one probability per label. Multi-label models apply the thresholds the training run chose on dev
(model/thresholds.json), else 0.5. The output is written to a temporary file and renamed, so a failure leaves no
half-written predictions.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minitune.checkpoints.atomic import atomic_write
from minitune.checkpoints.load import load_model, load_tokenizer
from minitune.config import resolve_device
from minitune.data.batching import make_collate
from minitune.data.custom import Columns, read_rows
from minitune.data.features import tokenize
from minitune.data.kinds import MULTI_LABEL, SINGLE_LABEL
from minitune.data.tasks import Example
from minitune.errors import ConfigError
from minitune.eval.scoring import predict_scores


def model_dir_of(path: Path) -> Path:
    """A model directory, or a run's output directory (its model/ inside; the run's own config.json is not one)."""
    return path / "model" if (path / "model" / "config.json").is_file() else path


def thresholds_for(model_dir: Path, names: list[str], override: float | None) -> np.ndarray:
    """`override`, else what the training run chose on dev (tuned per label, or its fixed threshold), else 0.5."""
    if override is not None:
        return np.full(len(names), override)
    path = model_dir / "thresholds.json"
    if not path.is_file():
        return np.full(len(names), 0.5)
    saved = json.loads(path.read_text())
    if saved.get("use") == "tuned":
        return np.array([saved["per_label"].get(n, 0.5) for n in names])
    return np.full(len(names), saved.get("threshold") or 0.5)


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


def predict_file(
    model_path: Path,
    input_path: Path,
    output_path: Path,
    *,
    text_col: str = "text",
    pair_col: str | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    threshold: float | None = None,
    device: str = "auto",
) -> tuple[Path, int]:
    """Label every row of `input_path` with the model at `model_path` (a model/ directory or the run directory
    holding it); write the CSV; return (its path, rows)."""
    model_dir = model_dir_of(Path(model_path))
    model = load_model(model_dir)
    if not model.head_trained:
        raise ConfigError(
            f"`model` {model_path}: no trained sequence-classification head there (a base checkpoint "
            "or a multiple-choice model); pass the output directory of a classification run"
        )
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.set_pad_to_eos()
    rows = read_rows(Path(input_path), Columns(text=text_col, label=None, pair=pair_col))
    multi = model.hf_config.get("problem_type") == "multi_label_classification"
    kind = MULTI_LABEL if multi else SINGLE_LABEL
    features = tokenize([Example(text=r.text, pair=r.pair) for r in rows], tokenizer, kind, max_length)
    torch_device = resolve_device(device)
    collate_fn = make_collate("dynamic", max_length, tokenizer.pad_token_id)
    scores = predict_scores(model.to(torch_device), features, collate_fn, kind, batch_size, torch_device)
    names = model.label_names
    labels = label_predictions(scores, names, thresholds_for(model_dir, names, threshold) if multi else None)
    write_predictions(
        Path(output_path), [r.fields for r in rows], labels, scores, names, "labels" if multi else "label"
    )
    return Path(output_path), len(rows)
