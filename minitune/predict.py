"""`run.py predict`: a trained model directory + a file of texts -> a CSV of labels and probabilities per row.

Reads .csv, .tsv or .jsonl with a text column (and the pair column the model was trained with, if any).
Multi-label models apply the per-label thresholds saved beside them (model/thresholds.json), else 0.5.
The output is written to a temporary file and renamed, so a failure leaves no half-written predictions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np

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
    if override is not None:
        return np.full(len(names), override)
    path = model_dir / "thresholds.json"
    if path.is_file():
        per_label = json.loads(path.read_text())["per_label"]
        return np.array([per_label.get(n, 0.5) for n in names])
    return np.full(len(names), 0.5)


def run_predict(argv: list[str]) -> Path:
    from . import load_model, load_tokenizer
    from .data.features import tokenize
    from .data.tasks import Example
    from .runner import make_collate, pick_device, predict_scores

    args = build_parser().parse_args(argv)
    model_dir = Path(args.model)
    model = load_model(model_dir)
    if model.head != "sequence":
        raise ConfigError(f"--model {model_dir}: predict handles sequence classifiers; this is a {model.head} model")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.set_pad_to_eos()
    rows = read_rows(Path(args.input), Columns(text=args.text_col, label=None, pair=args.pair_col))
    multi = model.hf_config.get("problem_type") == "multi_label_classification"
    kind = "multi_label" if multi else "single_label"
    examples = [Example(text=r.text, pair=r.pair) for r in rows]
    features = tokenize(examples, tokenizer, kind, args.max_length)
    device = pick_device(args.device)
    cfg = argparse.Namespace(padding="dynamic", max_length=args.max_length)
    scores = predict_scores(model.to(device), features, make_collate(cfg, tokenizer.pad_token_id), kind,
                            args.batch_size, device, "fp32")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row", "text", label_header] + [f"prob_{n}" for n in names])
            for r, lab, p in zip(rows, labels, scores):
                w.writerow([r.line, r.text, lab] + [f"{v:.6f}" for v in p])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

