"""`minitune cv`: k-fold cross-validation of any task, with out-of-fold predictions.

Folds: stratified for single-label, iterative stratification for multi-label (data/splits.kfold, seeded with
--seed), and for multiple choice the items themselves (one example per item, stratified by answer position);
Recipe-MPR with 5 folds (the default) uses its published folds. Each fold trains on the other folds' examples,
selects on 10% of them (stratified: the held-out fold stays unseen), and scores:
- its held-out fold: together, `oof.csv`, every training example scored exactly once, by the model that did not
  train on it;
- dev and --test-file: the k fold models' mean probabilities (their ensemble).
Multi-label thresholds are tuned on the out-of-fold predictions (honest: no model saw the examples it is tuned on)
and applied to dev and test. The report gives each fold's score on its held-out part, their mean ± std, and the
out-of-fold, dev and test scores. Fold k trains in fold{k}/ (experiments/folds.py): with --resume a run stopped in
fold k continues there, finished folds are read back.

--max-train-samples takes one subset of the training data before the folds are cut, with DATA_SEED rather than
--seed, so that the members of `--seeds` cover the same examples and their out-of-fold predictions average.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.atomic import atomic_write_text
from minitune.config import RunConfig
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.data.splits import kfold, subsample
from minitune.data.tasks import Example, TaskData, label_array
from minitune.errors import ConfigError
from minitune.eval.predictions import write_example_predictions, write_prediction_records
from minitune.eval.scoring import task_report
from minitune.experiments.ensemble import (
    OOF_INDEX,
    THRESHOLDS,
    headline,
    mean_std,
    save_scores,
    tuned_for,
    write_members,
)
from minitune.experiments.folds import train_folds
from minitune.experiments.trial import mean_start, start_row
from minitune.train.distributed import is_main

DEFAULT_FOLDS = 5
DATA_SEED = 42


def cv_folds(cfg: RunConfig, task: TaskData) -> tuple[np.ndarray, list[tuple]]:
    """(indices into task.train of the examples cross-validated, (train, validation, held-out) triples into them)."""
    k = cfg.folds or DEFAULT_FOLDS
    if k < 2:
        raise ConfigError(f"`folds` {k}: cross-validation needs at least 2 folds, e.g. 5")
    if task.folds and k == len(task.folds) and not cfg.max_train_samples:
        return np.arange(len(task.train)), [(tr, va, te) for tr, va, te in task.folds]  # the published folds
    index = np.arange(len(task.train))
    if cfg.max_train_samples:
        index = np.array(subsample(list(index), cfg.max_train_samples, DATA_SEED))
    labels = label_array(task, [task.train[i] for i in index])
    if len(index) < 2 * k:
        raise ConfigError(f"`folds` {k} needs at least {2 * k} training examples, got {len(index)}")
    return index, [(tr, [], va) for tr, va in kfold(labels, k, cfg.seed)]


def run_cv(cfg: RunConfig, task: TaskData, tokenizer, test: list[Example] | None, out: Path, device: torch.device):
    index, folds = cv_folds(cfg, task)
    examples = [task.train[i] for i in index]
    dev = subsample(task.dev, cfg.max_eval_samples, None)
    extra = {name: ex for name, ex in (("dev", dev), ("test", test)) if ex}
    outcomes = train_folds(cfg, task, examples, folds, tokenizer, out, device, extra)
    held = np.concatenate([o.held_out for o in outcomes])
    if len(np.unique(held)) != len(held):
        raise ConfigError(f"`folds`: the folds' held-out parts overlap ({len(held) - len(np.unique(held))} twice)")
    order = np.sort(held)  # training order: each covered example once
    oof = np.zeros((len(examples), outcomes[0].scores.shape[1]))
    for o in outcomes:
        oof[o.held_out] = o.scores
    oof_ex, oof = [examples[i] for i in order], oof[order]
    thresholds, tuned = tuned_for(cfg, task, oof_ex, oof, "oof")
    use_tuned = bool(thresholds and thresholds["use"] == "tuned")
    rows = []
    for k, o in enumerate(outcomes):
        rep = task_report(task, [examples[i] for i in o.held_out], o.scores, cfg.threshold, tuned)
        summary = {key: o.summary.get(key) for key in ("n_train", "n_val", "n_held_out", "best_step", "seconds")}
        rows.append({"fold": k, **summary, **start_row(o.summary, cfg.metric), **headline(task.kind, rep, use_tuned)})
    results = {
        "train": {"k": len(folds), "folds": rows, "fold_mean_std": mean_std(rows, "fold")}
        | mean_start(rows, cfg.metric),
        "oof": task_report(task, oof_ex, oof, cfg.threshold, tuned),
    }
    mean = {name: np.mean([o.extra[name] for o in outcomes], axis=0) for name in extra}
    for name, scores in mean.items():
        results[name] = task_report(task, extra[name], scores, cfg.threshold, tuned)
    if thresholds is not None:
        results["thresholds"] = thresholds
    if is_main():
        use = tuned if use_tuned else np.full(oof.shape[1], cfg.threshold)
        use = None if task.kind == MULTIPLE_CHOICE else use
        write_example_predictions(out / "oof.csv", task, oof_ex, oof, use)
        write_prediction_records(out, "oof", oof_ex, label_array(task, oof_ex), oof)
        np.save(out / OOF_INDEX, index[order])
        save_scores(out, oof=oof, **mean)
        write_members(out, "cv", [f"fold{k}" for k in range(len(folds))])
        if thresholds is not None:
            atomic_write_text(out / THRESHOLDS, json.dumps(thresholds, indent=2) + "\n")
    return results
