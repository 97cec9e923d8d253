"""`--head generative` beyond one holdout run: `predict` on a plain instruct checkpoint, Recipe-MPR's five folds,
QLoRA, `--resume`, and torchrun (2 gloo ranks equal one process). A tiny random Llama carrying SmolLM2's tokenizer
and chat template (tests/test_generative_cli.py's fixture) stands in for the real checkpoint, except in the one
test on SmolLM2 itself. The tests that load a model are in the slow tier; the refusals, found before any model
loads, are fast."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from minitune.cli import main
from test_generative_cli import tiny_instruct  # noqa: F401  (the module-scoped fixture)


def train(tmp_path, data_dir, model, name, *args):
    out = tmp_path / name
    argv = ["--data-dir", str(data_dir), "--output-dir", str(out), "--model", str(model), "--head", "generative"]
    return main([*argv, "--max-eval-samples", "6", "--batch-size", "4", *args]), out


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def probs(rows):
    return [[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows]


def predict(tmp_path, model, texts, *args):
    src, dst = tmp_path / "texts.csv", tmp_path / "preds.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in texts]])
    code = main(["predict", "--model", str(model), "--input", str(src), "--output", str(dst), *args])
    return code, (read_csv(dst) if code == 0 else None)


# ----------------------------------------------------------------------------------------------- predict


@pytest.mark.parametrize("task, mode", [("humor", "score"), ("semeval", "constrained")])
@pytest.mark.slow
def test_predict_on_a_plain_checkpoint_answers_as_the_zero_shot_run(tmp_path, data_dir, tiny_instruct, task, mode):  # noqa: F811
    """`predict --head generative --task T` asks the checkpoint as `train --epochs 0` asks it on dev: the same
    prompts, label set and answers, so the probabilities written for the dev texts are the run's."""
    code, out = train(tmp_path, data_dir, tiny_instruct, "zs", "--task", task, "--epochs", "0", "--answer-mode", mode)
    assert code == 0
    dev = read_csv(out / "dev_predictions.csv")
    code, rows = predict(
        tmp_path, tiny_instruct, [r["text"] for r in dev], "--head", "generative", "--task", task,
        "--data-dir", str(data_dir), "--answer-mode", mode, "--batch-size", "4",
    )  # fmt: skip
    assert code == 0 and len(rows) == len(dev) == 6
    assert [k for k in rows[0] if k.startswith("prob_")] == [k for k in dev[0] if k.startswith("prob_")]
    torch.testing.assert_close(torch.tensor(probs(rows)), torch.tensor(probs(dev)), rtol=0, atol=1e-5)
    if mode == "constrained":  # every row a valid answer: exactly the labels it names are 1
        assert all(set(map(float, p)) <= {0.0, 1.0} and sum(p) >= 1 for p in probs(rows))


@pytest.mark.slow
def test_predict_with_a_label_list_and_shots(tmp_path, data_dir, tiny_instruct, capsys):  # noqa: F811
    code, rows = predict(
        tmp_path, tiny_instruct, ["great stuff", "so sad", "meh"], "--head", "generative",
        "--labels", "good,bad,neutral",
    )  # fmt: skip
    assert code == 0 and list(rows[0])[:2] == ["text", "label"] and len(rows) == 3
    assert {r["label"] for r in rows} <= {"good", "bad", "neutral"}
    code, rows = predict(
        tmp_path, tiny_instruct, ["great stuff"], "--head", "generative", "--labels", "joy,anger", "--multi-label"
    )
    assert code == 0 and "labels" in rows[0]
    code, rows = predict(
        tmp_path, tiny_instruct, ["a joke"], "--head", "generative", "--task", "humor", "--shots", "2",
        "--data-dir", str(data_dir),
    )  # fmt: skip
    assert code == 0 and rows[0]["label"] in ("not_humor", "humor")
    custom = tmp_path / "pets.csv"
    custom.write_text("text,kind\nmeow,cats\nwoof,dogs\npurr,cats\n")
    code, rows = predict(
        tmp_path, tiny_instruct, ["bark"], "--head", "generative", "--task", "custom", "--train-file", str(custom),
        "--label-col", "kind",
    )  # fmt: skip
    assert code == 0 and [k for k in rows[0] if k.startswith("prob_")] == ["prob_cats", "prob_dogs"]
    # without --head generative a plain checkpoint has no trained head: the error says how to ask it instead
    assert "--head generative and --task" in predict_error(tmp_path, capsys, tiny_instruct)


