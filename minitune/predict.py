"""`minitune predict` and `minitune.Predictor`: a trained model labels texts (or answers questions with options).

`Predictor(run_or_model_dir)` loads what a finished run saved and predicts as the run would: with its tokenizer and
max_length, its per-label thresholds (multi-label), the mean of its members' probabilities for a `--seeds`, cv or
Recipe-MPR run (members.json), by asking in its chat for a `--head generative` run's model; a plain instruct
checkpoint answers with `ask` (predict_generative.py). `predict(texts)` returns the labels and one probability per
label; a multiple-choice model's `predict_choices(queries, options)` returns the chosen option and one probability
per option. `predict_file` is the command: it reads what the task readers read (.csv, .tsv, .txt with the separator
sniffed from the header, .jsonl; questions with options from .json / .jsonl, data/choices.py), keeps every input
column (an `id` column first) and writes the CSV through a temporary file, so a failure leaves none half-written.
A row whose text is empty keeps its place, with an empty prediction, so the output lines up with the input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minitune.checkpoints.load import load_model, load_tokenizer, read_config, trained_head
from minitune.checkpoints.rundir import (
    GENERATIVE_FILE,
    MEMBERS,
    THRESHOLDS,
    member_model_dirs,
    model_dir_of,
    read_json,
    trained_max_length,
    trained_precision,
)
from minitune.checkpoints.runlock import RUN_FILE, require_finished
from minitune.config.validate import resolve_device
from minitune.data.batching import make_collate
from minitune.data.choices import read_choice_items
from minitune.data.custom import Columns, read_rows
from minitune.data.features import tokenize
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.long_text import chunk_overlap_of
from minitune.data.tasks import Example
from minitune.errors import ConfigError
from minitune.eval.members import ensemble_scores
from minitune.eval.predictions import (
    label_predictions,
    rows_predicted,
    write_choice_predictions,
    write_predictions,
)
from minitune.eval.scoring import predict_scores
from minitune.models import family_for
from minitune.predict_generative import PlainAsk, generative_meta, label_task, predict_generative, predict_plain
from minitune.train.amp import choose_precision, native_bf16, resolve_precision

log = logging.getLogger("minitune")
NOT_FOR_CHOICES = "`model` {model} answers questions with options: `pair_col` and `threshold` do not apply; drop them"


@dataclass
class Predictions:
    """Labels and probabilities, one row per text: `labels[i]` is the predicted label (multi-label: the labels over
    their thresholds, comma-separated), `probabilities[i]` one probability per name in `label_names`."""

    labels: list[str]
    probabilities: np.ndarray
    label_names: list[str]


@dataclass
class ChoicePredictions:
    """Multiple choice: `choice[i]` is the position of the chosen option in item i's options, `probabilities[i]` one
    probability per option (NaN past an item's own options)."""

    choice: list[int]
    probabilities: np.ndarray


class Predictor:
    """A trained model ready to predict as `minitune predict` does; see the module docstring. `model`: a finished
    run's output directory, its model/ (or a fold's), or with `ask` a plain instruct checkpoint."""

    def __init__(
        self, model, *, batch_size=64, max_length=None, threshold=None, device="auto", ask=None, precision=None
    ):
        self.path, self.batch_size, self.ask, self.given_length = Path(model), batch_size, ask, max_length
        self.device = resolve_device(device)
        _check_numbers(batch_size, max_length, threshold)
        if ask is None:
            _check_run_folder(self.path)
        self.members = member_model_dirs(self.path) if ask is None and (self.path / MEMBERS).is_file() else None
        self.model_dir = self.members[0] if self.members else model_dir_of(self.path)
        self.generative = ask is None and (self.model_dir / GENERATIVE_FILE).is_file()
        if ask is not None and (self.model_dir / GENERATIVE_FILE).is_file() and (ask.task or ask.labels):
            raise ConfigError(
                f"`model` {model} was tuned by a --head generative run, which saved its labels: drop `task`/`labels`"
            )
        self.kind = self._kind()
        if self.kind == MULTIPLE_CHOICE and threshold is not None:
            raise ConfigError(NOT_FOR_CHOICES.format(model=model))
        self.max_length = max_length or (None if ask else trained_max_length(self.model_dir))
        if self.max_length and not self.generative and ask is None:
            _check_positions(self.model_dir, self.max_length)
        self.precision = predict_precision(precision, self.model_dir, self.device, self.kind == "generative")
        self._prepare(threshold)

    def _kind(self) -> str:
        if self.ask is not None or self.generative:
            return "generative"
        return MULTIPLE_CHOICE if trained_head(self.model_dir) == MULTIPLE_CHOICE else "classifier"

    def _prepare(self, threshold) -> None:
        """Load what predicting needs and refuse a wrong model, before any input is read."""
        self.task = self.model = None
        if self.kind == "generative" and self.ask is not None:
            self.task = label_task(self.ask, str(self.path), "text")  # a missing label set: before loading a model
            self.label_names, self.multi_label = self.task.label_names, self.task.kind == MULTI_LABEL
        elif self.kind == "generative":
            meta = generative_meta(self.model_dir)
            self.label_names, self.multi_label = meta["label_names"], meta["kind"] == MULTI_LABEL
        elif self.kind == "classifier":
            self.model = head_model(self.model_dir, self.path)
            self.label_names = self.model.label_names
            self.multi_label = self.model.hf_config.get("problem_type") == "multi_label_classification"
        else:
            self.label_names, self.multi_label = None, False
        if threshold is not None and not self.multi_label and self.kind != MULTIPLE_CHOICE:
            raise ConfigError(
                f"`threshold` applies to multi-label models; {self.path} predicts one label per text (the most "
                "probable): drop `threshold`"
            )
        # An ensemble's thresholds were tuned for its mean (its thresholds.json); a model's sit beside its weights.
        where = self.path if self.members else self.model_dir
        self.thresholds = thresholds_for(where, self.label_names, threshold) if self.multi_label else None

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> Predictions:
        """Labels and probabilities for `texts` (and, for a pair model, their second segments). An empty text (or
        None, NaN) keeps its place with an empty label and NaN probabilities, as in `minitune predict`."""
        if self.kind == MULTIPLE_CHOICE:
            raise ConfigError(f"`model` {self.path} answers questions with options: use predict_choices")
        texts = _text_list(texts, "texts")
        pairs = _text_list(pairs, "pairs") if pairs is not None else [None] * len(texts)
        if len(pairs) != len(texts):
            raise ConfigError(f"`pairs` holds {len(pairs)} entries for {len(texts)} texts: give one per text")
        examples = [Example(text=t, pair=p) for t, p in zip(texts, pairs)]
        labels, scores = rows_predicted(examples, len(self.label_names), self._labelled)
        return Predictions(labels, scores, self.label_names)

    def _labelled(self, examples: list[Example]) -> tuple[list[str], np.ndarray]:
        scores = self._scores(examples) if examples else np.zeros((0, len(self.label_names)))
        return label_predictions(scores, self.label_names, self.thresholds), scores

    def _scores(self, examples: list[Example]) -> np.ndarray:
        args = (self.batch_size, self.max_length, self.device)
        if self.kind == "generative" and self.ask is not None:
            return predict_plain(str(self.path), self.ask, self.task, examples, *args)[2]
        if self.kind == "generative":
            return predict_generative(self.model_dir, examples, *args)[2]
        if self.members:  # each member at the length its own run trained with, unless one was given
            kind = MULTI_LABEL if self.multi_label else SINGLE_LABEL
            given = (self.given_length, self.precision)
            return ensemble_scores(self.members, examples, kind, self.batch_size, self.device, *given)[0]
        return _head_scores(self.model, self.model_dir, examples, *args, self.precision)

    def predict_choices(self, queries: list[str], options: list[list[str]]) -> ChoicePredictions:
        """A multiple-choice model's answers: the mean probabilities of its models (one, or a run's members)."""
        if self.kind != MULTIPLE_CHOICE:
            raise ConfigError(f"`model` {self.path} labels texts, not questions with options: use predict")
        examples = [Example(q, choices=list(o)) for q, o in zip(queries, options)]
        dirs = self.members or [self.model_dir]
        given = (self.given_length, self.precision)
        scores, _ = ensemble_scores(dirs, examples, MULTIPLE_CHOICE, self.batch_size, self.device, *given)
        return ChoicePredictions([int(np.nanargmax(p[: len(o)])) for p, o in zip(scores, options)], scores)


def _text_list(values, name: str) -> list[str]:
    """Texts as a list of str: None and NaN (a spreadsheet's empty cell) are empty texts; one bare string is refused,
    since iterating it would label its characters."""
    if isinstance(values, str):
        raise ConfigError(f"`{name}` is one string: pass a list of texts, e.g. predict([text])")
    texts = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v):
            v = ""
        if not isinstance(v, str):
            raise ConfigError(f"`{name}`[{i}] is a {type(v).__name__}, not a text: pass strings")
        texts.append(v)
    return texts


