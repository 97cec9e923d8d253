"""A search's report, read from its study (so any worker writes the same one): leaderboard.json and leaderboard.md,
one row per trial (its state, settings, score, the pruner's reason, its run folder), and the figures of the search
under figures/: the optimisation history, each setting's importance (Optuna's fANOVA), and a slice plot per
setting, drawn by eval/search_figures.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.rundir import read_results
from minitune.checkpoints.runlock import finished_before
from minitune.errors import ConfigError
from minitune.eval.figures import RunFigure, save_figures
from minitune.eval.search_figures import draw_history, draw_importance, draw_slices
from minitune.experiments.compare import markdown_table, ranking_metric, split_metric

log = logging.getLogger("minitune")
MIN_FOR_IMPORTANCE = 4
ORDER = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}


def trial_row(trial, metric: str) -> dict:
    """A trial as the leaderboard shows it; scores from its run's results.json where this machine can read it."""
    run, state = trial.user_attrs.get("run"), trial.state.name.lower()
    results = _results(Path(run)) if run and state != "fail" else None  # a failed try's folder is its retry's
    value = ranking_metric(results, metric) if results else None
    history = trial.system_attrs.get("retry_history") or []
    return {
        "trial": trial.number,
        "state": state,
        "settings": json.dumps(trial.params),
        "metric": metric,
        "value": value if value is not None else trial.value,
        "dev_accuracy": split_metric(results, "dev", "accuracy") if results else None,
        "dev_macro_f1": split_metric(results, "dev", "macro_f1") if results else None,
        "evals": len(trial.intermediate_values),
        "seconds": (results or {}).get("train", {}).get("wall_seconds") or _duration(trial),
        "why": trial.user_attrs.get("pruned") or trial.user_attrs.get("error"),
        "retry_of": history[0] if history else None,
        "run": run,
        "worker": trial.user_attrs.get("worker"),
    }


def _results(run: Path) -> dict | None:
    try:
        return read_results(run) if finished_before(run) else None
    except ConfigError:  # a damaged run folder: the trial is still listed, without its scores
        return None


def _duration(trial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)


def leaderboard(study, metric: str) -> list[dict]:
    """Finished trials best first, then pruned ones (by the score they stopped at), then the rest by number."""
    rows = [trial_row(t, metric) for t in study.get_trials(deepcopy=False)]
    return sorted(rows, key=lambda r: (ORDER[r["state"]], r["value"] is None, -(r["value"] or 0.0), r["trial"]))


def importances(study) -> dict[str, float]:
    """Each setting's share of the variance of the finished trials' scores (Optuna's fANOVA); empty when there are
    fewer than MIN_FOR_IMPORTANCE finished trials (a forest fitted to fewer says nothing)."""
    import optuna

    states = optuna.trial.TrialState
    if len(study.get_trials(deepcopy=False, states=(states.COMPLETE,))) < MIN_FOR_IMPORTANCE:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # a random forest: seeded, so reproducible
        return optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as e:
        log.info("no importances yet: %s", e)
        return {}


def write_search_report(search, study, metric: str) -> list[dict]:
    """leaderboard.json, leaderboard.md and figures/ in the search's folder; returns the rows."""
    out = search.output_dir
    rows = leaderboard(study, metric)
    logs = {name: dim.get("log", False) for name, dim in search.space.items()}
    weights = importances(study)
    figs = [RunFigure("history", f"{metric} of each trial, and the best so far", draw_history(rows, metric))]
    if weights:
        figs.append(
            RunFigure("importance", "importance of each setting (fANOVA, finished trials)", draw_importance(weights))
        )
    if any(r["value"] is not None for r in rows):
        figs.append(
            RunFigure("slices", f"{metric} against each setting", draw_slices(rows, search.space, logs, metric))
        )
    paths = save_figures(figs, out / "figures")
    atomic_write_text(out / "leaderboard.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "leaderboard.md", _markdown(search, rows, metric, paths, weights))
    return rows


def _markdown(search, rows: list[dict], metric: str, paths: dict, weights: dict) -> str:
    done = [r for r in rows if r["state"] in ("complete", "pruned")]
    best = next((r for r in rows if r["state"] == "complete" and r["value"] is not None), None)
    lines = [
        f"# Search {search.study} ({search.method}, pruner {search.pruner['kind']}): {len(done)} of {search.trials}"
        " trials",
        "",
        f"storage: `{search.storage}`; ranked by dev {metric}.",
    ]
    if best:
        lines.append(f"best: trial {best['trial']}, {metric} {best['value']:.4f}, {best['settings']}: `{best['run']}`")
    if weights:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()))
    lines += [""] + [f"![{name}](figures/{p.name})" for name, p in paths.items()] + ["", markdown_table(rows)]
    return "\n".join(lines)