def predict_error(tmp_path, capsys, model, *args) -> str:
    (tmp_path / "preds.csv").unlink(missing_ok=True)
    code, _ = predict(tmp_path, model, ["x"], *args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and not (tmp_path / "preds.csv").exists(), lines
    return lines[0]


def test_predict_says_in_one_line_when_the_label_set_cannot_be_known(tmp_path, data_dir, capsys):
    """Found before the model loads (the model named here does not exist), with the flag that fixes it."""
    error = lambda *args: predict_error(tmp_path, capsys, tmp_path / "instruct", *args)  # noqa: E731
    assert "carries no label set" in error("--head", "generative") and "--task" in error("--head", "generative")
    assert "pass --task instead of --labels" in error("--head", "generative", "--labels", "a,b", "--shots", "2")
    assert "two or more distinct labels" in error("--head", "generative", "--labels", "a,a")
    assert "add --head generative" in error("--task", "semeval")
    assert "--task custom takes its label set from --train-file" in error("--head", "generative", "--task", "custom")
    assert "multiple-choice" in error("--head", "generative", "--task", "recipe-mpr", "--data-dir", str(data_dir))
    assert "fixes its own kind" in error("--head", "generative", "--task", "humor", "--multi-label")
    assert "pass --task or --labels, not both" in error("--head", "generative", "--task", "humor", "--labels", "a,b")


@pytest.mark.slow
def test_predict_on_the_real_smollm2_zero_shot(tmp_path, data_dir):
    """The command the README gives: SmolLM2-Instruct zero-shot on SemEval's label set, constrained, so every
    tweet gets one or more of the eleven emotions."""
    code, rows = predict(
        tmp_path, "smollm2", ["I am so happy today!", "This is awful and scary."], "--head", "generative",
        "--task", "semeval", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert code == 0 and len(rows) == 2 and len([k for k in rows[0] if k.startswith("prob_")]) == 11
    assert all(r["labels"] for r in rows)


# ----------------------------------------------------------------------------------------------- recipe-mpr folds


@pytest.fixture
def tiny_recipe(tmp_path, data_dir):
    """Recipe-MPR's first 20 items in five folds of 16 train / 4 test."""
    root = tmp_path / "data"
    (root / "recipe_mpr" / "folds").mkdir(parents=True)
    items = json.loads((data_dir / "recipe_mpr" / "500QA.json").read_text(encoding="utf-8"))[:20]
    (root / "recipe_mpr" / "500QA.json").write_text(json.dumps(items))
    folds = [[[i for i in range(20) if i // 4 != k], [], list(range(4 * k, 4 * k + 4))] for k in range(5)]
    (root / "recipe_mpr" / "folds" / "5_fold_inds.json").write_text(json.dumps(folds))
    return root


@pytest.mark.slow
def test_recipe_mpr_zero_shot_answers_every_folds_test_part(tmp_path, tiny_recipe, tiny_instruct):  # noqa: F811
    code, out = train(
        tmp_path, tiny_recipe, tiny_instruct, "zs", "--task", "recipe-mpr", "--epochs", "0", "--shots", "1"
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [f["fold"] for f in results["train"]["folds"]] == [0, 1, 2, 3, 4]
    assert results["test"]["n_examples"] == 20 and results["test"]["generation"]["invalid"] == 0
    accuracy = sum(f["test_accuracy"] * 4 for f in results["train"]["folds"]) / 20
    assert results["test"]["accuracy"] == pytest.approx(accuracy)
    assert len(read_csv(out / "test_predictions.csv")) == 20  # every item once, by the fold that held it out
    prompts = [(out / f"fold{k}" / "prompt_example.txt").read_text() for k in range(5)]
    assert len(set(prompts)) > 1  # each fold drew its shot from its own train part
    assert not (out / "model").exists()  # nothing trained


@pytest.mark.slow
def test_recipe_mpr_lora_tunes_one_adapter_per_fold(tmp_path, tiny_recipe, tiny_instruct):  # noqa: F811
    code, out = train(
        tmp_path, tiny_recipe, tiny_instruct, "lora", "--task", "recipe-mpr", "--epochs", "1", "--lora-r", "4",
        "--max-folds", "2", "--lr", "1e-2", "--max-train-samples", "8",
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["train"]["folds"]) == 2 and results["test"]["n_examples"] == 8
    a, b = (load_file(str(out / f"fold{k}" / "adapter" / "adapter_model.safetensors")) for k in (0, 1))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # two folds, two adapters
    assert (out / "model" / "generative.json").is_file() and (out / "adapter").is_dir()  # fold 0's, as classifiers


# ----------------------------------------------------------------------------------------------- QLoRA, resume

TUNE = ["--task", "semeval", "--lora-r", "4", "--lora-dropout", "0", "--max-train-samples", "16", "--lr", "1e-2"]
TUNE += ["--patience", "100"]  # the tiny model's dev metric hardly moves: no early stop


def losses(out) -> dict[int, float]:
    """The training loss logged at each step."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["type"] == "train"}


@pytest.mark.slow
def test_qlora_instruction_tuning_trains_saves_and_predicts(tmp_path, data_dir, tiny_instruct):  # noqa: F811
    code, out = train(tmp_path, data_dir, tiny_instruct, "q", *TUNE, "--quantize", "nf4", "--epochs", "3",
                      "--log-every", "1")  # fmt: skip
    assert code == 0
    steps = losses(out)
    assert len(steps) == 12 and steps[12] < steps[1]
    merged = load_file(str(out / "model" / "model.safetensors"))
    assert merged["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32  # NF4 dequantized, merged
    code, rows = predict(tmp_path, out, ["I am so happy today!"])
    assert code == 0 and rows[0]["labels"]


@pytest.mark.slow
def test_resume_of_an_interrupted_generative_run_equals_the_uninterrupted_run(
    tmp_path,
    data_dir,
    tiny_instruct,  # noqa: F811
    monkeypatch,
):
    args = [*TUNE, "--epochs", "2", "--eval-every", "1", "--log-every", "1"]
    code, straight = train(tmp_path, data_dir, tiny_instruct, "straight", *args)
    assert code == 0
    from minitune.eval.answers import Answerer

    answers, calls = Answerer.answers, {"n": 0}

    def stop_at_step_3_evaluation(self, examples):
        calls["n"] += 1
        if calls["n"] == 4:  # the 1st is the before-training evaluation; the 4th follows step 3, before its checkpoint
            raise KeyboardInterrupt
        return answers(self, examples)

    monkeypatch.setattr(Answerer, "answers", stop_at_step_3_evaluation)
    code, resumed = train(tmp_path, data_dir, tiny_instruct, "resumed", *args)
    assert code == 130 and json.loads((resumed / "checkpoint" / "progress.json").read_text())["step"] == 2
    monkeypatch.setattr(Answerer, "answers", answers)
    code, _ = train(tmp_path, data_dir, tiny_instruct, "resumed", *args, "--resume", str(resumed))
    assert code == 0
    assert losses(straight) == pytest.approx(losses(resumed), rel=1e-6) and len(losses(straight)) == 8
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (straight, resumed))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)
    for d in (straight, resumed):
        assert json.loads((d / "results.json").read_text())["dev"]["n_examples"] == 6


# ----------------------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_two_gloo_ranks_tune_the_adapter_of_one_process(tmp_path, data_dir, tiny_instruct):  # noqa: F811
    """DDP LoRA instruction tuning, each global batch of 4 split 2 + 2 and accumulated over 2 micro-batches,
    equals one process with the same global batch; dev answers are gathered, so both report the same."""
    from test_distributed import REPO, free_port

    argv = ["run.py", "--data-dir", str(data_dir), "--model", str(tiny_instruct), "--head", "generative", *TUNE]
    argv += ["--epochs", "1", "--batch-size", "4", "--grad-accum", "2", "--max-eval-samples", "6", "--device", "cpu"]
    argv += ["--log-every", "1"]
    port, procs = free_port(), []
    for name, world in (("one", 1), ("two", 2), ("two", 2)):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        if world > 1:
            r = sum(p[0] == "two" for p in procs)
            env |= dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, *argv, "--output-dir", str(tmp_path / name)]
        procs.append((name, subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for _, p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert json.loads((two / "results.json").read_text())["world_size"] == 2
    assert losses(one) == pytest.approx(losses(two), rel=1e-5) and len(losses(one)) == 2
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (one, two))
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-3  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-6, msg=k)
    dev = [json.loads((d / "results.json").read_text())["dev"] for d in (one, two)]
    assert dev[0]["n_examples"] == dev[1]["n_examples"] == 6
    assert read_csv(one / "dev_predictions.csv") == read_csv(two / "dev_predictions.csv")


def test_fsdp_is_refused_for_the_generative_head():
    from minitune.config.load import make_config
    from minitune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"drop fsdp \(torchrun without it trains the generative head with DDP\)"):
        make_config(task="humor", model="smollm2", head="generative", fsdp="full")
