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
by its metric on dev (experiments/compare.ranking_metric). A trial with results.json is finished and is read, not
trained, on a rerun; one with a checkpoint continues from it. leaderboard.md and leaderboard.json (the settings that
differ from the base, the scores, the time and the phase of every trial) are rewritten after every trial.

A file with `method = "tpe"` is a search instead: trials drawn by Optuna, pruned, shared by workers
(experiments/search.py).
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
from minitune.checkpoints.rundir import read_json, read_results
from minitune.checkpoints.runlock import (
    LOCK_FILE,
    clear_debris,
    clear_folder,
    describe_folder,
    finished_before,
    is_debris,
    locked,
)
from minitune.config.load import (
    CHANGE_ON_RESUME,
    COMMAND_ONLY,
    checked_keys,
    differing,
    flat_dict,
    make_config,
    parse_toml,
    saved_settings,
)
from minitune.config.sections import FLAT, RunConfig
from minitune.data.tasks import BUILTIN_KINDS
from minitune.errors import ConfigError
from minitune.eval.metrics import SELECTION_METRICS
from minitune.experiments.compare import markdown_table, ranking_metric, split_metric
from minitune.train.mlflow_tracking import tracked, tracking

SWEEP_FILE, LEADERBOARD = "sweep.json", "leaderboard.json"  # the sweep's definition, checked on a rerun
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


def setting_keys(path: Path, where: str, table: dict, allowed: set[str]) -> dict:
    """A table's keys under their flat names (dashes or underscores; `[section]` tables dissolved), each checked."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} must be a table of settings, got {table!r}")
    return checked_keys(f"{path}: ", table, allowed, f" in {where}")


def describe(settings: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items())


def safe_name(text: str) -> str:
    """A trial's directory name: its settings, with anything a file name should not hold replaced."""
    return re.sub(r"[^A-Za-z0-9_.,=+:-]", "_", text)[:100] or "base"


def read_sweep(path: str, raw: dict | None = None) -> Sweep:
    """The sweep file at `path` (`raw`: its table, when it was read already), every trial's settings checked."""
    p = Path(path)
    raw = parse_toml(path, f"sweep file {path}: ") if raw is None else raw
    setting_keys(p, "the top level", raw, TOP_KEYS)
    base = setting_keys(p, "[base]", raw.get("base", {}), FIELDS | {"config"})
    if "config" in base:
        base["config"] = str((p.parent / base["config"]).resolve())
    listed = [setting_keys(p, "[[variations]]", v, FIELDS | {"name"}) for v in raw.get("variations", [])] or [{}]
    grid = setting_keys(p, "[grid]", raw.get("grid", {}), FIELDS)
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
    phases = [
        setting_keys(p, f"[[phases]] {i + 1}", ph, FIELDS | PHASE_ONLY) for i, ph in enumerate(raw.get("phases", []))
    ]
    phases = phases or [{}]
    for i, ph in enumerate(phases[:-1]):
        if not isinstance(ph.get("advance"), int) or ph["advance"] < 1:
            raise ConfigError(f"{p}: [[phases]] {i + 1} needs advance = N (how many trials go on to the next phase)")
    out = Path(raw.get("output_dir") or Path("runs") / f"sweep-{p.stem}")
    sweep = Sweep(p, base, trials, phases, raw.get("rank_by"), out)
    configs = [trial_config(sweep, 0, name, settings) for name, settings in trials]  # all checked before training
    check_rank_by(p, sweep.rank_by, configs[0].data.task)
    return sweep


def check_rank_by(path: Path, rank_by: str | None, task: str) -> None:
    """`rank_by` is a metric every trial reports: one of the task kind's selection metrics."""
    kind = BUILTIN_KINDS.get(task)
    known = SELECTION_METRICS[kind] if kind else sorted({m for ms in SELECTION_METRICS.values() for m in ms})
    if rank_by is not None and rank_by not in known:
        raise ConfigError(f"{path}: rank_by {rank_by!r} is not a metric of {task}; use one of {', '.join(known)}")


def definition(sweep: Sweep) -> dict:
    """What the sweep's trials mean: every trial's settings (base, config file, variation and phase budgets
    resolved) and the ranking. A rerun must find the same, or its folder's trials would not be its own."""
    trials = {}
    for phase in range(len(sweep.phases)):
        for name, settings in sweep.trials:
            flat = flat_dict(trial_config(sweep, phase, name, settings))
            trials[f"phase{phase + 1}-{name}"] = {k: v for k, v in flat.items() if k not in CHANGE_ON_RESUME}
    advance = [ph.get("advance") for ph in sweep.phases]
    return {"rank_by": sweep.rank_by, "advance": advance, "trials": trials}


