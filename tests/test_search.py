"""A sweep's search on Optuna (experiments/search.py): a TPE study finishes and its best trial reloads, two workers
share one SQLite study, a losing trial is pruned with its reason, a worker killed with SIGKILL leaves a study the
next worker resumes, the loop's judge stops a run, `--report-to mlflow` nests trials in the study's run, and bad
search files are one line."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import optuna
import pytest

from minitune.cli import main
from minitune.experiments.search import open_study, run_search
from minitune.experiments.search_space import read_plan
from minitune.runner import run_train

REPO = Path(__file__).resolve().parents[1]
BASE = {"task": "humor", "model": "ffnn", "max_train_samples": 200, "max_eval_samples": 60, "max_length": 32}


def toml_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_search(path: Path, data_dir: Path, top: dict, space: dict, base: dict | None = None, pruner=None) -> Path:
    """A search file: the humor task with the bag-of-embeddings model on small subsets."""
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    lines += ["[base]"] + [
        f"{k} = {toml_value(v)}" for k, v in (BASE | {"data_dir": str(data_dir)} | (base or {})).items()
    ]
    lines += ["[space]"] + [f"{k} = {toml_value(v)}" for k, v in space.items()]
    if pruner is not None:
        lines += ["[pruner]"] + [f"{k} = {toml_value(v)}" for k, v in pruner.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def trials_of(out: Path) -> list[dict]:
    return json.loads((out / "leaderboard.json").read_text())


@pytest.mark.slow  # three small trainings and a prediction through the CLI
def test_tpe_study_finishes_and_its_best_trial_reloads(tmp_path, data_dir):
    out = tmp_path / "study"
    top = {"method": "tpe", "trials": 3, "output_dir": str(out), "sampler_seed": 0}
    path = write_search(tmp_path / "s.toml", data_dir, top, {"lr": {"low": 1e-3, "high": 1e-1, "log": True}})
    assert main(["sweep", str(path)]) == 0
    rows = trials_of(out)
    assert [r["state"] for r in rows] == ["complete"] * 3 and len({r["run"] for r in rows}) == 3
    assert rows[0]["value"] == max(r["value"] for r in rows)
    assert {p.name for p in (out / "figures").iterdir()} == {"history.png", "slices.png"}  # importance: >= 4 trials
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    assert study.best_trial.number == rows[0]["trial"] and study.best_value == pytest.approx(rows[0]["value"])
    # The best trial is an ordinary run: its model, reloaded by `minitune predict`, gives the probabilities it
    # recorded for dev.
    best = Path(rows[0]["run"])
    recorded = [json.loads(line) for line in (best / "predictions_dev.jsonl").read_text().splitlines()][:20]
    with (tmp_path / "texts.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["text"], *[[r["text"]] for r in recorded]])
    args = ["--model", str(best), "--input", str(tmp_path / "texts.csv"), "--output", str(tmp_path / "p.csv")]
    assert main(["predict", *args]) == 0
    with (tmp_path / "p.csv").open() as f:
        predicted = [float(r["prob_humor"]) for r in csv.DictReader(f)]
    assert predicted == pytest.approx([r["probs"][1] for r in recorded], abs=1e-5)
    # compare reads the study's trials from its folder
    assert main(["compare", str(out), "--output", str(tmp_path / "cmp")]) == 0
    compared = json.loads((tmp_path / "cmp.json").read_text())
    assert sorted(r["run"] for r in compared) == sorted(r["run"] for r in rows)


def scripted_train(scores: dict[float, list[float]]):
    """A stand-in for runner.run_train: the run's k-th evaluation scores scores[lr][k-1], seen by the judge."""

    def train(cfg, judge=None):
        why = None
        for k, value in enumerate(scores[cfg.loop.lr], start=1):
            why = judge(k, 10 * k, value) if judge else None
            if why:
                break
        dev = {"kind": "single_label", "macro_f1": value, "accuracy": value}
        return {"dev": dev, "train": {"pruned": why} if why else {}}

    return train


