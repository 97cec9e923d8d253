"""One run per folder: refusals, the lock, an atomic finish (killed at every write of it), `--resume DIR` alone, run
files read defensively, and the inputs of predict, export, compare, report and distill checked as training's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import minitune
from minitune.checkpoints.runlock import debris
from minitune.cli import main
from minitune.config.load import make_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "ffnn", "--epochs", "1", "--max-train-samples", "64", "--max-eval-samples", "32", "--max-length"]
TINY += ["24"]


def run(data_dir, out, *args, task="humor") -> int:
    return main(["--task", task, *TINY, "--data-dir", str(data_dir), "--output-dir", str(out), *args])


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs") / "humor"
    assert run(data_dir, out) == 0
    return out


def test_a_finished_run_is_marked_last_and_keeps_no_checkpoint(finished):
    marker = json.loads((finished / "run.json").read_text())
    assert marker["status"] == "finished" and (marker["command"], marker["task"], marker["model"]) == (
        "train",
        "humor",
        "ffnn",
    )
    assert not (finished / "checkpoint").exists() and not (finished / "best.safetensors").exists()
    assert not (finished / ".lock").exists() and (finished / "model" / "model.safetensors").is_file()


def test_another_run_in_a_run_folder_is_refused_in_one_line(finished, data_dir, capsys):
    before = sorted(p.name for p in finished.iterdir())
    for command in ([], ["cv", "--folds", "2"]):
        assert main([*command, "--task", "humor", *TINY, "--data-dir", str(data_dir), "--output-dir", str(finished)])
        err = last_error(capsys)
        assert f"--output-dir {finished} holds a finished train run of humor with ffnn" in err and "--overwrite" in err
    assert sorted(p.name for p in finished.iterdir()) == before  # nothing written


def test_default_folders_differ_by_command():
    names = {
        c: make_config(task="humor", model="ffnn", command=c, teacher=["t"] if c == "distill" else None)
        for c in ("train", "cv", "distill")
    }
    dirs = {c: cfg.outputs.output_dir for c, cfg in names.items()}
    assert dirs == {"train": "runs/humor-ffnn", "cv": "runs/cv-humor-ffnn", "distill": "runs/distill-humor-ffnn"}
    assert make_config(task="humor", seeds=[1, 2]).outputs.output_dir == "runs/humor-minilm-seeds"


def test_overwrite_starts_over_and_refuses_a_folder_that_is_not_a_run(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert run(data_dir, out) == 0
    (out / "stray.txt").write_text("left by the old run")
    assert run(data_dir, out, "--overwrite", "--seed", "7") == 0
    assert not (out / "stray.txt").exists() and json.loads((out / "config.json").read_text())["seed"] == 7
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's own files")
    assert run(data_dir, mine, "--overwrite") == 2
    assert "holds files that are not a minitune run" in last_error(capsys) and (mine / "notes.txt").is_file()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert run(data_dir, afile) == 2 and f"--output-dir {afile} is a file" in last_error(capsys)
    assert run(data_dir, afile / "sub") == 2 and f"--output-dir {afile / 'sub'}: {afile} is a file" in last_error(
        capsys
    )


HOLD_LOCK = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "now"}).encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_held_lock_stops_a_second_process_and_is_let_go_when_its_holder_dies(tmp_path, data_dir, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run(data_dir, out) == 2
        assert f"is in use by another minitune run (PID {holder.pid} on" in last_error(capsys)
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written
    finally:
        holder.kill()  # SIGKILL: no cleanup; the kernel lets the lock go, the file stays
        holder.wait()
    assert (out / ".lock").exists() and run(data_dir, out) == 0
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_two_concurrent_runs_on_one_folder_one_wins_the_other_stops_in_one_line(tmp_path, data_dir):
    """The second run starts while the first surely runs (it trains for minutes unless stopped), is refused, and the
    first, stopped after that, leaves one run's files."""
    out = tmp_path / "both"
    argv = [sys.executable, str(REPO / "run.py"), "--task", "humor", "--model", "ffnn", "--epochs", "50"]
    argv += ["--max-length", "24", "--data-dir", str(data_dir), "--output-dir", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint").is_dir():  # claimed, and it has something to resume
            assert time.monotonic() < deadline and first.poll() is None, "the first run never checkpointed"
            time.sleep(0.1)
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=240)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and f"in use by another minitune run (PID {first.pid} on" in lines[-1]
    assert first.returncode == 130 and "continue with: minitune --resume" in first_err
    assert json.loads((out / "run.json").read_text())["status"] == "running" and not (out / ".lock").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["type"] == "eval"]
    assert steps and len(steps) == len(set(steps))  # one run's log, not two


