"""Tests for minitune.data.tasks (and its helpers readers.py, custom.py) on the real data and on bad files.

Reference values come from shared/data/*/PROVENANCE.md (row counts, label frequencies) or from reading the
files here independently with csv/json; bad inputs are small files written in tmp_path.
"""

import csv
import json
import re

import numpy as np
import pytest

from minitune.data.readers import DataWarning, fix_mojibake
from minitune.data.tasks import (
    MULTI_LABEL,
    MULTIPLE_CHOICE,
    SINGLE_LABEL,
    label_array,
    load_eval_file,
    load_task,
    resolve_data_dir,
)
from minitune.errors import ConfigError, DataError

SEMEVAL_NAMES = [
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "love",
    "optimism",
    "pessimism",
    "sadness",
    "surprise",
    "trust",
]


@pytest.fixture(scope="module")
def humor(data_dir):
    return load_task("humor", data_dir)


@pytest.fixture(scope="module")
def semeval(data_dir):
    return load_task("semeval", data_dir)


@pytest.fixture(scope="module")
def goemotions(data_dir):
    return load_task("goemotions", data_dir)


@pytest.fixture(scope="module")
def recipe(data_dir):
    return load_task("recipe-mpr", data_dir, seed=42)


def _one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ------------------------------------------------------------------------------------------- real data


def test_humor(humor, data_dir):
    assert humor.kind == SINGLE_LABEL and humor.label_names == ["not_humor", "humor"]
    assert (len(humor.train), len(humor.dev)) == (8000, 1000)
    assert np.bincount(label_array(humor)).tolist() == [3068, 4932]
    assert np.bincount(label_array(humor, humor.dev)).tolist() == [368, 632]
    assert [ex.meta["id"] for ex in humor.train[:3]] == ["1", "2", "3"]
    with open(data_dir / "hahackathon" / "train.csv", encoding="utf-8", newline="") as f:
        raw = {row["id"]: row["text"] for row in csv.DictReader(f)}
    assert humor.train[1].text == raw["2"]  # CSV quoting with doubled quotes undone
    assert '"Wife Wanted"' in humor.train[1].text
    for ex in humor.train:  # texts without Latin-1 range characters are untouched
        if not re.search("[\u0080-\u00ff]", raw[ex.meta["id"]]):
            assert ex.text == raw[ex.meta["id"]]


def test_humor_mojibake_repaired(humor):
    by_id = {ex.meta["id"]: ex for ex in humor.train}
    assert "Abûd-Dardâ" in by_id["5404"].text  # was "AbÃ»d-DardÃ¢"
    assert "\u2764" in by_id["868"].text  # heart emoji, was "â\x9d¤"
    assert "£45" in by_id["901"].text  # was "Â£45"
    assert "José" in by_id["4446"].text  # genuine Latin-1 kept
    assert not any(re.search("[\u0080-\u009f]", ex.text) for ex in humor.train + humor.dev)
    fixed = [ex for ex in humor.train if ex.meta.get("mojibake_fixed")]
    assert 16 <= len(fixed) < 60


def test_fix_mojibake_units():
    assert fix_mojibake("caf\u00c3\u00a9") == "café"
    assert fix_mojibake("piñata and José") == "piñata and José"
    assert fix_mojibake("love\u00e2\u009d\u00a4") == "love\u2764"
    assert fix_mojibake("x \u0099 y") == "x  y"


def test_semeval(semeval):
    assert semeval.kind == MULTI_LABEL and semeval.label_names == SEMEVAL_NAMES
    assert (len(semeval.train), len(semeval.dev)) == (6838, 886)
    Y = label_array(semeval)
    expected = [2544, 978, 2602, 1242, 2477, 700, 1984, 795, 2008, 361, 357]  # PROVENANCE.md
    assert Y.sum(axis=0).tolist() == expected
    assert (Y.sum(axis=1) == 0).sum() == 204
    assert (label_array(semeval, semeval.dev).sum(axis=1) == 0).sum() == 14
    assert semeval.train[0].meta["id"] == "2017-En-21441" and "Joyce Meyer" in semeval.train[0].text


