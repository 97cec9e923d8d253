"""`minitune predict --head generative` on an instruct checkpoint that no training run tuned (zero- or few-shot).

A tuned model carries its labels and prompt in generative.json (experiments/instruct.py); a plain checkpoint
carries neither, so they come from the command line: the label set from `--task` (a built-in task's label names,
read from its training file, or `--task custom --train-file F`), or from `--labels a,b,c` (`--multi-label` when
several may apply); the default instruction of that task kind (or `--prompt-template`), `--shots K` drawn from the
task's training file with `--seed`, and the answer mode. When the label set cannot be known the run stops in one
line before the model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minitune.checkpoints.load import load_model, load_tokenizer
from minitune.config import RunConfig
from minitune.data.chat import load_chat_template
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.prompts import PromptTemplate, choose_shots
from minitune.data.tasks import Example, TaskData, load_task, resolve_data_dir
from minitune.errors import ConfigError
from minitune.experiments.generative import Answerer, check_decoder


@dataclass
class PlainAsk:
    """How to ask a plain instruct checkpoint: where its label set comes from, and the answer settings."""

    task: str | None = None
    labels: str | None = None  # comma-separated label names
    multi_label: bool = False  # with `labels`: several labels may apply
    data_dir: str | None = None
    train_file: str | None = None
    label_col: str | None = None
    answer_mode: str = "constrained"
    shots: int = 0
    seed: int = 42
    prompt_template: str | None = None
    max_new_tokens: int = 32


def label_task(ask: PlainAsk, model: str, text_col: str) -> TaskData:
    """The task whose labels (and, for shots, training examples) the checkpoint answers with."""
    if ask.task is None:
        if not ask.labels:
            raise ConfigError(
                f"`model` {model} carries no label set (no training run tuned it): pass `task` (e.g. `task` semeval) "
                "or `labels` (e.g. `labels` positive,negative)"
            )
        if ask.shots:
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
    cfg = RunConfig(
        model=model,
        answer_mode=ask.answer_mode,
        shots=ask.shots,
        seed=ask.seed,
        max_new_tokens=ask.max_new_tokens,
        max_length=max_length or RunConfig.max_length,
        batch_size=batch_size,
    )
    template = PromptTemplate(ask.prompt_template) if ask.prompt_template else None
    check_decoder(cfg)
    tokenizer = load_tokenizer(model)
    lm: torch.nn.Module = load_model(model, head="causal_lm").to(device)
    shots = choose_shots(task, task.train, ask.shots, ask.seed)
    answer = Answerer(cfg, task, lm, tokenizer, load_chat_template(model, tokenizer), shots, template)
    scores, _ = answer.answers(examples)
    return task.label_names, task.kind == MULTI_LABEL, scores
