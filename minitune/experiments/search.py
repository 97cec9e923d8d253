"""`minitune sweep FILE.toml` with a `method`: a search that learns where to look (Optuna's TPE, or its random
sampler), stops losing trials early, and shares one study between any number of workers.

    method = "tpe"              # or "random"
    trials = 20                 # the study's trials, all workers together (pruned ones count, failed ones do not)
    study = "semeval-lr"        # default: the file's name
    storage = "sqlite:///runs/semeval-lr.db"   # default: study.db in output_dir. A database URL, or a journal file
    sampler_seed = 0            # default: none, so workers started together draw different trials (a worker's
                                # seed is this + the trials the study holds when it starts)
    heartbeat = 60              # seconds (database storage): a trial silent for twice this is failed and retried
    retries = 2                 # how often a failed (killed) trial is tried again, resuming from its checkpoint
    [base]                      # any training setting, as for lists and grids
    task = "semeval"
    [space]                     # a distribution for each run setting
    lr = {low = 1e-5, high = 1e-3, log = true}           # float (log-uniform with `log`; `step` for a grid)
    epochs = {low = 1, high = 4}                         # int, when both ends are
    loss = ["bce", "focal", "asl"]                      # categorical ({choices = [...]} too)
    [pruner]
    kind = "median"             # median (default), halving, or none
    startup_trials = 2          # median: finished trials before any trial is pruned
    warmup_evals = 0            # evaluations of a trial that are never pruned
    reduction = 3               # halving: 1/reduction of the trials go on at each rung

Each trial is an ordinary run in OUTPUT/trial-NNNN/ (the number of the trial that first drew its settings: a retry
resumes its folder). It reports its dev metric after every evaluation (train/loop.fit's judge); a pruned trial ends
as an early stop does, with its report, and the pruner's reason is in its results and in the leaderboard. The
study's search space and base settings are saved in the study: a worker with other ones is refused.

Workers: every `minitune sweep FILE.toml` started on the same storage joins the study and trains trials until the
study has `trials`. A worker killed mid-trial leaves its trial running in the storage; the next worker to look fails
it and queues a retry (Optuna's RetryHeartbeatStaleTrialCallback) when its heartbeat is older than twice `heartbeat`
(database storage), or at once when the worker ran on this host and its process is gone (any storage).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from minitune.checkpoints.rundir import read_results
from minitune.checkpoints.runlock import LOCK_FILE, clear_folder, finished_before, is_debris
from minitune.config.load import make_config
from minitune.errors import ConfigError, MinituneError
from minitune.experiments.compare import ranking_metric
from minitune.experiments.search_report import leaderboard, write_search_report
from minitune.experiments.search_space import Search, definition
from minitune.train.distributed import env_world_size
from minitune.train.interrupt import TrainingInterrupted
from minitune.train.mlflow_tracking import tracked, tracking

STUDY_ATTR = "minitune"  # the study's user attribute holding its definition (space, base settings, metric)
MLFLOW_ATTR = "mlflow_run"  # the study's MLflow run (report_to mlflow), which every worker's trials nest in


def optuna_module():
    try:
        import optuna
    except ImportError:
        raise ConfigError("a search (method = ...) runs on Optuna: pip install 'minitune[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # minitune prints each trial's run, and errors, itself
    return optuna


@contextmanager
def _experimental(optuna):
    """Optuna's heartbeats and retries, stable in use since Optuna 2.9, still carry its "experimental" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _retry(optuna, retries: int):
    """Queues a failed trial again, with its settings and its retry history (its first try first)."""
    with _experimental(optuna):
        # The retry keeps the evaluations its first try reported: it resumes from that try's checkpoint, whose
        # evaluation count goes on from them, so the pruner compares the same evaluations.
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries, inherit_intermediate_values=True)


