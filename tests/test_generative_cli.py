"""`--head generative` through the CLI on every task kind, with a tiny random Llama that carries SmolLM2's
tokenizer and chat template (in tokenizer_config.json): every answer mode, few-shot, a prompt template, and the
errors a user can make. Scores from random weights mean nothing; what is checked is that each run completes,
reports, and that constrained answers are always labels."""

from __future__ import annotations

import json

import pytest
import torch

from minitune.checkpoints.load import load_tokenizer
from minitune.cli import main
from minitune.data.chat import find_chat_template
from test_decoder import hub

transformers = pytest.importorskip("transformers")
# Each run loads a model and the module fixture builds one (15 s on a busy machine): the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_instruct(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_instruct")
    tok = load_tokenizer("smollm2")
    tok.save_pretrained(d)
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = find_chat_template("smollm2")[0]
    cfg_path.write_text(json.dumps(cfg))
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = transformers.AutoConfig.for_model(**hub("llama", vocab_size=len(tok), max_position_embeddings=2048, **ids))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(d)
    return d


def run(tmp_path, data_dir, model, *args):
    out = tmp_path / "run"
    argv = ["--data-dir", str(data_dir), "--output-dir", str(out), "--model", str(model), "--head", "generative"]
    code = main([*argv, "--epochs", "0", "--max-eval-samples", "6", "--batch-size", "4", *args])
    return code, out


@pytest.mark.parametrize(
    "task, mode, extra",
    [
        ("semeval", "constrained", ["--shots", "2"]),
        ("semeval", "score", []),
        ("humor", "constrained", []),
        ("humor", "free", ["--max-new-tokens", "4"]),
        ("recipe-mpr", "score", ["--shots", "1"]),
        ("recipe-mpr", "constrained", []),
    ],
)
def test_every_task_kind_and_answer_mode(tmp_path, data_dir, tiny_instruct, task, mode, extra):
    code, out = run(tmp_path, data_dir, tiny_instruct, "--task", task, "--answer-mode", mode, *extra)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    dev = results["test" if task == "recipe-mpr" else "dev"]  # recipe-mpr: the five folds' test parts
    assert results["train"]["head"] == "generative" and results["train"]["shots"] == (
        int(extra[1]) if extra[:1] == ["--shots"] else 0
    )
    assert (out / ("test_predictions.csv" if task == "recipe-mpr" else "dev_predictions.csv")).is_file()
    prompt = (out / "prompt_example.txt").read_text()
    assert prompt.endswith("<|im_start|>assistant\n")  # the checkpoint's own chat template, from tokenizer_config
    assert prompt.count("<|im_start|>user") == 1 + results["train"]["shots"]
    report = (out / "report.txt").read_text()
    if mode == "constrained":
        assert dev["generation"]["invalid"] == 0 and dev["generation"]["empty"] == 0
        assert "generations: 0 name no label, 0 empty" in report
    if mode == "free":
        assert "generations:" in report and dev["generation"]["n"] == 6
    if mode == "score":
        assert "generation" not in dev
    if task == "recipe-mpr":
        assert len(results["train"]["folds"]) == 5 and results["test"]["n_examples"] == 500  # every item, once
        assert "A. " in prompt and "letter" in prompt


def test_prompt_template_file(tmp_path, data_dir, tiny_instruct):
    tpl = tmp_path / "prompt.jinja"
    tpl.write_text("Is this funny? Say {{ labels | join(' or ') }}.\n{{ text }}")
    code, out = run(tmp_path, data_dir, tiny_instruct, "--task", "humor", "--prompt-template", str(tpl))
    assert code == 0
    assert "Is this funny? Say not humor or humor." in (out / "prompt_example.txt").read_text()


def test_user_errors(tmp_path, data_dir, tiny_instruct, capsys):
    code, out = run(tmp_path, data_dir, tiny_instruct, "--task", "humor", "--prompt-template", str(tmp_path / "no"))
    assert code == 2 and "--prompt-template" in capsys.readouterr().err and not out.exists()
    code, out = run(tmp_path, data_dir, "minilm", "--task", "humor")
    assert code == 2 and "needs a decoder checkpoint" in capsys.readouterr().err and not out.exists()
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if %}")
    code, _ = run(tmp_path, data_dir, tiny_instruct, "--task", "humor", "--prompt-template", str(bad))
    assert code == 2 and "does not parse" in capsys.readouterr().err


def test_lora_instruction_tuning_saves_and_predicts(tmp_path, data_dir, tiny_instruct):
    """LoRA on prompt -> answer: the loss falls, model/ (merged) + adapter/ + generative.json are written, transformers
    loads model/ as a causal LM, and `predict` answers with it (constrained: every row gets a valid label)."""
    code, out = run(
        tmp_path,
        data_dir,
        tiny_instruct,
        "--task",
        "semeval",
        "--epochs",
        "2",
        "--lora-r",
        "4",
        "--max-train-samples",
        "16",
        "--lr",
        "1e-2",
        "--log-every",
        "1",
    )
    assert code == 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if s.get("type") == "train"]
    assert losses[-1] < losses[0]
    # The zero-shot answers before the first step are the run's starting score (as `--epochs 0` would give).
    assert steps[0]["type"] == "eval" and steps[0]["step"] == 0 and steps[0]["before_training"] is True
    assert json.loads((out / "results.json").read_text())["train"]["start"] == {
        k: v for k, v in steps[0].items() if k not in ("type", "step", "epoch", "before_training")
    }
    model_dir = out / "model"
    for name in ("generative.json", "chat_template.jinja", "model.safetensors", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    assert (out / "adapter" / "adapter_config.json").is_file()
    ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(ref).__name__ == "LlamaForCausalLM"
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nI am so happy today!\nThis is awful and scary.\n")
    assert main(["predict", "--model", str(out), "--input", str(texts), "--output", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("text,labels,prob_anger")


def test_epochs_zero_evaluates_a_classifier_head_without_training(tmp_path, data_dir):
    code, out = run(tmp_path, data_dir, "minilm", "--task", "humor", "--head", "classifier")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train"]["step"] == 0 and results["dev"]["n_examples"] == 6
    assert results["train"]["start"] == {"macro_f1": results["dev"]["macro_f1"]}  # its score is the starting one
