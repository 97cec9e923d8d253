"""`run.py predict`: a trained model directory + a file of texts -> a CSV of labels and probabilities per row.

Reads .csv, .tsv or .jsonl with a text column (and, with --pair-col, the second segment a pair model needs).
Multi-label models apply the thresholds run.py chose on dev (model/thresholds.json), else 0.5.
The output is written to a temporary file and renamed, so a failure leaves no half-written predictions.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .data.custom import Columns, read_rows
from .errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py predict", description="Label a file with a trained model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="a model directory written by run.py (its model/ folder)")
    p.add_argument("--input", required=True, help=".csv, .tsv or .jsonl file with the texts")
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--text-col", default="text", help="column holding the text")
    p.add_argument("--pair-col", default=None, help="column holding the second segment, if the model used one")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    p.add_argument("--max-length", type=int, default=128, help="truncate inputs to this many tokens")
    p.add_argument("--threshold", type=float, default=None, help="multi-label: one threshold for every label "
                   "(default: the tuned per-label thresholds saved with the model, else 0.5)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    return p


def _thresholds(model_dir: Path, names: list[str], override: float | None) -> np.ndarray:
    """--threshold, else what run.py chose on dev (tuned per label, or its fixed threshold), else 0.5."""
    if override is not None:
        return np.full(len(names), override)
    path = model_dir / "thresholds.json"
    if not path.is_file():
        return np.full(len(names), 0.5)
    saved = json.loads(path.read_text())
    if saved.get("use") == "tuned":
        return np.array([saved["per_label"].get(n, 0.5) for n in names])
    return np.full(len(names), saved.get("threshold") or 0.5)


def run_predict(argv: list[str]) -> Path:
    from . import load_model, load_tokenizer
    from .data.features import tokenize
    from .data.tasks import Example
    from .runner import make_collate, pick_device, predict_scores

    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.max_length < 1:
        raise ConfigError("--batch-size and --max-length must be positive integers")
    model_dir = Path(args.model)
    model = load_model(model_dir)
    if not model.head_trained:
        raise ConfigError(f"--model {model_dir}: no trained sequence-classification head there (a base checkpoint or "
                          "a multiple-choice model); pass the model/ directory of a run.py classification run")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.set_pad_to_eos()
    rows = read_rows(Path(args.input), Columns(text=args.text_col, label=None, pair=args.pair_col))
    multi = model.hf_config.get("problem_type") == "multi_label_classification"
    kind = "multi_label" if multi else "single_label"
    examples = [Example(text=r.text, pair=r.pair) for r in rows]
    features = tokenize(examples, tokenizer, kind, args.max_length)
    device = pick_device(args.device)
    collate_fn = make_collate("dynamic", args.max_length, tokenizer.pad_token_id)
    scores = predict_scores(model.to(device), features, collate_fn, kind, args.batch_size, device, "fp32")
    names = model.label_names
    if multi:
        chosen = scores >= _thresholds(model_dir, names, args.threshold)
        labels = [",".join(n for n, c in zip(names, row) if c) for row in chosen]
    else:
        labels = [names[i] for i in scores.argmax(1)]
    _write_csv(Path(args.output), rows, labels, scores, names, "labels" if multi else "label")
    print(f"wrote {len(rows)} predictions to {args.output}")
    return Path(args.output)


def _write_csv(path: Path, rows, labels, scores, names, label_header: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row", "text", label_header] + [f"prob_{n}" for n in names])
            for r, lab, p in zip(rows, labels, scores):
                w.writerow([r.line, r.text, lab] + [f"{v:.6f}" for v in p])

    atomic_write(path, write)