def open_storage(search: Search):
    """The study's storage: a database URL (with heartbeats, so a killed worker's trial is failed and retried), or
    a journal file."""
    optuna = optuna_module()
    retry = _retry(optuna, search.retries)
    url = search.storage
    try:
        if "://" not in url:
            if url.endswith((".db", ".sqlite", ".sqlite3")):
                raise ConfigError(f"storage {url!r} looks like a SQLite file: write it as sqlite:///{url}")
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        hb = search.heartbeat
        kw = dict(heartbeat_interval=hb, grace_period=2 * hb, heartbeat_stale_trial_callback=retry)
        with _experimental(optuna):
            try:
                return optuna.storages.RDBStorage(url, **kw)
            except Exception:  # workers started together race to create the tables: the loser reads them
                time.sleep(2)
                return optuna.storages.RDBStorage(url, **kw)
    except MinituneError:
        raise
    except Exception as e:  # a bad URL, a database that cannot be reached, a driver that is not installed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"storage {url!r} cannot be opened ({first}); give a database URL such as "
                          "sqlite:///study.db, or a journal file path") from None  # fmt: skip


def open_study(search: Search, overwrite: bool):
    """The study by name in its storage: created, or joined when its definition is this file's."""
    optuna = optuna_module()
    storage, now = open_storage(search), definition(search)
    if overwrite and search.study in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=search.study, storage=storage)
    pruner = _optuna_pruner(optuna, search.pruner)
    study = optuna.create_study(
        storage=storage, sampler=_sampler(optuna, search, 0), pruner=pruner, study_name=search.study,
        direction="maximize", load_if_exists=True,
    )  # fmt: skip
    if study.trials and search.sampler_seed is not None:  # a worker joining later draws on from where the study is
        study = optuna.load_study(
            study_name=search.study, storage=storage, sampler=_sampler(optuna, search, len(study.trials)), pruner=pruner
        )
    saved = study.user_attrs.get(STUDY_ATTR)
    if saved is None:
        study.set_user_attr(STUDY_ATTR, now)
    elif json.dumps(saved, sort_keys=True) != json.dumps(now, sort_keys=True):
        changed = [k for k in now if json.dumps(saved.get(k), sort_keys=True) != json.dumps(now[k], sort_keys=True)]
        raise ConfigError(
            f"study {search.study!r} in {search.storage} was started with another {' and '.join(changed)}: choose "
            "another study name, or start it over with --overwrite"
        )
    return study, storage


def _sampler(optuna, search: Search, offset: int):
    """TPE (with `constant_liar`: the trials other workers are training count as middling results, so they draw
    elsewhere) or random. `sampler_seed` + the trials the study already has: a worker started again does not
    draw its first trials again."""
    seed = None if search.sampler_seed is None else search.sampler_seed + offset
    if search.method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)


def _optuna_pruner(optuna, spec: dict):
    if spec["kind"] == "median":  # Optuna's warmup counts steps from 0; ours counts evaluations from 1
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec["startup_trials"], n_warmup_steps=spec["warmup_evals"] + 1
        )
    if spec["kind"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec["warmup_evals"] + 1, reduction_factor=spec["reduction"]
        )
    return optuna.pruners.NopPruner()


def run_search(search: Search, train, overwrite: bool = False) -> list[dict]:
    """Train trials of the study until it has `search.trials` (every worker's together); returns the leaderboard
    rows. `train(cfg, judge=...)` trains one run (runner.run_train)."""
    optuna = optuna_module()
    if env_world_size() > 1:
        raise ConfigError("a search trains one process per trial: start several workers instead of torchrun (README)")
    base = make_config(**search.base)
    metric = search.rank_by or base.loop.metric
    # report_to mlflow: the study is one MLflow run, which every worker continues; each trial is nested in it
    mlflow = tracking(base.loop.report_to, base.loop.tracking_uri, base.data.task)
    _check_folder(search)
    study, storage = open_study(search, overwrite)  # with overwrite, the study is deleted and started again
    if overwrite and search.output_dir.is_dir():  # the study's trials go with it; its storage file stays
        kept = tuple(p.name for p in search.output_dir.iterdir() if _storage_file(search, p))
        clear_folder(search.output_dir, keep=kept)
    search.output_dir.mkdir(parents=True, exist_ok=True)
    params = {"study": search.study, "method": search.method, "trials": search.trials, "storage": search.storage}
    with tracked(mlflow, search.output_dir, params, study.user_attrs.get(MLFLOW_ATTR)) as mlf:
        if mlflow is not None and MLFLOW_ATTR not in study.user_attrs:
            study.set_user_attr(MLFLOW_ATTR, mlflow.active_run().info.run_id)
        trained = _work(optuna, search, study, storage, train, metric)  # the report rewritten after each trial
        rows = write_search_report(search, study, metric) if not trained else leaderboard(study, metric)
        mlf.log_files(search.output_dir, ("leaderboard.json", "leaderboard.md"))
    print(f"this worker trained {trained} trial(s); the study has {_counted(optuna, study)} of {search.trials}")
    return rows


