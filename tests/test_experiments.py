"""Experiments as commands (issue 15) on small real subsets with the bag-of-embeddings baseline: cv's out-of-fold
predictions and folds, seed ensembles and predict on them, a resumed cv against an uninterrupted one, a sweep run
twice, distillation (alpha 0, a teacher that is the student), compare over every task kind, and one-line errors."""

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import interrupt_fit
from minitune.cli import main
from minitune.data.splits import kfold
from minitune.eval.thresholds import choose_thresholds

TINY = ["--model", "ffnn", "--epochs", "2", "--max-eval-samples", "40", "--max-length", "32", "--batch-size", "16"]


def args(data_dir, out, task="humor", n=150, *extra):
    return [
        "--task",
        task,
        *TINY,
        "--max-train-samples",
        str(n),
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(out),
        *extra,
    ]


def scores(run_dir):
    with np.load(run_dir / "scores.npz") as s:
        return dict(s)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def humor_cv(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("cv") / "humor"
    assert main(["cv", *args(data_dir, out), "--folds", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def humor_seeds(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("seeds") / "humor"
    assert main([*args(data_dir, out, "humor", 100), "--seeds", "1", "2"]) == 0
    return out


def test_oof_scores_every_training_example_exactly_once(humor_cv):
    index = np.load(humor_cv / "oof_index.npy")
    assert len(index) == 150 and len(np.unique(index)) == 150  # the 150-example subset, each example once
    held = [np.load(humor_cv / f"fold{k}" / "fold_scores.npz")["held_out"] for k in range(3)]
    assert sorted(np.concatenate(held).tolist()) == list(range(150))  # the held-out parts partition it
    rows = read_csv(humor_cv / "oof.csv")
    assert len(rows) == 150 and len({r["line"] for r in rows}) == 150
    results = json.loads((humor_cv / "results.json").read_text())
    assert results["oof"]["n_examples"] == 150 and len(results["train"]["folds"]) == 3
    # Each OOF row is the fold model's probability on an example it did not train on: oof.csv = fold scores.
    oof = scores(humor_cv)["oof"]
    for k in range(3):
        fold = np.load(humor_cv / f"fold{k}" / "fold_scores.npz")
        np.testing.assert_allclose(
            oof[np.searchsorted(np.sort(np.concatenate(held)), fold["held_out"])], fold["scores"]
        )
    # The dev score is the mean of the three fold models' dev probabilities.
    dev = np.mean([np.load(humor_cv / f"fold{k}" / "fold_scores.npz")["dev"] for k in range(3)], axis=0)
    np.testing.assert_allclose(scores(humor_cv)["dev"], dev)
    mean = results["train"]["fold_mean_std"][0]
    assert mean["macro_f1"] == pytest.approx(np.mean([f["macro_f1"] for f in results["train"]["folds"]]), abs=1e-4)


def test_cv_folds_keep_label_proportions_as_the_splitter_promises(humor_cv):
    rows = read_csv(humor_cv / "oof.csv")
    gold = np.array([r["gold"] == "humor" for r in rows], dtype=int)  # oof.csv is in training order
    held = [np.load(humor_cv / f"fold{k}" / "fold_scores.npz")["held_out"] for k in range(3)]
    # kfold promises per-class and total fold sizes within one of each other (single-label, stratified).
    assert max(map(len, held)) - min(map(len, held)) <= 1
    for c in (0, 1):
        per_fold = [(gold[h] == c).sum() for h in held]
        assert max(per_fold) - min(per_fold) <= 1, per_fold
    # And they are the splitter's folds for these labels and --seed.
    expected = [val for _, val in kfold(gold, 3, seed=42)]
    assert [h.tolist() for h in held] == [e.tolist() for e in expected]


def test_multi_label_cv_tunes_thresholds_on_the_out_of_fold_predictions(tmp_path, data_dir):
    out = tmp_path / "semeval"
    assert main(["cv", *args(data_dir, out, "semeval", 120), "--folds", "2", "--epochs", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = read_csv(out / "oof.csv")
    names = results["thresholds"]["per_label"].keys()
    y = np.array([[n in r["gold"].split(",") for n in names] for r in rows], dtype=np.uint8)
    again = choose_thresholds(y, scores(out)["oof"], list(names), results["config"]["threshold"], "jaccard")
    assert again["per_label"] == pytest.approx(results["thresholds"]["per_label"])
    assert "out-of-fold" in results["thresholds"]["notes"][0]
    # Iterative stratification: fold sizes within 1% (test_splits), every positive of the rarest label split evenly.
    held = [np.load(out / f"fold{k}" / "fold_scores.npz")["held_out"] for k in range(2)]
    assert abs(len(held[0]) - len(held[1])) <= 2
    rare = int(np.argmin(np.where(y.sum(0) > 0, y.sum(0), 10**9)))
    assert abs(int(y[held[0], rare].sum()) - int(y[held[1], rare].sum())) <= 1


def test_ensemble_is_the_mean_of_its_members_and_predict_averages_them(humor_seeds, tmp_path):
    members = [humor_seeds / "seed1", humor_seeds / "seed2"]
    np.testing.assert_allclose(scores(humor_seeds)["dev"], np.mean([scores(m)["dev"] for m in members], axis=0))
    results = json.loads((humor_seeds / "results.json").read_text())
    rows = results["train"]["members"]
    assert [r["seed"] for r in rows] == [1, 2]
    for row, m in zip(rows, members):  # each member as its own run reported it
        assert row["dev_macro_f1"] == pytest.approx(json.loads((m / "results.json").read_text())["dev"]["macro_f1"])
    src = tmp_path / "in.csv"
    src.write_text("text\nA pun a day keeps the doctor away.\nThe bus is late again.\nWhy did the chicken cross?\n")
    probs = []
    for run in [humor_seeds, *members]:
        assert main(["predict", "--model", str(run), "--input", str(src), "--output", str(tmp_path / "p.csv")]) == 0
        probs.append([[float(r["prob_not_humor"]), float(r["prob_humor"])] for r in read_csv(tmp_path / "p.csv")])
    np.testing.assert_allclose(probs[0], np.mean(probs[1:], axis=0), atol=2e-6)


def test_resumed_cv_equals_an_uninterrupted_one(humor_cv, data_dir, tmp_path, monkeypatch, capsys):
    # Ctrl-C while the 2nd batch of fold 1 is prepared
    interrupt_fit(monkeypatch, 1, lambda out_dir, resume: out_dir.name == "fold1" and not resume)
    out = tmp_path / "stopped"
    assert main(["cv", *args(data_dir, out), "--folds", "3"]) == 130
    assert "fold1/checkpoint" in capsys.readouterr().err
    assert (out / "fold0" / "fold_scores.npz").is_file() and not (out / "fold1" / "fold_scores.npz").exists()
    assert main(["cv", *args(data_dir, out), "--folds", "3", "--resume", str(out)]) == 0
    for split in ("oof", "dev"):
        np.testing.assert_allclose(scores(out)[split], scores(humor_cv)[split], atol=1e-6)
    for k in range(3):
        a, b = (load_file(d / f"fold{k}" / "model" / "model.safetensors") for d in (out, humor_cv))
        for name in a:
            torch.testing.assert_close(a[name], b[name], msg=f"fold{k} {name}")


@pytest.mark.slow  # several training runs through the CLI, each drawing its report
def test_sweep_second_invocation_trains_nothing(tmp_path, data_dir, capsys):
    from minitune.experiments.sweep import read_sweep, run_sweep

    path = tmp_path / "sweep.toml"
    path.write_text(
        f'output_dir = "{tmp_path / "sweep"}"\n[base]\ntask = "humor"\nmodel = "ffnn"\ndata_dir = "{data_dir}"\n'
        'max_eval_samples = 40\nmax_length = 32\n[[variations]]\nname = "ce"\n[[variations]]\nlabel_smoothing = 0.1\n'
        "[grid]\nlr = [1e-3, 3e-3]\n[[phases]]\nmax_train_samples = 60\nepochs = 1\nadvance = 1\n"
        "[[phases]]\nmax_train_samples = 100\nepochs = 1\n"
    )
    assert main(["sweep", str(path)]) == 0
    board = json.loads((tmp_path / "sweep" / "leaderboard.json").read_text())
    assert [r["phase"] for r in board] == [2, 1, 1, 1, 1] and all(r["status"] == "trained" for r in board)
    phase1 = [r for r in board if r["phase"] == 1]
    assert board[0]["trial"] == phase1[0]["trial"]  # the best of phase 1 went on
    assert (tmp_path / "sweep" / "leaderboard.md").read_text().count("\n| ") == 5 + 1

    def no_training(cfg):
        raise AssertionError(f"trained {cfg.outputs.output_dir} again")

    rows = run_sweep(read_sweep(str(path)), no_training)
    assert [r["status"] for r in rows] == ["read"] * 5
    assert sorted(r["value"] for r in rows) == sorted(r["value"] for r in board)


def test_sweep_file_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[base]\ntask = "humor"\n[[variations]]\nlrr = 1e-3\n')
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'lrr' in [[variations]] (did you mean 'lr'?)" in err
    bad.write_text('[base]\ntask = "humor"\n[[phases]]\nepochs = 1\n[[phases]]\nepochs = 2\n')
    assert main(["sweep", str(bad)]) == 2
    assert "needs advance = N" in capsys.readouterr().err


@pytest.mark.slow  # several training runs through the CLI, each drawing its report
def test_distillation_alpha_zero_is_ordinary_training_and_teacher_files_are_checked(
    humor_seeds, data_dir, tmp_path, capsys
):
    out = tmp_path / "student"
    a = args(data_dir, out, "humor", 100)
    assert main(["distill", "--teacher", str(humor_seeds), *a, "--distill-alpha", "0"]) == 0
    # alpha 0: the same weights as the same student trained alone on gold labels (alone/).
    distilled, alone = (load_file(d / "model" / "model.safetensors") for d in (out, out / "alone"))
    for name in distilled:
        assert torch.equal(distilled[name], alone[name]), name
    summary = json.loads((out / "distill.json").read_text())
    assert set(summary["rows"]) == {"teacher", "student_alone", "student_distilled"}
    assert summary["speed_ratio_teacher_over_student"] > 0 and (out / "teacher_probs.npz").is_file()
    assert main(["distill", "--teacher", str(tmp_path), *a]) == 2
    assert "not a training run, ensemble or cv directory" in capsys.readouterr().err


def test_teacher_that_is_the_student_gives_near_zero_kl_and_is_cached(humor_seeds, data_dir, tmp_path, monkeypatch):
    from minitune.checkpoints.load import load_model, load_tokenizer
    from minitune.config.sections import LossSettings
    from minitune.data.batching import make_collate
    from minitune.data.features import tokenize
    from minitune.data.tasks import load_task
    from minitune.eval.scoring import predict_logits
    from minitune.experiments import distill
    from minitune.train.distill_loss import DistillLoss
    from minitune.train.losses import loss_for

    student = humor_seeds / "seed1"
    task = load_task("humor", data_dir)
    examples = task.train[:64]
    teacher = distill.make_teacher([str(student)], 1.0, 2.0, tmp_path, 32)
    probs = teacher.targets_for(task, examples, torch.device("cpu"))
    model, tok = load_model(student / "model"), load_tokenizer(student / "model")
    feats = tokenize(examples, tok, task.kind, 32)
    logits = predict_logits(model, feats, make_collate("dynamic", 32, tok.pad_token_id), 16, torch.device("cpu"))
    loss = DistillLoss(loss_for(LossSettings(), task.kind, 2), False, 1.0, 2.0)
    assert float(loss.soft_loss(torch.tensor(logits), torch.tensor(probs))) < 1e-6
    # Cached: a new teacher object reads the probabilities back instead of scoring again.
    monkeypatch.setattr(distill, "ensemble_scores", lambda *a, **k: pytest.fail("scored the training data again"))
    again = distill.make_teacher([str(student)], 1.0, 2.0, tmp_path, 32).targets_for(
        task, examples, torch.device("cpu")
    )
    np.testing.assert_array_equal(again, probs)


@pytest.mark.slow  # several training runs through the CLI, each drawing its report
def test_compare_reads_runs_of_every_task_kind(humor_cv, humor_seeds, data_dir, tmp_path, capsys):
    semeval, mpr = tmp_path / "semeval", tmp_path / "mpr"
    assert main(args(data_dir, semeval, "semeval", 80)) == 0
    assert main([*args(data_dir, mpr, "recipe-mpr", 60), "--max-folds", "1"]) == 0
    runs = [humor_cv, humor_seeds, humor_seeds / "seed1", semeval, mpr]
    assert main(["compare", *map(str, runs), "--output", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp.json").read_text())
    assert [r["task"] for r in rows] == ["humor"] * 3 + ["recipe-mpr", "semeval"]
    humor = [r["value"] for r in rows[:3]]
    assert humor == sorted(humor, reverse=True)  # sorted by the task's metric
    by_run = {r["run"]: r for r in rows}
    assert by_run[str(humor_cv)]["kind"] == "cv" and by_run[str(humor_cv)]["oof"] is not None
    assert by_run[str(humor_seeds)]["params"] == 2 * by_run[str(humor_seeds / "seed1")]["params"]
    assert by_run[str(mpr)]["metric"] == "accuracy" and by_run[str(mpr)]["test"] is not None
    assert by_run[str(semeval)]["metric"] == "jaccard" and by_run[str(semeval)]["thresholds"] != "argmax"
    assert "| run | task | model |" in (tmp_path / "cmp.md").read_text() and "| run | task |" in capsys.readouterr().out


def test_cv_members_predict_at_the_runs_max_length_and_precision(humor_cv, tmp_path):
    """A cv fold's model/ has no run config beside it: predict must read the cv run's (max_length 32 here, not
    the 128 fallback, and its precision), so predict on the cv directory reproduces the run's own dev
    probabilities. Its folds' fresh heads were not scored before training (chance level), so no start is
    reported."""
    from minitune.checkpoints.rundir import trained_max_length, trained_precision

    assert trained_max_length(humor_cv / "fold0" / "model") == 32
    assert trained_precision(humor_cv / "fold0" / "model") == "fp32"  # auto, on a CPU without native bf16
    results = json.loads((humor_cv / "results.json").read_text())
    folds = results["train"]["folds"]
    assert all("start_macro_f1" not in f and f["start_is_chance"] for f in folds)
    train = results["train"]
    assert train.get("start") is None and train["metric"] == "macro_f1"
    assert train["best"] == pytest.approx(np.mean([f["best"] for f in folds]))  # the mean best is still reported
    report = (humor_cv / "report.txt").read_text()
    assert "before training" not in report and f"best macro_f1: {train['best']:.4f}" in report


def test_a_checkpoints_own_config_is_not_a_run_config(tmp_path):
    from minitune.checkpoints.rundir import trained_max_length

    model = tmp_path / "hf" / "model"
    model.mkdir(parents=True)
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert", "max_length": 20}))
    assert trained_max_length(model) == 128  # a generation default, not the length a run trained with


@pytest.mark.parametrize(
    "command, extra, flag",
    [
        ("cv", ["--threshold-split", "0.2"], "--threshold-split"),
        ("train", ["--seeds", "1", "2", "--threshold-split", "0.2"], "--threshold-split"),
        ("cv", ["--predict-file", "x.csv"], "--predict-file"),
        ("train", ["--seeds", "1", "2", "--predict-file", "x.csv"], "--predict-file"),
        ("cv", ["--model", "smollm2", "--head", "generative"], "--head generative answers in text"),
        ("train", ["--seeds", "1", "2", "--model", "smollm2", "--head", "generative"], "--head generative"),
    ],
)
def test_single_model_settings_are_refused_by_protocols_of_several(tmp_path, data_dir, capsys, command, extra, flag):
    out = tmp_path / "run"
    cmd = ([command] if command == "cv" else []) + [*args(data_dir, out, "semeval", 50), *extra]  # last --model wins
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "Traceback" not in err[0]
    assert not out.exists()  # refused before anything was written


def test_recipe_mpr_distillation_does_not_score_the_teacher_on_items_it_trained_on(data_dir, tmp_path, capsys):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main([*args(data_dir, teacher, "recipe-mpr", 60), "--max-folds", "1", "--epochs", "1"]) == 0
    a = args(data_dir, student, "recipe-mpr", 60, "--max-folds", "1", "--epochs", "1")
    refused = ["distill", "--teacher", str(teacher), *a, "--model", "minilm", "--in-batch-negatives"]
    assert main(refused) == 2  # the student's training logits reach past the teacher's options
    assert "drop --in-batch-negatives" in capsys.readouterr().err and not student.exists()
    assert main(["distill", "--teacher", str(teacher), *a]) == 0
    summary = json.loads((student / "distill.json").read_text())
    assert summary["split"] == "test" and "accuracy" not in summary["rows"]["teacher"]
    assert "accuracy" in summary["rows"]["student_distilled"] and "accuracy" in summary["rows"]["student_alone"]
    assert "no score here" in (student / "distill.md").read_text()


@pytest.mark.slow
def test_bi_encoder_cv_and_seed_members_score_as_they_trained(tmp_path, data_dir, capsys):
    """MiniLM declares mean pooling, so Recipe-MPR runs as a bi-encoder: each fold model, loaded back as an
    ensemble member (predict, distillation teachers), must see the query and options alone as it trained."""
    from minitune.data.tasks import load_task
    from minitune.eval.members import load_member, member_scores

    out = tmp_path / "cv"
    base = ["--task", "recipe-mpr", "--model", "minilm", "--data-dir", str(data_dir), "--max-train-samples", "40"]
    assert main(["cv", *base, "--folds", "2", "--epochs", "1", "--seeds", "1", "2", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "minitune cv --resume" in printed and f"minitune predict --model {out} --input QUESTIONS.jsonl" in printed
    members = [out / "seed1", out / "seed2"]
    np.testing.assert_allclose(scores(out)["oof"], np.mean([scores(m)["oof"] for m in members], axis=0))
    fold_dir = out / "seed1" / "fold0"
    assert json.loads((fold_dir / "model" / "config.json").read_text())["minitune_choice_scorer"] == "bi"
    task = load_task("recipe-mpr", data_dir)
    index, fold = np.load(out / "seed1" / "oof_index.npy"), np.load(fold_dir / "fold_scores.npz")
    held = [task.train[index[i]] for i in fold["held_out"]]
    member = load_member(fold_dir / "model", "multiple_choice", torch.device("cpu"))
    again = member_scores(member, held, "multiple_choice", 8, torch.device("cpu"))
    np.testing.assert_allclose(again, fold["scores"], atol=1e-5)