def _check_numbers(batch_size: int, max_length: int | None, threshold: float | None) -> None:
    if batch_size < 1 or (max_length is not None and max_length < 1):
        raise ConfigError("`batch_size` and `max_length` must be positive integers")
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"`threshold` must be in (0, 1), got {threshold}")


def _check_run_folder(path: Path) -> None:
    """A path that exists, of a finished run, holding a model: else one line saying which of the three is wrong."""
    if not path.exists():
        raise ConfigError(f"`model` {path}: no such directory; pass a finished run's output directory (or its model/)")
    require_finished(path)
    if path.is_dir() and not (model_dir_of(path) / "config.json").is_file() and not (path / MEMBERS).is_file():
        is_run = (path / RUN_FILE).is_file() or (path / "results.json").is_file()
        why = f"this run saved no model (no model/ nor {MEMBERS})" if is_run else "no model there (no config.json)"
        if (path / "model").is_dir():
            why = "its model/ has no config.json (damaged or deleted)"
        raise ConfigError(f"`model` {path}: {why}; pass the output directory of a finished run that trained one")


def _check_positions(model_dir: Path, max_length: int) -> None:
    """A max_length past the model's position table would index past it."""
    hf = read_config(model_dir)
    if hf.get("model_type") is None:
        return  # not a transformers family (the bag-of-embeddings baseline): no positions
    usable = family_for(hf.get("model_type"), model_dir).usable_positions(hf)
    if usable is not None and max_length > usable:
        raise ConfigError(f"`max_length` {max_length} exceeds the model's {usable} positions; use at most {usable}")