def test_a_losing_trial_is_pruned_and_the_reason_recorded(tmp_path, data_dir):
    out = tmp_path / "study"
    top = {"method": "tpe", "trials": 3, "output_dir": str(out)}
    pruner = {"kind": "median", "startup_trials": 1}
    search = read_plan(str(write_search(tmp_path / "p.toml", data_dir, top, {"lr": [0.1, 0.01]}, pruner=pruner)))
    study, _ = open_study(search, overwrite=False)
    for lr in (0.1, 0.01, 0.1):  # a good trial, a losing one, a good one
        study.enqueue_trial({"lr": lr})
    rows = run_search(search, scripted_train({0.1: [0.5, 0.6, 0.7], 0.01: [0.2, 0.3, 0.4]}))
    by_trial = {r["trial"]: r for r in rows}
    assert [by_trial[n]["state"] for n in range(3)] == ["complete", "pruned", "complete"]
    assert by_trial[1]["evals"] == 1 and by_trial[1]["value"] == 0.2  # stopped at its first evaluation
    assert "median pruner at evaluation 1: best macro_f1 so far 0.2000 is below the median 0.5000" in by_trial[1]["why"]
    states = [t.state for t in optuna.load_study(study_name="p", storage=search.storage).trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.COMPLETE,
    ]
    assert "| pruned |" in (out / "leaderboard.md").read_text()


def test_the_halving_pruner_stops_a_trial_outside_the_top_of_its_rung(tmp_path, data_dir):
    top = {"method": "tpe", "trials": 2, "output_dir": str(tmp_path / "study")}
    pruner = {"kind": "halving", "reduction": 2}
    search = read_plan(str(write_search(tmp_path / "h.toml", data_dir, top, {"lr": [0.1, 0.01]}, pruner=pruner)))
    study, _ = open_study(search, overwrite=False)
    for lr in (0.1, 0.01):
        study.enqueue_trial({"lr": lr})
    rows = run_search(search, scripted_train({0.1: [0.5, 0.6], 0.01: [0.3, 0.9]}))
    (losing,) = [r for r in rows if r["state"] == "pruned"]
    assert losing["trial"] == 1 and losing["evals"] == 1  # its later 0.9 was never reached
    assert (
        losing["why"] == "halving pruner at evaluation 1: macro_f1 0.3000 is not among the best 1/2 of the trials there"
    )


@pytest.mark.slow  # a small training run
def test_the_loops_judge_stops_a_run_which_then_finishes_as_pruned(tmp_path, data_dir):
    from minitune.config.load import make_config

    seen = []

    def judge(k, step, value):
        seen.append((k, step))
        return "told to stop" if k == 2 else None

    out = tmp_path / "run"
    cfg = make_config(**BASE, data_dir=str(data_dir), epochs=4, output_dir=str(out))
    results = run_train(cfg, judge=judge)
    t = results["train"]
    assert t["pruned"] == "told to stop" and t["stopped_early"] and t["epoch"] == 2 and t["step"] < t["total_steps"]
    assert [k for k, _ in seen] == [1, 2] and seen[1][1] == t["step"]
    assert "pruned at step" in (out / "report.txt").read_text() and (out / "model").is_dir()


