"""The fold loop every cross-validation shares, and Recipe-MPR's 5-fold protocol on top of it.

`train_folds` trains one model per fold: on the fold's train part, selecting on its validation part (or, when the
fold gives none, on 10% of its train part, stratified), then scores its held-out part and any further sets (dev,
--test-file). Fold k trains in fold{k}/ of the output directory and, once done, keeps its model in fold{k}/model/
and its probabilities in fold{k}/fold_scores.npz: a run stopped in fold k resumes there (`resume`), and finished
folds are read back instead of trained again. `minitune cv` (experiments/cv.py) builds k stratified folds of any
task on this loop.

Recipe-MPR (`run_folds`): train on each published fold's train part, score its test part; report accuracy over
all folds' test parts, beside the always-pick-the-first-option baseline. A further --test-file is scored by the
mean of the fold models' probabilities (their ensemble), and so is `minitune predict` on the run directory, which
members.json lists the fold models for. Every item's prediction by the fold model that did not
train on it goes to test_predictions.csv; fold 0's model is also copied to model/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.atomic import atomic_write, atomic_write_text
from minitune.checkpoints.save import save_model_dir
from minitune.config import RunConfig
from minitune.data.features import tokenize
from minitune.data.splits import holdout_examples, subsample
from minitune.data.tasks import Example, TaskData, label_array
from minitune.eval.predictions import write_example_predictions, write_prediction_records
from minitune.eval.scoring import task_report
from minitune.experiments.ensemble import write_members
from minitune.experiments.trial import bi_encoder, mean_start, score, start_row, train_once
from minitune.train.distributed import is_main
from minitune.train.parallel import consolidated

log = logging.getLogger("minitune")

FOLD_SCORES = "fold_scores.npz"  # a finished fold's probabilities: held-out part and every further set
FOLD_SUMMARY = "fold_summary.json"


@dataclass
class FoldOutcome:
    """One fold's model, scored: `held_out` indexes the examples the folds split; `scores` are its probabilities on
    them; `extra` its probabilities on each further set, by name; `summary` the training loop's summary."""

    held_out: np.ndarray
    scores: np.ndarray
    extra: dict[str, np.ndarray]
    summary: dict


def remove_stale_folds(out: Path, n_folds: int) -> None:
    """An earlier run here with more folds: its extra fold directories are not this run's."""
    for stale in out.glob("fold*"):
        if stale.is_dir() and stale.name[4:].isdigit() and int(stale.name[4:]) >= n_folds:
            shutil.rmtree(stale)


def fold_split(cfg: RunConfig, task: TaskData, examples: list, train: list[int], val: list[int]) -> tuple[list, list]:
    """(train, validation) examples of one fold, capped by --max-train-samples / --max-eval-samples."""
    fold_train = [examples[i] for i in train]
    if len(val):
        fold_val = [examples[i] for i in val]
    else:  # no validation part given: select on 10% of the fold's training part
        fold_train, fold_val = holdout_examples(fold_train, label_array(task, fold_train), 0.1, cfg.seed)
    # The cap applies to selection only; each fold's held-out part is always scored whole.
    return subsample(fold_train, cfg.max_train_samples, cfg.seed), subsample(fold_val, cfg.max_eval_samples, None)


def read_finished_fold(fold_dir: Path, held_out) -> FoldOutcome | None:
    """A fold whose scores were written (and whose held-out part is the same): nothing to train again."""
    if not (fold_dir / FOLD_SCORES).is_file() or not (fold_dir / FOLD_SUMMARY).is_file():
        return None
    with np.load(fold_dir / FOLD_SCORES) as saved:
        arrays = dict(saved)
    if not np.array_equal(arrays.pop("held_out"), np.asarray(held_out)):
        return None
    summary = json.loads((fold_dir / FOLD_SUMMARY).read_text(encoding="utf-8"))
    return FoldOutcome(np.asarray(held_out), arrays.pop("scores"), arrays, summary)


def write_fold(fold_dir: Path, outcome: FoldOutcome) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, held_out=outcome.held_out, scores=outcome.scores, **outcome.extra)

    atomic_write(fold_dir / FOLD_SCORES, write)
    atomic_write_text(fold_dir / FOLD_SUMMARY, json.dumps(outcome.summary, default=str) + "\n")


