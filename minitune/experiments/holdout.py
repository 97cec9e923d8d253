"""The holdout protocol: one model trained on train (or 90% of it), selected on dev (or the other 10%), scored on
--test-file, and --predict-file labelled with it. A classifier head or `head` generative alike: finetune.py trains
(or asks) the model, eval/finish.py tunes the thresholds and writes the prediction files.

With `threshold_split` (multi-label) a stratified fraction of train is held out from training and the per-label
thresholds are tuned on it instead of on dev. The classifier trains on at most `max_train_samples` examples; the
generative head draws its shots from the whole train split and instruction-tunes on `max_train_samples` of it.
A classifier's `explain_errors` surest dev errors are then explained token by token (eval/attributions.py) for
report.html.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.rundir import loss_at_best, save_scores, write_prompt_example
from minitune.config.sections import RunConfig
from minitune.data.custom import Row
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.splits import MERGED_SELECTION_SHARE, holdout_examples, selection_split, subsample
from minitune.data.tasks import Example, TaskData, label_array, label_counts
from minitune.eval.attributions import ATTRIBUTIONS_FILE, explain_errors
from minitune.eval.finish import finish_splits
from minitune.eval.html import confident_errors
from minitune.eval.predictions import label_predictions, read_prediction_records, rows_predicted, write_predictions
from minitune.eval.sources import by_source, sources_results
from minitune.finetune import Tuned, finetune
from minitune.inputs import RunInputs
from minitune.train.distributed import is_main
from minitune.train.parallel import is_sharded

log = logging.getLogger("minitune")


def holdout_splits(cfg: RunConfig, task: TaskData) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, dev, examples held out to tune thresholds on: `threshold_split`, else none). The examples of extra
    training sources (`task.added`) join train; without a dev file the merged data is split 80/20 instead."""
    generative = cfg.model.head == "generative"
    pool = task.train if generative else subsample(task.train, cfg.data.max_train_samples, cfg.seed)
    added, d = task.added, cfg.data
    if added and not task.dev:  # the merged data split 80/20; its dev part is in source order, so capped at random
        pool, added = pool + added, []
        train, dev = selection_split(pool, [], label_array(task, pool), None, cfg.seed, MERGED_SELECTION_SHARE)
        dev = subsample(dev, d.max_eval_samples, cfg.seed)
    else:
        train, dev = selection_split(pool, task.dev, label_array(task, pool), d.max_eval_samples, cfg.seed)
    if not task.dev:
        log.info("no dev file: holding out %d of %d training examples for selection", len(dev), len(pool))
    tune: list[Example] = []
    if cfg.eval.threshold_split and task.kind == MULTI_LABEL:  # thresholds tuned on train held out, not on dev
        train, tune = holdout_examples(train, label_array(task, train), cfg.eval.threshold_split, cfg.seed)
    return train + added, dev, tune


def run_holdout(cfg: RunConfig, inputs: RunInputs, out: Path, device: torch.device) -> dict:
    task = inputs.task
    train_ex, dev_ex, tune_ex = holdout_splits(cfg, task)
    resume = bool(cfg.outputs.resume)
    kw = dict(resume=resume, teacher=inputs.teacher, judge=inputs.judge)
    tuned = finetune(cfg, task, train_ex, dev_ex, inputs.tokenizer, out, device, **kw)
    splits = {"dev": (dev_ex, tuned.dev_scores)}
    test_scores = test_texts = None
    if inputs.test is not None:
        test_scores, test_texts = tuned.predict(inputs.test)
        splits["test"] = (inputs.test, test_scores)
    tune_on = (tune_ex, tuned.scores(tune_ex)) if tune_ex else None
    on = "held_out" if tune_ex else "dev"
    done = finish_splits(
        out, task, splits, "dev", cfg.eval, cfg.loop.metric, csv_name="dev_predictions.csv", tune_on=tune_on, on=on
    )
    summary = tuned.summary | {"losses": loss_at_best(out, tuned.summary.get("best_step"))}
    if tuned.trained_on:  # the class balance of what it trained on (nothing, for a model only asked)
        trained = label_array(task, tuned.trained_on)
        summary["label_counts"] = label_counts(task.kind, trained, task.label_names)
    results = {"train": summary, **done.reports}
    if done.thresholds is not None:
        results["thresholds"] = done.thresholds
    _generation_notes(tuned, results, inputs.test, test_scores, test_texts)
    if task.added_counts:  # several training sources: what each brought, and the scores on the labels they feed
        results["sources"] = _sources(cfg, task, tuned, done, dev_ex)
    if is_main():
        save_scores(out, **{name: scores for name, (_, scores) in splits.items()})  # for ensembles and teachers
        if tuned.prompt_example is not None:
            write_prompt_example(out, tuned.prompt_example)
    tuned.save(out, done.thresholds)
    explain_dev_errors(cfg, task, tuned, inputs.tokenizer, out, results)
    if inputs.unlabelled is not None:
        predict_unlabelled(task, tuned, inputs.unlabelled, done.use, out)
    return results


