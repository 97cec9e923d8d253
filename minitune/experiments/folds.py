"""Recipe-MPR's 5-fold protocol: train on each fold's train part, select on its validation part, score its test
part; report accuracy over all folds' test parts, beside the always-pick-the-first-option baseline.

The published fold files leave validation empty: then 10% of the fold's train part, stratified, is held out to
select on. A further --test-file is scored by the mean of the fold models' probabilities (their ensemble). Every
item's prediction by the fold model that did not train on it goes to test_predictions.csv.
Fold k trains in fold{k}/ of the output directory, so a run stopped in fold k resumes there.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.save import save_model_dir
from minitune.config import RunConfig
from minitune.data.features import tokenize
from minitune.data.splits import holdout_examples, subsample
from minitune.data.tasks import Example, TaskData, label_array
from minitune.eval.predictions import write_example_predictions, write_prediction_records
from minitune.eval.scoring import task_report
from minitune.experiments.trial import bi_encoder, score, train_once
from minitune.train.distributed import is_main
from minitune.train.parallel import consolidated

log = logging.getLogger("minitune")


def remove_stale_folds(out: Path, n_folds: int) -> None:
    """An earlier run here with more folds: its extra fold directories are not this run's."""
    for stale in out.glob("fold*"):
        if stale.is_dir() and stale.name[4:].isdigit() and int(stale.name[4:]) >= n_folds:
            shutil.rmtree(stale)


def fold_split(cfg: RunConfig, task: TaskData, train: list[int], val: list[int]) -> tuple[list, list]:
    """(train, validation) examples of one fold, capped by --max-train-samples / --max-eval-samples."""
    fold_train = [task.train[i] for i in train]
    if val:
        fold_val = [task.train[i] for i in val]
    else:  # the published folds leave validation empty: select on 10% of the fold's training part
        fold_train, fold_val = holdout_examples(fold_train, label_array(task, fold_train), 0.1, cfg.seed)
    # The cap applies to selection only; each fold's test part is always scored whole.
    return subsample(fold_train, cfg.max_train_samples, cfg.seed), subsample(fold_val, cfg.max_eval_samples, None)


def run_folds(
    cfg: RunConfig, task: TaskData, tokenizer, test_ex: list[Example] | None, out: Path, device: torch.device
) -> dict:
    folds = task.folds[: cfg.folds] if cfg.folds else task.folds
    if not cfg.resume:
        remove_stale_folds(out, len(folds))
    fold_ex, test_scores, per_fold, file_scores = [], [], [], []
    bi = bi_encoder(cfg, task)
    tokenized = dict(zip(map(id, task.train), tokenize(task.train, tokenizer, task.kind, cfg.max_length, bi)))
    file_f = tokenize(test_ex, tokenizer, task.kind, cfg.max_length, bi) if test_ex else None
    for k, (tr, va, te) in enumerate(folds):
        fold_train, fold_val = fold_split(cfg, task, tr, va)
        log.info(
            "fold %d/%d: %d train, %d val%s, %d test",
            k + 1,
            len(folds),
            len(fold_train),
            len(fold_val),
            "" if va else " (10% of the fold's train part: the fold file gives none)",
            len(te),
        )
        fold_dir = out / f"fold{k}"
        # On --resume, folds that never started begin afresh; finished ones resume into "done" at once.
        fold_cfg = dataclasses.replace(cfg, resume=cfg.resume if (fold_dir / "checkpoint").is_dir() else None)
        trial = train_once(fold_cfg, task, fold_train, fold_val, tokenizer, fold_dir, device, tokenized)
        ex = [task.train[i] for i in te]
        scores = score(cfg, task, trial.model, [tokenized[id(e)] for e in ex], trial.collate, device)
        accuracy = float((scores.argmax(1) == label_array(task, ex)).mean())
        summary = dict(trial.summary)
        start = summary.pop("start", None) or {}  # flat, so the report prints one row per fold
        summary[f"start_{cfg.metric}"] = start.get(cfg.metric)
        per_fold.append({"fold": k, **summary, "test_accuracy": accuracy})
        fold_ex += ex
        test_scores.append(scores)
        if file_f is not None:
            file_scores.append(score(cfg, task, trial.model, file_f, trial.collate, device))
        if k == 0:
            model = consolidated(trial.model)  # FSDP: gathered onto rank 0, which alone writes
            if is_main():
                save_model_dir(out, model, tokenizer, task.kind, None)
    scores = np.concatenate(test_scores)
    if is_main():
        write_example_predictions(out / "test_predictions.csv", task, fold_ex, scores, None)  # every item, once
        write_prediction_records(out, "test", fold_ex, label_array(task, fold_ex), scores)
    return fold_results(cfg, task, fold_ex, scores, per_fold, test_ex, file_scores)


def fold_results(
    cfg: RunConfig,
    task: TaskData,
    fold_ex: list[Example],
    scores: np.ndarray,
    per_fold: list[dict],
    test_ex: list[Example] | None,
    file_scores: list[np.ndarray],
) -> dict:
    first = np.zeros_like(scores)
    first[:, 0] = 1.0  # the always-pick-the-first-option baseline, after the seeded option shuffle
    starts = [f[f"start_{cfg.metric}"] for f in per_fold if f.get(f"start_{cfg.metric}") is not None]
    train: dict = {"folds": per_fold, "metric": cfg.metric}
    bests = [f["best"] for f in per_fold if f.get("best") is not None]
    if starts:  # "before training: X, best: Y" over the folds' selection splits (eval/report.start_lines)
        train |= {"start": {cfg.metric: float(np.mean(starts))}, "best": float(np.mean(bests)) if bests else None}
        train["start_is_chance"] = per_fold[0].get("start_is_chance", False)
    results = {
        "train": train,
        "test": task_report(task, fold_ex, scores, cfg.threshold),
        "baseline_first_option": task_report(task, fold_ex, first, cfg.threshold),
    }
    if file_scores:
        results["test_file"] = task_report(task, test_ex, np.mean(file_scores, axis=0), cfg.threshold)
    return results
