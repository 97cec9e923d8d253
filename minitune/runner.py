"""`minitune train`: resolve inputs -> train -> scores -> thresholds -> report -> save, top to bottom.

Output directory: config.json (resolved config), metrics.jsonl, results.json, report.txt, checkpoint/ (for
--resume), best.safetensors, and model/ in the Hub layout (config.json, model.safetensors, tokenizer files,
thresholds.json for multi-label) that minitune.load_model and transformers both load. Recipe-MPR runs its five
folds in fold0/ .. fold4/ (experiments/folds.py) and reports test accuracy over all folds; model/ holds fold 0's
model.

Everything a user can get wrong (flags, files, model name, metric) is checked in `resolve_inputs`, before the
output directory is written to, so a mistake costs seconds and leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.hub import resolve_model
from minitune.checkpoints.load import load_tokenizer, read_config
from minitune.checkpoints.save import save_model_dir
from minitune.config import RunConfig, dump, print_config, resolve_device, resume_signature
from minitune.data.features import tokenize
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.splits import holdout_examples, subsample
from minitune.data.tasks import Example, TaskData, label_array, load_eval_file, load_task, resolve_data_dir
from minitune.data.tokenizer import Tokenizer
from minitune.errors import ConfigError, MinituneError
from minitune.eval.metrics import SELECTION_METRICS
from minitune.eval.report import format_report, write_results
from minitune.eval.scoring import task_report
from minitune.eval.thresholds import choose_thresholds
from minitune.experiments.folds import run_folds
from minitune.experiments.generative import run_generative
from minitune.experiments.trial import build_loss, score, train_once
from minitune.models import family_for
from minitune.models.decoder import MODEL_TYPES as DECODER_TYPES
from minitune.train.checkpoint import check_resumable

log = logging.getLogger("minitune")


@dataclass
class RunInputs:
    task: TaskData
    tokenizer: Tokenizer
    test: list[Example] | None  # --test-file's examples


def run_train(cfg: RunConfig) -> dict:
    device = resolve_device(cfg.device)
    inputs = resolve_inputs(cfg)
    out = Path(cfg.output_dir)
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    print_config(cfg)
    atomic_write_text(out / "config.json", dump(cfg) + "\n")
    t0 = time.perf_counter()
    try:
        if cfg.head == "generative":
            results = run_generative(cfg, inputs.task, inputs.tokenizer, inputs.test, out, device)
        elif inputs.task.kind == MULTIPLE_CHOICE and inputs.task.folds:
            results = run_folds(cfg, inputs.task, inputs.tokenizer, inputs.test, out, device)
        else:
            results = run_holdout(cfg, inputs, out, device)
    except MinituneError:
        # A mistake only the model or the features reveal (a --lora-targets pattern that matches nothing): before
        # any checkpoint, the directory this run made holds nothing worth keeping.
        if fresh and not any(out.glob("**/checkpoint")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    results["train"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results = {"task": cfg.task, "model": cfg.model, "config": json.loads(dump(cfg)), **results}
    write_results(out / "results.json", results)
    text = format_report(results)
    atomic_write_text(out / "report.txt", text)
    print(text)
    return results


def run_holdout(cfg: RunConfig, inputs: RunInputs, out: Path, device: torch.device) -> dict:
    """One model trained on train (or 90% of it), selected on dev (or the other 10%), scored on --test-file."""
    task, tokenizer = inputs.task, inputs.tokenizer
    train_ex = subsample(task.train, cfg.max_train_samples, cfg.seed)
    dev_ex = subsample(task.dev, cfg.max_eval_samples, None)
    if not dev_ex:  # no dev file: hold out 10% of train, stratified, to select on
        train_ex, dev_ex = holdout_examples(train_ex, label_array(task, train_ex), 0.1, cfg.seed)
        log.info(
            "no dev file: holding out %d of %d training examples for selection",
            len(dev_ex),
            len(dev_ex) + len(train_ex),
        )
    trial = train_once(cfg, task, train_ex, dev_ex, tokenizer, out, device)
    thresholds = tuned = None
    if task.kind == MULTI_LABEL:
        thresholds = choose_thresholds(
            label_array(task, dev_ex), trial.dev_scores, task.label_names, cfg.threshold, cfg.metric
        )
        tuned = np.array(list(thresholds["per_label"].values()))
    results = {"train": trial.summary, "dev": task_report(task, dev_ex, trial.dev_scores, cfg.threshold, tuned)}
    if thresholds is not None:
        results["thresholds"] = thresholds
    if inputs.test is not None:
        test_f = tokenize(inputs.test, tokenizer, task.kind, cfg.max_length)
        test_scores = score(cfg, task, trial.model, test_f, trial.collate, device)
        results["test"] = task_report(task, inputs.test, test_scores, cfg.threshold, tuned)
    save_model_dir(out, trial.model, tokenizer, task.kind, task.label_names, thresholds)
    return results


def resolve_inputs(cfg: RunConfig) -> RunInputs:
    """Load and check everything that can be wrong before anything is written: the task's files, the metric, the
    loss, the model's config and tokenizer, --test-file, --max-length, a checkpoint to resume. Sets the padding
    default of the model's family (cfg.padding)."""
    task = load_task(
        cfg.task,
        resolve_data_dir(cfg.data_dir),
        seed=cfg.seed,
        train_file=cfg.train_file,
        dev_file=cfg.dev_file,
        label_names=cfg.label_names,
        **({} if cfg.task != "custom" else dict(text_col=cfg.text_col, label_col=cfg.label_col, pair_col=cfg.pair_col)),
    )
    if cfg.metric not in SELECTION_METRICS[task.kind]:
        raise ConfigError(
            f"--metric {cfg.metric!r} is not a selection metric for {task.kind} tasks; choose one of "
            f"{', '.join(SELECTION_METRICS[task.kind])}"
        )
    build_loss(cfg, task, task.train)  # a loss that does not fit the task fails here, not after tokenizing
    if cfg.max_tokens and cfg.max_tokens < cfg.max_length:
        raise ConfigError(
            f"--max-tokens {cfg.max_tokens} is below --max-length {cfg.max_length}: a batch must hold "
            "the longest example; raise --max-tokens or lower --max-length"
        )
    test = load_eval_file(task, cfg.test_file) if cfg.test_file else None
    name = "minilm" if cfg.model == "ffnn" else cfg.model  # the baseline borrows MiniLM's tokenizer
    path = resolve_model(name)
    family = "llama" if path.suffix.lower() == ".gguf" else None
    if family is None and cfg.model != "ffnn":
        hf_config = read_config(path)
        family = hf_config.get("model_type")
        check_max_length(cfg, family_for(family, path).usable_positions(hf_config))
    if cfg.padding is None:  # encoders unpad padding-heavy batches; decoders have no such path
        cfg.padding = "bucketed" if family in DECODER_TYPES else "dynamic"
    if cfg.resume:
        fold_dirs = sorted(Path(cfg.output_dir).glob("fold*")) if task.folds else [Path(cfg.output_dir)]
        for d in [d for d in fold_dirs if (d / "checkpoint").is_dir()] or [Path(cfg.output_dir)]:
            check_resumable(d / "checkpoint", resume_signature(cfg))
    tokenizer = load_tokenizer(name)
    if tokenizer.pad_token_id is None:
        log.warning("%s has no pad token: using its eos token for padding", cfg.model)
        tokenizer.set_pad_to_eos()
    return RunInputs(task, tokenizer, test)


def check_max_length(cfg: RunConfig, usable: int | None) -> None:
    """A --max-length beyond the position table would index past it in the middle of training."""
    if usable is not None and cfg.max_length > usable:
        raise ConfigError(
            f"--max-length {cfg.max_length} exceeds {cfg.model}'s {usable} positions; use at most {usable}"
        )
