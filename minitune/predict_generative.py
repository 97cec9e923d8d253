"""`minitune predict` with an instruct decoder: a model a `head` generative run tuned, or a plain instruct checkpoint
that no run tuned (`--head generative`, zero- or few-shot).

A tuned model carries its labels, answer mode, shots and prompt in generative.json (instruct.py); a plain checkpoint
carries none of them, so they come from the command line: the label set from `--task` (a built-in task's label
names, read from its training file, or `--task custom --train-file F`), or from `--labels a,b,c` (`--multi-label`
when several may apply); the default instruction of that task kind (or `--prompt-template`), `--shots K` drawn from
the task's training file with `--seed`, and the answer mode. When the label set cannot be known the run stops in one
line before the model is loaded. Both are asked through eval/answers.py, as training asks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.load import load_model, load_tokenizer, model_type_of
from minitune.checkpoints.rundir import GENERATIVE_FILE, read_json
from minitune.config.sections import GenerativeSettings
from minitune.config.validate import check_generative_model
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.prompts import choose_shots
from minitune.data.tasks import Example, TaskData, load_task, resolve_data_dir
from minitune.errors import ConfigError
from minitune.eval.answers import Answerer, asking

DEFAULT_MAX_LENGTH = 128  # a plain checkpoint's prompt text limit when --max-length is not given


@dataclass
class PlainAsk:
    """How to ask a plain instruct checkpoint: where its label set comes from, and the answer settings."""

    task: str | None = None
    labels: str | None = None  # comma-separated label names
    multi_label: bool = False  # with `labels`: several labels may apply
    data_dir: str | None = None
    train_file: str | None = None
    label_col: str | None = None
    seed: int = 42
    generative: GenerativeSettings = field(default_factory=GenerativeSettings)


def generative_meta(model_dir: Path) -> dict:
    """What a `head` generative run saved beside its model (generative.json); refused for multiple choice, whose
    questions with options predict does not put to a generative model."""
    meta = read_json(model_dir / GENERATIVE_FILE, fix="train the generative run again, or pass another `model`")
    if meta["kind"] == MULTIPLE_CHOICE:
        raise ConfigError(
            f"`model` {model_dir}: a --head generative multiple-choice model; predict does not ask it questions "
            "with options: score labelled items with `test_file` in a training run"
        )
    return meta


def predict_generative(
    model_dir: Path, examples: list[Example], batch_size: int, max_length: int | None, device: torch.device
) -> tuple[list[str], bool, np.ndarray]:
    """A model saved by a `head` generative run answers `examples` as it was tuned to: (label names, whether
    multi-label, scores (N, C))."""
    meta = generative_meta(model_dir)
    task = TaskData("predict", meta["kind"], meta["label_names"], [], [])
    template = str(model_dir / meta["prompt_template"]) if meta.get("prompt_template") else None
    settings = GenerativeSettings(
        answer_mode=meta["answer_mode"], prompt_template=template, max_new_tokens=meta["max_new_tokens"]
    )
    shots = [Example(**s) for s in meta["shots"]]
    length = max_length or meta["max_length"]
    scores = _answer(str(model_dir), settings, task, shots, examples, length, batch_size, device)
    return task.label_names, task.kind == MULTI_LABEL, scores


def label_task(ask: PlainAsk, model: str, text_col: str) -> TaskData:
    """The task whose labels (and, for shots, training examples) the checkpoint answers with."""
    if ask.task is None:
        if not ask.labels:
            raise ConfigError(
                f"`model` {model} carries no label set (no training run tuned it): pass `task` (e.g. `task` semeval) "
                "or `labels` (e.g. `labels` positive,negative)"
            )
        if ask.generative.shots:
            raise ConfigError("`shots` draws examples from a task's training file: pass `task` instead of `labels`")
        names = [n.strip() for n in ask.labels.split(",") if n.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"`labels` {ask.labels!r}: name two or more distinct labels, separated by commas")
        return TaskData("predict", MULTI_LABEL if ask.multi_label else SINGLE_LABEL, names, [], [])
    if ask.multi_label:
        raise ConfigError(f"`multi_label` goes with `labels`; `task` {ask.task} fixes its own kind: drop it")
    custom = ask.task == "custom"
    if ask.labels and not custom:
        raise ConfigError(f"`task` {ask.task} has its own label set: pass `task` or `labels`, not both")
    if custom and not ask.train_file:
        raise ConfigError("`task` custom takes its label set from `train_file`: pass it (or `labels` instead)")
    task = load_task(
        ask.task,
        resolve_data_dir(ask.data_dir),
        seed=ask.seed,
        train_file=ask.train_file,
        **(dict(text_col=text_col, label_col=ask.label_col or "label", label_names=ask.labels) if custom else {}),
    )
    if task.kind == MULTIPLE_CHOICE:
        raise ConfigError(f"`task` {ask.task}: predict does not take multiple-choice files; evaluate with train")
    return task


def predict_plain(
    model: str, ask: PlainAsk, task: TaskData, examples: list[Example], batch_size: int, max_length: int | None, device
) -> tuple[list[str], bool, np.ndarray]:
    """(label names, whether multi-label, scores (N, C)) of `model` asked zero- or few-shot about `task`'s labels
    (label_task) as `ask` says."""
    check_generative_model(model, model_type_of(model)[1])
    shots = choose_shots(task, task.train, ask.generative.shots, ask.seed)
    length = max_length or DEFAULT_MAX_LENGTH
    scores = _answer(model, ask.generative, task, shots, examples, length, batch_size, device)
    return task.label_names, task.kind == MULTI_LABEL, scores


def _answer(model: str, settings, task: TaskData, shots, examples, max_length: int, batch_size: int, device):
    """The checkpoint's scores (N, C) for `examples`, asked as `settings` say."""
    tokenizer = load_tokenizer(model)
    lm = load_model(model, head="causal_lm").to(device)
    answerer = Answerer(asking(settings, model, tokenizer, max_length, batch_size), task, lm, tokenizer, shots)
    return answerer.answers(examples)[0]
