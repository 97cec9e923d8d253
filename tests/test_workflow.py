"""The everyday path around a run (issue 12): predictions joined back to their input, a run folder as --model, dev
predictions and --predict-file, the Python API, a command line that answers in one line, delimiter sniffing,
truthful interruption messages."""

import csv
import json

import pytest

import minitune
from minitune.cli import build_parser, interrupted_message, main, parse_config
from minitune.config.load import make_config
from minitune.errors import MinituneError

TINY = [
    "--model",
    "ffnn",
    "--epochs",
    "1",
    "--max-train-samples",
    "64",
    "--max-eval-samples",
    "32",
    "--max-length",
    "32",
]


@pytest.fixture(scope="module")
def humor_ffnn(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("workflow")
    unlabelled = tmp / "unlabelled.csv"
    unlabelled.write_text("text,id,source\nA pun a day keeps the doctor away.,a7,me\nThe bus is late.,b2,you\n")
    out = tmp / "run"
    args = ["--task", "humor", *TINY, "--data-dir", str(data_dir), "--output-dir", str(out)]
    assert main([*args, "--predict-file", str(unlabelled)]) == 0
    return out


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_run_writes_dev_predictions_and_labels_its_predict_file(humor_ffnn):
    dev = read_csv(humor_ffnn / "dev_predictions.csv")
    results = json.loads((humor_ffnn / "results.json").read_text())
    assert len(dev) == results["dev"]["n_examples"] == 32
    assert {"line", "text", "gold", "label", "prob_humor", "prob_not_humor"} <= set(dev[0])
    accuracy = sum(r["gold"] == r["label"] for r in dev) / len(dev)
    assert accuracy == pytest.approx(results["dev"]["accuracy"])
    predicted = read_csv(humor_ffnn / "predictions.csv")
    assert list(predicted[0])[:4] == ["id", "text", "source", "label"]  # the id first, every input column kept
    assert [r["id"] for r in predicted] == ["a7", "b2"] and predicted[1]["source"] == "you"
    # The best weights are kept once: in model/, not also in best.safetensors.
    assert (humor_ffnn / "model" / "model.safetensors").is_file() and not (humor_ffnn / "best.safetensors").exists()


def test_predict_file_is_checked_before_training(tmp_path, data_dir, capsys):
    out = tmp_path / "never"
    args = ["--task", "humor", *TINY, "--data-dir", str(data_dir), "--output-dir", str(out)]
    assert main([*args, "--predict-file", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err and not out.exists()
    assert main([*args[:1], "recipe-mpr", *args[2:], "--predict-file", str(tmp_path / "x.csv")]) == 2
    assert "--predict-file labels texts for classification tasks" in capsys.readouterr().err


def test_predict_takes_the_run_folder_and_the_official_tab_separated_txt(humor_ffnn, tmp_path):
    official = tmp_path / "2018-E-c-En-test.txt"  # SemEval's official layout: tab-separated, ID and Tweet columns
    official.write_text("ID\tTweet\textra\n2018-En-1\tI am so happy today!\tx\n2018-En-2\tThis is awful.\ty\n")
    out = tmp_path / "p.csv"
    args = ["predict", "--model", str(humor_ffnn), "--input", str(official), "--output", str(out)]
    assert main([*args, "--text-col", "Tweet"]) == 0
    rows = read_csv(out)
    assert list(rows[0])[:3] == ["ID", "Tweet", "extra"] and [r["ID"] for r in rows] == ["2018-En-1", "2018-En-2"]


def test_predict_errors_name_only_its_own_flags(humor_ffnn, tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("sentence\nhello\n")
    assert main(["predict", "--model", str(humor_ffnn), "--input", str(src), "--output", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing column 'text'" in err[0] and "--text-col" in err[0]
    assert "label" not in err[0].split("columns present")[1] and not (tmp_path / "o.csv").exists()


def test_python_api_trains_with_the_cli_defaults_and_checks(tmp_path, data_dir):
    settings = dict(model="ffnn", epochs=1, max_train_samples=64, max_eval_samples=32, max_length=32)
    result = minitune.train(task="humor", **settings, data_dir=str(data_dir), output_dir=str(tmp_path / "api"))
    assert result.model_dir == tmp_path / "api" / "model" and (result.model_dir / "config.json").is_file()
    assert result.results["dev"]["n_examples"] == 32 and result.results["config"]["label_smoothing"] == 0.0
    with pytest.raises(MinituneError, match=r"^lr must be positive, got -1"):  # the setting's own name, no flag
        minitune.train(task="humor", lr=-1)
    with pytest.raises(MinituneError, match="unknown setting learning_rate"):
        minitune.train(task="humor", learning_rate=1e-4)
    with pytest.raises(MinituneError, match="epochs = '2' should be a int"):
        minitune.train(task="humor", epochs="2")


TASKS = "humor, semeval, goemotions, recipe-mpr, custom"
SEE = "(see minitune --help)"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--task", "humor", "--epoch", "2"], f"unrecognized arguments: --epoch 2 (did you mean '--epochs'?) {SEE}"),
        (["--task", "humr"], f"--task 'humr': choose one of {TASKS} (did you mean 'humor'?)"),
        (["--task", "humor", "--max-train", "5"], "unrecognized arguments: --max-train"),  # no abbreviations
        (["--task", "humor", "--epochs", "x"], f"argument --epochs: invalid int value: 'x' {SEE}"),
        (["predict", "--model", "m"], "the following arguments are required: --input, --output (see minitune predict"),
    ],
)
def test_flag_mistakes_print_one_line_and_a_pointer_to_help(args, expected, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0] and "usage:" not in err[0]


def test_help_lists_the_commands_and_says_each_default_once():
    text = build_parser().format_help()
    assert "minitune predict --model DIR" in text and "(default: None)" not in text
    assert "patience counts evaluations" not in text and "evaluations (not epochs)" in text
    for option in ("--lr", "--padding", "--keep-checkpoints"):
        block = text.split(option, 1)[1].split("\n  --", 1)[0]
        assert block.count("default") <= 1, option


def test_model_typo_suggests_the_alias(capsys, monkeypatch, data_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--task", "humor", "--model", "minlm", "--data-dir", str(data_dir)]) == 2
    assert "did you mean 'minilm'?" in capsys.readouterr().err


def test_warmup_steps_replace_the_ratio():
    cfg = parse_config(["--task", "humor", "--warmup-steps", "3"]).loop
    assert cfg.warmup_steps == 3 and cfg.warmup_ratio == 0.1  # the ratio stays for the record; the steps win
    with pytest.raises(MinituneError, match="warmup_steps must be >= 0"):
        make_config(task="humor", warmup_steps=-1)


def test_custom_delimiter_sniffed_from_the_header_or_given(tmp_path):
    from minitune.data.tasks import load_task

    tabbed = tmp_path / "train.csv"  # tab-separated although named .csv
    tabbed.write_text("text\tlabel\n" + "".join(f"text {i}, with a comma\t{'ab'[i % 2]}\n" for i in range(10)))
    task = load_task("custom", train_file=tabbed)
    assert [ex.text for ex in task.train][:1] == ["text 0, with a comma"] and task.label_names == ["a", "b"]
    with pytest.raises(MinituneError, match=r"read as comma-separated; the header is one field holding 1 tabs"):
        load_task("custom", train_file=tabbed, delimiter=",")


def test_interruption_message_says_what_is_on_disk(tmp_path):
    cfg = make_config(task="humor", output_dir=str(tmp_path / "run"))
    assert "nothing to resume" in interrupted_message(cfg)
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.mkdir(parents=True)
    for name in ("model.safetensors", "trainer_state.pt"):
        (ckpt / name).write_bytes(b"x")
    (ckpt / "progress.json").write_text('{"step": 17, "epoch": 0, "finished": false}')
    message = interrupted_message(cfg)
    assert f"checkpoint at step 17 in {ckpt}" in message and f"minitune --resume {tmp_path / 'run'}" in message
    assert "--no-checkpoint" in interrupted_message(make_config(task="humor", output_dir=str(tmp_path / "x"),
                                                                checkpoint=False))  # fmt: skip


def test_settings_printed_once_and_the_console_report_ends_with_what_was_saved(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert main(["--task", "humor", *TINY, "--data-dir", str(data_dir), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("settings (every one is saved in") == 1 and "settings:" not in printed
    assert "settings:" in (out / "report.txt").read_text()  # the file keeps them with the results
    assert f"minitune predict --model {out} --input FILE.csv" in printed


def test_predict_truncates_as_the_run_trained(humor_ffnn):
    from minitune.checkpoints.rundir import model_dir_of, trained_max_length

    assert trained_max_length(model_dir_of(humor_ffnn)) == 32  # TINY's --max-length, not predict's old 128