def thresholds_for(where: Path, names: list[str], override: float | None) -> np.ndarray:
    """`override`, else what the training run chose on dev (tuned per label, or its fixed threshold), else 0.5."""
    if override is not None:
        return np.full(len(names), override)
    path = where / THRESHOLDS
    if not path.is_file():
        return np.full(len(names), 0.5)
    fix = f"remove {path} to predict at 0.5, or train the run again"
    saved = read_json(path, fix=fix)
    tuned, fixed = saved.get("per_label"), saved.get("threshold")
    if saved.get("use") == "tuned" and isinstance(tuned, dict) and all(_fraction(v) for v in tuned.values()):
        return np.array([tuned.get(n, 0.5) for n in names])
    if saved.get("use") != "tuned" and (fixed is None or _fraction(fixed)):
        return np.full(len(names), fixed or 0.5)
    raise ConfigError(f"{path}: its thresholds are damaged (each must be a number from 0 to 1); {fix}")


def _fraction(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def predict_precision(given: str | None, model_dir: Path, device, generative: bool) -> str:
    """The precision to score in: `given` (auto: this device's choice, as a run chooses), else the one the run
    trained and scored dev in where this device computes it natively, else fp32 (a bf16 run predicted on a CPU
    without native bf16 would only be slower). A generative model answers in fp32."""
    if generative:
        return "fp32"
    if given is not None:
        precision = choose_precision(given, device)[0]
        resolve_precision(precision, device)  # a precision this device cannot run fails here, by name
        return precision
    trained = trained_precision(model_dir)
    if trained == "fp32" or (trained == "bf16" and native_bf16(device)[0]) or (device.type == "cuda"):
        return trained
    log.info("the run trained in %s, which this device does not compute natively: predicting in fp32", trained)
    return "fp32"


def head_model(model_dir: Path, model_path):
    """The classifier in `model_dir`, refused in one line when it carries no trained sequence head."""
    model = load_model(model_dir)
    if not model.head_trained:
        raise ConfigError(
            f"`model` {model_path}: no trained sequence-classification head there (a base checkpoint); pass the "
            "output directory of a classification run, or ask an instruct "
            "decoder with `head` generative and `task` (or `labels`)"
        )
    return model


def head_tokenizer(model_dir: Path):
    """The tokenizer saved with a classifier, padding with its eos token when it has no pad token (decoders)."""
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.set_pad_to_eos()
    return tokenizer


def _head_scores(model, model_dir: Path, examples: list[Example], batch_size, max_length, device, precision="fp32"):
    """A classification head's probabilities (N, C) for the examples."""
    tokenizer = head_tokenizer(model_dir)
    multi = model.hf_config.get("problem_type") == "multi_label_classification"
    kind = MULTI_LABEL if multi else SINGLE_LABEL
    windows = chunk_overlap_of(model.hf_config)  # trained on windows of long texts: read the same
    features = tokenize(examples, tokenizer, kind, max_length, chunk_overlap=windows)
    collate_fn = make_collate("dynamic", max_length, tokenizer.pad_token_id)
    return predict_scores(model.to(device), features, collate_fn, kind, batch_size, device, precision)


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
    precision: str | None = None,
) -> tuple[Path, int]:
    """Label every row of `input_path` with the model at `model_path` (see Predictor); write the CSV; return (its
    path, rows). `text_col` defaults to text (multiple choice: query; `options_col` names the options there)."""
    given = dict(threshold=threshold, device=device, ask=ask, precision=precision)
    predictor = Predictor(model_path, batch_size=batch_size, max_length=max_length, **given)
    if predictor.kind == MULTIPLE_CHOICE:
        if pair_col is not None:
            raise ConfigError(NOT_FOR_CHOICES.format(model=model_path))
        items = read_choice_items(Path(input_path), text_col or "query", options_col)
        answers = predictor.predict_choices([it.query for it in items], [it.options for it in items])
        fields, ids, texts = ([getattr(it, a) for it in items] for a in ("fields", "option_ids", "options"))
        write_choice_predictions(Path(output_path), fields, ids, texts, answers.probabilities)
        return Path(output_path), len(items)
    rows = read_rows(Path(input_path), Columns(text=text_col or "text", label=None, pair=pair_col), keep_empty=True)
    predicted = predictor.predict([r.text for r in rows], [r.pair or "" for r in rows] if pair_col else None)
    labels, scores = predicted.labels, predicted.probabilities
    empty = sum(1 for r in rows if not r.text.strip())
    if empty:
        log.warning("%s: %d rows with an empty text keep their place, with no prediction", input_path, empty)
    header = "labels" if predictor.multi_label else "label"
    write_predictions(Path(output_path), [r.fields for r in rows], labels, scores, predictor.label_names, header)
    return Path(output_path), len(rows)
