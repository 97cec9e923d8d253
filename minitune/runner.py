"""`minitune train` and `minitune cv`: settings -> inputs -> the protocol -> results, report and what was saved.

The dispatch only: inputs.py reads and checks everything first (so a mistake writes nothing), then one protocol of
experiments/ trains (holdout, Recipe-MPR's folds, cv, seeds), each built on the single fine-tune (finetune.py);
this module writes the run's config.json, results.json, report.txt and report.html, and says what was saved.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minitune.checkpoints import rundir
from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.rundir import write_results
from minitune.checkpoints.runlock import RunIdentity, finish, finished_before, nothing_to_lose, owned
from minitune.config.load import dump, flat_dict, make_config, print_config, used_settings
from minitune.config.sections import RunConfig
from minitune.config.validate import check_launch
from minitune.errors import MinituneError
from minitune.eval.html import write_html_report
from minitune.eval.report import format_report
from minitune.experiments.cv import run_cv
from minitune.experiments.folds import run_folds
from minitune.experiments.holdout import run_holdout
from minitune.experiments.seeds import run_seeds
from minitune.inputs import RunInputs, prepare
from minitune.train import distributed
from minitune.train.interrupt import TrainingInterrupted
from minitune.train.mlflow_tracking import tracked, tracking


@dataclass
class TrainResult:
    """What `minitune.train` returns: the results dict (also in results.json) and where the model was saved."""

    results: dict
    output_dir: Path
    model_dir: Path


def train(**options) -> TrainResult:
    """Fine-tune from Python with the command line's settings, defaults and checks, e.g.
    `minitune.train(task="humor", model="minilm", epochs=1, data_dir="data")` (any setting by its flag's name, or
    `config`: a TOML file). Errors name the settings as written here (`lr must be positive`)."""
    cfg = make_config(**options)
    results = run_train(cfg)
    out = Path(cfg.outputs.output_dir)
    return TrainResult(results, out, out / "model")


def run_train(cfg: RunConfig, teacher=None, judge=None) -> dict:
    """One run of `cfg.command` (train or cv; distill trains its student through here with `teacher`, an
    experiments/distill.Teacher whose probabilities the model also learns; a search's trial with `judge`, its pruner,
    which sees each dev evaluation of a single run)."""
    device = check_launch(cfg)
    cfg, inputs = prepare(cfg)
    inputs.teacher, inputs.judge = teacher, judge
    device = distributed.setup(device, cfg.distributed.dist_timeout).device  # torchrun: join after the checks
    try:
        results = _run(cfg, inputs, device)
    except BaseException:
        distributed.teardown(clean=False)
        raise
    distributed.teardown()
    return results


def _protocol(cfg: RunConfig, inputs: RunInputs, out: Path, device: torch.device) -> dict:
    task = inputs.task
    if cfg.seeds:
        return run_seeds(cfg, task, inputs.test, out, lambda member: _run(member, inputs, device))
    if cfg.command == "cv":
        return run_cv(cfg, task, inputs.tokenizer, inputs.test, out, device)
    if task.folds:
        return run_folds(cfg, task, inputs.tokenizer, inputs.test, out, device, inputs.teacher)
    return run_holdout(cfg, inputs, out, device)


def _run(cfg: RunConfig, inputs: RunInputs, device: torch.device) -> dict:
    """One run in its own folder: claimed and locked (checkpoints/runlock.py), trained by its protocol, finished
    by the marker written last."""
    out, resume = Path(cfg.outputs.output_dir), bool(cfg.outputs.resume)
    if resume and finished_before(out):
        return report_finished(out)
    fresh = not out.exists()
    who = RunIdentity(cfg.command, cfg.data.task, cfg.model.model)
    report_to = cfg.loop.report_to if distributed.is_main() else None  # an MLflow run (in a sweep's), rank 0's
    mlflow = tracking(report_to, cfg.loop.tracking_uri, who.task)
    with owned(out, who, resume, cfg.outputs.overwrite), tracked(mlflow, out, flat_dict(cfg), resume=resume) as mlf:
        if distributed.is_main():  # rank 0 alone writes and prints
            print_config(cfg)
            print(f"precision: {cfg.loop.precision} ({inputs.precision_reason})")
            atomic_write_text(out / "config.json", dump(cfg) + "\n")
        t0 = time.perf_counter()
        try:
            results = _protocol(cfg, inputs, out, device)
        except (MinituneError, TrainingInterrupted, KeyboardInterrupt):
            # A mistake only the model or the features reveal (a `lora_targets` pattern that matches nothing), or an
            # interruption: a directory this run made and that holds nothing worth keeping yet goes.
            if distributed.is_main() and fresh and nothing_to_lose(out):
                shutil.rmtree(out, ignore_errors=True)
            raise
        results["train"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        results = {"task": cfg.data.task, "model": cfg.model.model, "settings": used_settings(cfg)} | {
            "config": flat_dict(cfg),
            "precision": {"used": cfg.loop.precision, "reason": inputs.precision_reason},
            **results,
            "world_size": distributed.world_size(),
        }
        if distributed.is_main():
            _write_reports(cfg, out, results, inputs.task.kind)
            mlf.log_files(out)
            if cfg.command != "distill":  # distill finishes once its student alone and comparison are written too
                finish(out, who, keep_checkpoints=cfg.loop.keep_checkpoints is not None)
    return results


def _write_reports(cfg: RunConfig, out: Path, results: dict, kind: str) -> None:
    """results.json, report.txt and report.html, and the report on the console (without the settings, printed
    when the run began; report.txt keeps them), with what was saved."""
    write_results(out / "results.json", results)
    atomic_write_text(out / "report.txt", format_report(results))
    report_html = write_html_report(out)
    note = saved_note(cfg, out, kind)
    print(format_report(results, settings=False) + f"report with figures: {report_html}\n" + note)


def report_finished(out: Path) -> dict:
    results = rundir.read_results(out)
    if not distributed.is_main():
        return results
    print(f"{out}: this run already finished; its report (nothing was trained again):")
    print((out / "report.txt").read_text(encoding="utf-8") if (out / "report.txt").is_file() else "")
    return results


def saved_note(cfg: RunConfig, out: Path, kind: str | None = None) -> str:
    """Where the run went and the command that uses it (checkpoints/rundir.py)."""
    return rundir.saved_note(out, kind, cfg.data.text_col, cfg.command, cfg.loop.checkpoint)
