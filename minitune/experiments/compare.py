"""`minitune compare RUN_DIR...`: one table of finished runs (task, model, parameters, dev and test scores,
thresholds used, training time), sorted by each task's selection metric, printed and written as Markdown and
JSON (the rows, for the plots of the reports).

Any run directory with a results.json is read: a single run, a `--seeds` ensemble, a cv run (its out-of-fold
score beside dev), Recipe-MPR's folds (test accuracy over all folds), a sweep's trials, a distilled student.
The score of a split is taken where the run predicts (tuned multi-label thresholds when it chose them); a run's
parameters are counted from its model files' headers (every member of an ensemble or cv run).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.rundir import MEMBERS, member_model_dirs, read_json, read_results
from minitune.checkpoints.runlock import finished_before, require_finished
from minitune.errors import ConfigError

SPLITS = ("dev", "oof", "test")


def split_metric(results: dict, split: str, metric: str) -> float | None:
    """`metric` on a split, where the run predicts: at the tuned thresholds when the run chose them."""
    rep = results.get(split)
    if not isinstance(rep, dict) or "kind" not in rep:
        return None
    if results.get("thresholds", {}).get("use") == "tuned" and "tuned" in rep:
        rep = rep["tuned"]
    value = rep.get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def ranking_metric(results: dict, metric: str) -> float | None:
    """The value of `metric` a run is ranked by: on dev, else out-of-fold (cv), else test (Recipe-MPR's folds)."""
    return next((v for s in SPLITS if (v := split_metric(results, s, metric)) is not None), None)


def count_parameters(run_dir: Path) -> int | None:
    """Parameters in the run's model files (all members of an ensemble), from the safetensors headers."""
    try:
        dirs = member_model_dirs(run_dir)
    except ConfigError:
        return None
    total = 0
    for d in dirs:
        for f in d.rglob("*.safetensors"):  # a pooled head sits in 2_Dense/ (sentence-transformers layout)
            with safe_open(f, "pt") as st:
                for k in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                    n = 1
                    for size in st.get_slice(k).get_shape():
                        n *= size
                    total += n
    return total


def thresholds_used(results: dict) -> str:
    t = results.get("thresholds")
    if not t:
        return "argmax"
    if t.get("use") == "tuned":
        return f"tuned ({t.get('tuned_labels')} labels)"
    return f"fixed {t.get('threshold')}"


def run_kind(run_dir: Path, results: dict) -> str:
    if (run_dir / MEMBERS).is_file():
        return (read_json(run_dir / MEMBERS) or {}).get("kind", "ensemble")
    return "folds" if "folds" in results.get("train", {}) else "run"


def compare_row(run_dir: Path) -> dict:
    require_finished(Path(run_dir), None)
    results = read_results(run_dir)
    metric = results.get("config", {}).get("metric") or "macro_f1"
    row = {
        "run": str(run_dir),
        "task": results.get("task"),
        "model": results.get("model"),
        "kind": run_kind(Path(run_dir), results),
        "params": count_parameters(Path(run_dir)),
        "metric": metric,
        "value": ranking_metric(results, metric),  # of `metric`, where the run is ranked
    }
    for s in SPLITS:  # the task's metric on each split the run has
        row[s] = split_metric(results, s, metric)
    row["dev_accuracy"], row["dev_macro_f1"] = (split_metric(results, "dev", m) for m in ("accuracy", "macro_f1"))
    row["thresholds"] = thresholds_used(results)
    row["train_seconds"] = results.get("train", {}).get("wall_seconds")
    return row


def sweep_runs(folder: Path) -> list[Path]:
    """The finished runs of a sweep's or a search's folder, as its leaderboard.json lists them (a search: every
    worker's trials, pruned ones too). A run listed under another path (the sweep was moved, or written from
    another working directory) is looked for in the folder by name."""
    path = folder / "leaderboard.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rows = None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"{path}: not a leaderboard minitune writes: rerun the sweep, or give its run folders")
    runs = []
    for row in rows:
        run = Path(row.get("run") or "")
        run = run if run.is_dir() or not row.get("run") else folder / run.name
        if row.get("run") and finished_before(run) and run not in runs:
            runs.append(run)
    return runs


def compare(run_dirs: list[Path]) -> list[dict]:
    """Rows sorted by task, then by the task's metric (best first; runs without a value last). A sweep's or a
    search's folder stands for its finished trials."""
    dirs = []
    for d in map(Path, run_dirs):
        dirs += sweep_runs(d) if (d / "leaderboard.json").is_file() and not (d / "results.json").is_file() else [d]
    rows = [compare_row(d) for d in dirs]
    return sorted(rows, key=lambda r: (r["task"] or "", r["value"] is None, -(r["value"] or 0.0)))


def _cell(column: str, v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and column.endswith("seconds"):
        return f"{v:.1f}"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int) and v >= 10_000:
        return f"{v / 1e6:.1f}M"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for r in rows for c in r if any(x.get(c) is not None for x in rows)))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_comparison(rows: list[dict], output: Path) -> tuple[Path, Path]:
    md, js = output.with_suffix(".md"), output.with_suffix(".json")
    atomic_write_text(md, markdown_table(rows))
    atomic_write_text(js, json.dumps(rows, indent=2) + "\n")
    return md, js
