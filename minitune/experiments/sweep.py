"""`minitune sweep FILE.toml`: a base configuration, its variations (a list, a grid, or both: every listed
variation crossed with every grid point), and phases with their own budgets, each keeping the best trials of the
phase before it.

    [base]                      # any training setting; `config` = a TOML file (relative to the sweep file) under it
    task = "goemotions"
    [[variations]]              # one trial per entry; `name` is optional
    name = "bce"
    loss = "bce"
    [grid]                      # every combination of the listed values
    lr = [2e-5, 5e-5]
    [[phases]]                  # settings of this phase, and how many of its trials go on to the next
    max_train_samples = 20000
    epochs = 2
    advance = 2
    [[phases]]
    epochs = 5
    rank_by = "macro_f1"        # top level: the ranking metric (default: the base's metric); output_dir too

Every trial is an ordinary run directory, OUTPUT/phase{P}-{name}/ (a single run, or with `seeds` an ensemble), ranked
by its dev score (experiments/compare.ranking_metric). A trial with results.json is finished and is read, not
trained, on a rerun; one with a checkpoint continues from it. leaderboard.md and leaderboard.json (the settings
that differ from the base, the scores, the time and the phase of every trial) are rewritten after every trial.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.rundir import read_results
from minitune.config.load import COMMAND_ONLY, checked_keys, make_config, parse_toml
from minitune.config.sections import FLAT, RunConfig
from minitune.errors import ConfigError
from minitune.experiments.compare import markdown_table, ranking_metric, split_metric

TOP_KEYS = {"base", "variations", "grid", "phases", "rank_by", "output_dir"}
PHASE_ONLY = {"advance"}
FIELDS = set(FLAT) - COMMAND_ONLY  # a trial is a training run: every setting but the commands' own


@dataclasses.dataclass
class Sweep:
    path: Path
    base: dict
    trials: list[tuple[str, dict]]  # (name, settings that differ from the base)
    phases: list[dict]
    rank_by: str | None
    output_dir: Path


def _keys(path: Path, where: str, table: dict, allowed: set[str]) -> dict:
    """A table's keys under their flat names (dashes or underscores; `[section]` tables dissolved), each checked."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} must be a table of settings, got {table!r}")
    return checked_keys(f"{path}: ", table, allowed, f" in {where}")


def describe(settings: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items())


def safe_name(text: str) -> str:
    """A trial's directory name: its settings, with anything a file name should not hold replaced."""
    return re.sub(r"[^A-Za-z0-9_.,=+:-]", "_", text)[:100] or "base"


def read_sweep(path: str) -> Sweep:
    p = Path(path)
    raw = parse_toml(path, f"sweep file {path}: ")
    _keys(p, "the top level", raw, TOP_KEYS)
    base = _keys(p, "[base]", raw.get("base", {}), FIELDS | {"config"})
    if "config" in base:
        base["config"] = str((p.parent / base["config"]).resolve())
    listed = [_keys(p, "[[variations]]", v, FIELDS | {"name"}) for v in raw.get("variations", [])] or [{}]
    grid = _keys(p, "[grid]", raw.get("grid", {}), FIELDS)
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{p}: [grid] {k} must be a list of values, e.g. {k} = [1, 2]")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    trials = []
    for v in listed:
        for point in points:
            settings = {k: x for k, x in v.items() if k != "name"} | point
            label = ",".join(filter(None, [str(v.get("name", "")), describe(point)])) if "name" in v else None
            trials.append((safe_name(label or describe(settings)), settings))
    names = [n for n, _ in trials]
    if len(set(names)) != len(names):
        raise ConfigError(f"{p}: two trials share a name ({sorted(n for n in names if names.count(n) > 1)[0]})")
    phases = [_keys(p, f"[[phases]] {i + 1}", ph, FIELDS | PHASE_ONLY) for i, ph in enumerate(raw.get("phases", []))]
    phases = phases or [{}]
    for i, ph in enumerate(phases[:-1]):
        if not isinstance(ph.get("advance"), int) or ph["advance"] < 1:
            raise ConfigError(f"{p}: [[phases]] {i + 1} needs advance = N (how many trials go on to the next phase)")
    out = Path(raw.get("output_dir") or Path("runs") / f"sweep-{p.stem}")
    sweep = Sweep(p, base, trials, phases, raw.get("rank_by"), out)
    for name, settings in trials:  # every trial's settings are checked before anything trains
        trial_config(sweep, 0, name, settings)
    return sweep


def trial_config(sweep: Sweep, phase: int, name: str, settings: dict) -> RunConfig:
    budget = {k: v for k, v in sweep.phases[phase].items() if k not in PHASE_ONLY}
    out = sweep.output_dir / f"phase{phase + 1}-{name}"
    cfg = make_config(**(sweep.base | settings | budget | {"output_dir": str(out)}))
    if any(c.is_dir() for c in out.glob("**/checkpoint")) and not (out / "results.json").is_file():
        cfg = cfg.with_settings(resume=str(out))  # stopped part-way: continue it
    return cfg


def run_sweep(sweep: Sweep, train: Callable[[RunConfig], dict]) -> list[dict]:
    """Every phase in turn; returns the leaderboard rows. `train` trains one run (runner.run_train)."""
    rows: list[dict] = []
    trials = sweep.trials
    for phase in range(len(sweep.phases)):
        ranked = []
        for name, settings in tqdm(trials, desc=f"phase {phase + 1}/{len(sweep.phases)}", leave=False):
            cfg = trial_config(sweep, phase, name, settings)
            out = Path(cfg.outputs.output_dir)
            finished = (out / "results.json").is_file()
            results = read_results(out) if finished else train(cfg)
            metric = sweep.rank_by or cfg.loop.metric
            rows.append(
                leaderboard_row(sweep, phase, name, settings, results, metric, "read" if finished else "trained")
            )
            ranked.append((ranking_metric(results, metric), name, settings))
            write_leaderboard(sweep.output_dir, rows)
        advance = sweep.phases[phase].get("advance")
        ranked.sort(key=lambda t: (t[0] is None, -(t[0] or 0.0)))
        trials = [(n, s) for _, n, s in ranked[:advance]] if advance else trials
    return rows


def leaderboard_row(sweep, phase, name, settings, results, metric, status) -> dict:
    budget = {k: v for k, v in sweep.phases[phase].items() if k not in PHASE_ONLY}
    return {
        "phase": phase + 1,
        "trial": name,
        "differences": json.dumps(settings | budget),
        "metric": metric,
        "score": ranking_metric(results, metric),
        "dev_accuracy": split_metric(results, "dev", "accuracy"),
        "dev_macro_f1": split_metric(results, "dev", "macro_f1"),
        "seconds": results.get("train", {}).get("wall_seconds"),
        "status": status,
        "run": str(sweep.output_dir / f"phase{phase + 1}-{name}"),
    }


def write_leaderboard(out: Path, rows: list[dict]) -> None:
    ordered = sorted(rows, key=lambda r: (-r["phase"], r["score"] is None, -(r["score"] or 0.0)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "leaderboard.json", json.dumps(ordered, indent=2) + "\n")
    atomic_write_text(
        out / "leaderboard.md", "# Leaderboard (latest phase first, best first)\n\n" + markdown_table(ordered)
    )
