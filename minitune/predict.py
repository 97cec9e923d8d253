"""`minitune predict`: a trained model + a file of texts -> a CSV of labels and probabilities, joined to its input.

Reads what the task readers read: .csv, .tsv, .txt (the separator sniffed from the header, so SemEval's official
tab-separated .txt reads as it is) or .jsonl, with a text column (and, with `pair_col`, the second segment a pair
model needs). The output keeps every input column (an `id` column first when there is one), then the predicted
label(s) and one probability per label. A plain instruct checkpoint answers with `--head generative` and the
label set of `--task` or `--labels` (predict_generative.py). Multi-label models apply the thresholds
the training run chose on dev (model/thresholds.json), else 0.5. A multiple-choice model (either scorer) answers
questions with options instead (.json or .jsonl, data/choices.py): the CSV gives the chosen option's id and text and
one probability per option. A --seeds, cv or Recipe-MPR run directory predicts with the mean of its members' (or
fold models') probabilities. The output is written to a temporary file and
renamed, so a failure leaves no half-written predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import nn

from minitune.checkpoints.load import load_model, load_tokenizer, trained_head
from minitune.checkpoints.rundir import GENERATIVE_FILE, MEMBERS, member_model_dirs, model_dir_of, trained_max_length
from minitune.config.validate import resolve_device
from minitune.data.batching import make_collate
from minitune.data.choices import read_choice_items
from minitune.data.custom import Columns, read_rows
from minitune.data.features import tokenize
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.tasks import Example
from minitune.errors import ConfigError
from minitune.eval.members import ensemble_scores
from minitune.eval.predictions import label_predictions, write_choice_predictions, write_predictions
from minitune.eval.scoring import predict_scores
from minitune.predict_generative import PlainAsk, generative_meta, label_task, predict_generative, predict_plain


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


def predict_file(
    model_path: Path,
    input_path: Path,
    output_path: Path,
    *,
    text_col: str | None = None,
    pair_col: str | None = None,
    options_col: str = "options",
    batch_size: int = 64,
    max_length: int | None = None,
    threshold: float | None = None,
    device: str = "auto",
    ask: PlainAsk | None = None,
) -> tuple[Path, int]:
    """Label every row of `input_path` with the model at `model_path` (a model/ directory or the run directory
    holding it); write the CSV; return (its path, rows). `max_length` defaults to what the run trained with.
    `text_col` defaults to text (multiple choice: query; `options_col` names the options there). `ask`: `model_path`
    is a plain instruct checkpoint (a directory or an alias) that answers as `ask` says."""
    choices = choice_models(Path(model_path)) if ask is None else None
    if choices:
        common = dict(query_col=text_col, options_col=options_col, pair_col=pair_col, threshold=threshold)
        common |= dict(batch_size=batch_size, max_length=max_length, device=device)
        return predict_choices(choices, model_path, input_path, output_path, **common)
    text_col = text_col or "text"
    if ask is None and (Path(model_path) / MEMBERS).is_file():  # a --seeds or cv run: its members' mean
        return predict_ensemble(
            Path(model_path), input_path, output_path, text_col, pair_col, batch_size, max_length, threshold, device
        )
    model_dir = model_dir_of(Path(model_path))
    score_rows = _scorer(model_dir, model_path, ask, text_col, batch_size, max_length)  # refusals: before the input
    rows = read_rows(Path(input_path), Columns(text=text_col, label=None, pair=pair_col))
    names, multi, scores = score_rows(rows, resolve_device(device))
    labels = label_predictions(scores, names, thresholds_for(model_dir, names, threshold) if multi else None)
    write_predictions(
        Path(output_path), [r.fields for r in rows], labels, scores, names, "labels" if multi else "label"
    )
    return Path(output_path), len(rows)


def _scorer(model_dir: Path, model_path, ask: PlainAsk | None, text_col: str, batch_size: int, max_length):
    """rows, device -> (label names, whether multi-label, scores (N, C)) for the model at `model_dir`: a classifier
    head, a `head` generative run's model (it answers in its chat), or a plain instruct checkpoint asked as `ask`
    says. Everything that can be refused is refused here, before the input is read."""
    generative = (model_dir / GENERATIVE_FILE).is_file()
    if ask is not None and generative and (ask.task or ask.labels):
        raise ConfigError(
            f"`model` {model_path} was tuned by a --head generative run, which saved its labels: drop `task`/`labels`"
        )
    examples = lambda rows: [Example(text=r.text, pair=r.pair) for r in rows]  # noqa: E731
    if ask is not None and not generative:
        task = label_task(ask, str(model_path), text_col)  # a missing label set: before the model is loaded
        return lambda rows, device: predict_plain(
            str(model_path), ask, task, examples(rows), batch_size, max_length, device
        )
    max_length = max_length or trained_max_length(model_dir)
    if generative:
        generative_meta(model_dir)
        return lambda rows, device: predict_generative(model_dir, examples(rows), batch_size, max_length, device)
    model = head_model(model_dir, model_path)
    return lambda rows, device: _head_scores(model, model_dir, rows, batch_size, max_length, device)


def choice_models(path: Path) -> list[Path] | None:
    """The model directories behind `path` when it holds multiple-choice models (one, or a run's members or
    folds), else None. A generative run's model is not one: it answers in its chat."""
    dirs = member_model_dirs(path) if (path / MEMBERS).is_file() else [model_dir_of(path)]
    if (dirs[0] / GENERATIVE_FILE).is_file() or trained_head(dirs[0]) != MULTIPLE_CHOICE:
        return None
    return dirs


