"""`minitune train`: resolve inputs -> train -> scores -> thresholds -> report -> save, top to bottom.

Output directory: config.json (resolved config), metrics.jsonl, results.json, report.txt, checkpoint/ (for
--resume), best.safetensors, and model/ in the Hub layout (config.json, model.safetensors, tokenizer files,
thresholds.json for multi-label) that minitune.load_model and transformers both load. Recipe-MPR runs its five
folds in fold0/ .. fold4/ (experiments/folds.py; --head generative: experiments/generative_folds.py) and reports
test accuracy over all folds; model/ holds fold 0's model.

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
from minitune.config import RunConfig, dump, make_config, print_config, resolve_device, resume_signature, used_settings
from minitune.data.custom import DELIMITERS_BY_NAME, Columns, Row, read_rows
from minitune.data.features import tokenize
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.splits import holdout_examples, subsample
from minitune.data.tasks import Example, TaskData, label_array, load_eval_file, load_task, resolve_data_dir
from minitune.data.tokenizer import Tokenizer
from minitune.errors import ConfigError, MinituneError
from minitune.eval.html import write_html_report
from minitune.eval.metrics import SELECTION_METRICS
from minitune.eval.predictions import (
    label_predictions,
    train_label_counts,
    write_example_predictions,
    write_prediction_records,
    write_predictions,
)
from minitune.eval.report import format_report, write_results
from minitune.eval.scoring import task_report
from minitune.eval.thresholds import choose_thresholds
from minitune.experiments.cv import run_cv
from minitune.experiments.ensemble import MEMBERS, run_seeds, save_scores
from minitune.experiments.folds import run_folds
from minitune.experiments.generative import run_generative
from minitune.experiments.generative_folds import run_generative_folds
from minitune.experiments.instruct import GENERATIVE_FILE
from minitune.experiments.trial import bi_encoder, build_loss, score, train_once
from minitune.models import family_for
from minitune.models.decoder import MODEL_TYPES as DECODER_TYPES
from minitune.train import distributed
from minitune.train.checkpoint import check_resumable, read_progress
from minitune.train.interrupt import TrainingInterrupted
from minitune.train.parallel import consolidated

log = logging.getLogger("minitune")


@dataclass
class RunInputs:
    task: TaskData
    tokenizer: Tokenizer
    test: list[Example] | None  # --test-file's examples
    unlabelled: list[Row] | None = None  # --predict-file's rows
    teacher: object = None  # distillation: experiments/distill.Teacher


@dataclass
class TrainResult:
    """What `minitune.train` returns: the results dict (also in results.json) and where the model was saved."""

    results: dict
    output_dir: Path
    model_dir: Path


def train(**options) -> TrainResult:
    """Fine-tune from Python with the command line's settings, defaults and checks, e.g.
    `minitune.train(task="humor", model="minilm", epochs=1, data_dir="data")` (any RunConfig field, or `config`:
    a TOML file). Errors name the settings as written here (`lr must be positive`)."""
    cfg = make_config(**options)
    results = run_train(cfg)
    return TrainResult(results, Path(cfg.output_dir), Path(cfg.output_dir) / "model")


def run_train(cfg: RunConfig, command: str = "train", teacher=None) -> dict:
    """`command`: train (one model, or one per `seeds`) or cv (k-fold cross-validation, experiments/cv.py).
    `teacher` (experiments/distill.Teacher): the model also learns the teacher's probabilities."""
    check_command(cfg, command, teacher is not None)
    device = resolve_device(cfg.device)
    distributed.check_launch(cfg.fsdp, cfg.fsdp_cpu_offload, device)
    inputs = resolve_inputs(cfg, command)
    inputs.teacher = teacher
    device = distributed.setup(device, cfg.dist_timeout).device  # torchrun: join the group after the checks
    try:
        return _train(cfg, inputs, device, command)
    finally:
        distributed.teardown()


def check_command(cfg: RunConfig, command: str, distill: bool) -> None:
    """Settings that hold for one model but not for the protocols that train several (refused before any work)."""
    several = command == "cv" or bool(cfg.seeds)
    if cfg.head == "generative" and (several or distill):
        raise ConfigError(
            "`head` generative answers in text: cv, `seeds` and distill average or learn a classifier head's "
            "probabilities; use `head` classifier"
        )
    if cfg.threshold_split and (several or cfg.head == "generative"):
        raise ConfigError(
            "`threshold_split` tunes one classifier's thresholds on held-out training data; cv tunes them on its "
            "out-of-fold predictions (honest already) and `seeds` on dev: drop `threshold_split`"
        )
    if cfg.predict_file and several:
        raise ConfigError(
            "`predict_file` labels rows with the one model of a run; for cv and `seeds` label them afterwards with "
            "`minitune predict --model OUTPUT_DIR`, which averages the members: drop `predict_file`"
        )
    if distill and cfg.in_batch_negatives:
        raise ConfigError(
            "distill matches the teacher's probabilities over each item's own options: drop `in_batch_negatives`"
        )
    if distill and cfg.seeds:
        raise ConfigError("distill trains one student: drop `seeds` (distil from a `seeds` run as the teacher instead)")