def train_folds(
    cfg: RunConfig,
    task: TaskData,
    examples: list[Example],
    folds: list[tuple],
    tokenizer,
    out: Path,
    device: torch.device,
    extra_sets: dict[str, list[Example]],
    teacher=None,
) -> list[FoldOutcome]:
    """One model per (train, validation, held-out) index triple into `examples`; see the module docstring.
    `teacher`: distillation (experiments/distill.py), as in train_once."""
    if not cfg.resume:
        remove_stale_folds(out, len(folds))
    bi = bi_encoder(cfg, task)
    tokenized = dict(zip(map(id, examples), tokenize(examples, tokenizer, task.kind, cfg.max_length, bi)))
    extra_f = {name: tokenize(ex, tokenizer, task.kind, cfg.max_length, bi) for name, ex in extra_sets.items()}
    outcomes = []
    for k, (tr, va, te) in enumerate(folds):
        fold_dir = out / f"fold{k}"
        done = read_finished_fold(fold_dir, te) if cfg.resume else None
        sizes = {name: len(f) for name, f in extra_f.items()}
        if done is not None and {name: len(v) for name, v in done.extra.items()} != sizes:
            log.warning(
                "fold %d/%d finished with other dev/test sets than this run's: trained again", k + 1, len(folds)
            )
            done = None
        if done is not None:
            log.info("fold %d/%d: finished before, its scores read from %s", k + 1, len(folds), fold_dir)
            outcomes.append(done)
            continue
        fold_train, fold_val = fold_split(cfg, task, examples, tr, va)
        log.info(
            "fold %d/%d: %d train, %d val, %d held out", k + 1, len(folds), len(fold_train), len(fold_val), len(te)
        )
        # On --resume, a fold that never started begins afresh; one stopped part-way continues from its checkpoint.
        fold_cfg = dataclasses.replace(cfg, resume=cfg.resume if (fold_dir / "checkpoint").is_dir() else None)
        (fold_dir / FOLD_SCORES).unlink(missing_ok=True)
        trial = train_once(fold_cfg, task, fold_train, fold_val, tokenizer, fold_dir, device, tokenized, teacher)
        held = [tokenized[id(examples[i])] for i in te]
        outcome = FoldOutcome(
            np.asarray(te),
            score(cfg, task, trial.model, held, trial.collate, device),
            {name: score(cfg, task, trial.model, f, trial.collate, device) for name, f in extra_f.items()},
            trial.summary | {"n_train": len(fold_train), "n_val": len(fold_val), "n_held_out": len(te)},
        )
        model = consolidated(trial.model)  # FSDP: gathered onto rank 0, which alone writes
        if is_main():
            save_model_dir(fold_dir, model, tokenizer, task.kind, task.label_names)
            (fold_dir / "best.safetensors").unlink(missing_ok=True)  # model/ holds the best weights now
            write_fold(fold_dir, outcome)
        outcomes.append(outcome)
    return outcomes


def run_folds(
    cfg: RunConfig,
    task: TaskData,
    tokenizer,
    test_ex: list[Example] | None,
    out: Path,
    device: torch.device,
    teacher=None,
) -> dict:
    """Recipe-MPR's published folds (the first --folds of them)."""
    folds = task.folds[: cfg.folds] if cfg.folds else task.folds
    extra = {"test_file": test_ex} if test_ex else {}
    outcomes = train_folds(cfg, task, task.train, folds, tokenizer, out, device, extra, teacher)
    per_fold, fold_ex = [], []
    for k, o in enumerate(outcomes):
        ex = [task.train[i] for i in o.held_out]
        accuracy = float((o.scores.argmax(1) == label_array(task, ex)).mean())
        summary = {k: v for k, v in o.summary.items() if k != "start"} | start_row(o.summary, cfg.metric)
        per_fold.append({"fold": k, **summary, "test_accuracy": accuracy})  # flat: the report prints a row per fold
        fold_ex += ex
    scores = np.concatenate([o.scores for o in outcomes])
    if is_main():
        shutil.rmtree(out / "model", ignore_errors=True)  # an earlier run's model/ is not fold 0's
        shutil.copytree(out / "fold0" / "model", out / "model")
        write_members(out, "folds", [f"fold{k}" for k in range(len(outcomes))])  # predict: the folds' mean
        write_example_predictions(out / "test_predictions.csv", task, fold_ex, scores, None)  # every item, once
        write_prediction_records(out, "test", fold_ex, label_array(task, fold_ex), scores)
    file_scores = [o.extra["test_file"] for o in outcomes if "test_file" in o.extra]
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
    # "before training: X, best: Y" over the folds' selection splits (eval/report.start_lines)
    train: dict = {"folds": per_fold, "metric": cfg.metric} | mean_start(per_fold, cfg.metric)
    results = {
        "train": train,
        "test": task_report(task, fold_ex, scores, cfg.threshold),
        "baseline_first_option": task_report(task, fold_ex, first, cfg.threshold),
    }
    if file_scores:
        results["test_file"] = task_report(task, test_ex, np.mean(file_scores, axis=0), cfg.threshold)
    return results
