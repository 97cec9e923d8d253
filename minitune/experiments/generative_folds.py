"""Recipe-MPR with `--head generative`: the 5-fold protocol of experiments/folds.py, asked by an instruct decoder.

Each fold draws its shots from its own train part and selects on its validation part (10% of train when the fold
file gives none), then answers its test part; accuracy is reported over all folds' test parts, beside the
always-pick-the-first-option baseline, and a further --test-file is scored by the mean of the folds' scores.
`--epochs 0` loads the model once and asks it on every fold (nothing trains, so the folds differ only in their
shots); with epochs each fold tunes its own adapters from the base checkpoint in fold{k}/ (so a run stopped in
fold k resumes there), fold k's adapter is saved in fold{k}/adapter/, and fold 0's merged model is model/, as
the classifier folds save theirs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from minitune.checkpoints.save import save_adapter_dir
from minitune.config import RunConfig
from minitune.data.tasks import Example, TaskData, label_array
from minitune.data.tokenizer import Tokenizer
from minitune.eval.predictions import write_example_predictions, write_prediction_records
from minitune.experiments.folds import fold_results, fold_split, remove_stale_folds
from minitune.experiments.generative import causal_lm, check_decoder, generative_trial
from minitune.experiments.instruct import save_generative
from minitune.train.distributed import is_main

log = logging.getLogger("minitune")


def run_generative_folds(
    cfg: RunConfig, task: TaskData, tokenizer: Tokenizer, test_ex: list[Example] | None, out: Path, device: torch.device
) -> dict:
    t0 = time.perf_counter()
    check_decoder(cfg)
    folds = task.folds[: cfg.folds] if cfg.folds else task.folds
    if not cfg.resume:
        remove_stale_folds(out, len(folds))
    shared = causal_lm(cfg, device) if cfg.epochs == 0 else None  # nothing trains: one model serves every fold
    fold_ex: list[Example] = []
    test_scores, texts, per_fold, file_scores = [], [], [], []
    for k, (tr, va, te) in enumerate(folds):
        fold_train, fold_val = fold_split(cfg, task, task.train, tr, va)
        log.info("fold %d/%d: %d train, %d val, %d test", k + 1, len(folds), len(fold_train), len(fold_val), len(te))
        fold_dir = out / f"fold{k}"
        # On --resume, folds that never started begin afresh; finished ones resume into "done" at once.
        fold_cfg = dataclasses.replace(cfg, resume=cfg.resume if (fold_dir / "checkpoint").is_dir() else None)
        trial = generative_trial(fold_cfg, task, tokenizer, fold_train, fold_val, fold_dir, device, shared)
        ex = [task.train[i] for i in te]
        scores, fold_texts = trial.answer.answers(ex)
        accuracy = float((scores.argmax(1) == label_array(task, ex)).mean())
        per_fold.append({"fold": k, **trial.summary, "test_accuracy": accuracy})
        fold_ex, texts = fold_ex + ex, texts + fold_texts
        test_scores.append(scores)
        if test_ex:
            file_scores.append(trial.answer.answers(test_ex)[0])
        if is_main():
            (fold_dir / "prompt_example.txt").write_text(trial.prompt_example, encoding="utf-8")
            if cfg.epochs > 0:
                save_fold_model(out, fold_dir, k, trial.answer)
    scores = np.concatenate(test_scores)
    if is_main():
        write_example_predictions(out / "test_predictions.csv", task, fold_ex, scores, None)  # every item, once
        write_prediction_records(out, "test", fold_ex, label_array(task, fold_ex), scores)
        (out / "prompt_example.txt").write_text((out / "fold0" / "prompt_example.txt").read_text(encoding="utf-8"))
    results = fold_results(cfg, task, fold_ex, scores, per_fold, test_ex, file_scores)
    results["train"] |= {"head": "generative", "answer_mode": cfg.answer_mode, "shots": per_fold[0]["shots"]}
    results["train"]["seconds"] = round(time.perf_counter() - t0, 1)
    stats = trial.answer.stats(fold_ex, scores, texts)
    if stats is not None:
        results["test"]["generation"] = stats
    return results


def save_fold_model(out: Path, fold_dir: Path, k: int, answer) -> None:
    """Fold 0: model/ (merged), adapter/ and generative.json in the run directory, as a holdout run saves them;
    every fold: its own adapter in fold{k}/adapter/ (LoRA runs)."""
    if k == 0:
        save_generative(out, answer, None)
    if answer.cfg.lora_r:
        save_adapter_dir(fold_dir / "adapter", answer.model)
