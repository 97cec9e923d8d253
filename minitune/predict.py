"""`minitune predict`: a trained model directory + a file of texts -> a CSV of labels and probabilities per row.

Reads .csv, .tsv or .jsonl with a text column (and, with --pair-col, the second segment a pair model needs).
Multi-label models apply the thresholds the training run chose on dev (model/thresholds.json), else 0.5.
The output is written to a temporary file and renamed, so a failure leaves no half-written predictions.
"""

from __future__ import annotations

import csv
import json
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
from minitune.experiments.generative import predict_generative
from minitune.experiments.instruct import GENERATIVE_FILE


def _thresholds(model_dir: Path, names: list[str], override: float | None) -> np.ndarray:
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


def predict_file(
    model_dir: Path,
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
    """Label every row of `input_path` with the model in `model_dir`; write the CSV; return (its path, rows)."""
    rows = read_rows(input_path, Columns(text=text_col, label=None, pair=pair_col))
    torch_device = resolve_device(device)
    if (Path(model_dir) / GENERATIVE_FILE).is_file():  # a --head generative run's model: it answers in its chat
        examples = [Example(text=r.text, pair=r.pair) for r in rows]
        names, multi, scores = predict_generative(Path(model_dir), examples, batch_size, max_length, torch_device)
    else:
        names, multi, scores = _head_scores(model_dir, rows, batch_size, max_length, torch_device)
    if multi:
        chosen = scores >= _thresholds(model_dir, names, threshold)
        labels = [",".join(n for n, c in zip(names, row) if c) for row in chosen]
    else:
        labels = [names[i] for i in scores.argmax(1)]
    _write_csv(output_path, rows, labels, scores, names, "labels" if multi else "label")
    return output_path, len(rows)


def _head_scores(model_dir: Path, rows, batch_size: int, max_length: int, device) -> tuple[list[str], bool, np.ndarray]:
    model = load_model(model_dir)
    if not model.head_trained:
        raise ConfigError(
            f"`model` {model_dir}: no trained sequence-classification head there (a base checkpoint "
            "or a multiple-choice model); pass the model/ directory of a classification run"
        )
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.set_pad_to_eos()
    multi = model.hf_config.get("problem_type") == "multi_label_classification"
    kind = MULTI_LABEL if multi else SINGLE_LABEL
    features = tokenize([Example(text=r.text, pair=r.pair) for r in rows], tokenizer, kind, max_length)
    collate_fn = make_collate("dynamic", max_length, tokenizer.pad_token_id)
    scores = predict_scores(model.to(device), features, collate_fn, kind, batch_size, device)
    return model.label_names, multi, scores


def _write_csv(path: Path, rows, labels, scores, names, label_header: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row", "text", label_header] + [f"prob_{n}" for n in names])
            for r, lab, p in zip(rows, labels, scores):
                w.writerow([r.line, r.text, lab] + [f"{v:.6f}" for v in p])

    atomic_write(path, write)