def _work(optuna, search: Search, study, storage, train, metric: str) -> int:
    """Trials, one at a time, while the study needs more; returns how many this worker trained."""
    trained = 0
    while True:
        _fail_dead_trials(optuna, study, storage, search.retries)
        if _counted(optuna, study) >= search.trials:
            break
        try:
            study.optimize(lambda trial: _objective(optuna, search, trial, train, metric), n_trials=1)
        except _OverBudget:  # another worker took the study's last trial as this one asked for it
            break
        except (KeyboardInterrupt, TrainingInterrupted):
            # Optuna has marked the trial failed; it is retried (from its checkpoint) by the next worker, or a rerun
            last = _mine(study)
            if last is not None and last.state == optuna.trial.TrialState.FAIL:
                _retry(optuna, search.retries)(study, last)
            raise
        trained += 1
        write_search_report(search, study, metric)
    return trained


class _OverBudget(Exception):  # noqa: N818 (not an error: the trial is told failed and never trains)
    pass


def _counted(optuna, study) -> int:
    """The trials that count toward the budget: finished, pruned, or being trained by some worker."""
    states = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.RUNNING)))


def _mine(study):
    """The last trial this process started, if any."""
    me = _worker()
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker", "").startswith(me + ":")]
    return mine[-1] if mine else None


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process(pid: int | str = "self") -> list[str]:
    """A process told apart from every other on every machine: host, boot, PID namespace (containers on one host
    share its name), PID and start time (a PID is reused). Without Linux's /proc, host and PID only."""
    me = [socket.gethostname()]
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
        me += [boot, os.readlink("/proc/self/ns/pid"), str(os.getpid() if pid == "self" else pid), stat[19]]
    except OSError:
        me += ["", "", str(os.getpid() if pid == "self" else pid), ""]
    return me


def _fail_dead_trials(optuna, study, storage, retries: int) -> None:
    """A running trial whose worker ran on this host and is gone (killed: it could not tell the study) is failed
    and retried. Database storage also fails trials whose heartbeat stopped, on any host (Optuna does it as each
    trial starts)."""
    with _experimental(optuna):
        optuna.storages.fail_stale_trials(study)  # database storage: trials whose heartbeat stopped, on any host
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # The process attribute is set by the trial's own process; a retry inherits its first try's until then.
        *process, number = t.user_attrs.get("process", []) or [None]
        if number != t.number or not _gone(process):
            continue
        try:  # Optuna has no public trial id; fail_stale_trials uses the same call
            if not storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            continue
        _retry(optuna, retries)(study, storage.get_trial(t._trial_id))


def _gone(process: list[str]) -> bool:
    """Whether a process recorded by `_process` has ended; False when this one cannot tell (another machine,
    container or boot, where Optuna's heartbeats decide)."""
    here = _process()
    if len(process) != len(here) or process[:3] != here[:3]:
        return False
    pid, started = int(process[3]), process[4]
    if started:  # /proc: the PID's process now, if any, must be the one that started then
        return _process(pid)[4] != started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process
        return False
    return False


