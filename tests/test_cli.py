"""run.py end to end on small real subsets: outputs, predict, resume, config files and user errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch.testing import assert_close

import minitune
from minitune.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--max-train-samples",
    "48",
    "--max-eval-samples",
    "24",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--grad-accum",
    "1",
    "--max-length",
    "48",
]


def train(tmp_path, data_dir, name, *args):
    out = tmp_path / name
    assert main(["--data-dir", str(data_dir), "--output-dir", str(out), *SMALL, *args]) == 0
    return out


@pytest.fixture(scope="module")
def humor_run(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("cli")
    with (data_dir / "hahackathon" / "dev.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[:41]  # header + 40 rows of real dev data, as a further labelled file
    with (tmp / "further.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    # The [CLS] head, so transformers' class loads the run's model as it is (mean pooling: tests/test_pooling.py).
    args = ("--task", "humor", "--pooling", "cls", "--test-file", str(tmp / "further.csv"))
    return train(tmp, data_dir, "humor", *args)


def test_humor_run_writes_every_output(humor_run):
    out = humor_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "humor" and cfg["lr"] == 2e-5 and cfg["label_smoothing"] == 0.1 and cfg["llrd"] == 0.95
    assert cfg["padding"] == "bucketed"  # the default: length-bucketed batches
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in records if r["type"] == "train"]
    assert train_logs and all(
        {"loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_bytes"} <= set(r) for r in train_logs
    )
    assert any(r["type"] == "eval" and "macro_f1" in r for r in records)
    results = json.loads((out / "results.json").read_text())
    dev = results["dev"]
    assert dev["n_examples"] == 24 and set(dev["per_class"]) == {"not_humor", "humor"}
    assert len(dev["confusion_matrix"]) == 2 and sum(map(sum, dev["confusion_matrix"])) == 24
    assert "not_humor" in (out / "report.txt").read_text()
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"training_curves.png", "confusion_matrix.png", "per_class.png", "reliability.png"} <= figures
    assert (out / "report.html").is_file() and (out / "predictions_dev.jsonl").is_file()
    # --test-file: the whole further file (not capped by --max-eval-samples), scored by the selected model
    test = results["test"]
    assert test["n_examples"] == 40 and sum(map(sum, test["confusion_matrix"])) == 40


def test_humor_defaults_are_the_source_documents(data_dir):
    from minitune.cli import parse_config

    s = parse_config(["--task", "humor"]).flat()  # the settings under their flags' names
    assert (s["lr"], s["warmup_ratio"], s["scheduler"], s["label_smoothing"], s["llrd"]) == (
        2e-5,
        0.1,
        "cosine",
        0.1,
        0.95,
    )
    assert s["batch_size"] * s["grad_accum"] == 32 and s["grad_accum"] == 4 and s["patience"] == 5
    assert s["padding"] is None and s["metric"] == "macro_f1"  # resolved per model family: see the runs below


def test_every_flag_has_help_and_help_exits_cleanly():
    from minitune.cli import build_parser

    parser = build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 30
    assert [a.option_strings[0] for a in flags if not (a.help or "").strip()] == []
    r = run_cli("--help")
    assert r.returncode == 0 and "--max-train-samples" in r.stdout and "--padding" in r.stdout


def test_same_seed_same_run_other_seed_other_run(tmp_path, data_dir):
    def dev(name, seed):
        args = ("--task", "humor", "--model", "ffnn", "--lr", "1e-3", "--seed", seed, "--overwrite")  # again: anew
        out = train(tmp_path, data_dir, name, *args)
        return json.loads((out / "results.json").read_text())["dev"]["per_class"]

    assert dev("a", "3") == dev("b", "3")
    assert dev("c", "4") != dev("a", "3")


def test_humor_model_loads_in_both_stacks_with_equal_logits(humor_run):
    model_dir = humor_run / "model"
    ours = minitune.load_model(model_dir)
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert ours.label_names == ["not_humor", "humor"] == [ref.config.id2label[i] for i in range(2)]
    tok = minitune.load_tokenizer(model_dir)
    enc = tok(["What do you call a fish with no eyes? A fsh.", "The meeting is at noon."])
    with torch.no_grad():
        assert_close(
            ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
            ref(**enc).logits,
            atol=1e-5,
            rtol=1e-5,
        )
    # transformers' pipeline() gives predict's probabilities, as the model's card says.
    texts = ["What do you call a fish with no eyes? A fsh.", "The meeting is at noon."]
    pipe = transformers.pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")
    theirs = [{d["label"]: d["score"] for d in row} for row in pipe(texts)]
    ours_p = minitune.Predictor(humor_run).predict(texts)
    for row, p in zip(theirs, ours_p.probabilities):
        assert [row[n] for n in ours_p.label_names] == pytest.approx(p.tolist(), abs=1e-5)
    assert "pipeline('text-classification'" in (model_dir / "README.md").read_text()


def test_predict_writes_labels_and_probabilities(humor_run, tmp_path, data_dir):
    src = tmp_path / "texts.csv"
    src.write_text("id,text\n1,Why did the chicken cross the road? To get to the other side.\n2,Rain expected today.\n")
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(humor_run / "model"), "--input", str(src), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and {r["label"] for r in rows} <= {"humor", "not_humor"}
    for r in rows:
        assert abs(float(r["prob_humor"]) + float(r["prob_not_humor"]) - 1) < 1e-5


def test_semeval_thresholds_saved_and_used(tmp_path, data_dir):
    out = train(tmp_path, data_dir, "semeval", "--task", "semeval")
    results = json.loads((out / "results.json").read_text())
    chosen = results["thresholds"]
    assert set(chosen["per_label"]) == set(results["dev"]["label_names"]) and "tuned" in results["dev"]
    assert chosen["threshold"] == 0.5 and chosen["metric"] == "jaccard"  # semeval selects on its official score
    # the tuned thresholds are kept for prediction only if they do at least as well on the run's metric
    # and only where some label kept a tuned value (one that beats the fixed threshold and predicting always)
    better = results["dev"]["tuned"]["jaccard"] >= results["dev"]["jaccard"]
    assert chosen["use"] == ("tuned" if better and chosen["tuned_labels"] else "fixed")
    assert json.loads((out / "model" / "thresholds.json").read_text()) == chosen
    assert minitune.load_model(out / "model").hf_config["problem_type"] == "multi_label_classification"
    # predict applies what thresholds.json says: tuned per-label values, the fixed one, or --threshold over both
    names = results["dev"]["label_names"]
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"text": "What a wonderful, terrifying day."}) + "\n")

    def predicted(saved: dict, *extra) -> set[str]:
        (out / "model" / "thresholds.json").write_text(json.dumps(saved))
        assert (
            main(
                [
                    "predict",
                    "--model",
                    str(out / "model"),
                    "--input",
                    str(src),
                    "--output",
                    str(tmp_path / "p.csv"),
                    *extra,
                ]
            )
            == 0
        )
        (row,) = csv.DictReader((tmp_path / "p.csv").open())
        return set(filter(None, row["labels" if "labels" in row else "label"].split(",")))

    never = 1.0  # the largest threshold a file may hold; this short run gives no probability of exactly 1
    per_label = {n: (0.0 if i % 2 else never) for i, n in enumerate(names)}  # odd labels always, even never
    assert predicted({"use": "tuned", "per_label": per_label, "threshold": 0.5}) == set(names[1::2])
    assert predicted({"use": "fixed", "per_label": per_label, "threshold": never}) == set()
    everything = ("--threshold", "0.000001")  # (0 is no threshold: predict refuses it, as training does)
    assert predicted({"use": "fixed", "per_label": per_label, "threshold": never}, *everything) == set(names)
    # A new run in the same directory (--overwrite) replaces model/ whole: no thresholds, stray shard or old adapter
    # survive.
    (out / "model" / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    train(tmp_path, data_dir, "semeval", "--task", "humor", "--overwrite")
    assert not (out / "model" / "thresholds.json").exists() and not (out / "adapter").exists()
    assert sorted(p.name for p in (out / "model").iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
        + ["README.md"]  # its card
        + ["modules.json", "1_Pooling", "2_Dense"]  # minilm's mean-pooled head: the sentence-transformers layout
    )
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_recipe_mpr_fold_reports_query_types_and_first_option_baseline(tmp_path, data_dir):
    (tmp_path / "mpr" / "fold3").mkdir(parents=True)  # left by an earlier 5-fold run in the same directory
    further = tmp_path / "further.json"  # a further labelled file in the task's format: 30 real items
    further.write_text(json.dumps(json.loads((data_dir / "recipe_mpr" / "500QA.json").read_text())[:30]))
    (tmp_path / "mpr" / "run.json").write_text('{"command": "train", "task": "recipe-mpr", "model": "minilm"}')
    args = ("--task", "recipe-mpr", "--max-folds", "1", "--test-file", str(further), "--overwrite")
    out = train(tmp_path, data_dir, "mpr", *args)
    assert sorted(p.name for p in out.glob("fold*")) == ["fold0"]
    results = json.loads((out / "results.json").read_text())
    groups = results["test"]["by_group"]
    assert {"overall", "Specific", "Commonsense", "Negated"} <= set(groups) and groups["overall"]["n"] == 100
    assert 0.1 <= results["baseline_first_option"]["accuracy"] <= 0.3
    assert results["test_file"]["n_examples"] == 30 and results["test_file"]["by_group"]["overall"]["n"] == 30
    assert "test_file" in (out / "report.txt").read_text()
    with (out / "test_predictions.csv").open(newline="") as f:  # each item once, by the fold model that held it out
        rows = list(csv.DictReader(f))
    assert len(rows) == 100 and {"gold", "label", "prob_choice_0"} <= set(rows[0])
    assert (out / "figures" / "accuracy_by_query_type.png").is_file() and (out / "report.html").is_file()
    assert len((out / "predictions_test.jsonl").read_text().splitlines()) == 100  # fold 0's test part


def test_ffnn_baseline_and_toml_config(tmp_path, data_dir):
    toml = tmp_path / "run.toml"
    toml.write_text('task = "humor"\nmodel = "ffnn"\nepochs = 2\nmax-length = 32\n')
    out = tmp_path / "ffnn"
    assert (
        main(
            [
                "--config",
                str(toml),
                "--data-dir",
                str(data_dir),
                "--output-dir",
                str(out),
                "--max-train-samples",
                "64",
                "--max-eval-samples",
                "32",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "ffnn" and cfg["epochs"] == 2 and cfg["max_length"] == 32 and cfg["lr"] == 1e-3
    assert minitune.load_model(out / "model").cfg.model_type == "minitune-ffnn"


@pytest.mark.parametrize(
    "task, flags, more_steps",
    [
        ("humor", ["--padding", "fixed"], False),
        ("humor", ["--padding", "dynamic"], False),
        ("humor", ["--max-tokens", "256"], True),  # budget batches of 256 padded tokens: more than 3 batches of 16
        ("humor", ["--class-weights", "balanced", "--grad-checkpointing"], False),
        ("semeval", ["--oversample-rare", "8", "--class-weights", "balanced"], True),  # rare labels repeated
    ],
)
def test_training_options_through_run_py(tmp_path, data_dir, task, flags, more_steps):
    out = train(tmp_path, data_dir, "opt", "--task", task, *flags)
    results = json.loads((out / "results.json").read_text())
    assert results["dev"]["n_examples"] == 24 and (results["train"]["step"] > 3) == more_steps
    cfg = json.loads((out / "config.json").read_text())
    assert all(cfg[f.lstrip("-").replace("-", "_")] not in (None, False, 0, "none") for f in flags if f[:2] == "--")


def test_custom_task_with_pairs_and_no_dev_file(tmp_path):
    rows = [("the cat sat", "a cat", "yes"), ("dogs bark", "a fish", "no")] * 20
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"q": a, "p": b, "y": c}) + "\n" for a, b, c in rows))
    out = tmp_path / "custom"
    assert (
        main(
            [
                "--task",
                "custom",
                "--train-file",
                str(f),
                "--text-col",
                "q",
                "--pair-col",
                "p",
                "--label-col",
                "y",
                "--output-dir",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    # no dev file: 10% of the 40 training rows are held out, stratified, to select on
    assert results["dev"]["label_names"] == ["no", "yes"] and results["dev"]["n_examples"] == 4
    assert [c["support"] for c in results["dev"]["per_class"].values()] == [2, 2]


def test_custom_label_ids_named_by_label_names(tmp_path):
    f = tmp_path / "ids.csv"
    f.write_text("text,label\n" + "great film,1\nawful film,0\nsuperb acting,2\n" * 8)
    out = tmp_path / "ids"
    assert (
        main(
            [
                "--task",
                "custom",
                "--train-file",
                str(f),
                "--dev-file",
                str(f),
                "--label-names",
                "negative, positive, glowing",
                "--model",
                "ffnn",
                "--output-dir",
                str(out),
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    dev = json.loads((out / "results.json").read_text())["dev"]
    assert dev["label_names"] == ["negative", "positive", "glowing"]
    assert [c["support"] for c in dev["per_class"].values()] == [8, 8, 8]


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "run.py", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "humor", "--precision", "fp8"], "--precision 'fp8': choose one of auto, fp32, bf16, fp16"),
        (["--task", "humor", "--lr", "-1"], "--lr must be positive"),
        (
            ["--task", "humor_"],
            "--task 'humor_': choose one of humor, semeval, goemotions, recipe-mpr, custom (did you mean 'humor'?)",
        ),
        (["--task", "humor", "--model", "/no/such/dir"], "/no/such/dir"),
        (["--task", "custom"], "--task custom needs --train-file"),
        (["--task", "humor", "--metric", "jaccard"], "--metric 'jaccard' is not a selection metric"),
        (["--task", "humor", "--max-length", "1000"], "--max-length 1000 exceeds minilm's 512 positions"),
        (["--task", "humor", "--device", "tpu"], "--device 'tpu'"),
        (["--task", "humor", "--model", "ffnn", "--lora-r", "4"], "drop --lora-r"),
        (["--task", "humor", "--test-file", "/no/such.csv"], "/no/such.csv"),
        (["--task", "humor", "--quantize", "nf4"], "add --lora-r"),
        (["--task", "humor", "--loss", "bce"], "bce"),
        (["--task", "humor", "--label-names", "a,b"], "--task custom only"),
        (["--task", "humor", "--max-tokens", "4"], "--max-tokens 4 is below --max-length"),
        (
            ["--task", "humor", "--lora-r", "4", "--lora-targets", "no_such_layer"],
            "--lora-targets: pattern 'no_such_layer'",
        ),
        # Library errors name their parameter (label_smoothing, gamma, r, targets); the CLI names the flag.
        (["--task", "humor", "--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1), got 1.5"),
        (["--task", "humor", "--loss", "focal", "--focal-gamma", "-1"], "--focal-gamma must be >= 0, got -1.0"),
        (["--task", "humor", "--llrd", "-0.5"], "--llrd must be in (0, 1], got -0.5"),
        (["--task", "semeval", "--loss", "ce"], "--loss ce is for single-label tasks"),
    ],
)
def test_user_errors_end_in_one_clear_line(tmp_path, data_dir, args, message):
    r = run_cli(*args, "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert message in last and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # nothing written, not even the config


def test_bad_custom_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,a\nalso fine,b\nragged,a,extra\n")
    r = run_cli(
        "--task", "custom", "--train-file", str(bad), "--dev-file", str(bad), "--output-dir", str(tmp_path / "o")
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "bad.csv" in last and "line 4" in last
    assert not (tmp_path / "o" / "results.json").exists()


def test_bf16_precision_trains_on_cpu(tmp_path, data_dir):
    out = train(tmp_path, data_dir, "bf16", "--task", "humor", "--precision", "bf16")
    results = json.loads((out / "results.json").read_text())
    assert results["train"]["skipped_steps"] == 0 and results["train"]["step"] == 3


def test_smollm2_qlora_run_and_predict(tmp_path, data_dir):
    """A real decoder from GGUF, QLoRA (NF4 base + LoRA), and predict on its merged model/."""
    out = tmp_path / "qlora"
    assert (
        main(
            [
                "--task",
                "semeval",
                "--model",
                "smollm2",
                "--lora-r",
                "4",
                "--quantize",
                "nf4",
                "--lr",
                "2e-4",
                "--data-dir",
                str(data_dir),
                "--output-dir",
                str(out),
                "--max-train-samples",
                "16",
                "--max-eval-samples",
                "8",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--max-length",
                "24",
            ]
        )
        == 0
    )
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["padding"] == "bucketed"  # a decoder: no unpadded path
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["pad_token_id"] is not None
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"text": "I am so happy today!"}) + "\n")
    assert (
        main(["predict", "--model", str(out / "model"), "--input", str(src), "--output", str(tmp_path / "p.csv")]) == 0
    )
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 1 and "prob_joy" in rows[0]


def test_toml_values_are_type_checked(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('task = "humor"\nlr = "2e-5"\n')
    r = run_cli("--config", str(toml))
    assert r.returncode == 2 and "lr = '2e-5' should be a float" in r.stderr and "Traceback" not in r.stderr
    toml.write_text('task = "humor"\nlearning_rate = 2e-5\n')
    r = run_cli("--config", str(toml))
    assert r.returncode == 2 and "learning_rate" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr


def test_resume_continues_in_its_directory_and_refuses_changed_settings(tmp_path, data_dir):
    out = train(tmp_path, data_dir, "r", "--task", "humor", "--epochs", "2", "--max-steps", "3")
    first = json.loads((out / "results.json").read_text())["train"]
    assert (
        main(
            [
                "--resume",
                str(out),
                "--data-dir",
                str(data_dir),
                *SMALL,
                "--task",
                "humor",
                "--epochs",
                "2",
                "--max-steps",
                "3",
            ]
        )
        == 0
    )
    again = json.loads((out / "results.json").read_text())["train"]
    assert again["step"] == first["step"] == 3  # nothing left to do: the finished run is not trained twice
    config = (out / "config.json").read_text()
    r = run_cli(
        "--resume",
        str(out),
        "--data-dir",
        str(data_dir),
        *SMALL,
        "--task",
        "humor",
        "--epochs",
        "2",
        "--max-steps",
        "3",
        "--lr",
        "1e-4",
    )
    refused = r.stderr.strip().splitlines()[-1]  # only the setting that differs from the run's own is named
    assert r.returncode == 2 and "--lr 0.0001 (the run has 2e-05) differ" in refused and "--epochs" not in refused
    assert (out / "config.json").read_text() == config  # refused before anything was written


def test_multiple_choice_model_reloads_with_its_trained_head(tmp_path, data_dir):
    args = (
        "--task",
        "recipe-mpr",
        "--max-folds",
        "1",
        "--max-length",
        "32",
        "--choice-scorer",
        "cross",
        "--pooling",
        "cls",
    )
    out = train(tmp_path, data_dir, "mc", *args) / "fold0"  # Recipe-MPR keeps each fold's model in its fold
    from safetensors.torch import load_file

    saved = load_file(str(out / "model" / "model.safetensors"))["classifier.weight"]
    model = minitune.load_model(out / "model", head="multiple_choice")
    assert model.head_trained and torch.equal(model.classifier.weight, saved)
    r = run_cli("predict", "--model", str(out / "model"), "--input", "x.csv", "--output", str(tmp_path / "p.csv"))
    assert r.returncode == 2 and "x.csv: a multiple-choice model reads .json or .jsonl" in r.stderr


def test_library_errors_name_their_parameter_and_the_cli_the_flag():
    from minitune.adapters.lora import LoRALinear, apply_lora
    from minitune.cli import flag_for
    from minitune.errors import ParameterError

    with pytest.raises(ParameterError) as caught:
        LoRALinear(torch.nn.Linear(4, 4), r=0, alpha=1.0)
    assert str(caught.value) == "r must be a positive integer, got 0; use e.g. 8"  # a layer's own parameter: no flag
    assert caught.value.render(flag_for) == "r must be a positive integer, got 0; use e.g. 8"
    # A library parameter that a flag sets carries the flag's name (underscored): no table maps one to the other.
    with pytest.raises(ParameterError) as caught:
        apply_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)), lora_r=2, lora_alpha=4.0, lora_targets=["nope"])
    assert str(caught.value).startswith("lora_targets: pattern 'nope' matches no linear layer")
    assert caught.value.render(flag_for).startswith("--lora-targets: pattern 'nope' matches no linear layer")
    # A parameter no flag sets keeps its name; predict's own flags are used for predict's errors.
    assert flag_for("padding_side") == "padding_side" and flag_for("batch_size", {"batch_size"}) == "--batch-size"