def test_stopping_a_cv_run_after_its_folds_keeps_them_and_resume_finishes(tmp_path, data_dir, capsys, monkeypatch):
    """Ctrl-C after the folds finished (their checkpoints already dropped): the folds are worth keeping, so the
    folder stays, the message says how to continue, and `--resume` finishes without training a fold again."""
    import minitune.experiments.cv as cv

    out = tmp_path / "cv"
    argv = ["cv", "--task", "humor", *TINY, "--folds", "2", "--data-dir", str(data_dir), "--output-dir", str(out)]
    finish_splits = cv.finish_splits

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cv, "finish_splits", stopped)
    assert main(argv) == 130
    assert "the finished parts of the run are kept" in capsys.readouterr().err
    assert (out / "fold0" / "fold_scores.npz").is_file() and (out / "fold1" / "fold_scores.npz").is_file()
    monkeypatch.setattr(cv, "finish_splits", finish_splits)
    assert main(["cv", "--resume", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_a_run_begun_with_overwrite_and_stopped_resumes_from_its_folder_alone(tmp_path, data_dir, capsys, monkeypatch):
    """`--overwrite` said how that run began; `--resume DIR`, as its own message says, continues it (and does not
    clear it again)."""
    import minitune.experiments.holdout as holdout

    out = tmp_path / "run"
    assert run(data_dir, out) == 0
    finish_splits = holdout.finish_splits

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(holdout, "finish_splits", stopped)
    assert run(data_dir, out, "--overwrite", "--seed", "3") == 130
    assert f"--resume {out}" in capsys.readouterr().err and (out / "checkpoint").is_dir()
    monkeypatch.setattr(holdout, "finish_splits", finish_splits)
    assert main(["--resume", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert json.loads((out / "run.json").read_text())["status"] == "finished" and saved["seed"] == 3


def test_what_a_stopped_run_leaves_decides_whether_its_folder_is_kept(tmp_path):
    from minitune.checkpoints.runlock import nothing_to_lose

    def folder(name: str, *files: str) -> Path:
        d = tmp_path / name
        (d / "run.json").parent.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"status": "running"}))
        for f in files:
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_text(json.dumps({"status": "finished"}) if f.endswith("run.json") else "x")
        return d

    assert nothing_to_lose(folder("empty", "config.json", "metrics.jsonl"))
    assert not nothing_to_lose(folder("fold", "fold0/fold_scores.npz"))
    assert not nothing_to_lose(folder("seed", "seed1/run.json", "seed1/model/config.json"))
    assert not nothing_to_lose(folder("member", "seed1/run.json"))
    assert not nothing_to_lose(folder("model", "model/config.json"))


def kill_worker(k: int, args: list[str], log: Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"} | ({"KILL_LOG": str(log)} if log else {})
    cmd = [sys.executable, str(REPO / "tests" / "kill_worker.py"), str(k), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.slow
def test_a_kill_at_any_write_of_the_finish_leaves_an_unfinished_run_that_resume_finishes(tmp_path, data_dir):
    """Killed (SIGKILL) at each file write of the finishing sequence, and at each removal after it: the folder is
    either a run marked unfinished, which `--resume DIR` alone finishes into the uninterrupted run's results and
    weights, or (once the marker is written) a finished run that is whole."""
    args = ["--task", "humor", *TINY, "--data-dir", str(data_dir)]
    straight, log = tmp_path / "straight", tmp_path / "events.log"
    assert kill_worker(0, [*args, "--output-dir", str(straight)], log).returncode == 0
    events = log.read_text().splitlines()
    start = next(i for i, path in enumerate(events) if path.endswith("dev_predictions.csv"))
    marker = max(i for i, path in enumerate(events) if path.endswith("run.json"))
    expected = json.loads((straight / "results.json").read_text())
    assert len(events) - start >= 10  # predictions, scores, model/, figures, results, reports, marker, removals
    for k in range(start + 1, len(events) + 1):  # kill before the k-th event (1-based)
        out = tmp_path / f"k{k}"
        killed = kill_worker(k, [*args, "--output-dir", str(out)])
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        status = json.loads((out / "run.json").read_text())["status"]
        if k - 1 <= marker:  # the marker was not written yet
            assert status == "running", f"killed at event {k} ({events[k - 1]})"
            assert main(["--resume", str(out)]) == 0, f"resume after a kill at {events[k - 1]}"
        assert json.loads((out / "run.json").read_text())["status"] == "finished"
        got = json.loads((out / "results.json").read_text())
        assert (
            got["dev"]["macro_f1"] == expected["dev"]["macro_f1"] and got["train"]["best"] == expected["train"]["best"]
        )
        for name, tensor in weights(straight).items():
            assert torch.equal(tensor, weights(out)[name]), f"{name} after a kill at {events[k - 1]}"
        assert (out / "report.html").is_file() and (out / "dev_predictions.csv").is_file()
        assert not debris(out), f"half-written files left after a kill at {events[k - 1]}: {debris(out)}"
        shutil.rmtree(out)  # the suite's temporary space stays small


def test_resume_dir_alone_continues_with_the_saved_settings_and_names_only_what_differs(tmp_path, data_dir, capsys):
    out = tmp_path / "r"
    args = ["--task", "humor", *TINY[:2], "--epochs", "2", "--max-length", "24", "--data-dir", str(data_dir)]
    args += [
        "--max-train-samples",
        "64",
        "--max-eval-samples",
        "32",
        "--output-dir",
        str(out),
        "--keep-checkpoints",
        "1",
    ]
    assert main(args) == 0
    marker = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(marker | {"status": "running"}))  # as if killed while finishing
    assert main(["--resume", str(out)]) == 0  # no --task: the run's own config.json holds every setting
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    (out / "run.json").write_text(json.dumps(marker | {"status": "running"}))
    assert main(["--resume", str(out), "--epochs", "3", "--lr", "1e-3"]) == 2  # lr equals the run's: not named
    err = last_error(capsys)
    assert "--epochs 3 (the run has 2) differ" in err and "--lr" not in err and "--task" not in err
    assert main(["cv", "--resume", str(out)]) == 2
    assert f"holds a train run: continue it with minitune --resume {out}" in last_error(capsys)


def test_seeds_resumed_with_other_seeds_is_refused(tmp_path, data_dir, capsys):
    out = tmp_path / "seeds"
    assert run(data_dir, out, "--seeds", "1", "2") == 0
    assert main(["--resume", str(out), "--seeds", "1", "2", "3"]) == 2
    assert "--seeds 1 2 3 (the run has 1 2) differ" in last_error(capsys)  # as the flags are written


def test_cv_resumed_with_another_fold_count_is_refused(tmp_path, data_dir, capsys):
    out = tmp_path / "cv"
    base = ["cv", "--task", "humor", *TINY, "--data-dir", str(data_dir), "--output-dir", str(out)]
    assert main([*base, "--folds", "2"]) == 0
    assert main([*base, "--folds", "3", "--resume", str(out)]) == 2
    assert "--folds 3 (the run has 2) differ" in last_error(capsys)


def test_a_sweep_with_changed_settings_or_an_unknown_rank_by_is_refused(tmp_path, data_dir, capsys):
    sweep = tmp_path / "s.toml"
    out = tmp_path / "sweep"
    body = f'output_dir = "{out}"\n[base]\ntask = "humor"\nmodel = "ffnn"\nepochs = 1\nmax_train_samples = 48\n'
    body += f'max_eval_samples = 16\nmax_length = 24\ndata_dir = "{data_dir}"\n[grid]\nlr = [1e-3]\n'
    sweep.write_text(body)
    assert main(["sweep", str(sweep)]) == 0
    assert main(["sweep", str(sweep)]) == 0  # the same sweep again: its trials are read back
    (out / "notes.txt").write_text("a user's own file")
    assert main(["sweep", str(sweep), "--overwrite"]) == 2  # overwrite clears a sweep's own files only
    assert "holds files that are not this sweep's (notes.txt)" in last_error(capsys) and (out / "notes.txt").is_file()
    (out / "notes.txt").unlink()
    (out / "sweep.json").unlink()  # a sweep written before sweep.json: its trials are its own
    assert main(["sweep", str(sweep)]) == 0 and (out / "sweep.json").is_file()
    assert [r["status"] for r in json.loads((out / "leaderboard.json").read_text())] == ["read"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's own file")
    elsewhere = sweep.with_name("elsewhere.toml")
    elsewhere.write_text(body.replace(f'output_dir = "{out}"', f'output_dir = "{mine}"'))
    assert main(["sweep", str(elsewhere), "--overwrite"]) == 2 and (mine / "notes.txt").is_file()
    assert "holds files that are not a minitune run, not a sweep" in last_error(capsys)
    sweep.write_text(body.replace("epochs = 1", "epochs = 2"))
    assert main(["sweep", str(sweep)]) == 2
    assert "holds a sweep with other settings (settings epochs)" in last_error(capsys)
    (out / "sweep.json").write_text("{")  # damaged: one line, and --overwrite starts over
    assert main(["sweep", str(sweep)]) == 2 and "start the sweep over with --overwrite" in last_error(capsys)
    (out / "sweep.json").unlink()  # removed, with the base changed: each trial's own settings are checked
    assert main(["sweep", str(sweep)]) == 2
    said = last_error(capsys)
    assert "trial phase1-lr=0.001 was trained with other settings (epochs 2 (the run has 1))" in said, said
    assert main(["sweep", str(sweep), "--overwrite"]) == 0
    sweep.write_text('rank_by = "f1_score"\n' + body)
    assert main(["sweep", str(sweep)]) == 2 and "rank_by 'f1_score' is not a metric of humor" in last_error(capsys)


@pytest.mark.parametrize(
    "damage",
    [
        ("results.json", '{"task": "humor", "dev": {'),
        ("results.json", "[1, 2]"),
        ("results.json", '{"task": "humor"}'),
        ("metrics.jsonl", None),  # a last line cut short: dropped, the report draws the rest
    ],
)
def test_run_files_are_read_defensively(finished, tmp_path, damage, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    name, text = damage
    path = run_dir / name
    path.write_text(text if text is not None else path.read_text() + '{"type": "train", "st')
    code = main(["report", str(run_dir)])
    if text is None:
        assert code == 0
        return
    said = {"[": "holds a JSON list, not the object minitune writes", '{"task": "humor"}': "holds no split's scores"}
    expected = next((v for k, v in said.items() if text.startswith(k)), "not valid JSON")
    said = last_error(capsys)
    assert code == 2 and f"{path}: {expected}" in said
    # a finished run kept no checkpoint to rebuild the file from: the advice is to train it again, not --resume
    assert f"rerun the command that made {run_dir} with --overwrite" in said and "--resume" not in said
    assert main(["compare", str(run_dir), "--output", str(tmp_path / "c")]) == 2
    assert f"{path}: {expected}" in last_error(capsys)


def test_a_damaged_file_of_an_unfinished_run_is_rewritten_by_resume_and_a_lost_model_config_is_named(
    finished, tmp_path, capsys
):
    from minitune.checkpoints.rundir import damaged_fix

    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    marker = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(marker | {"status": "running"}))
    assert (
        damaged_fix(run_dir / "results.json") == f"continue the run, which writes it again: minitune --resume {run_dir}"
    )
    (run_dir / "run.json").write_text(json.dumps(marker))
    (run_dir / "model" / "config.json").unlink()
    src = tmp_path / "in.csv"
    src.write_text("text\nA pun a day.\n")
    assert main(["predict", "--model", str(run_dir), "--input", str(src), "--output", str(tmp_path / "p.csv")]) == 2
    assert "its model/ has no config.json (damaged or deleted)" in last_error(capsys)


def test_damaged_thresholds_are_refused_in_one_line(tmp_path):
    from minitune.errors import ConfigError
    from minitune.predict import thresholds_for

    (tmp_path / "thresholds.json").write_text(json.dumps({"use": "tuned", "per_label": {"a": "high"}}))
    with pytest.raises(ConfigError, match="its thresholds are damaged"):
        thresholds_for(tmp_path, ["a"], None)
    (tmp_path / "thresholds.json").write_text(json.dumps({"use": "tuned", "per_label": {"a": 0.25}}))
    assert thresholds_for(tmp_path, ["a", "b"], None).tolist() == [0.25, 0.5]


def test_predict_checks_its_inputs_as_training_does(finished, tmp_path, data_dir, capsys):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,A pun a day.\n2,\n3,The bus is late.\n")
    out = tmp_path / "p.csv"
    cases = [
        (["--model", str(finished), "--threshold", "1.5"], "--threshold must be in (0, 1), got 1.5"),
        (["--model", str(finished), "--threshold", "0.3"], "--threshold applies to multi-label models"),
        (["--model", str(tmp_path / "nope")], "no such directory"),
        (["--model", str(finished), "--output", str(tmp_path)], "is a folder"),
    ]
    for flags, message in cases:
        argv = ["predict", "--input", str(src), "--output", str(out), *flags]
        assert main(argv) == 2 and message in last_error(capsys), flags
    marker = json.loads((finished / "run.json").read_text())
    try:
        (finished / "run.json").write_text(json.dumps(marker | {"status": "running"}))
        assert main(["predict", "--model", str(finished), "--input", str(src), "--output", str(out)]) == 2
        assert "has not finished; finish it with minitune --resume" in last_error(capsys)
    finally:
        (finished / "run.json").write_text(json.dumps(marker))
    assert main(["predict", "--model", str(finished), "--input", str(src), "--output", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["id", "1", "2", "3"]  # the empty text keeps its row
    assert rows[2].startswith("2,,,") and not (tmp_path / "nope").exists()
    nulls = tmp_path / "in.jsonl"  # a JSON null is an empty text: it keeps its row too
    nulls.write_text('{"text": "A pun a day."}\n{"text": null}\n')
    assert main(["predict", "--model", str(finished), "--input", str(nulls), "--output", str(out)]) == 0
    assert [r.split(",")[0] for r in out.read_text().splitlines()][1:] == ["A pun a day.", ""]


def test_predict_refuses_a_max_length_past_the_models_positions(tmp_path, capsys):
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40, num_labels=2,
    )  # fmt: skip
    model_dir = tmp_path / "bert"
    transformers.BertForSequenceClassification(cfg).save_pretrained(model_dir)
    minitune.load_tokenizer("minilm").save_pretrained(model_dir)
    src = tmp_path / "in.csv"
    src.write_text("text\nhello\n")
    argv = ["predict", "--model", str(model_dir), "--input", str(src), "--output", str(tmp_path / "p.csv")]
    assert main([*argv, "--max-length", "64"]) == 2
    assert "--max-length 64 exceeds the model's 40 positions; use at most 40" in last_error(capsys)


def test_python_predictor_equals_the_cli(finished, tmp_path):
    texts = ["What do you call a fish with no eyes? A fsh.", "The quarterly report is due on Monday."]
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "\n".join(texts) + "\n")
    assert main(["predict", "--model", str(finished), "--input", str(src), "--output", str(tmp_path / "p.csv")]) == 0
    rows = [line.split(",") for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    predictor = minitune.Predictor(finished)
    got = predictor.predict(texts)
    assert got.label_names == ["not_humor", "humor"] and got.labels == [r[1] for r in rows]
    np.testing.assert_allclose(got.probabilities, [[float(x) for x in r[2:]] for r in rows], atol=1e-6)
    gaps = predictor.predict([texts[0], "", None, float("nan"), texts[1]])  # empty cells keep their place
    assert gaps.labels == [got.labels[0], "", "", "", got.labels[1]] and np.isnan(gaps.probabilities[1:4]).all()
    np.testing.assert_allclose(gaps.probabilities[[0, 4]], got.probabilities, atol=1e-6)
    with pytest.raises(minitune.MinituneError, match="texts is one string: pass a list of texts"):
        predictor.predict(texts[0])


def test_nan_labels_and_command_typos_end_in_one_line(tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,pos\nb,nan\nc,neg\nd,pos\n")
    assert main(
        ["--task", "custom", "--train-file", str(train), "--model", "ffnn", "--output-dir", str(tmp_path / "o")]
    )
    assert "line 3: label 'nan' is a missing value" in last_error(capsys) and not (tmp_path / "o").exists()
    assert main(["predcit", "--model", "x"]) == 2 and "did you mean 'predict'?" in last_error(capsys)


def test_distill_refuses_an_alone_run_of_another_task_before_training(finished, tmp_path, data_dir, capsys):
    other = tmp_path / "semeval"
    assert run(data_dir, other, task="semeval") == 0
    student = tmp_path / "student"
    argv = ["distill", "--teacher", str(finished), "--alone", str(other), "--task", "humor", *TINY]
    assert main([*argv, "--data-dir", str(data_dir), "--output-dir", str(student)]) == 2
    assert "is a run of semeval with ffnn, not of the student (humor with ffnn)" in last_error(capsys)
    assert not student.exists()


def test_export_takes_a_run_folder_and_refuses_an_output_folder(finished, tmp_path, capsys):
    pytest.importorskip("onnx")
    assert main(["export", "--model", str(finished), "--output", str(tmp_path)]) == 2
    assert f"is a folder: give the file to write, e.g. {tmp_path / 'model.onnx'}" in last_error(capsys)
    assert main(["export", "--model", str(finished), "--output", str(tmp_path / "m.onnx")]) == 0