def explain_dev_errors(cfg: RunConfig, task: TaskData, tuned: Tuned, tokenizer, out: Path, results: dict) -> None:
    """report.html's highlighted errors: integrated gradients of the `explain_errors` surest dev errors with the
    best weights (eval/attributions.py). A classifier head only; rank 0 alone, and not under FSDP, where a forward
    pass needs every rank."""
    if not is_main():
        return
    path = out / ATTRIBUTIONS_FILE
    path.unlink(missing_ok=True)  # a resumed run explains anew, or not at all: never an earlier run's errors
    classifier = cfg.model.head != "generative" and task.kind != MULTIPLE_CHOICE
    if not cfg.eval.explain_errors or not classifier or is_sharded(tuned.model):
        return
    errors = confident_errors(results, read_prediction_records(out, "dev") or [], cfg.eval.explain_errors)
    ig = dict(max_length=cfg.data.max_length, steps=cfg.eval.ig_steps, baseline=cfg.eval.ig_baseline)
    try:  # path points batched as training batched examples, so they fit where training fitted
        explain_errors(tuned.model, tokenizer, errors, task.label_names, path, batch_size=cfg.data.batch_size, **ig)
    except (RuntimeError, MemoryError) as e:  # the run is trained and saved: its report goes without highlights
        log.warning("could not explain the dev errors for report.html (%s); the run is complete without them", e)


def _sources(cfg: RunConfig, task: TaskData, tuned: Tuned, done, dev_ex: list[Example]) -> dict:
    record = sources_results(task, done.reports, tuned.trained_on, cfg.data.oversample_rare, cfg.seed)
    tuned_at = None if done.thresholds is None else np.array(list(done.thresholds["per_label"].values()))
    mixed = by_source(task, dev_ex, tuned.dev_scores, cfg.eval.threshold, tuned_at)
    return record | ({"dev_by_source": mixed} if mixed else {})


def _generation_notes(tuned: Tuned, results: dict, test, test_scores, test_texts) -> None:
    """The generative head's answers: how they came out on dev and --test-file."""
    if tuned.dev_generation is not None:
        results["dev"]["generation"] = tuned.dev_generation
    if test_texts is not None and tuned.stats is not None:
        stats = tuned.stats(test, test_scores, test_texts)
        if stats is not None:
            results["test"]["generation"] = stats


def predict_unlabelled(task: TaskData, tuned: Tuned, rows: list[Row], thresholds, out: Path) -> None:
    """--predict-file: an unlabelled file labelled by the selected model, joined to its input (predictions.csv)."""
    multi = task.kind == MULTI_LABEL

    def predict(filled: list[Row]) -> tuple[list[str], object]:
        scores = tuned.scores([Example(text=r.text, pair=r.pair) for r in filled])
        return label_predictions(scores, task.label_names, thresholds if multi else None), scores

    labels, scores = rows_predicted(rows, task.num_labels, predict)  # rows with an empty text keep their place
    if is_main():
        header = "labels" if multi else "label"
        write_predictions(out / "predictions.csv", [r.fields for r in rows], labels, scores, task.label_names, header)