def test_goemotions(goemotions):
    assert goemotions.kind == MULTI_LABEL and len(goemotions.label_names) == 28
    assert goemotions.label_names[16] == "grief" and goemotions.label_names[27] == "neutral"
    assert (len(goemotions.train), len(goemotions.dev)) == (43410, 5426)
    Y = label_array(goemotions)
    counts = Y.sum(axis=0)
    assert (counts[0], counts[16], counts[27]) == (4130, 77, 14219)  # PROVENANCE.md
    assert np.bincount(Y.sum(axis=1)).tolist() == [0, 36308, 6541, 532, 28, 1]
    assert len({ex.meta["id"] for ex in goemotions.train}) == 43410
    quoted = goemotions.train[123]  # line 124: "Three words, no subtlety. ""Dude. Stop. Seriously."" "
    assert quoted.text == 'Three words, no subtlety. "Dude. Stop. Seriously." ' and quoted.meta["line"] == 124


def test_recipe_mpr(recipe, data_dir):
    raw = json.loads((data_dir / "recipe_mpr" / "500QA.json").read_text(encoding="utf-8"))
    assert recipe.kind == MULTIPLE_CHOICE and len(recipe.train) == 500 and recipe.dev == []
    assert recipe.label_names == [f"choice_{i}" for i in range(5)]
    for ex, item in zip(recipe.train, raw):
        assert ex.text == item["query"] and len(ex.choices) == 5
        assert ex.choices[ex.label] == item["options"][item["answer"]]
        assert sorted(ex.choices) == sorted(item["options"].values())
    first = np.mean([ex.label == 0 for ex in recipe.train])
    assert 0.15 <= first <= 0.25  # the file always lists the answer first
    assert np.bincount(label_array(recipe), minlength=5).min() > 60  # every position holds answers (~100 each)
    types = {
        name: sum(name in ex.meta["query_types"] for ex in recipe.train)
        for name in ("Specific", "Commonsense", "Negated", "Analogical", "Temporal")
    }
    assert types == {"Specific": 151, "Commonsense": 268, "Negated": 109, "Analogical": 30, "Temporal": 32}
    assert sum(not ex.meta["query_types"] for ex in recipe.train) == 110


def test_recipe_shuffle_deterministic_per_seed(recipe, data_dir):
    again = load_task("recipe-mpr", data_dir, seed=42)
    other = load_task("recipe-mpr", data_dir, seed=7)
    assert [ex.choices for ex in again.train] == [ex.choices for ex in recipe.train]
    assert [ex.label for ex in again.train] == [ex.label for ex in recipe.train]
    assert [ex.label for ex in other.train] != [ex.label for ex in recipe.train]


def test_recipe_folds(recipe):
    assert len(recipe.folds) == 5
    tests = []
    for train, val, test in recipe.folds:
        assert (len(train), len(val), len(test)) == (400, 0, 100)
        assert sorted(train + test) == list(range(500))
        tests += test
    assert sorted(tests) == list(range(500))


def test_eval_file_reads_like_dev(humor, semeval, data_dir):
    again = load_eval_file(humor, data_dir / "hahackathon" / "dev.csv")
    assert [(ex.text, ex.label) for ex in again] == [(ex.text, ex.label) for ex in humor.dev]
    dev = load_eval_file(semeval, data_dir / "semeval2018_ec" / "2018-E-c-En-dev.txt")
    assert [ex.label for ex in dev] == [ex.label for ex in semeval.dev]