def run_worker(path: Path, env_extra: dict | None = None, kill: tuple[str, int] | None = None) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"} | (env_extra or {})
    if kill:
        env |= {"KILL_MATCH": kill[0]}
        cmd = [sys.executable, str(REPO / "tests" / "kill_worker.py"), str(kill[1]), "sweep", str(path)]
    else:
        cmd = [sys.executable, "-m", "minitune", "sweep", str(path)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # two worker processes, six small trainings
def test_two_workers_on_one_sqlite_study_train_disjoint_trials(tmp_path, data_dir):
    out = tmp_path / "study"
    top = {"method": "random", "trials": 6, "output_dir": str(out)}
    path = write_search(tmp_path / "w.toml", data_dir, top, {"lr": {"low": 1e-3, "high": 1e-1, "log": True}})
    workers = [run_worker(path) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    trained = [int(log.split("this worker trained ")[1].split(" ")[0]) for log in logs]
    rows = trials_of(out)
    assert sum(trained) == len(rows) == 6 and all(r["state"] in ("complete", "pruned") for r in rows)
    # Each worker's trials, as the study records them, are as many as it says it trained (how the 6 split between
    # them depends on the machine's speed, so it is not asserted).
    pids = [str(w.pid) for w in workers]
    counts = [sum(r["worker"].split(":")[1] == pid for r in rows) for pid in pids]
    assert counts == trained
    for r in rows:  # and each trial's folder was trained once: its log's steps rise, none twice
        records = [json.loads(x) for x in (Path(r["run"]) / "metrics.jsonl").read_text().splitlines()]
        for kind in ("train", "eval"):  # (a short trial may log no train record: log_every is 10 steps)
            steps = [x["step"] for x in records if x["type"] == kind]
            assert steps == sorted(set(steps)) and (steps or kind == "train"), r["run"]


@pytest.mark.slow  # a worker killed mid-trial, then a second worker finishing the study
def test_a_worker_killed_with_sigkill_leaves_a_study_the_next_worker_resumes(tmp_path, data_dir):
    out = tmp_path / "study"
    # A long heartbeat: the next worker notices at once that the trial's process is gone (this host), not from
    # the heartbeat (test_a_trial_whose_heartbeat_stopped_is_failed_and_retried).
    top = {"method": "tpe", "trials": 2, "output_dir": str(out), "heartbeat": 600}
    base = {"epochs": 3, "max_train_samples": 300}
    space = {"lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    path = write_search(tmp_path / "k.toml", data_dir, top, space, base, pruner={"kind": "none"})
    killed = run_worker(path, kill=("trial-0000/checkpoint", 2))  # at its second checkpoint (epoch 2 of 3)
    log = killed.communicate(timeout=600)[0]
    assert killed.returncode == -signal.SIGKILL, log[-2000:]
    search = read_plan(str(path))
    study, _ = open_study(search, overwrite=False)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]  # the kill told it nothing
    assert json.loads((out / "trial-0000" / "run.json").read_text())["status"] == "running"
    rows = run_search(search, run_train)  # this worker sees the killed one's process gone: fails and retries it
    by_trial = {r["trial"]: r for r in rows}
    assert [by_trial[n]["state"] for n in range(3)] == ["fail", "complete", "complete"]
    assert by_trial[1]["retry_of"] == 0 and by_trial[1]["run"] == by_trial[0]["run"]  # the retry took its folder
    resumed = json.loads((out / "trial-0000" / "results.json").read_text())
    assert resumed["config"]["resume"] == str(out / "trial-0000") and resumed["train"]["epoch"] == 3
    assert json.loads((out / "trial-0000" / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow  # waits for a heartbeat to go stale (8 s)
def test_a_trial_whose_heartbeat_stopped_is_failed_and_retried(tmp_path, data_dir):
    out = tmp_path / "study"
    # A grace period of 6 s: the first look, at once, must find the heartbeat fresh even on a loaded machine.
    top = {"method": "random", "trials": 1, "output_dir": str(out), "heartbeat": 3}
    search = read_plan(str(write_search(tmp_path / "h.toml", data_dir, top, {"lr": [0.1]}, pruner={"kind": "none"})))
    study, storage = open_study(search, overwrite=False)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's: a study with heartbeats is meant for optimize
        lost = study.ask({"lr": optuna.distributions.CategoricalDistribution([0.1])})  # a worker on another machine
    lost.set_user_attr("process", ["elsewhere", "boot", "ns", "1", "0", lost.number])
    storage.record_heartbeat(lost._trial_id)
    rows = run_search(search, scripted_train({0.1: [0.5]}))
    assert [(r["trial"], r["state"]) for r in rows] == [(0, "running")]  # its heartbeat is fresh: still training
    time.sleep(8)  # older than the grace period (2 heartbeats), in SQLite's whole seconds
    rows = run_search(search, scripted_train({0.1: [0.5]}))
    assert sorted((r["trial"], r["state"], r["retry_of"]) for r in rows) == [(0, "fail", None), (1, "complete", 0)]


@pytest.mark.slow  # MLflow imports itself and makes its database (about 5 s)
@pytest.mark.parametrize("store", ["sqlite", "folder"])
def test_report_to_mlflow_nests_each_trial_in_the_studys_run(tmp_path, data_dir, monkeypatch, store):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if store == "folder":  # MLflow's plain-folder store, which it keeps behind this switch since 3.x
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "study"
    base = {"report_to": "mlflow", "tracking_uri": uri, "log_every": 2, "epochs": 2}
    top = {"method": "random", "trials": 2, "output_dir": str(out)}
    path = write_search(tmp_path / "m.toml", data_dir, top, {"lr": [0.01, 0.03]}, base, pruner={"kind": "none"})
    assert main(["sweep", str(path)]) == 0
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("minitune-humor").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "study")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and sorted(r.info.run_name for r in children) == ["trial-0000", "trial-0001"]
    assert all(r.info.status == "FINISHED" for r in runs)
    child = children[0]
    folder = out / child.info.run_name
    drawn = json.loads(next(r for r in trials_of(out) if r["run"].endswith(child.info.run_name))["settings"])
    assert float(child.data.params["lr"]) == drawn["lr"] and child.data.params["task"] == "humor"
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in records if r["type"] == "train"]
    history = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "train/loss"))
    assert [s for s, _ in history] == [s for s, _ in train] and len(train) == 7  # 14 steps, logged every 2
    assert [v for _, v in history] == pytest.approx([v for _, v in train], rel=1e-6)
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"results.json", "report.txt", "report.html", "config.json", "figures"} <= artifacts
    assert {"leaderboard.json", "leaderboard.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.parametrize(
    "top, space, message",
    [
        ({}, {"lr": {"distribution": "normal", "low": 0, "high": 1}}, "distribution 'normal' is not known"),
        ({}, {"lr": {"low": 1e-3, "high": 1e-5}}, "[space] lr: low 0.001 is above high 1e-05"),
        ({}, {"lrr": [1e-3]}, "unknown key 'lrr' in [space] (did you mean 'lr'?)"),
        ({}, {"lr": {"low": 0.0, "high": 1e-3, "log": True}}, "a log distribution needs low > 0"),
        ({}, {"epochs": {"low": -2, "high": 3}}, "[space] epochs = -2: epochs must be a non-negative integer"),
        ({"method": "grid"}, {"lr": [1e-3]}, "method 'grid' is not known"),
        ({"storage": "nosuchdb://x"}, {"lr": [1e-3]}, "storage 'nosuchdb://x' cannot be opened"),
        ({"storage": "study.db"}, {"lr": [1e-3]}, "write it as sqlite:///study.db"),
        ({"sampler_seed": "x"}, {"lr": [1e-3]}, "sampler_seed must be an integer of at least 0"),
        ({"output_dir": 5}, {"lr": [1e-3]}, "output_dir must be a non-empty string, got 5"),
        ({}, {"lr": {"low": 1e-5, "high": 1e-3, "step": 0.0}}, "step must be a positive number, got 0.0"),
        ({"rank_by": "macro_f1"}, {"lr": [1e-3]}, "the pruner sees each evaluation's accuracy (the base's metric)"),
    ],
)
def test_bad_search_files_are_one_line(tmp_path, data_dir, capsys, top, space, message):
    top = {"method": "tpe", "trials": 2, "output_dir": str(tmp_path / "out")} | top
    base = {"metric": "accuracy"} if "rank_by" in top else None
    path = write_search(tmp_path / "bad.toml", data_dir, top, space, base)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_study_name_with_another_search_space_is_refused(tmp_path, data_dir, capsys):
    top = {"method": "tpe", "trials": 1, "output_dir": str(tmp_path / "out"), "study": "shared"}
    first = read_plan(str(write_search(tmp_path / "a.toml", data_dir, top, {"lr": [0.1, 0.01]})))
    open_study(first, overwrite=False)
    path = write_search(tmp_path / "b.toml", data_dir, top, {"lr": [0.1, 0.02]})
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study 'shared'" in err and "another space" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["study.db"]  # the first file's study only


