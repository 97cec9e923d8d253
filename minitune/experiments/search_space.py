"""The sweep file of a search (`method = "tpe"`, experiments/search.py): its top-level keys, each setting's
distribution in [space], and the pruner in [pruner], every one checked before anything trains. A list of values is
categorical; a table gives low and high (int when both ends are; `log` for log-uniform, `step` for a grid of
values), or choices; `distribution` ("float", "int", "categorical") may say which. Every end of every range and
every choice is checked as a run setting with the base, so a trial cannot draw a value the run refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minitune.config.load import CHANGE_ON_RESUME, checked_keys, flat_dict, make_config, parse_toml
from minitune.errors import ConfigError
from minitune.experiments.sweep import FIELDS, check_rank_by, read_sweep, setting_keys

TOP_KEYS = {"method", "trials", "study", "storage", "sampler_seed", "heartbeat", "retries", "base", "space"}
TOP_KEYS |= {"pruner", "rank_by", "output_dir"}
METHODS = ("tpe", "random")
DISTRIBUTIONS = ("float", "int", "categorical")
PRUNERS = {"median": {"startup_trials", "warmup_evals"}, "halving": {"warmup_evals", "reduction"}, "none": set()}
DIM_KEYS = {"distribution", "low", "high", "log", "step", "choices"}


@dataclass
class Search:
    path: Path
    method: str
    trials: int
    study: str
    storage: str
    space: dict[str, dict]  # setting -> {"distribution", and low/high/log/step or choices}
    pruner: dict
    base: dict
    rank_by: str | None
    output_dir: Path
    sampler_seed: int | None = None
    heartbeat: int = 60
    retries: int = 2


def read_plan(path: str, storage: str | None = None):
    """The sweep file as a Search (it names a `method`) or as a sweep of lists and grids (experiments/sweep.py)."""
    raw = parse_toml(path, f"sweep file {path}: ")
    if "method" not in raw:
        if storage is not None:
            raise ConfigError(f'--storage is for a search (method = "tpe" in {path}); lists and grids need none')
        return read_sweep(path, raw)
    return read_search(path, raw, storage)


def read_search(path: str, raw: dict, storage: str | None = None) -> Search:
    p = Path(path)
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    for k in raw:
        if k not in TOP_KEYS:
            raise ConfigError(
                f"{p}: unknown key {k!r} for a search (method = ...); known: {', '.join(sorted(TOP_KEYS))}"
            )
    method = raw["method"]
    if method not in METHODS:
        raise ConfigError(f"{p}: method {method!r} is not known; use one of {', '.join(METHODS)} (or none: a grid)")
    trials = _positive(p, "trials", raw.get("trials"))
    base = setting_keys(p, "[base]", raw.get("base", {}), FIELDS | {"config"})
    if "config" in base:
        base["config"] = str((p.parent / base["config"]).resolve())
    space = {k: _dimension(p, k, v) for k, v in setting_keys(p, "[space]", raw.get("space", {}), FIELDS).items()}
    if not space:
        raise ConfigError(f"{p}: [space] is empty: give each setting to search a distribution, e.g. lr = {{low = 1e-5, "
                          "high = 1e-3, log = true}")  # fmt: skip
    for key in ("output_dir", "storage", "study", "rank_by"):
        if key in raw and not (isinstance(raw[key], str) and raw[key]):
            raise ConfigError(f"{p}: {key} must be a non-empty string, got {raw[key]!r}")
    seed = raw.get("sampler_seed")
    if seed is not None:
        _positive(p, "sampler_seed", seed, 0)
    out = Path(raw.get("output_dir") or Path("runs") / f"sweep-{p.stem}")
    storage = storage or raw.get("storage") or f"sqlite:///{out / 'study.db'}"
    search = Search(
        path=p,
        method=method,
        trials=trials,
        study=str(raw.get("study", p.stem)),
        storage=storage,
        space=space,
        pruner=_pruner(p, raw.get("pruner", {})),
        base=base,
        rank_by=raw.get("rank_by"),
        output_dir=out,
        sampler_seed=seed,
        heartbeat=_positive(p, "heartbeat", raw.get("heartbeat", 60)),
        retries=_positive(p, "retries", raw.get("retries", 2), 0),
    )
    template = _check_space(search)
    check_rank_by(p, search.rank_by, template.data.task)
    if search.pruner["kind"] != "none":
        _check_pruned(search, template)
    return search


def _check_pruned(search: Search, template) -> None:
    """A pruner compares each trial's dev metric after each evaluation of one run: the metric the study ranks by,
    the same for every trial."""
    p, none = search.path, '; or set [pruner] kind = "none"'
    if template.seeds or template.command == "cv":
        raise ConfigError(f"{p}: a pruner judges a single run's evaluations, not an ensemble's (seeds){none}")
    if template.model.head == "generative":
        raise ConfigError(f"{p}: a pruner judges a classifier's evaluations; the generative head has none{none}")
    if "metric" in search.space:
        raise ConfigError(f"{p}: a pruner compares trials on one metric: remove metric from [space]{none}")
    if search.rank_by not in (None, template.loop.metric):
        raise ConfigError(
            f"{p}: the pruner sees each evaluation's {template.loop.metric} (the base's metric), but the study ranks "
            f"by {search.rank_by}: set metric = {search.rank_by!r} in [base]{none}"
        )


def _positive(p: Path, key: str, value, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{p}: {key} must be an integer of at least {least}, got {value!r}")
    return value


def _dimension(p: Path, key: str, spec) -> dict:
    """One setting's distribution, checked: a list is categorical; a table gives low/high (int when both ends
    are), or choices; `distribution` may say which."""
    where = f"{p}: [space] {key}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a list of choices or a table with low and high, got {spec!r}")
    checked_keys(f"{where}: ", spec, DIM_KEYS)
    kind = spec.get("distribution") or ("categorical" if "choices" in spec else None)
    if kind is None:
        ends = (spec.get("low"), spec.get("high"))
        kind = "int" if all(isinstance(x, int) and not isinstance(x, bool) for x in ends) else "float"
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: distribution {kind!r} is not known; use one of {', '.join(DISTRIBUTIONS)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or any(isinstance(c, (list, dict)) for c in choices):
            raise ConfigError(f'{where}: choices must be a non-empty list of values, e.g. ["bce", "focal"]')
        return {"distribution": kind, "choices": choices}
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)):
        raise ConfigError(f"{where} needs numbers low and high, e.g. {{low = 1e-5, high = 1e-3}}")
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log distribution needs low > 0, got {low}")
    if log and step is not None:
        raise ConfigError(f"{where}: give log or step, not both")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive number, got {step!r}")
    if kind == "int" and not all(isinstance(x, int) for x in (low, high, step or 1)):
        raise ConfigError(f"{where}: an int distribution needs integer low, high and step")
    return {"distribution": kind, "low": low, "high": high, "log": log, "step": step}


def _pruner(p: Path, spec) -> dict:
    spec = {"kind": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict):
        raise ConfigError(f'{p}: [pruner] must be a table, e.g. kind = "median"')
    kind = spec.get("kind", "median")
    if kind not in PRUNERS:
        raise ConfigError(f"{p}: [pruner] kind {kind!r} is not known; use one of {', '.join(PRUNERS)}")
    checked_keys(f"{p}: ", spec, PRUNERS[kind] | {"kind"}, " in [pruner]")
    for k in PRUNERS[kind]:
        least = 2 if k == "reduction" else 0
        _positive(p, f"[pruner] {k}", spec.get(k, least), least)
    return {"startup_trials": 2, "warmup_evals": 0, "reduction": 3} | spec | {"kind": kind}


def _check_space(search: Search):
    """Every end of every range and every choice makes a valid run with the base (one at a time); returns the
    base's config."""
    out = {"output_dir": str(search.output_dir / "trial-0000")}
    template = _config(search.path, "[base]", search.base | out)
    for key, dim in search.space.items():
        for value in dim.get("choices") or (dim["low"], dim["high"]):
            _config(search.path, f"[space] {key} = {value!r}", search.base | {key: value} | out)
    return template


def _config(p: Path, where: str, settings: dict):
    try:
        return make_config(**settings)
    except ConfigError as e:
        raise ConfigError(f"{p}: {where}: {e}") from None


def definition(search: Search) -> dict:
    """What the study's trials mean (saved in the study; a worker with another definition is refused)."""
    base = flat_dict(make_config(**search.base))
    base = {k: v for k, v in base.items() if k not in CHANGE_ON_RESUME and k != "output_dir"}
    return {"space": search.space, "base": base, "rank_by": search.rank_by, "method": search.method}
