"""Seed ensembles (`seeds` 42 123 456 on train and cv): one member per seed in seed{S}/, each an ordinary run (or,
with cv, a cv run), then the mean of their probabilities.

The report gives each member's scores, their mean ± std (sample std, ddof 1) and the ensemble's, so the gain of
averaging is visible; an ensemble's multi-label thresholds are tuned on its own dev (or out-of-fold) probabilities
and kept in its thresholds.json. members.json lists the members, so `minitune predict` on the directory averages
them (checkpoints/rundir.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from minitune.checkpoints.rundir import (
    OOF_INDEX,
    read_npy,
    read_results,
    read_scores,
    save_scores,
    write_members,
    write_thresholds,
)
from minitune.config.sections import RunConfig
from minitune.data.splits import subsample
from minitune.data.tasks import Example, TaskData
from minitune.errors import ConfigError
from minitune.eval.finish import finish_splits, headline, mean_start, mean_std, start_row, uses_tuned
from minitune.train.distributed import is_main


def run_seeds(
    cfg: RunConfig, task: TaskData, test: list[Example] | None, out: Path, train_member: Callable[[RunConfig], dict]
) -> dict:
    """One member per seed (`train_member` trains one run from its config), then their ensemble."""
    names, rows = [], []
    for seed in cfg.seeds:
        member_dir = out / f"seed{seed}"
        started = (member_dir / "checkpoint").is_dir() or (member_dir / "results.json").is_file()
        resume = str(member_dir) if cfg.outputs.resume and started else None  # killed before a checkpoint: afresh
        member = cfg.with_settings(seed=seed, seeds=None, output_dir=str(member_dir), resume=resume)
        results = train_member(member)
        names.append(member_dir.name)
        rows.append({"seed": seed, "seconds": results["train"].get("wall_seconds")})
    if not is_main():  # torchrun: rank 0 wrote the members' files and alone averages and writes them
        return {"train": {}}
    write_members(out, "seeds", names)
    return ensemble_results(cfg, task, test, out, names, rows)


def ensemble_results(
    cfg: RunConfig, task: TaskData, test: list[Example] | None, out: Path, names: list[str], rows: list[dict]
) -> dict:
    """Each member's headline scores, their mean ± std, and the ensemble (mean probabilities) on every split."""
    member_scores = [read_scores(out / n) for n in names]
    member_results = [read_results(out / n) for n in names]
    split_names = [s for s in ("oof", "dev", "test") if all(s in m for m in member_scores)]
    mean = {s: np.mean([m[s] for m in member_scores], axis=0) for s in split_names}
    from_cv = "oof" in mean
    examples = {"dev": subsample(task.dev, cfg.data.max_eval_samples, None), "test": test}
    if from_cv:
        examples["oof"] = _oof_examples(task, [out / n for n in names])
    main = "oof" if from_cv else "dev"
    splits = {s: (examples[s], mean[s]) for s in split_names}
    csv_name = "oof.csv" if from_cv else "dev_predictions.csv"
    done = finish_splits(out, task, splits, main, cfg.eval, cfg.loop.metric, csv_name=csv_name, on=main)
    for row, res in zip(rows, member_results):
        row |= start_row(res["train"], cfg.loop.metric)
        for s in split_names:
            if s in res:
                row |= {f"{s}_{k}": v for k, v in headline(task.kind, res[s], uses_tuned(res)).items()}
    train = {"members": rows, "member_mean_std": mean_std(rows, "seed")} | mean_start(rows, cfg.loop.metric)
    results = {"train": train, **done.reports}
    if done.thresholds is not None:
        results["thresholds"] = done.thresholds
        write_thresholds(out, done.thresholds)
    save_scores(out, **mean)
    return results


def _oof_examples(task: TaskData, members: list[Path]) -> list[Example]:
    """The training examples the members' out-of-fold predictions cover (the same for every member)."""
    indices = [read_npy(d / OOF_INDEX) for d in members]
    if any(not np.array_equal(indices[0], i) for i in indices[1:]):
        raise ConfigError(f"{members[0].parent}: the members' out-of-fold predictions cover different examples")
    return [task.train[i] for i in indices[0]]