def test_a_study_with_other_base_settings_is_refused(tmp_path, data_dir, capsys):
    top = {"method": "tpe", "trials": 1, "output_dir": str(tmp_path / "out"), "study": "shared"}
    open_study(read_plan(str(write_search(tmp_path / "a.toml", data_dir, top, {"lr": [0.1]}))), overwrite=False)
    path = write_search(tmp_path / "b.toml", data_dir, top, {"lr": [0.1]}, base={"epochs": 7})
    assert main(["sweep", str(path)]) == 2
    assert "study 'shared' in " in (err := capsys.readouterr().err) and "another base" in err


def test_a_seeded_worker_started_again_draws_on_instead_of_repeating_its_draws(tmp_path, data_dir):
    top = {"method": "tpe", "trials": 1, "output_dir": str(tmp_path / "out"), "sampler_seed": 3}
    space = {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}
    train = scripted_train(defaultdict(lambda: [0.5]))
    first = run_search(read_plan(str(write_search(tmp_path / "s.toml", data_dir, top, space))), train)
    top["trials"] = 2
    both = run_search(read_plan(str(write_search(tmp_path / "s.toml", data_dir, top, space))), train)
    drawn = [json.loads(r["settings"])["lr"] for r in sorted(both, key=lambda r: r["trial"])]
    assert drawn[0] == json.loads(first[0]["settings"])["lr"] and drawn[1] != drawn[0]


