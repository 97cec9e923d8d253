"""Ensembles: members' probabilities averaged. One run per seed (`--seeds 42 123 456` on train and cv), and what
every protocol shares to keep, read back and average its members' probabilities.

A run directory keeps its probabilities in scores.npz (dev, test and, for cv, oof: each (N, C) in the split's
order). An ensemble or cv directory lists its members in members.json ({"kind": "seeds" | "cv", "members":
[sub-directories]}); each member is an ordinary run directory (its model/ inside) or, for seeds of cv, a cv
directory itself. `member_model_dirs` flattens that to the model directories whose mean probabilities the ensemble
predicts with (predict.py, distill.py); thresholds tuned for the ensemble sit in its thresholds.json.

The report gives each member's scores, their mean ± std (sample std, ddof 1) and the ensemble's, so the gain of
averaging is visible; an ensemble's multi-label thresholds are tuned on its own dev (or out-of-fold) probabilities.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from minitune.checkpoints.atomic import atomic_write, atomic_write_text
from minitune.checkpoints.load import load_model, load_tokenizer
from minitune.config import RunConfig
from minitune.data.batching import make_collate
from minitune.data.features import tokenize
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.splits import subsample
from minitune.data.tasks import Example, TaskData, label_array
from minitune.errors import ConfigError
from minitune.eval.metrics import SELECTION_METRICS
from minitune.eval.predictions import write_example_predictions, write_prediction_records
from minitune.eval.scoring import predict_scores, task_report
from minitune.eval.thresholds import choose_thresholds
from minitune.experiments.trial import mean_start, start_row
from minitune.train.distributed import is_main

SCORES, MEMBERS, THRESHOLDS = "scores.npz", "members.json", "thresholds.json"
OOF_INDEX = "oof_index.npy"  # cv: which training examples (indices into the task's train) oof.csv's rows are


def save_scores(run_dir: Path, **arrays: np.ndarray | None) -> None:
    """A run's probabilities per split (None: the run has no such split), for ensembles and teachers."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: v for k, v in arrays.items() if v is not None})

    atomic_write(Path(run_dir) / SCORES, write)


def read_scores(run_dir: Path) -> dict[str, np.ndarray]:
    path = Path(run_dir) / SCORES
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {SCORES}; pass the output directory of a finished training run")
    with np.load(path) as saved:
        return dict(saved)


def write_members(out: Path, kind: str, members: list[str]) -> None:
    atomic_write_text(Path(out) / MEMBERS, json.dumps({"kind": kind, "members": members}, indent=2) + "\n")


def member_model_dirs(path: Path) -> list[Path]:
    """The model directories behind a run, ensemble or cv directory (or a model directory itself)."""
    path = Path(path)
    if (path / MEMBERS).is_file():
        listed = json.loads((path / MEMBERS).read_text(encoding="utf-8"))["members"]
        return [m for sub in listed for m in member_model_dirs(path / sub)]
    if (path / "model" / "config.json").is_file():
        return [path / "model"]
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return [path]
    raise ConfigError(
        f"{path}: not a training run, ensemble or cv directory (no model/, no {MEMBERS}); pass a run's output directory"
    )