def predict_ensemble(
    run_dir: Path, input_path, output_path, text_col, pair_col, batch_size, max_length, threshold, device
) -> tuple[Path, int]:
    """predict_file for an ensemble or cv directory: every member model scores the rows, their mean is used, with
    the thresholds the ensemble tuned (its thresholds.json)."""
    dirs = member_model_dirs(run_dir)
    first = head_model(dirs[0], run_dir)  # refused in one line before the input is read
    multi = first.hf_config.get("problem_type") == "multi_label_classification"
    rows = read_rows(Path(input_path), Columns(text=text_col, label=None, pair=pair_col))
    examples = [Example(text=r.text, pair=r.pair) for r in rows]
    kind = MULTI_LABEL if multi else SINGLE_LABEL
    scores, names = ensemble_scores(dirs, examples, kind, batch_size, resolve_device(device), max_length)
    labels = label_predictions(scores, names, thresholds_for(run_dir, names, threshold) if multi else None)
    write_predictions(
        Path(output_path), [r.fields for r in rows], labels, scores, names, "labels" if multi else "label"
    )
    return Path(output_path), len(rows)


def predict_choices(
    model_dirs: list[Path],
    model_path,
    input_path,
    output_path,
    *,
    query_col: str | None,
    options_col: str,
    pair_col: str | None,
    threshold: float | None,
    batch_size: int,
    max_length: int | None,
    device: str,
) -> tuple[Path, int]:
    """predict_file for multiple-choice models (one, or the members of a run): the mean of their probabilities over
    each item's options."""
    if pair_col is not None or threshold is not None:
        raise ConfigError(
            f"`model` {model_path} answers questions with options: `pair_col` and `threshold` do not apply; drop them"
        )
    items = read_choice_items(Path(input_path), query_col or "query", options_col)
    examples = [Example(it.query, choices=it.options) for it in items]
    scores, _ = ensemble_scores(model_dirs, examples, MULTIPLE_CHOICE, batch_size, resolve_device(device), max_length)
    fields, ids, texts = ([getattr(it, a) for it in items] for a in ("fields", "option_ids", "options"))
    write_choice_predictions(Path(output_path), fields, ids, texts, scores)
    return Path(output_path), len(items)


def head_model(model_dir: Path, model_path) -> nn.Module:
    """The classifier in `model_dir`, refused in one line when it carries no trained sequence head."""
    model = load_model(model_dir)
    if not model.head_trained:
        raise ConfigError(
            f"`model` {model_path}: no trained sequence-classification head there (a base checkpoint); pass the "
            "output directory of a classification run, or ask an instruct "
            "decoder with `head` generative and `task` (or `labels`)"
        )
    return model


def _head_scores(
    model: nn.Module, model_dir: Path, rows, batch_size: int, max_length: int, device
) -> tuple[list[str], bool, np.ndarray]:
    """A classification head's probabilities for the rows: (label names, whether multi-label, scores (N, C))."""
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.set_pad_to_eos()
    multi = model.hf_config.get("problem_type") == "multi_label_classification"
    kind = MULTI_LABEL if multi else SINGLE_LABEL
    features = tokenize([Example(text=r.text, pair=r.pair) for r in rows], tokenizer, kind, max_length)
    collate_fn = make_collate("dynamic", max_length, tokenizer.pad_token_id)
    scores = predict_scores(model.to(device), features, collate_fn, kind, batch_size, device)
    return model.label_names, multi, scores
