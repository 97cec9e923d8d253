"""`minitune predict` on multiple-choice models: questions with options in, the chosen option and one probability
per option out, for the bi-encoder and the cross-encoder, one model or a run's fold models."""

import csv
import json

import numpy as np
import pytest
import torch

import minitune
from minitune.cli import main
from minitune.experiments.compare import compare_row
from minitune.models.pooling import BI_SCALE
from minitune.predict import predict_file

QUESTIONS = [  # list options, a different number per item; extra keys are kept
    {
        "id": "q1",
        "query": "a quick vegetarian pasta",
        "options": ["beef stew", "tomato pasta with basil", "fish tacos"],
    },
    {"id": "q2", "query": "something sweet for dessert", "options": ["chocolate cake", "garlic bread"], "note": 7},
    {
        "id": "q3",
        "query": "a warm soup for winter",
        "options": ["iced lemonade", "lentil soup with carrots", "green salad", "cold noodles", "fruit salad"],
    },
]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def probs(row, n):
    return np.array([float(row[f"prob_{i}"]) for i in range(n)])


def test_bi_encoder_predict_is_the_softmax_of_scaled_cosines_of_sentence_transformers_embeddings(tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model_dir = tmp_path / "bi"  # the packaged MiniLM as a zero-shot bi-encoder, saved as a run saves it
    minitune.save_pretrained(minitune.load_model("minilm", head="multiple_choice"), model_dir)
    minitune.load_tokenizer("minilm").save_pretrained(model_dir)
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    predict_file(model_dir, questions, tmp_path / "a.csv")
    rows = read_csv(tmp_path / "a.csv")
    assert list(rows[0]) == [
        "id",
        "query",
        "options",
        "note",
        "choice",
        "choice_text",
        *(f"prob_{i}" for i in range(5)),
    ]
    assert rows[1]["note"] == "7" and json.loads(rows[0]["options"]) == QUESTIONS[0]["options"]
    reference = sentence_transformers.SentenceTransformer(str(minitune.checkpoints.hub.resolve_model("minilm")))
    for q, row in zip(QUESTIONS, rows):
        e = torch.tensor(reference.encode([q["query"], *q["options"]]))
        expected = torch.softmax(BI_SCALE * torch.nn.functional.cosine_similarity(e[:1], e[1:]), 0).numpy()
        n = len(q["options"])
        np.testing.assert_allclose(probs(row, n), expected, atol=1e-5)
        assert all(row[f"prob_{i}"] == "" for i in range(n, 5))  # past the item's own options
        best = int(expected.argmax())
        assert (row["choice"], row["choice_text"]) == (str(best), q["options"][best])


@pytest.mark.parametrize("scorer", ["bi", "cross"])
def test_predict_on_a_recipe_mpr_run_is_the_mean_of_its_fold_models(tmp_path, data_dir, scorer, capsys):
    items = json.loads((data_dir / "recipe_mpr" / "500QA.json").read_text(encoding="utf-8"))[:30]
    further = tmp_path / "further.json"  # Recipe-MPR's own format: options keyed by id, an answer
    further.write_text(json.dumps(items))
    out = tmp_path / scorer
    args = ["--task", "recipe-mpr", "--data-dir", str(data_dir), "--output-dir", str(out), "--max-folds", "2"]
    small = ["--max-train-samples", "40", "--epochs", "1", "--max-length", "48", "--test-file", str(further)]
    assert main([*args, *small, "--choice-scorer", scorer, "--pooling", "mean"]) == 0
    assert f"minitune predict --model {out} --input QUESTIONS.jsonl" in capsys.readouterr().out
    assert json.loads((out / "members.json").read_text()) == {"kind": "folds", "members": ["fold0", "fold1"]}
    row = compare_row(out)  # what predict runs: both fold models
    assert (
        row["kind"] == "folds"
        and row["params"]
        == sum(p.numel() for p in minitune.load_model(out / "fold0" / "model", head="multiple_choice").parameters()) * 2
    )
    assert main(["predict", "--model", str(out), "--input", str(further), "--output", str(tmp_path / "all.csv")]) == 0
    each = []
    for k in (0, 1):
        predict_file(out / f"fold{k}", further, tmp_path / f"fold{k}.csv")
        each.append(np.array([probs(r, 5) for r in read_csv(tmp_path / f"fold{k}.csv")]))
    rows = read_csv(tmp_path / "all.csv")
    np.testing.assert_allclose(np.array([probs(r, 5) for r in rows]), np.mean(each, axis=0), atol=2e-6)
    # minitune.Predictor takes the questions with their options and gives what the CLI wrote
    asked = minitune.Predictor(out).predict_choices(
        [it["query"] for it in items], [list(it["options"].values()) for it in items]
    )
    np.testing.assert_allclose(asked.probabilities, np.array([probs(r, 5) for r in rows]), atol=1e-6)
    assert [list(it["options"])[c] for c, it in zip(asked.choice, items)] == [r["choice"] for r in rows]
    assert {"query", "options", "answer", "query_type", "correctness_explanation"} <= set(rows[0])  # input kept
    assert all(r["choice_text"] == item["options"][r["choice"]] for r, item in zip(rows, items))
    # The run scored the same file with its fold ensemble (options shuffled): the same answers, in any order.
    accuracy = np.mean([r["choice"] == item["answer"] for r, item in zip(rows, items)])
    assert accuracy == pytest.approx(json.loads((out / "results.json").read_text())["test_file"]["accuracy"])


@pytest.mark.parametrize(
    ("content", "name", "extra", "message"),
    [
        ("text\nhello\n", "q.csv", [], "q.csv: a multiple-choice model reads .json or .jsonl, not '.csv'"),
        (
            '{"question": "x", "options": ["a", "b"]}\n',
            "q.jsonl",
            [],
            "line 1: missing or empty 'query' (keys present: 'question', 'options'); name the query's key with "
            "--text-col",
        ),
        ('{"question": "x", "options": ["a", "b"]}\n', "q.jsonl", ["--text-col", "question"], None),
        ('{"query": "x", "options": "a, b"}\n', "q.jsonl", [], "name the options' key with --options-col"),
        ('[{"query": "x", "options": ["a"]}]', "q.json", [], "item 0: 'options' needs two or more"),
        ('{"query": "x", "options": {"a": "one", "a": "two", "b": "three"}}\n', "q.jsonl", [], "id 'a' appears twice"),
        ('{"query": "x", "options": ["a", "b"]}\n', "q.jsonl", ["--threshold", "0.3"], "--threshold do not apply"),
    ],
)
def test_question_files_and_flags_are_checked_in_one_line(tmp_path, content, name, extra, message, capsys):
    model_dir = tmp_path / "bi"
    minitune.save_pretrained(minitune.load_model("minilm", head="multiple_choice"), model_dir)
    minitune.load_tokenizer("minilm").save_pretrained(model_dir)
    (tmp_path / name).write_text(content)
    output = tmp_path / "a.csv"
    code = main(
        ["predict", "--model", str(model_dir), "--input", str(tmp_path / name), "--output", str(output), *extra]
    )
    err = capsys.readouterr().err
    if message is None:
        assert code == 0 and read_csv(output)[0]["question"] == "x"
        return
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not output.exists()


def test_a_new_run_in_a_folds_run_directory_drops_its_members(tmp_path, data_dir):
    out = tmp_path / "run"
    base = ["--data-dir", str(data_dir), "--output-dir", str(out), "--model", "ffnn", "--epochs", "1"]
    assert main([*base, "--task", "recipe-mpr", "--max-folds", "2", "--max-train-samples", "40"]) == 0
    assert (out / "members.json").is_file()
    again = [*base, "--task", "humor", "--max-train-samples", "40", "--max-eval-samples", "20"]
    assert main(again) == 2  # one run per folder: another run there is refused ...
    assert main([*again, "--overwrite"]) == 0  # ... unless it is to be replaced
    assert not (out / "members.json").exists()  # else predict would average the old fold models
    texts = tmp_path / "t.csv"
    texts.write_text("text\nWhy did the chicken cross the road?\n")
    predict_file(out, texts, tmp_path / "p.csv")
    assert read_csv(tmp_path / "p.csv")[0]["label"] in ("humor", "not_humor")


def test_a_generative_multiple_choice_model_gets_no_questions_hint_and_is_refused_first(tmp_path):
    from minitune.config.sections import build
    from minitune.errors import ConfigError
    from minitune.runner import saved_note

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "generative.json").write_text(json.dumps({"kind": "multiple_choice"}))
    note = saved_note(build({"task": "recipe-mpr", "head": "generative"}), tmp_path, "multiple_choice")
    assert "minitune predict" not in note
    with pytest.raises(ConfigError, match="a --head generative multiple-choice model"):
        predict_file(tmp_path, tmp_path / "missing.jsonl", tmp_path / "a.csv", ask=None)
