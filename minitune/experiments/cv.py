"""`minitune cv`: k-fold cross-validation of any task, with out-of-fold predictions.

Folds: stratified for single-label, iterative stratification for multi-label (data/splits.kfold, seeded with
`seed`), and for multiple choice the items themselves (one example per item, stratified by answer position);
Recipe-MPR with 5 folds (the default) uses its published folds. Each fold trains on the other folds' examples,
selects on 10% of them (stratified: the held-out fold stays unseen), and scores:
- its held-out fold: together, `oof.csv`, every training example scored exactly once, by the model that did not
  train on it;
- dev and --test-file: the k fold models' mean probabilities (their ensemble).
Multi-label thresholds are tuned on the out-of-fold predictions (honest: no model saw the examples it is tuned on)
and applied to dev and test. The report gives each fold's score on its held-out part, their mean ± std, and the
out-of-fold, dev and test scores. Fold k trains in fold{k}/ (experiments/folds.py): with `resume` a run stopped in
fold k continues there, finished folds are read back.

`max_train_samples` takes one subset of the training data before the folds are cut, with DATA_SEED rather than
`seed`, so that the members of `seeds` cover the same examples and their out-of-fold predictions average.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.rundir import save_oof_index, save_scores, write_members, write_thresholds
from minitune.config.defaults import DEFAULT_FOLDS
from minitune.config.sections import RunConfig
from minitune.data.splits import kfold, subsample
from minitune.data.tasks import Example, TaskData, label_array
from minitune.errors import ConfigError
from minitune.eval.finish import finish_splits, headline, mean_start, mean_std, start_row
from minitune.eval.scoring import task_report
from minitune.eval.sources import sources_results
from minitune.experiments.folds import FoldOutcome, train_folds
from minitune.train.distributed import is_main

DATA_SEED = 42


def cv_folds(cfg: RunConfig, task: TaskData) -> tuple[np.ndarray, list[tuple]]:
    """(indices into task.train of the examples cross-validated, (train, validation, held-out) triples into them)."""
    k = cfg.folds or DEFAULT_FOLDS
    if task.folds and k == len(task.folds) and not cfg.data.max_train_samples:
        return np.arange(len(task.train)), [(tr, va, te) for tr, va, te in task.folds]  # the published folds
    index = np.arange(len(task.train))
    if cfg.data.max_train_samples:
        index = np.array(subsample(list(index), cfg.data.max_train_samples, DATA_SEED))
    labels = label_array(task, [task.train[i] for i in index])
    return index, [(tr, [], va) for tr, va in kfold(labels, k, cfg.seed)]


def out_of_fold(examples: list[Example], outcomes: list[FoldOutcome]) -> tuple[np.ndarray, np.ndarray]:
    """(the covered examples' positions in training order, their out-of-fold probabilities in that order)."""
    held = np.concatenate([o.held_out for o in outcomes])
    if len(np.unique(held)) != len(held):
        raise ConfigError(f"`folds`: the folds' held-out parts overlap ({len(held) - len(np.unique(held))} twice)")
    oof = np.zeros((len(examples), outcomes[0].scores.shape[1]))
    for o in outcomes:
        oof[o.held_out] = o.scores
    order = np.sort(held)  # training order: each covered example once
    return order, oof[order]


def run_cv(cfg: RunConfig, task: TaskData, tokenizer, test: list[Example] | None, out: Path, device: torch.device):
    index, folds = cv_folds(cfg, task)
    examples = [task.train[i] for i in index]
    dev = subsample(task.dev, cfg.data.max_eval_samples, None)
    extra = {name: ex for name, ex in (("dev", dev), ("test", test)) if ex}
    outcomes = train_folds(cfg, task, examples, folds, tokenizer, out, device, extra)
    order, oof = out_of_fold(examples, outcomes)
    oof_ex = [examples[i] for i in order]
    mean = {name: np.mean([o.extra[name] for o in outcomes], axis=0) for name in extra}
    splits = {"oof": (oof_ex, oof)} | {name: (extra[name], mean[name]) for name in extra}
    done = finish_splits(out, task, splits, "oof", cfg.eval, cfg.loop.metric, csv_name="oof.csv", on="oof")
    tuned = None if done.thresholds is None else np.array(list(done.thresholds["per_label"].values()))
    use_tuned = bool(done.thresholds and done.thresholds["use"] == "tuned")
    rows = []
    for k, o in enumerate(outcomes):
        rep = task_report(task, [examples[i] for i in o.held_out], o.scores, cfg.eval.threshold, tuned)
        summary = {key: o.summary.get(key) for key in ("n_train", "n_val", "n_held_out", "best_step", "seconds")}
        rows.append(
            {"fold": k, **summary, **start_row(o.summary, cfg.loop.metric), **headline(task.kind, rep, use_tuned)}
        )
    results = {
        "train": {"k": len(folds), "folds": rows, "fold_mean_std": mean_std(rows, "fold")}
        | mean_start(rows, cfg.loop.metric),
        **done.reports,
    }
    if done.thresholds is not None:
        results["thresholds"] = done.thresholds
    if task.added_counts:  # each fold trained on its part and every source's examples: counted over all folds
        trained = examples + task.added
        results["sources"] = sources_results(task, done.reports, trained, cfg.data.oversample_rare, cfg.seed)
    if is_main():
        save_oof_index(out, index[order])
        save_scores(out, oof=oof, **mean)
        write_members(out, "cv", [f"fold{k}" for k in range(len(folds))])
        if done.thresholds is not None:
            write_thresholds(out, done.thresholds)
    return results
