"""Finishing a split, the same way in every protocol: multi-label thresholds tuned on one split (dev, the
out-of-fold predictions, or training examples held out for them), each split's report at the fixed and the tuned
thresholds, and the prediction files of the main split (a CSV a person reads, the JSON records report.html redraws
from). Also the table rows a protocol reports its models with (each fold or member, their mean ± std).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minitune.config.sections import EvalSettings
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.tasks import Example, TaskData, label_array
from minitune.eval.metrics import selection_metrics
from minitune.eval.predictions import write_example_predictions, write_prediction_records
from minitune.eval.scoring import task_report
from minitune.eval.thresholds import choose_thresholds
from minitune.train.distributed import is_main

Split = tuple[list[Example], np.ndarray]  # a split's examples and their probabilities (N, C)


@dataclass
class Finished:
    """Each split's report, the thresholds tuned (multi-label, else None), and those a prediction uses: the tuned
    ones where they won on the split they were tuned on, else the fixed threshold (None: no thresholds apply)."""

    reports: dict[str, dict]
    thresholds: dict | None
    use: np.ndarray | None


def tune_thresholds_on(
    task: TaskData, split: Split, settings: EvalSettings, metric: str, on: str = "dev"
) -> tuple[dict | None, np.ndarray | None]:
    """Multi-label: per-label thresholds tuned on `split` (`on`: dev, oof, or held-out training examples); (their
    record for results.json, the array), or (None, None) for other kinds."""
    if task.kind != MULTI_LABEL:
        return None, None
    examples, scores = split
    fraction = settings.threshold_split if on == "held_out" else None
    chosen = choose_thresholds(
        label_array(task, examples), scores, task.label_names, settings.threshold, metric, on, fraction
    )
    return chosen, np.array(list(chosen["per_label"].values()))


def finish_splits(
    run_dir: Path,
    task: TaskData,
    splits: dict[str, Split],
    main: str,
    settings: EvalSettings,
    metric: str,
    *,
    csv_name: str,
    tune_on: Split | None = None,
    on: str = "dev",
) -> Finished:
    """Thresholds tuned on `tune_on` (default: the main split), every split's report with them, and the main split's
    prediction files: `csv_name` and predictions_<main>.jsonl (rank 0 writes; the reports are every rank's)."""
    thresholds, tuned = tune_thresholds_on(task, tune_on or splits[main], settings, metric, on)
    reports = {name: task_report(task, ex, sc, settings.threshold, tuned) for name, (ex, sc) in splits.items()}
    if thresholds is not None:
        reports[main]["threshold_notes"] = thresholds["notes"]
    use = None
    if task.kind != MULTIPLE_CHOICE:
        fixed = np.full(task.num_labels, settings.threshold)
        use = tuned if thresholds is not None and thresholds["use"] == "tuned" else fixed
    if is_main():
        examples, scores = splits[main]
        write_example_predictions(Path(run_dir) / csv_name, task, examples, scores, use)
        write_prediction_records(run_dir, main, examples, label_array(task, examples), scores)
    return Finished(reports, thresholds, use)


def headline(kind: str, report: dict, use_tuned: bool) -> dict[str, float]:
    """The selection metrics of a split's report, at the tuned thresholds when the run predicts with them."""
    return selection_metrics(kind, report["tuned"] if use_tuned and "tuned" in report else report)


def uses_tuned(results: dict) -> bool:
    return results.get("thresholds", {}).get("use") == "tuned"


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


def start_row(summary: dict, metric: str) -> dict:
    """One trained model's score before training (where it was scored: a fresh head is not) and its best, flat for
    a fold's or member's table row."""
    start = (summary.get("start") or {}).get(metric)
    row = {f"start_{metric}": start} if start is not None else {}
    return row | {"best": summary.get("best"), "start_is_chance": summary.get("start_is_chance", False)}


def mean_start(rows: list[dict], metric: str) -> dict:
    """The models' mean best and, where they were scored before training, their mean start
    (eval/report.start_lines prints them), or {} when no model has either."""
    starts = [r[f"start_{metric}"] for r in rows if r.get(f"start_{metric}") is not None]
    bests = [r["best"] for r in rows if r.get("best") is not None]
    if not starts and not bests:
        return {}
    out = {"metric": metric, "best": float(np.mean(bests)) if bests else None}
    if starts:
        out["start"] = {metric: float(np.mean(starts))}
    return out | {"start_is_chance": rows[0].get("start_is_chance", False)}