def _train(cfg: RunConfig, inputs: RunInputs, device: torch.device, command: str = "train") -> dict:
    main = distributed.is_main()  # rank 0 alone writes and prints
    out = Path(cfg.output_dir)
    if cfg.resume and finished_run(cfg, inputs.task):
        return report_finished(out)
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:  # an earlier run's members are not this run's: predict would average them
        (out / MEMBERS).unlink(missing_ok=True)
    if main:
        print_config(cfg)
        atomic_write_text(out / "config.json", dump(cfg) + "\n")
    t0 = time.perf_counter()
    try:
        if cfg.seeds:
            member = lambda member_cfg: _train(member_cfg, inputs, device, command)  # noqa: E731
            results = run_seeds(cfg, inputs.task, inputs.test, out, member, cv=command == "cv")
        elif command == "cv":
            results = run_cv(cfg, inputs.task, inputs.tokenizer, inputs.test, out, device)
        elif cfg.head == "generative":
            generative = run_generative_folds if inputs.task.folds else run_generative
            results = generative(cfg, inputs.task, inputs.tokenizer, inputs.test, out, device)
        elif inputs.task.kind == MULTIPLE_CHOICE and inputs.task.folds:
            results = run_folds(cfg, inputs.task, inputs.tokenizer, inputs.test, out, device, inputs.teacher)
        else:
            results = run_holdout(cfg, inputs, out, device)
    except (MinituneError, TrainingInterrupted, KeyboardInterrupt):
        # A mistake only the model or the features reveal (a --lora-targets pattern that matches nothing), or an
        # interruption: before any checkpoint, the directory this run made holds nothing worth keeping.
        if main and fresh and not any(out.glob("**/checkpoint")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    results["train"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results = {
        "task": cfg.task,
        "model": cfg.model,
        "settings": used_settings(cfg),
        "config": json.loads(dump(cfg)),
        **results,
    }
    results["world_size"] = distributed.world_size()
    if not main:
        return results
    write_results(out / "results.json", results)
    text = format_report(results)
    atomic_write_text(out / "report.txt", text)
    report_html = write_html_report(out)
    # The settings were printed when the run began: the console report leaves them out (report.txt keeps them).
    note = saved_note(cfg, out, command, inputs.task.kind)
    print(format_report(results, settings=False) + f"report with figures: {report_html}\n" + note)
    return results


def run_holdout(cfg: RunConfig, inputs: RunInputs, out: Path, device: torch.device) -> dict:
    """One model trained on train (or 90% of it), selected on dev (or the other 10%), scored on --test-file."""
    task, tokenizer = inputs.task, inputs.tokenizer
    train_ex = subsample(task.train, cfg.max_train_samples, cfg.seed)
    dev_ex = subsample(task.dev, cfg.max_eval_samples, None)
    if not dev_ex:  # no dev file: hold out 10% of train, stratified, to select on
        train_ex, dev_ex = holdout_examples(train_ex, label_array(task, train_ex), 0.1, cfg.seed)
        log.info("no dev file: holding out %d of %d training examples for selection", len(dev_ex), len(train_ex))
    tune_ex = []
    if cfg.threshold_split and task.kind == MULTI_LABEL:  # thresholds tuned on train held out, not on dev
        train_ex, tune_ex = holdout_examples(train_ex, label_array(task, train_ex), cfg.threshold_split, cfg.seed)
    trial = train_once(cfg, task, train_ex, dev_ex, tokenizer, out, device, teacher=inputs.teacher)
    thresholds = tuned = test_scores = None
    dev = task_report(task, dev_ex, trial.dev_scores, cfg.threshold)
    if task.kind == MULTI_LABEL:
        y, scores = label_array(task, dev_ex), trial.dev_scores
        if tune_ex:
            y, features = label_array(task, tune_ex), tokenize(tune_ex, tokenizer, task.kind, cfg.max_length)
            scores = score(cfg, task, trial.model, features, trial.collate, device)
        thresholds = choose_thresholds(y, scores, task.label_names, cfg.threshold, cfg.metric, cfg.threshold_split)
        tuned = np.array(list(thresholds["per_label"].values()))
        dev = task_report(task, dev_ex, trial.dev_scores, cfg.threshold, tuned) | {
            "threshold_notes": thresholds["notes"]
        }
    summary = trial.summary | {"losses": loss_at_best(out / "metrics.jsonl", trial.summary.get("best_step"))}
    summary["label_counts"] = train_label_counts(task.kind, label_array(task, train_ex), task.label_names)
    results = {"train": summary, "dev": dev}
    if thresholds is not None:
        results["thresholds"] = thresholds
    if inputs.test is not None:
        test_f = tokenize(inputs.test, tokenizer, task.kind, cfg.max_length, bi_encoder(cfg, task))
        test_scores = score(cfg, task, trial.model, test_f, trial.collate, device)
        results["test"] = task_report(task, inputs.test, test_scores, cfg.threshold, tuned)
    use = tuned if thresholds and thresholds["use"] == "tuned" else np.full(task.num_labels, cfg.threshold)
    main = distributed.is_main()  # rank 0 alone writes; scoring is collective
    if main:
        save_scores(out, dev=trial.dev_scores, test=test_scores)  # for ensembles and distillation teachers
        write_example_predictions(out / "dev_predictions.csv", task, dev_ex, trial.dev_scores, use)
        write_prediction_records(out, "dev", dev_ex, label_array(task, dev_ex), trial.dev_scores)
    model = consolidated(trial.model)  # FSDP: the whole model, gathered onto rank 0
    if main:
        save_model_dir(out, model, tokenizer, task.kind, task.label_names, thresholds)
        (out / "best.safetensors").unlink(missing_ok=True)  # model/ holds the best weights now: one copy, not two
    if inputs.unlabelled is not None:
        predict_unlabelled(cfg, task, trial, tokenizer, inputs.unlabelled, use, out, device)
    return results


def predict_unlabelled(cfg: RunConfig, task: TaskData, trial, tokenizer, rows, thresholds, out: Path, device) -> None:
    """--predict-file: an unlabelled file labelled by the selected model, joined to its input (predictions.csv)."""
    features = tokenize(
        [Example(text=r.text, pair=r.pair) for r in rows], tokenizer, task.kind, cfg.max_length, bi_encoder(cfg, task)
    )
    scores = score(cfg, task, trial.model, features, trial.collate, device)
    multi = task.kind == MULTI_LABEL
    labels = label_predictions(scores, task.label_names, thresholds if multi else None)
    if not distributed.is_main():
        return
    write_predictions(
        out / "predictions.csv",
        [r.fields for r in rows],
        labels,
        scores,
        task.label_names,
        "labels" if multi else "label",
    )


def finished_run(cfg: RunConfig, task: TaskData) -> bool:
    """A --resume of a single run whose training is over and whose results are written: nothing to train."""
    out = Path(cfg.output_dir)
    progress = read_progress(out / "checkpoint")
    return not task.folds and bool(progress and progress.get("finished")) and (out / "results.json").is_file()


def report_finished(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    if not distributed.is_main():
        return results
    print(f"{out}: this run already finished; its report (nothing was trained again):")
    print((out / "report.txt").read_text(encoding="utf-8") if (out / "report.txt").is_file() else "")
    return results


def loss_at_best(metrics_path: Path, best_step: int | None) -> dict:
    """The dev loss of the best evaluation and the training loss last logged before it, from metrics.jsonl."""
    train = dev = None
    if metrics_path.is_file():
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("step", 0) <= (best_step or 0):
                if row.get("type") == "train":
                    train = row.get("loss")
                elif row.get("type") == "eval" and row.get("step") == best_step:
                    dev = row.get("loss", dev)
    return {"train": train, "dev": dev}


def saved_note(cfg: RunConfig, out: Path, command: str = "train", kind: str | None = None) -> str:
    """Where the run went and the command that uses it."""
    preds = "test_predictions.csv" if (out / "test_predictions.csv").is_file() else "dev_predictions.csv"
    ensemble = (out / MEMBERS).is_file()  # seeds, cv or folds: predict averages the members
    model = (out / "model" / "config.json").is_file()
    kept = "model/, report.txt, results.json, metrics.jsonl"
    if ensemble:
        kept = f"{MEMBERS}, {'model/ (fold 0), ' if model else ''}report.txt, results.json"
        preds = "oof.csv" if (out / "oof.csv").is_file() else preds
    lines = [f"saved to {out}/ ({kept}, {preds})"]
    if kind == MULTIPLE_CHOICE:  # predict puts no questions with options to a generative model
        if (ensemble or model) and not (out / "model" / GENERATIVE_FILE).is_file():
            lines.append(
                f"answer questions with it: minitune predict --model {out} --input QUESTIONS.jsonl --output "
                "answers.csv (each line a query and its options)"
            )
    elif ensemble or (model and not (out / "fold0").is_dir()):
        col = "" if cfg.text_col == "text" else f" --text-col {cfg.text_col}"
        lines.append(
            f"label a file with it: minitune predict --model {out} --input FILE.csv --output predictions.csv{col}"
        )
    if cfg.checkpoint:
        cmd = "" if command == "train" else f"{command} "
        lines.append(f"continue or re-report it: minitune {cmd}--resume {out} (with the same settings)")
    return "\n".join(lines) + "\n"


# Text columns of the tasks' own unlabelled files (--predict-file), where it is not "text" (--text-col wins).
TEXT_COLUMNS = {"semeval": "Tweet"}


def resolve_inputs(cfg: RunConfig, command: str = "train") -> RunInputs:
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
        **(
            {}
            if cfg.task != "custom"
            else dict(
                text_col=cfg.text_col,
                label_col=cfg.label_col,
                pair_col=cfg.pair_col,
                delimiter=DELIMITERS_BY_NAME.get(cfg.delimiter),
            )
        ),
    )
    if cfg.metric not in SELECTION_METRICS[task.kind]:
        raise ConfigError(
            f"`metric` {cfg.metric!r} is not a selection metric for {task.kind} tasks; choose one of "
            f"{', '.join(SELECTION_METRICS[task.kind])}"
        )
    build_loss(cfg, task, task.train)  # a loss that does not fit the task fails here, not after tokenizing
    if cfg.max_tokens and cfg.max_tokens < cfg.max_length:
        raise ConfigError(
            f"`max_tokens` {cfg.max_tokens} is below `max_length` {cfg.max_length}: a batch must hold "
            "the longest example; raise `max_tokens` or lower `max_length`"
        )
    test = load_eval_file(task, cfg.test_file) if cfg.test_file else None
    unlabelled = read_unlabelled(cfg, task) if cfg.predict_file else None
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
        check_resume(cfg, task, command)
    tokenizer = load_tokenizer(name)
    if tokenizer.pad_token_id is None:
        log.warning("%s has no pad token: using its eos token for padding", cfg.model)
        tokenizer.set_pad_to_eos()
    return RunInputs(task, tokenizer, test, unlabelled)


def check_resume(cfg: RunConfig, task: TaskData, command: str) -> None:
    """The checkpoints a --resume continues from exist and were made with these settings. A cv, folds or seeds run
    may have none yet (stopped before its first); the members of `seeds` are checked as each one loads (their
    checkpoints hold their own seed)."""
    out = Path(cfg.output_dir)
    if not (task.folds or command == "cv" or cfg.seeds):
        dirs = [out]
    elif not out.is_dir():
        raise ConfigError(f"`resume` {out}: no such run; start without `resume`")
    else:
        dirs = [] if cfg.seeds else sorted(c.parent for c in out.glob("**/checkpoint") if c.is_dir())
    for d in dirs:
        distributed.check_world_size(d / "checkpoint" / "signature.json")
        check_resumable(d / "checkpoint", distributed.world_signature(resume_signature(cfg)))


def read_unlabelled(cfg: RunConfig, task: TaskData) -> list[Row]:
    """--predict-file's rows, read before training so a wrong path or column costs seconds, not a run."""
    if cfg.head == "generative":
        raise ConfigError(
            "`predict_file` goes with the classifier head; label a file with a generative run's model "
            "through minitune predict"
        )
    if task.kind == MULTIPLE_CHOICE:
        raise ConfigError(
            "`predict_file` labels texts for classification tasks; score multiple-choice items with `test_file`"
        )
    text_col = cfg.text_col if cfg.text_col != "text" else TEXT_COLUMNS.get(cfg.task, "text")
    columns = Columns(text=text_col, label=None, pair=cfg.pair_col)
    return read_rows(Path(cfg.predict_file), columns, DELIMITERS_BY_NAME.get(cfg.delimiter))


def check_max_length(cfg: RunConfig, usable: int | None) -> None:
    """A max_length beyond the position table would index past it in the middle of training."""
    if usable is not None and cfg.max_length > usable:
        raise ConfigError(
            f"`max_length` {cfg.max_length} exceeds {cfg.model}'s {usable} positions; use at most {usable}"
        )