def test_builtin_with_own_files_needs_no_data_dir(tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("id,text,is_humor\n1,a joke,1\n2,not one,0\n", encoding="utf-8")
    task = load_task("humor", tmp_path / "empty", train_file=train, dev_file=train)
    assert [ex.label for ex in task.train] == [1, 0] and len(task.dev) == 2
    assert not (tmp_path / "empty").exists()  # nothing was fetched


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MINITUNE_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(str(tmp_path / "cli")) == tmp_path / "cli"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("MINITUNE_DATA_DIR")
    assert resolve_data_dir(None) == tmp_path / "xdg" / "minitune" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "minitune" / "data"


# ------------------------------------------------------------------------------------------- custom


def test_custom_csv_strings_and_pair(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text('q,a,y\n"first, quoted",second,pos\nthird,fourth,neg\nfifth,sixth,pos\n', encoding="utf-8")
    dev = tmp_path / "dev.csv"
    dev.write_text("q,a,y\nx,y,neg\n", encoding="utf-8")
    task = load_task("custom", train_file=train, dev_file=dev, text_col="q", label_col="y", pair_col="a")
    assert task.kind == SINGLE_LABEL and task.label_names == ["neg", "pos"]
    assert [(ex.text, ex.pair, ex.label) for ex in task.train] == [
        ("first, quoted", "second", 1),
        ("third", "fourth", 0),
        ("fifth", "sixth", 1),
    ]
    assert task.dev[0].label == 0 and task.train[1].meta["line"] == 3
    test = tmp_path / "test.csv"
    test.write_text("q,a,y\nz,w,pos\n", encoding="utf-8")
    assert [ex.label for ex in load_eval_file(task, test)] == [1]


def test_custom_tsv_integer_labels_sorted_numerically(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\na\t10\nb\t2\nc\t2\n", encoding="utf-8")
    task = load_task("custom", train_file=train)
    assert task.label_names == ["2", "10"] and [ex.label for ex in task.train] == [1, 0, 0]


def test_custom_given_names_accept_ids(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,1\nb,neg\n", encoding="utf-8")
    task = load_task("custom", train_file=train, label_names="neg,pos")
    assert [ex.label for ex in task.train] == [1, 0]


def test_custom_multilabel_jsonl_and_csv(tmp_path):
    train = tmp_path / "train.jsonl"
    lines = [{"text": "a", "label": ["x", "z"]}, {"text": "b", "label": "y"}, {"text": "c", "label": []}]
    train.write_text("\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
    task = load_task("custom", train_file=train)
    assert task.kind == MULTI_LABEL and task.label_names == ["x", "y", "z"]
    assert [ex.label for ex in task.train] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    csv_train = tmp_path / "train.csv"
    csv_train.write_text('text,label\na,"b,c"\nd,a\ne,\n', encoding="utf-8")
    task = load_task("custom", train_file=csv_train)
    assert task.kind == MULTI_LABEL and [ex.label for ex in task.train] == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]


# ------------------------------------------------------------------------------------------- bad input


def test_missing_column_lists_columns(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("sentence,label\na,x\nb,y\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=f)
    _one_line_error(excinfo, str(f), "line 1", "missing column 'text'", "'sentence', 'label'")
    g = tmp_path / "train.jsonl"
    g.write_text('{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=g)
    _one_line_error(excinfo, str(g), "line 2", "missing key 'text'", "'txt'")


def test_empty_text_skipped_with_count(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,label\na,x\n,y\n  ,x\nb,y\n", encoding="utf-8")
    with pytest.warns(DataWarning, match=r"skipped 2 rows with empty text \(lines 3, 4\)"):
        task = load_task("custom", train_file=f)
    assert [ex.text for ex in task.train] == ["a", "b"]
    h = tmp_path / "humor.csv"
    h.write_text("id,text,is_humor\n1,,1\n2,ok,0\n3,fine,1\n", encoding="utf-8")
    with pytest.warns(DataWarning, match="skipped 1 rows"):
        task = load_task("humor", tmp_path, train_file=h, dev_file=h)
    assert len(task.train) == 2
    j = tmp_path / "train.jsonl"  # a JSON null is a missing text too
    j.write_text('{"text": "a", "label": "x"}\n{"text": null, "label": "y"}\n{"text": "b", "label": "y"}\n')
    with pytest.warns(DataWarning, match=r"skipped 1 rows with empty text \(lines 2\)"):
        task = load_task("custom", train_file=j)
    assert [ex.text for ex in task.train] == ["a", "b"]


def test_unknown_label(tmp_path):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    dev.write_text("text,label\nc,x\nd,w\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=train, dev_file=dev)
    _one_line_error(excinfo, str(dev), "line 3", "unknown label 'w'", "x, y")
    h = tmp_path / "humor.csv"
    h.write_text("id,text,is_humor\n1,a,1\n2,b,yes\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_task("humor", tmp_path, train_file=h, dev_file=h)
    _one_line_error(excinfo, str(h), "line 3", "'yes'")


def test_label_id_out_of_range(tmp_path, goemotions):
    f = tmp_path / "test.tsv"
    f.write_text("fine text\t27\tid1\nbad text\t3,28\tid2\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_eval_file(goemotions, f)
    _one_line_error(excinfo, str(f), "line 2", "label id 28 out of range 0..27")
    g = tmp_path / "train.csv"
    g.write_text("text,label\na,0\nb,5\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=g, label_names=["neg", "pos"])
    _one_line_error(excinfo, str(g), "line 3", "label id 5 out of range 0..1")


def test_undecodable_bytes(tmp_path):
    f = tmp_path / "train.csv"
    f.write_bytes(b"text,label\na,x\n" + b"caf\xe9,y\n")
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=f)
    _one_line_error(excinfo, str(f), "line 3", "not valid UTF-8", "re-save")


def test_ragged_rows(tmp_path, goemotions):
    f = tmp_path / "train.csv"
    f.write_text("text,label\na,x\nb,y,extra\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=f)
    _one_line_error(excinfo, str(f), "line 3", "3 fields, expected 2")
    g = tmp_path / "dev.tsv"
    g.write_text("ok\t1\tid1\nmissing the id\t2\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_eval_file(goemotions, g)
    _one_line_error(excinfo, str(g), "line 2", "2 fields, expected 3")


def test_empty_files(tmp_path):
    for content, problem in (("", "the file is empty"), ("text,label\n", "no data rows")):
        f = tmp_path / "train.csv"
        f.write_text(content, encoding="utf-8")
        with pytest.raises(DataError) as excinfo:
            load_task("custom", train_file=f)
        _one_line_error(excinfo, str(f), problem)


def test_other_bad_files(tmp_path, semeval, recipe, data_dir):
    j = tmp_path / "train.jsonl"
    j.write_text('{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n', encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_task("custom", train_file=j)
    _one_line_error(excinfo, str(j), "line 2", "invalid JSON")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        load_task("custom", train_file=tmp_path / "train.xlsx")
    s = tmp_path / "semeval.txt"
    s.write_text(
        "ID\tTweet\t" + "\t".join(SEMEVAL_NAMES) + "\nx1\thi\t" + "\t".join(["0"] * 10 + ["2"]) + "\n", encoding="utf-8"
    )
    with pytest.raises(DataError) as excinfo:
        load_eval_file(semeval, s)
    _one_line_error(excinfo, "line 2", "'trust' has value '2'")
    items = json.loads((data_dir / "recipe_mpr" / "500QA.json").read_text(encoding="utf-8"))[:3]
    items[2]["answer"] = "nope"
    r = tmp_path / "recipe.json"
    r.write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_eval_file(recipe, r)
    _one_line_error(excinfo, str(r), "item 2", "answer 'nope'")


def test_bad_options(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="not a task"):
        load_task("sst2", data_dir)
    with pytest.raises(ConfigError, match="needs train_file"):
        load_task("custom")
    with pytest.raises(ConfigError, match="custom only"):
        load_task("humor", data_dir, text_col="text")
    single = tmp_path / "train.csv"
    single.write_text("text,label\na,x\nb,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="at least two labels"):
        load_task("custom", train_file=single)