def _objective(optuna, search: Search, trial, train, metric: str) -> float:
    """One trial: its settings drawn, its run trained (or resumed, when it retries a failed trial), its value the
    run's ranking metric on dev; a run the pruner stopped is told as pruned, with the pruner's reason."""
    states = optuna.trial.TrialState
    trials = trial.study.get_trials(deepcopy=False)
    counted = [t for t in trials[: trial.number] if t.state in (states.COMPLETE, states.PRUNED, states.RUNNING)]
    if len(counted) >= search.trials:  # workers that counted together: the later trial yields, untrained
        trial.set_user_attr("error", "over the study's trials: another worker took the last one")
        raise _OverBudget
    settings = {k: _suggest(trial, k, dim) for k, dim in search.space.items()}
    frozen = trials[trial.number]
    first = (frozen.system_attrs.get("retry_history") or [trial.number])[0]  # the retry callback's record
    out = search.output_dir / f"trial-{first:04d}"
    trial.set_user_attr("worker", f"{_worker()}:{trial.number}")  # shown in the leaderboard
    trial.set_user_attr("process", [*_process(), trial.number])  # tells whether it is still alive
    trial.set_user_attr("run", str(out.resolve()))
    cfg = make_config(**(search.base | settings | {"output_dir": str(out)}))
    if finished_before(out):  # a retry of a trial whose run finished before its worker could tell the study
        results = read_results(out)
    else:
        if (out / "checkpoint").is_dir():  # a retry continues where the killed try's last checkpoint left it
            cfg = cfg.with_settings(resume=str(out))
        elif out.exists():  # killed before its first checkpoint: nothing to keep
            cfg = cfg.with_settings(overwrite=True)
        judge = None if search.pruner["kind"] == "none" else _judge(optuna, trial, search.pruner, cfg.loop.metric)
        try:
            results = train(cfg, judge=judge)
        except MinituneError as e:  # kept with the failed trial, for the leaderboard
            trial.set_user_attr("error", str(e))
            raise
    value = ranking_metric(results, metric)
    why = results.get("train", {}).get("pruned")
    if why:
        trial.set_user_attr("pruned", why)
        raise optuna.TrialPruned(why)
    if value is None:
        raise ConfigError(f"trial {trial.number} ({out}): its results hold no dev {metric}")
    return value


def _suggest(trial, key: str, dim: dict):
    if dim["distribution"] == "categorical":
        return trial.suggest_categorical(key, dim["choices"])
    if dim["distribution"] == "int":
        return trial.suggest_int(key, dim["low"], dim["high"], step=dim["step"] or 1, log=dim["log"])
    return trial.suggest_float(key, dim["low"], dim["high"], step=dim["step"], log=dim["log"])


def _judge(optuna, trial, pruner: dict, metric: str):
    """The loop's judge (train/loop.fit): report the k-th evaluation to the study, and say why the pruner stops
    the run, if it does."""

    def judge(k: int, step: int, value: float) -> str | None:
        trial.report(value, k)
        if not trial.should_prune():
            return None
        where = f"{pruner['kind']} pruner at evaluation {k}"
        if pruner["kind"] == "halving":
            return f"{where}: {metric} {value:.4f} is not among the best 1/{pruner['reduction']} of the trials there"
        states = optuna.trial.TrialState
        trials = trial.study.get_trials(deepcopy=False)
        there = [t.intermediate_values[k] for t in trials if t.state == states.COMPLETE and k in t.intermediate_values]
        best = max(trials[trial.number].intermediate_values.values())  # with a retry's first try's (inherited)
        return (
            f"{where}: best {metric} so far {best:.4f} is below the median {statistics.median(there):.4f} of "
            f"{len(there)} finished trial(s) there"
        )

    return judge


def _check_folder(search: Search) -> None:
    """The search's folder holds its study's parts only: trial runs, the leaderboard, figures and the study's
    storage file when it lies there. Nothing is cleared: other workers may be writing in it."""
    out = search.output_dir
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"`output_dir` {out}: {blocker} is a file: choose a folder")
    if not out.is_dir():
        return  # made once the study opens: a study that is refused leaves nothing behind
    strays = sorted(p.name for p in out.iterdir() if not _search_part(search, p))
    if strays:
        raise ConfigError(
            f"`output_dir` {out} holds files that are not this search's ({', '.join(strays[:3])}): move them, or "
            "choose another output_dir"
        )


def _search_part(search: Search, p: Path) -> bool:
    own = ("leaderboard.json", "leaderboard.md", "figures", LOCK_FILE)
    trial = p.is_dir() and p.name.startswith("trial-")
    return p.name in own or trial or _storage_file(search, p) or is_debris(p)


def _storage_file(search: Search, p: Path) -> bool:
    """The study's SQLite or journal file, with the files its database or lock keeps beside it (-journal, -wal)."""
    url = search.storage
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") or "://" not in url else None
    return path is not None and p.parent.resolve() == path.parent.resolve() and p.name.startswith(path.name)
