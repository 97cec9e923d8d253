"""The fold loop every cross-validation shares, and Recipe-MPR's 5-fold protocol on top of it.

`fold_loop` runs one function per fold: the function trains fold k (the classifier's or the generative head's
fine-tune, finetune.py) on the fold's train part, selecting on its validation part (or, when the fold gives none,
on 10% of its train part, stratified: data/splits.selection_split), and scores its held-out part and any further
sets (dev, --test-file). Fold k trains in fold{k}/ of the output directory and, once done, keeps its probabilities
in fold{k}/fold_scores.npz (checkpoints/rundir.py): a run stopped in fold k resumes there (`resume`), and finished
folds are read back instead of trained again. `minitune cv` (experiments/cv.py) builds k stratified folds of any
task on this loop.

Recipe-MPR (`run_folds`): train on each published fold's train part (the first `max_folds` of them), score its
test part; report accuracy over all folds' test parts, beside the always-pick-the-first-option baseline. A further
--test-file is scored by the mean of the fold models' probabilities (their ensemble), and so is `minitune predict`
on the run directory, which members.json lists the fold models for. Every item's prediction by the fold model that
did not train on it goes to test_predictions.csv. With `head` generative,
`epochs` 0 loads the model once and asks it on every fold (the folds differ only in their shots); with epochs each
fold tunes its own adapters from the base checkpoint, keeps its adapter in fold{k}/adapter/, and fold 0's merged
model is model/.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.rundir import (
    FOLD_SCORES,
    PROMPT_EXAMPLE,
    read_fold,
    write_fold,
    write_members,
    write_prompt_example,
)
from minitune.checkpoints.runlock import drop_checkpoints
from minitune.config.sections import RunConfig
from minitune.data.features import open_cache, tokenize
from minitune.data.splits import selection_split, subsample
from minitune.data.tasks import Example, TaskData, label_array
from minitune.data.token_cache import cache_folder
from minitune.eval.answers import answer_stats
from minitune.eval.finish import finish_splits, mean_start, start_row
from minitune.eval.scoring import task_report
from minitune.finetune import bi_encoder, finetune
from minitune.instruct import causal_lm
from minitune.train.distributed import is_main

log = logging.getLogger("minitune")


@dataclass
class FoldOutcome:
    """One fold's model, scored: `held_out` indexes the examples the folds split; `scores` are its probabilities on
    them; `extra` its probabilities on each further set, by name; `summary` the training loop's summary (with the
    generative head's answers to the held-out part under "answers")."""

    held_out: np.ndarray
    scores: np.ndarray
    extra: dict[str, np.ndarray]
    summary: dict


def fold_split(cfg: RunConfig, task: TaskData, examples: list, train: list[int], val: list[int]) -> tuple[list, list]:
    """(train, validation) examples of one fold, capped by `max_train_samples` / `max_eval_samples` (the cap applies
    to selection only; each fold's held-out part is always scored whole). Extra training sources (`task.added`)
    join every fold's training part, never its validation or held-out part."""
    fold_train, fold_val = [examples[i] for i in train], [examples[i] for i in val]
    fold_train, fold_val = selection_split(
        fold_train, fold_val, label_array(task, fold_train), cfg.data.max_eval_samples, cfg.seed
    )
    return subsample(fold_train, cfg.data.max_train_samples, cfg.seed) + task.added, fold_val


def finished_fold(fold_dir: Path, held_out, sizes: dict[str, int]) -> FoldOutcome | None:
    """A fold whose scores were written for the same held-out part and further sets: nothing to train again."""
    saved = read_fold(fold_dir)
    if saved is None or not np.array_equal(saved[0], np.asarray(held_out)):
        return None
    if {name: len(v) for name, v in saved[2].items()} != sizes:
        log.warning("%s finished with other dev/test sets than this run's: trained again", fold_dir.name)
        return None
    return FoldOutcome(*saved)


TrainFold = Callable[[int, tuple, Path, bool], FoldOutcome]  # (k, (train, val, held-out), fold dir, resume)


def fold_loop(out: Path, folds: list[tuple], sizes: dict[str, int], train_fold: TrainFold, resume: bool, keep: bool):
    """`train_fold` for each fold in fold{k}/, finished folds read back on `resume` (see the module docstring);
    `keep`: a finished fold keeps its checkpoints."""
    outcomes = []
    for k, fold in enumerate(folds):
        fold_dir = out / f"fold{k}"
        done = finished_fold(fold_dir, fold[2], sizes) if resume else None
        if done is not None:
            log.info("fold %d/%d: finished before, its scores read from %s", k + 1, len(folds), fold_dir)
            outcomes.append(done)
            continue
        # On resume, a fold that never started begins afresh; one stopped part-way continues from its checkpoint.
        outcome = train_fold(k, fold, fold_dir, resume and (fold_dir / "checkpoint").is_dir())
        if is_main():
            write_fold(fold_dir, outcome.held_out, outcome.scores, outcome.extra, outcome.summary)
            if not keep:  # a finished fold is read back, never trained again
                drop_checkpoints(fold_dir)
        outcomes.append(outcome)
    return outcomes


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
    """One fine-tuned model per (train, validation, held-out) index triple into `examples`, each scored on its
    held-out part and on `extra_sets`. `teacher`: distillation (experiments/distill.py), as in finetune."""
    tokenized = _shared_features(cfg, task, tokenizer, [examples, task.added, *extra_sets.values()])
    lm = causal_lm(cfg.model, cfg.seed, device) if cfg.model.head == "generative" and cfg.loop.epochs == 0 else None

    def train_fold(k: int, fold: tuple, fold_dir: Path, resume: bool) -> FoldOutcome:
        tr, va, te = fold
        fold_train, fold_val = fold_split(cfg, task, examples, tr, va)
        log.info(
            "fold %d/%d: %d train, %d val, %d held out", k + 1, len(folds), len(fold_train), len(fold_val), len(te)
        )
        (fold_dir / FOLD_SCORES).unlink(missing_ok=True)
        kw = dict(resume=resume, tokenized=tokenized, teacher=teacher, lm=lm)
        tuned = finetune(cfg, task, fold_train, fold_val, tokenizer, fold_dir, device, **kw)
        scores, texts = tuned.predict([examples[i] for i in te])
        extra = {name: tuned.scores(ex) for name, ex in extra_sets.items()}
        summary = tuned.summary | {"n_train": len(fold_train), "n_val": len(fold_val), "n_held_out": len(te)}
        if texts is not None:
            summary["answers"] = texts
        tuned.save_fold(out, fold_dir, k)
        if tuned.prompt_example is not None and is_main():
            write_prompt_example(fold_dir, tuned.prompt_example)
        return FoldOutcome(np.asarray(te), scores, extra, summary)

    sizes = {name: len(ex) for name, ex in extra_sets.items()}
    keep = cfg.loop.keep_checkpoints is not None
    return fold_loop(out, folds, sizes, train_fold, bool(cfg.outputs.resume), keep)