def trained_max_length(model_dir: Path, default: int = 128) -> int:
    """The max_length the run trained with: the nearest run config.json above model/ (a cv fold's model sits in
    fold{k}/, its run's config one or two levels up), else `default`."""
    for run_dir in list(Path(model_dir).parents)[:4]:
        try:
            saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
            if "task" in saved:  # a run's config, not some checkpoint's (which may carry a generation max_length)
                return int(saved["max_length"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return default


@dataclass
class Member:
    """A saved model ready to score: the model, its tokenizer and the max_length its run trained with."""

    model: nn.Module
    tokenizer: object
    max_length: int


def load_member(model_dir: Path, kind: str, device, max_length: int | None = None) -> Member:
    head = "multiple_choice" if kind == MULTIPLE_CHOICE else "sequence"
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.set_pad_to_eos()
    return Member(load_model(model_dir, head=head).to(device), tokenizer, max_length or trained_max_length(model_dir))


def member_scores(member: Member, examples: list[Example], kind: str, batch_size: int, device) -> np.ndarray:
    """One model's probabilities (N, C) on examples, with its own tokenizer and max_length. Multiple-choice items
    with different numbers of options cannot share a batch: each count is scored apart, and an item's columns past
    its own options are NaN."""
    counts = [len(ex.choices or ()) for ex in examples] if kind == MULTIPLE_CHOICE else []
    if len(set(counts)) > 1:
        out = np.full((len(examples), max(counts)), np.nan)
        for c in sorted(set(counts)):
            rows = [i for i, n in enumerate(counts) if n == c]
            out[rows, :c] = member_scores(member, [examples[i] for i in rows], kind, batch_size, device)
        return out
    bi = getattr(member.model, "choice_scorer", None) == "bi"  # a bi-encoder embeds query and options alone
    features = tokenize(examples, member.tokenizer, kind, member.max_length, bi)
    collate_fn = make_collate("dynamic", member.max_length, member.tokenizer.pad_token_id)
    return predict_scores(member.model, features, collate_fn, kind, batch_size, device)


def ensemble_scores(
    model_dirs: list[Path], examples: list[Example], kind: str, batch_size: int, device, max_length: int | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """The mean probabilities of the models (an ensemble's or cv run's members), with a progress bar per member."""
    scores, names = [], None
    for d in tqdm(model_dirs, desc="members", disable=len(model_dirs) < 2, leave=False):
        member = load_member(d, kind, device, max_length)  # one at a time: an ensemble need not fit in memory
        scores.append(member_scores(member, examples, kind, batch_size, device))
        names = member.model.label_names
    return np.mean(scores, axis=0), names


def metric_keys(kind: str, report: dict) -> list[str]:
    return [k for k in SELECTION_METRICS[kind] if k in report]


def headline(kind: str, report: dict, use_tuned: bool) -> dict[str, float]:
    """The selection metrics of a split's report, at the tuned thresholds when the run predicts with them."""
    rep = report["tuned"] if use_tuned and "tuned" in report else report
    return {k: rep[k] for k in metric_keys(kind, rep)}


def mean_std(rows: list[dict], name: str) -> list[dict]:
    """Two rows, {name: "mean", ...} and {name: "std", ...} (sample std, ddof 1), over the numeric columns of rows
    (those that every row has): a table under the members' or folds' own."""
    keys = [
        k
        for k in rows[0]
        if k != name and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)
    ]
    values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    std = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return [
        {name: "mean", **{k: round(float(v.mean()), 4) for k, v in values.items()}},
        {name: "std", **{k: round(std[k], 4) for k in keys}},
    ]


def tuned_for(cfg: RunConfig, task: TaskData, examples: list[Example], scores: np.ndarray, on: str):
    """Multi-label: per-label thresholds tuned on `scores` (dev or out-of-fold); (thresholds dict, array to use)."""
    if task.kind != MULTI_LABEL:
        return None, None
    chosen = choose_thresholds(label_array(task, examples), scores, task.label_names, cfg.threshold, cfg.metric)
    if on == "oof":
        chosen["notes"][0] = (
            f"tuned on the {len(examples)} out-of-fold predictions: no model saw the examples its thresholds were "
            "tuned on, so the tuned score is honest"
        )
    return chosen, np.array(list(chosen["per_label"].values()))


def run_seeds(
    cfg: RunConfig,
    task: TaskData,
    test: list[Example] | None,
    out: Path,
    train_member: Callable[[RunConfig], dict],
    cv: bool = False,
) -> dict:
    """One member per seed in seed{S}/ (an ordinary run, or with `cv` a cv run), then the mean of their
    probabilities."""
    if not task.dev and not cv:
        raise ConfigError(
            "`seeds` averages the members' dev probabilities: the task needs a dev set (custom: `dev_file`), else "
            "each seed would hold out different examples; without one, use minitune cv with `seeds`"
        )
    names, rows = [], []
    for seed in cfg.seeds:
        member_dir = out / f"seed{seed}"
        started = (member_dir / "checkpoint").is_dir() or (member_dir / "results.json").is_file()
        resume = (
            str(member_dir) if cfg.resume and started else None
        )  # a member killed before its first checkpoint starts afresh
        member_cfg = dataclasses.replace(cfg, seed=seed, seeds=None, output_dir=str(member_dir), resume=resume)
        results = train_member(member_cfg)
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
    member_results = [json.loads((out / n / "results.json").read_text(encoding="utf-8")) for n in names]
    splits = [s for s in ("oof", "dev", "test") if all(s in m for m in member_scores)]
    mean = {s: np.mean([m[s] for m in member_scores], axis=0) for s in splits}
    from_cv = "oof" in mean
    examples = {"dev": subsample(task.dev, cfg.max_eval_samples, None), "test": test}
    if from_cv:
        examples["oof"] = _oof_examples(task, [out / n for n in names])
    main_split = "oof" if from_cv else "dev"
    thresholds, tuned = tuned_for(cfg, task, examples[main_split], mean[main_split], main_split)
    use_tuned = bool(thresholds and thresholds["use"] == "tuned")
    for row, res in zip(rows, member_results):
        row |= start_row(res["train"], cfg.metric)
        for s in splits:
            if s in res:
                row |= {f"{s}_{k}": v for k, v in headline(task.kind, res[s], _uses_tuned(res)).items()}
    results = {"train": {"members": rows, "member_mean_std": mean_std(rows, "seed")} | mean_start(rows, cfg.metric)}
    for s in splits:
        results[s] = task_report(task, examples[s], mean[s], cfg.threshold, tuned)
    if thresholds is not None:
        results["thresholds"] = thresholds
        atomic_write_text(out / THRESHOLDS, json.dumps(thresholds, indent=2) + "\n")
    save_scores(out, **mean)
    use = tuned if use_tuned else np.full(task.num_labels, cfg.threshold)
    name = "oof.csv" if from_cv else "dev_predictions.csv"
    write_example_predictions(out / name, task, examples[main_split], mean[main_split], use)
    gold = label_array(task, examples[main_split])
    write_prediction_records(out, main_split, examples[main_split], gold, mean[main_split])  # for report.html
    return results


def _uses_tuned(results: dict) -> bool:
    return results.get("thresholds", {}).get("use") == "tuned"


def _oof_examples(task: TaskData, names: list[Path]) -> list[Example]:
    """The training examples the members' out-of-fold predictions cover (the same for every member)."""
    indices = [np.load(d / OOF_INDEX) for d in names]
    if any(not np.array_equal(indices[0], i) for i in indices[1:]):
        raise ConfigError(f"{names[0].parent}: the members' out-of-fold predictions cover different examples")
    return [task.train[i] for i in indices[0]]
