"""Issue 29: a TPE search with median pruning against a grid over the same settings, with the same compute budget,
on SemEval-2018 E-c with MiniLM on a subset: the best dev score each reaches, and the compute each used.

    OMP_NUM_THREADS=1 python -m benchmarks.search --data-dir ../shared/data --runs runs/search-bench \
        [--only grid|tpe] [--out benchmarks/results/search.json]

The grid is `minitune sweep` over lr x batch_size (3 x 3 = 9 trials). The search draws lr log-uniformly over a
range that holds the grid's, and batch_size from the grid's values, with Optuna's TPE (seeded) and the median
pruner. Compute is counted in training examples processed (optimizer steps x batch size, so batch sizes compare)
plus dev examples scored, and in seconds of one thread. The search is given trials one at a time (the study
continues) until its compute reaches the grid's; its last trial may overshoot, and the table says by how much.
Both read back what finished already in RUNS, so the script can be stopped and rerun. `--only` runs one side
(both sides on two cores: one process each), and the comparison is written once both have finished.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minitune.experiments.search import run_search
from minitune.experiments.search_space import read_plan
from minitune.experiments.sweep import read_sweep, run_sweep
from minitune.runner import run_train

BASE = {"task": "semeval", "model": "minilm", "max_train_samples": 2000, "max_eval_samples": 400, "epochs": 3}
BASE |= {"max_length": 64}
GRID = {"lr": [3e-5, 1e-4, 3e-4], "batch_size": [8, 16, 32]}
SPACE = {"lr": "{low = 1e-5, high = 1e-3, log = true}", "batch_size": "[8, 16, 32]"}


def base_lines(data_dir: Path) -> list[str]:
    return ["[base]"] + [f"{k} = {json.dumps(v)}" for k, v in (BASE | {"data_dir": str(data_dir)}).items()]


def grid_file(runs: Path, data_dir: Path) -> Path:
    path = runs / "grid.toml"
    lines = [f'output_dir = "{runs / "grid"}"', *base_lines(data_dir), "[grid]"]
    path.write_text("\n".join(lines + [f"{k} = {json.dumps(v)}" for k, v in GRID.items()]) + "\n")
    return path


def search_file(runs: Path, data_dir: Path, trials: int) -> Path:
    path = runs / "tpe.toml"
    top = ['method = "tpe"', f"trials = {trials}", f'output_dir = "{runs / "tpe"}"', "sampler_seed = 0"]
    space = ["[space]"] + [f"{k} = {v}" for k, v in SPACE.items()]
    pruner = ["[pruner]", 'kind = "median"', "startup_trials = 3", "warmup_evals = 0"]
    path.write_text("\n".join(top + base_lines(data_dir) + space + pruner) + "\n")
    return path


def compute(run: str) -> dict:
    """What one trial's run used: training examples processed, dev examples scored, seconds."""
    results = json.loads((Path(run) / "results.json").read_text())
    t, cfg = results["train"], results["config"]
    evals = t.get("evals", 0) + 1  # the score before training too
    return {
        "train_examples": t["step"] * cfg["batch_size"],
        "dev_examples": evals * results["dev"]["n_examples"],
        "seconds": t["wall_seconds"],
    }


def started(run: str) -> str:
    return json.loads((Path(run) / "run.json").read_text())["started"]


def anytime(used: list[dict]) -> list[list[float]]:
    """[training examples so far, best score so far] after each trial, in the order they were trained."""
    curve, spent, best = [], 0, -1.0
    for u in sorted(used, key=lambda u: u["started"]):
        spent, best = spent + u["train_examples"], max(best, u["value"] if u["value"] is not None else -1.0)
        curve.append([spent, round(best, 4)])
    return curve


def side(rows: list[dict], metric: str) -> dict:
    """The best dev score a side reached, and its compute, summed over its trials."""
    used = [compute(r["run"]) | {"value": r["value"], "state": r.get("state", "complete")} for r in rows]
    used = [u | {"started": started(r["run"])} for u, r in zip(used, rows)]
    best = max(rows, key=lambda r: r["value"] if r["value"] is not None else -1.0)
    return {
        "trials": len(rows),
        "pruned": sum(u["state"] == "pruned" for u in used),
        "best": round(best["value"], 4),
        "best_settings": best.get("settings") or best.get("differences"),
        "metric": metric,
        **{k: round(sum(u[k] for u in used), 1) for k in ("train_examples", "dev_examples", "seconds")},
        "values": [round(u["value"], 4) if u["value"] is not None else None for u in used],
        "anytime": anytime(used),
    }


def run_grid(runs: Path, data_dir: Path) -> dict:
    rows = run_sweep(read_sweep(str(grid_file(runs, data_dir))), run_train)
    return side(rows, rows[0]["metric"])


def run_tpe(runs: Path, data_dir: Path, budget: float) -> dict:
    """Trials one at a time until the search's training examples reach `budget` (the grid's)."""
    trials = 1
    while True:
        rows = run_search(read_plan(str(search_file(runs, data_dir, trials))), run_train)
        done = [r for r in rows if r["state"] in ("complete", "pruned")]
        used = sum(compute(r["run"])["train_examples"] for r in done)
        if used >= budget:
            return side(done, rows[0]["metric"])
        trials = len(done) + 1


def grid_budget() -> float:
    """The grid's training examples, known before it runs: every trial trains all its epochs on the subset."""
    return float(len(GRID["lr"]) * len(GRID["batch_size"]) * BASE["max_train_samples"] * BASE["epochs"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--runs", type=Path, default=Path("runs/search-bench"))
    p.add_argument("--only", choices=("grid", "tpe"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/search.json"))
    a = p.parse_args()
    a.runs.mkdir(parents=True, exist_ok=True)
    data_dir = a.data_dir.resolve()
    sides = {}
    if a.only in (None, "grid"):
        sides["grid"] = run_grid(a.runs, data_dir)
        (a.runs / "grid.json").write_text(json.dumps(sides["grid"], indent=2) + "\n")
    if a.only in (None, "tpe"):
        sides["tpe"] = run_tpe(a.runs, data_dir, grid_budget())
        (a.runs / "tpe.json").write_text(json.dumps(sides["tpe"], indent=2) + "\n")
    for name in ("grid", "tpe"):
        if name not in sides and (a.runs / f"{name}.json").is_file():
            sides[name] = json.loads((a.runs / f"{name}.json").read_text())
    if len(sides) == 2:
        record = {"settings": BASE, "grid": GRID, "space": SPACE, "machine": "2-core CPU, one thread each", **sides}
        a.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"{'':5} {'trials':>6} {'pruned':>6} {'best':>7} {'train ex':>9} {'dev ex':>7} {'seconds':>8}")
        for name, s in sides.items():
            print(f"{name:5} {s['trials']:>6} {s['pruned']:>6} {s['best']:>7.4f} {s['train_examples']:>9.0f} "
                  f"{s['dev_examples']:>7.0f} {s['seconds']:>8.1f}")  # fmt: skip
        for name, s in sides.items():
            print(f"{name} best so far by training examples:", ", ".join(f"{int(x)}: {b:.4f}" for x, b in s["anytime"]))


if __name__ == "__main__":
    main()