def _shared_features(cfg: RunConfig, task: TaskData, tokenizer, sets: list[list[Example]]) -> dict | None:
    """id(example) -> features of every example the folds read, tokenized once for all folds (the classifier's)."""
    if cfg.model.head == "generative":
        return None
    bi = bi_encoder(cfg.model, task.kind)
    every = [ex for examples in sets for ex in examples]
    d = cfg.data
    cache = open_cache(cache_folder(d.token_cache), tokenizer, task.kind, d.max_length, bi, d.window_overlap())
    features = tokenize(every, tokenizer, task.kind, d.max_length, bi, d.window_overlap(), cache)
    return dict(zip(map(id, every), features))


def run_folds(cfg: RunConfig, task: TaskData, tokenizer, test_ex, out: Path, device, teacher=None) -> dict:
    """Recipe-MPR's published folds (the first `max_folds` of them)."""
    folds = task.folds[: cfg.max_folds] if cfg.max_folds else task.folds
    extra = {"test_file": test_ex} if test_ex else {}
    outcomes = train_folds(cfg, task, task.train, folds, tokenizer, out, device, extra, teacher)
    per_fold, fold_ex = [], []
    for k, o in enumerate(outcomes):
        ex = [task.train[i] for i in o.held_out]
        accuracy = float((o.scores.argmax(1) == label_array(task, ex)).mean())
        summary = {key: v for key, v in o.summary.items() if key not in ("start", "answers")}
        per_fold.append({"fold": k, **summary, **start_row(o.summary, cfg.loop.metric), "test_accuracy": accuracy})
        fold_ex += ex
    scores = np.concatenate([o.scores for o in outcomes])
    every = {"test": (fold_ex, scores)}  # every item once, scored by the fold model that did not train on it
    test = finish_splits(out, task, every, "test", cfg.eval, cfg.loop.metric, csv_name="test_predictions.csv")
    if is_main():
        _keep_fold_models(cfg, out, len(outcomes))
    file_scores = [o.extra["test_file"] for o in outcomes if "test_file" in o.extra]
    results = fold_results(cfg, task, test.reports["test"], (fold_ex, scores), per_fold, (test_ex, file_scores))
    if cfg.model.head == "generative":
        _generative_summary(cfg, task, results, outcomes, fold_ex, scores)
    return results


def _keep_fold_models(cfg: RunConfig, out: Path, n_folds: int) -> None:
    """A classifier's fold models stay in fold{k}/model/, listed in members.json: predict averages them (no copy
    of one in model/). The generative head saved fold 0's merged model as model/; predict asks no fold model."""
    if cfg.model.head == "generative":
        write_prompt_example(out, (out / "fold0" / PROMPT_EXAMPLE).read_text(encoding="utf-8"))
        return
    write_members(out, "folds", [f"fold{k}" for k in range(n_folds)])


def _generative_summary(cfg: RunConfig, task: TaskData, results: dict, outcomes, fold_ex, scores) -> None:
    """The generative head's settings, and how its answers to every fold's test part came out."""
    g = cfg.generative
    results["train"] |= {"head": "generative", "answer_mode": g.answer_mode, "shots": outcomes[0].summary["shots"]}
    texts = [t for o in outcomes for t in o.summary["answers"]]
    stats = answer_stats(task, g.answer_mode, fold_ex, scores, texts)
    if stats is not None:
        results["test"]["generation"] = stats


def fold_results(cfg: RunConfig, task: TaskData, test: dict, every, per_fold: list[dict], test_file) -> dict:
    """The folds' report: every fold's row, the test report over all their held-out parts (`every`: their examples
    and scores) beside the always-pick-the-first-option baseline, and `test_file` (its examples, each fold model's
    scores) by their mean."""
    fold_ex, scores = every
    first = np.zeros_like(scores)
    first[:, 0] = 1.0  # the always-pick-the-first-option baseline, after the seeded option shuffle
    # "before training: X, best: Y" over the folds' selection splits (eval/report.start_lines)
    metric = cfg.loop.metric
    results = {
        "train": {"folds": per_fold, "metric": metric} | mean_start(per_fold, metric),
        "test": test,
        "baseline_first_option": task_report(task, fold_ex, first, cfg.eval.threshold),
    }
    test_ex, file_scores = test_file
    if file_scores:
        results["test_file"] = task_report(task, test_ex, np.mean(file_scores, axis=0), cfg.eval.threshold)
    return results