def claim_sweep(sweep: Sweep, overwrite: bool) -> None:
    """The sweep's folder (locked) holds this sweep's trials only: sweep.json records its definition, and a rerun
    with another one refuses in one line naming what changed (or, with `overwrite`, starts over). A folder that
    holds anything else is refused, `overwrite` or not: it clears a sweep's own files only."""
    out, now = sweep.output_dir, definition(sweep)
    saved_path = out / SWEEP_FILE
    saved = None
    if saved_path.is_file():
        try:
            saved = read_json(saved_path, fix="start the sweep over with --overwrite")
        except ConfigError:
            if not overwrite:
                raise
            saved = {}  # damaged, and the sweep starts over anyway
    if saved is not None or (out / LEADERBOARD).is_file():  # a sweep's folder (an earlier one: no sweep.json)
        strays = sorted(p.name for p in out.iterdir() if not _sweep_part(p))
        if strays:
            raise ConfigError(
                f"`output_dir` {out} holds files that are not this sweep's ({', '.join(strays[:3])}): move them, or "
                "choose another output_dir"
            )
        if saved is not None and saved != now and not overwrite:
            raise ConfigError(
                f"`output_dir` {out} holds a sweep with other settings ({_changed(saved, now)}): its trials are not "
                "this sweep's; choose another output_dir, or start over with --overwrite"
            )
    else:
        held = describe_folder(out)
        if held is not None and (not overwrite or held == "files that are not a minitune run"):
            raise ConfigError(f"`output_dir` {out} holds {held}, not a sweep: choose another output_dir")
    clear_debris(out)
    if overwrite:
        clear_folder(out, keep=(LOCK_FILE,))
    if overwrite or saved != now:
        atomic_write_text(saved_path, json.dumps(now, indent=2) + "\n")


def _sweep_part(p: Path) -> bool:
    """A sweep's own: its definition, leaderboard and lock, and its trials' folders (phase<N>-<trial>)."""
    own = (SWEEP_FILE, LEADERBOARD, "leaderboard.md", LOCK_FILE)
    return p.name in own or (p.is_dir() and re.fullmatch(r"phase\d+-.+", p.name) is not None) or is_debris(p)


def _changed(saved: dict, now: dict) -> str:
    if saved.get("rank_by") != now["rank_by"] or saved.get("advance") != now["advance"]:
        return "rank_by or advance"
    old, new = saved.get("trials", {}), now["trials"]
    if set(old) != set(new):
        return "its trials: " + ", ".join(sorted(set(old) ^ set(new))[:3])
    keys = sorted({k for t in new for k in set(old[t]) | set(new[t]) if old[t].get(k) != new[t].get(k)})
    return "settings " + ", ".join(keys[:5])


def _budget(sweep: Sweep, phase: int) -> dict:
    return {k: v for k, v in sweep.phases[phase].items() if k not in PHASE_ONLY}


def trial_config(sweep: Sweep, phase: int, name: str, settings: dict) -> RunConfig:
    out = sweep.output_dir / f"phase{phase + 1}-{name}"
    cfg = make_config(**(sweep.base | settings | _budget(sweep, phase) | {"output_dir": str(out)}))
    if any(c.is_dir() for c in out.glob("**/checkpoint")) and not finished_before(out):
        cfg = cfg.with_settings(resume=str(out))  # stopped part-way: continue it
    return cfg


def run_sweep(sweep: Sweep, train: Callable[[RunConfig], dict], overwrite: bool = False) -> list[dict]:
    """Every phase in turn in the sweep's locked folder; returns the leaderboard rows. `train` trains one run
    (runner.run_train)."""
    with locked(sweep.output_dir):
        claim_sweep(sweep, overwrite)
        first = trial_config(sweep, 0, *sweep.trials[0])  # report_to mlflow: the sweep is a run, its trials nested
        mlflow = tracking(first.loop.report_to, first.loop.tracking_uri, first.data.task)
        with tracked(mlflow, sweep.output_dir, {"sweep": str(sweep.path)}) as mlf:
            rows = _phases(sweep, train)
            mlf.log_files(sweep.output_dir, (LEADERBOARD, "leaderboard.md"))
        return rows


def _phases(sweep: Sweep, train: Callable[[RunConfig], dict]) -> list[dict]:
    rows: list[dict] = []
    trials = sweep.trials
    for phase in range(len(sweep.phases)):
        ranked = []
        for name, settings in tqdm(trials, desc=f"phase {phase + 1}/{len(sweep.phases)}", leave=False):
            cfg = trial_config(sweep, phase, name, settings)
            out = Path(cfg.outputs.output_dir)
            finished = finished_before(out)
            if finished:
                _check_trial(sweep, out, sweep.base | settings | _budget(sweep, phase))
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


def _check_trial(sweep: Sweep, out: Path, given: dict) -> None:
    """A finished trial is read, not trained, only if it was trained with the settings the sweep gives it now (a
    folder whose sweep.json was removed may hold trials of another sweep)."""
    listed = differing(saved_settings(out), given)
    if listed:
        raise ConfigError(
            f"`output_dir` {sweep.output_dir}: trial {out.name} was trained with other settings ({listed}): it is "
            "not this sweep's; start the sweep over with --overwrite, or choose another output_dir"
        )


def leaderboard_row(sweep, phase, name, settings, results, metric, status) -> dict:
    budget = _budget(sweep, phase)
    return {
        "phase": phase + 1,
        "trial": name,
        "differences": json.dumps(settings | budget),
        "metric": metric,
        "value": ranking_metric(results, metric),  # of `metric`
        "dev_accuracy": split_metric(results, "dev", "accuracy"),
        "dev_macro_f1": split_metric(results, "dev", "macro_f1"),
        "seconds": results.get("train", {}).get("wall_seconds"),
        "status": status,
        "run": str(sweep.output_dir / f"phase{phase + 1}-{name}"),
    }


def write_leaderboard(out: Path, rows: list[dict]) -> None:
    ordered = sorted(rows, key=lambda r: (-r["phase"], r["value"] is None, -(r["value"] or 0.0)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / LEADERBOARD, json.dumps(ordered, indent=2) + "\n")
    atomic_write_text(
        out / "leaderboard.md", "# Leaderboard (latest phase first, best first)\n\n" + markdown_table(ordered)
    )