def test_the_shipped_search_config_reads():
    search = read_plan(str(REPO / "configs" / "semeval-minilm-search.toml"))
    assert search.method == "tpe" and set(search.space) == {"lr", "batch_size", "warmup_ratio"}
    assert search.space["lr"]["log"] and search.space["batch_size"]["distribution"] == "categorical"


def test_a_grid_with_the_task_in_its_variations_still_runs(tmp_path, data_dir):
    from minitune.experiments.sweep import read_sweep, run_sweep

    path = tmp_path / "grid.toml"
    path.write_text(
        f'output_dir = "{tmp_path / "g"}"\n[base]\nmodel = "ffnn"\ndata_dir = "{data_dir}"\n'
        '[[variations]]\ntask = "humor"\n[grid]\nlr = [0.1, 0.01]\n'
    )
    rows = run_sweep(read_sweep(str(path)), lambda cfg: scripted_train({0.1: [0.4], 0.01: [0.6]})(cfg))
    assert sorted(r["value"] for r in rows) == [0.4, 0.6]


def test_without_optuna_a_search_is_one_line_naming_the_extra(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    top = {"method": "tpe", "trials": 1, "output_dir": str(tmp_path / "out")}
    path = write_search(tmp_path / "s.toml", data_dir, top, {"lr": [0.1]})
    assert main(["sweep", str(path)]) == 2
    assert "pip install 'minitune[search]'" in capsys.readouterr().err


@pytest.mark.slow  # MLflow's import and database, and a run stopped and resumed
def test_a_resumed_run_continues_its_mlflow_run(tmp_path, data_dir, monkeypatch):
    from conftest import interrupt_fit

    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run"
    args = ["--task", "humor", "--model", "ffnn", "--data-dir", str(data_dir), "--max-train-samples", "200"]
    args += ["--max-eval-samples", "60", "--max-length", "32", "--epochs", "2", "--log-every", "2"]
    args += ["--report-to", "mlflow", "--tracking-uri", uri, "--output-dir", str(out)]
    interrupt_fit(monkeypatch, 9, lambda out_dir, resume: not resume)  # stopped in the second epoch
    assert main(args) == 130
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["--resume", str(out)]) == 0
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("minitune-humor").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in records if r["type"] == "train"]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert [s for s, _ in history] == [s for s, _ in train]  # each step once: the stop checkpointed where it was
    assert [v for _, v in history] == pytest.approx([v for _, v in train], rel=1e-6)


def test_a_dead_workers_trial_in_a_journal_file_is_retried_and_overwrite_starts_over(tmp_path, data_dir):
    out, journal = tmp_path / "study", tmp_path / "shared" / "study.log"
    top = {"method": "random", "trials": 2, "output_dir": str(out), "storage": str(journal)}
    search = read_plan(str(write_search(tmp_path / "j.toml", data_dir, top, {"lr": [0.1]}, pruner={"kind": "none"})))
    study, _ = open_study(search, overwrite=False)
    code = "import json; from minitune.experiments.search import _process; print(json.dumps(_process()))"
    gone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    dead = study.ask({"lr": optuna.distributions.CategoricalDistribution([0.1])})  # a worker that was killed
    dead.set_user_attr("process", [*json.loads(gone.stdout), dead.number])
    rows = run_search(search, scripted_train({0.1: [0.5]}))
    by_trial = {r["trial"]: r for r in rows}
    assert [by_trial[n]["state"] for n in range(3)] == ["fail", "complete", "complete"] and by_trial[1]["retry_of"] == 0
    # --overwrite: the study deleted from its storage, the folder's trials cleared, a new study with another space
    search = read_plan(str(write_search(tmp_path / "j.toml", data_dir, top, {"lr": [0.2]}, pruner={"kind": "none"})))
    rows = run_search(search, scripted_train({0.2: [0.7]}), overwrite=True)
    assert [(r["state"], r["value"]) for r in rows] == [("complete", 0.7)] * 2
