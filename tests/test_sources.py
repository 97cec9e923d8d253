"""Several training sources (issue 26): label maps and their written rules, GoEmotions' published taxonomies, the
SemEval map on the real files, source weights, ISEAR and MELD in their own shapes, and runs that train on merged
data and score on the target's own dev set (holdout, no dev file, cv, seeds, sweeps, distillation, predict)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import interrupt_fit
from minitune.cli import main
from minitune.config.load import make_config
from minitune.data.examples import Example
from minitune.data.kinds import MULTI_LABEL, SINGLE_LABEL
from minitune.data.label_maps import LabelMap, checked, map_examples, parse_map, taxonomy_labels, taxonomy_map
from minitune.data.sources import weighted
from minitune.data.tasks import label_array, load_eval_file, load_task
from minitune.errors import ConfigError
from minitune.inputs import read_task

REPO = Path(__file__).resolve().parents[1]

# GoEmotions' published groupings (google-research goemotions/data/ekman_mapping.json, sentiment_dict.json),
# written here from the published files, independently of the TOML files that ship.
EKMAN = {
    "anger": ["anger", "annoyance", "disapproval"],
    "disgust": ["disgust"],
    "fear": ["fear", "nervousness"],
    "joy": ["joy", "amusement", "approval", "excitement", "gratitude", "love", "optimism", "relief", "pride",
            "admiration", "desire", "caring"],
    "sadness": ["sadness", "disappointment", "embarrassment", "grief", "remorse"],
    "surprise": ["surprise", "realization", "confusion", "curiosity"],
}  # fmt: skip
SENTIMENT = {
    "positive": ["amusement", "excitement", "joy", "love", "desire", "optimism", "caring", "pride", "admiration",
                 "gratitude", "relief", "approval"],
    "negative": ["fear", "nervousness", "remorse", "embarrassment", "disappointment", "sadness", "grief", "disgust",
                 "anger", "annoyance", "disapproval"],
    "ambiguous": ["realization", "surprise", "curiosity", "confusion"],
}  # fmt: skip
TINY = ["--model", "ffnn", "--epochs", "1", "--max-length", "32", "--batch-size", "16", "--no-checkpoint"]


def _groups_of(published: dict) -> dict[str, set]:
    out = {"neutral": {"neutral"}}
    for group, members in published.items():
        for m in members:
            out.setdefault(m, set()).add(group)
    return out


@pytest.mark.parametrize("name, published", [("ekman", EKMAN), ("sentiment", SENTIMENT)])
def test_taxonomies_are_the_published_groupings(name, published, data_dir):
    fine = load_task("goemotions", data_dir).label_names
    shipped = taxonomy_map(name).pairs
    assert {k: set(v) for k, v in shipped.items()} == _groups_of(published)
    assert set(shipped) == set(fine)  # every one of the 28 labels has a group: no example is left empty
    assert taxonomy_labels(name, fine) == [*published, "neutral"]


@pytest.mark.parametrize("name, published", [("ekman", EKMAN), ("sentiment", SENTIMENT)])
def test_a_taxonomy_relabels_train_dev_and_a_test_file_as_the_union_of_groups(name, published, data_dir):
    fine = load_task("goemotions", data_dir)
    coarse = load_task("goemotions", data_dir, taxonomy=name)
    assert coarse.label_names == [*published, "neutral"] and coarse.source["taxonomy"] == name
    groups = _groups_of(published)
    for split in ("train", "dev"):
        a, b = getattr(fine, split), getattr(coarse, split)
        assert [ex.text for ex in a] == [ex.text for ex in b]  # nobody dropped
        expect = np.zeros((len(a), len(coarse.label_names)), dtype=np.uint8)
        for i, ex in enumerate(a):
            for label, on in zip(fine.label_names, ex.label):
                for g in groups[label] if on else ():
                    expect[i, coarse.label_names.index(g)] = 1
        np.testing.assert_array_equal(label_array(coarse, b), expect)
    test = load_eval_file(coarse, data_dir / "goemotions" / "dev.tsv")  # --test-file reads the same way
    np.testing.assert_array_equal(label_array(coarse, test), label_array(coarse, coarse.dev))


def test_semeval_into_goemotions_on_the_real_files(data_dir):
    cfg = make_config(task="goemotions", data_dir=str(data_dir), add_train="semeval")
    task = read_task(cfg.data, cfg.seed)
    semeval = load_task("semeval", data_dir)
    y = label_array(semeval)
    col = {n: i for i, n in enumerate(semeval.label_names)}
    dropped_three = ["anticipation", "pessimism", "trust"]
    only_dropped = (y.sum(1) > 0) & (y[:, [col[n] for n in dropped_three]].sum(1) == y.sum(1))
    none = y.sum(1) == 0
    (record,) = task.added_counts
    assert record["read"] == len(semeval.train) == 6838
    assert record["dropped_empty"] == only_dropped.sum() and record["from_no_label"] == none.sum() == 204
    assert record["mapped"] == len(task.added) == len(semeval.train) - only_dropped.sum()
    assert record["unmapped_labels"] == {n: int(y[:, col[n]].sum()) for n in dropped_three}
    kept = y[~only_dropped]
    merged = label_array(task, task.added)
    for name in ("anger", "disgust", "fear", "joy", "love", "optimism", "sadness", "surprise"):
        np.testing.assert_array_equal(merged[:, task.label_names.index(name)], kept[:, col[name]])
    np.testing.assert_array_equal(merged[:, task.label_names.index("neutral")], none[~only_dropped])
    assert all(ex.meta["source"] == "semeval" for ex in task.added)
    assert len(task.train) == 43410  # the target's own examples are untouched


def _map(table: dict, sources, targets, target_kind=MULTI_LABEL, regroup=None) -> LabelMap:
    return checked(parse_map(table, "m.toml"), sources, targets, target_kind, regroup)


def test_map_rules_single_and_multi_label():
    targets = ["joy", "anger", "remorse", "embarrassment", "neutral"]
    # single-label source into multi-label target: a label may map to several; an unmapped label is counted
    lmap = _map({"map": {"guilt": ["remorse", "embarrassment"], "joy": "joy"}, "empty": "drop"},
                ["joy", "guilt", "boredom"], targets)  # fmt: skip
    ex = [Example("a", label=1), Example("b", label=0), Example("c", label=2), Example("d", label=2)]
    out = map_examples(ex, SINGLE_LABEL, ["joy", "guilt", "boredom"], lmap, targets, MULTI_LABEL, {"source": "s"})
    assert [e.label for e in out.examples] == [[0, 0, 1, 1, 0], [1, 0, 0, 0, 0]]
    assert out.unmapped == {"boredom": 2} and out.dropped_empty == 2
    assert all(e.meta == {"source": "s"} for e in out.examples)
    # multi-label source: the union; kept as all-negative when `empty` says so; no_label for label-less examples
    sources = ["happy", "glad", "mad", "bored"]
    table = {"map": {"happy": "joy", "glad": "joy", "mad": "anger"}, "empty": "negative", "no_label": "neutral"}
    lmap = _map(table, sources, targets)
    ex = [Example("a", label=[1, 1, 1, 0]), Example("b", label=[0, 0, 0, 1]), Example("c", label=[0, 0, 0, 0])]
    out = map_examples(ex, MULTI_LABEL, sources, lmap, targets, MULTI_LABEL, {})
    assert [e.label for e in out.examples] == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    assert out.kept_negative == 1 and out.from_no_label == 1 and out.unmapped == {"bored": 1}
    # multi-label source into a single-label target: two different targets have no single answer
    lmap = _map({"map": {"happy": "joy", "glad": "joy", "mad": "anger"}, "empty": "drop"}, sources, targets,
                SINGLE_LABEL)  # fmt: skip
    ex = [Example("a", label=[1, 1, 0, 0]), Example("b", label=[1, 0, 1, 0]), Example("c", label=[0, 0, 0, 1])]
    out = map_examples(ex, MULTI_LABEL, sources, lmap, targets, SINGLE_LABEL, {})
    assert [e.label for e in out.examples] == [0] and out.dropped_ambiguous == 1 and out.dropped_empty == 1


def test_map_targets_may_name_the_finer_labels_under_a_taxonomy():
    regroup = taxonomy_map("ekman")
    lmap = _map({"map": {"guilt": "remorse", "glee": "joy", "rage": "anger"}}, ["guilt", "glee", "rage"],
                [*EKMAN, "neutral"], MULTI_LABEL, regroup)  # fmt: skip
    assert lmap.pairs == {"guilt": ("sadness",), "glee": ("joy",), "rage": ("anger",)}


@pytest.mark.parametrize(
    "table, sources, kind, message",
    [
        ({"map": {"joy": "joy"}}, ["joy", "x"], MULTI_LABEL, "examples have no target label after mapping; say what"),
        ({"map": {"joyy": "joy"}, "empty": "drop"}, ["joy"], MULTI_LABEL, "[map] names 'joyy', which is not a label"),
        ({"map": {"joy": "glee"}, "empty": "drop"}, ["joy"], MULTI_LABEL, "names 'glee', which is not a label of the"),
        ({"map": {"joy": ["joy", "anger"]}}, ["joy"], SINGLE_LABEL, "maps to joy, anger, but the target task takes"),
        ({"map": {"joy": "joy"}, "empty": "negative"}, ["joy"], SINGLE_LABEL, 'empty must be "drop"'),
        ({"map": {"joy": "joy"}, "empty": "keep"}, ["joy"], MULTI_LABEL, "empty = 'keep'; choose \"drop\""),
        ({"map": {"joy": 3}}, ["joy"], MULTI_LABEL, "map.joy = 3 should be a label name or a list"),
        ({"empty": "drop"}, ["joy"], MULTI_LABEL, "no [map] table"),
    ],
)
def test_map_mistakes_are_one_line_naming_the_map(table, sources, kind, message):
    with pytest.raises(ConfigError) as e:
        lmap = _map(table, sources, ["joy", "anger"], kind)
        map_examples([Example("a", label=1 if kind == SINGLE_LABEL else [0, 1])], kind, ["joy", "x"], lmap,
                     ["joy", "anger"], kind, {})  # fmt: skip
    assert str(e.value).startswith("m.toml: ") and message in str(e.value) and "\n" not in str(e.value)


def test_weights_keep_a_seeded_share_or_repeat():
    ex = [Example(str(i), label=0) for i in range(10)]
    half = weighted(ex, 0.5, 7)
    assert len(half) == 5 and len({id(e) for e in half}) == 5 and half == weighted(ex, 0.5, 7)
    assert half != weighted(ex, 0.5, 8)
    more = weighted(ex, 2.5, 7)
    counts = np.bincount([int(e.text) for e in more], minlength=10)
    assert len(more) == 25 and counts.min() == 2 and counts.max() == 3 and (counts == 3).sum() == 5
    assert weighted(ex, 1.0, 7) == ex


def _isear(path: Path) -> None:
    """ISEAR's CSV export in its own shape: "|" between fields and at the end of every line, emotion in Field1."""
    header = "ID|CITY|EMOT|Field1|Field3|Field2|MYKEY|SIT|STATE|"
    rows = [
        ("1", "1", "1", "joy", "When I passed my exam."),
        ("2", "1", "2", "fear", "Walking home alone at night."),
        ("3", "1", "3", "anger", "Someone lied to me."),
        ("4", "1", "4", "sadness", "My grandmother died."),
        ("5", "1", "5", "disgust", "Rotten food in the fridge."),
        ("6", "1", "6", "shame", "I failed in front of everyone."),
        ("7", "1", "7", "guilt", "I forgot her birthday."),
    ]
    lines = [header] + [f"{i}|{c}|{e}|{name}|1|1|{i}|{text}|1|" for i, c, e, name, text in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _meld(path: Path) -> None:
    """MELD's train_sent_emo.csv in its own shape: quoted utterances with commas, seven emotions."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
                    "Episode", "StartTime", "EndTime"])  # fmt: skip
        for i, (text, emotion) in enumerate(
            [
                ("Oh my God, he's lost it.", "sadness"),
                ("What?", "surprise"),
                ("Okay, fine.", "neutral"),
                ("I love this, really!", "joy"),
                ("Get out, now!", "anger"),
                ("Ew, gross.", "disgust"),
                ("Is someone there?", "fear"),
            ]  # fmt: skip
        ):
            w.writerow([i + 1, text, "Rachel", emotion, "neutral", 0, i, 1, 1, "00:00:01,000", "00:00:02,000"])


def test_isear_and_meld_files_through_the_shipped_source_configs(tmp_path, data_dir):
    for name, write, data in (("isear", _isear, "isear.csv"), ("meld", _meld, "train_sent_emo.csv")):
        shutil.copy(REPO / "configs" / "sources" / f"{name}-goemotions.toml", tmp_path / f"{name}.toml")
        write(tmp_path / data)
    specs = (str(tmp_path / "isear.toml"), str(tmp_path / "meld.toml"))
    cfg = make_config(task="goemotions", data_dir=str(data_dir), add_train=specs)
    task = read_task(cfg.data, cfg.seed)
    isear, meld = task.added_counts
    assert (isear["source"], isear["read"], isear["mapped"], isear["dropped_empty"]) == ("isear", 7, 7, 0)
    assert (meld["source"], meld["read"], meld["mapped"], meld["unmapped_labels"]) == ("meld", 7, 7, {})
    labels = {ex.text: [n for n, on in zip(task.label_names, ex.label) if on] for ex in task.added}
    assert labels["I failed in front of everyone."] == ["embarrassment"]
    assert labels["I forgot her birthday."] == ["remorse"]
    assert labels["Oh my God, he's lost it."] == ["sadness"] and labels["Okay, fine."] == ["neutral"]


def _custom(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A small multi-label target (train, dev) and a single-label source with its map, in the user's shapes."""
    rng = np.random.default_rng(0)
    words = {"joy": "delighted happy", "anger": "furious angry", "fear": "scared afraid", "neutral": "table chair"}

    def write(path: Path, n: int) -> None:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(n):
                label = list(words)[i % 4]
                w.writerow([f"{words[label]} {rng.integers(1000)}", label])

    write(tmp_path / "train.csv", 120)
    write(tmp_path / "dev.csv", 40)
    (tmp_path / "extra.jsonl").write_text(
        "".join(json.dumps({"text": f"{t} {i}", "label": lab}) + "\n"
                for i, (t, lab) in enumerate([("so glad", "glee"), ("rage", "rage"), ("meh", "boredom")] * 20)),
        encoding="utf-8",
    )  # fmt: skip
    source = tmp_path / "extra.toml"
    source.write_text('file = "extra.jsonl"\nempty = "drop"\n[map]\nglee = "joy"\nrage = "anger"\n', encoding="utf-8")
    return tmp_path / "train.csv", tmp_path / "dev.csv", source


def _run(out: Path, train: Path, *extra) -> list[str]:
    return ["--task", "custom", "--train-file", str(train), *TINY, "--output-dir", str(out), *extra]


def test_holdout_trains_on_the_merge_and_scores_on_the_targets_dev(tmp_path, monkeypatch):
    import minitune.finetune as ft

    seen, original = [], ft.loss_for
    monkeypatch.setattr(ft, "loss_for", lambda *a: seen.append(a[3]) or original(*a))
    train, dev, source = _custom(tmp_path)
    out = tmp_path / "run"
    flags = ["--dev-file", str(dev), "--add-train", str(source), "--class-weights", "balanced"]
    assert main([*_run(out, train, *flags)]) == 0
    assert np.bincount(seen[0]).tolist() == [50, 30, 50, 30]  # class weights from the merged labels
    results = json.loads((out / "results.json").read_text())
    s = results["sources"]
    assert results["dev"]["n_examples"] == 40  # the target's own dev set, nothing of the source
    assert s["sources"][0]["trained_on"] == 120 and s["sources"][1]["trained_on"] == 40
    assert s["sources"][1]["unmapped_labels"] == {"boredom": 20} and s["sources"][1]["dropped_empty"] == 20
    assert s["fed_labels"] == ["anger", "joy"]  # custom label names are sorted: anger, fear, joy, neutral
    assert s["label_counts"]["merged"] == {"anger": 50, "fear": 30, "joy": 50, "neutral": 30}
    assert set(s["fed_scores"]["dev"]["fixed"]) == {"fed_macro_f1", "other_macro_f1", "macro_f1"}
    assert results["train"]["label_counts"] == s["label_counts"]["merged"]
    report = (out / "report.txt").read_text()
    assert "training sources:" in report and "boredom 20" in report and "macro-F1 fed labels" in report
    assert "from_no_label" in report and "training examples per label, by source" in report
    assert "Training sources" in (out / "report.html").read_text()
    assert (out / "figures" / "label_sources.png").is_file()


def test_without_a_dev_file_multi_label_merge_is_split_80_20_by_iterative_stratification():
    from minitune.data.examples import TaskData
    from minitune.experiments.holdout import holdout_splits

    rng = np.random.default_rng(0)
    own = [Example(f"t{i}", label=rng.integers(0, 2, 5).tolist()) for i in range(400)]
    added = [Example(f"s{i}", label=[1, 0, 0, 0, int(i % 4 == 0)], meta={"source": "s"}) for i in range(100)]
    task = TaskData("custom", MULTI_LABEL, list("abcde"), own, [], added=added)
    train, dev, _ = holdout_splits(make_config(task="custom", train_file="x.csv"), task)
    assert len(dev) == 100 and len(train) == 400 and {id(e) for e in train + dev} == {id(e) for e in own + added}
    share = label_array(task, dev).sum(0) / label_array(task, own + added).sum(0)
    assert np.abs(share - 0.2).max() < 0.02  # each label's positives split 80/20 as well
    assert 10 <= sum("source" in e.meta for e in dev) <= 30


def test_without_a_dev_file_the_merge_is_split_80_20_and_scored_by_source(tmp_path):
    train, _, source = _custom(tmp_path)
    out = tmp_path / "run"
    assert main([*_run(out, train, "--add-train", str(source))]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dev"]["n_examples"] == round(0.2 * (120 + 40))
    by_source = results["sources"]["dev_by_source"]
    assert set(by_source) == {"(target)", "extra"} and sum(v["n"] for v in by_source.values()) == 32
    own, extra = results["sources"]["sources"]
    assert own["trained_on"] + by_source["(target)"]["n"] == 120  # what went to dev is not counted as trained on
    assert extra["trained_on"] + by_source["extra"]["n"] == 40
    assert sum(results["sources"]["label_counts"]["by_source"]["extra"].values()) == extra["trained_on"]


def test_cv_adds_the_sources_to_every_fold_and_scores_only_the_target(tmp_path):
    train, _, source = _custom(tmp_path)
    out = tmp_path / "cv"
    assert main(["cv", *_run(out, train, "--add-train", str(source), "--folds", "2")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["oof"]["n_examples"] == 120  # out-of-fold: the target's examples, each once
    for row in results["train"]["folds"]:
        assert row["n_train"] == 54 + 40  # 90% of the 60 examples of the other fold, and every source example
    assert results["sources"]["sources"][1]["trained_on"] == 40


@pytest.mark.slow  # five short training runs through the CLI
def test_seeds_sweep_distill_and_predict_with_sources(tmp_path, capsys):
    train, dev, source = _custom(tmp_path)
    base = _run(tmp_path / "seeds", train, "--dev-file", str(dev), "--add-train", str(source), "--seeds", "1", "2")
    assert main(base) == 0
    for seed in (1, 2):
        member = json.loads((tmp_path / "seeds" / f"seed{seed}" / "results.json").read_text())
        assert member["sources"]["sources"][1]["trained_on"] == 40
    a = _run(tmp_path / "student", train, "--dev-file", str(dev), "--add-train", str(source))
    assert main(["distill", "--teacher", str(tmp_path / "seeds"), *a]) == 0
    for run in (tmp_path / "student", tmp_path / "student" / "alone"):  # the distilled student, and it alone
        assert json.loads((run / "results.json").read_text())["sources"]["sources"][1]["trained_on"] == 40
    assert main(_run(tmp_path / "plain", train, "--dev-file", str(dev))) == 0  # the student's data without the source
    b = _run(tmp_path / "student2", train, "--dev-file", str(dev), "--add-train", str(source))
    capsys.readouterr()
    assert main(["distill", "--teacher", str(tmp_path / "seeds"), "--alone", str(tmp_path / "plain"), *b]) == 2
    assert "trained with --add-train None, the student with" in capsys.readouterr().err
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f'output_dir = "{tmp_path / "sweep"}"\n[base]\ntask = "custom"\ntrain_file = "{train}"\ndev_file = "{dev}"\n'
        f'model = "ffnn"\nepochs = 1\nadd_train = ["{source}"]\n[grid]\nsource_weights = [[0.5], [2.0]]\n'
    )
    assert main(["sweep", str(sweep)]) == 0
    board = json.loads((tmp_path / "sweep" / "leaderboard.json").read_text())
    trained = sorted(json.loads((Path(r["run"]) / "results.json").read_text())["sources"]["sources"][1]["trained_on"]
                     for r in board)  # fmt: skip
    assert trained == [20, 80]
    src = tmp_path / "new.csv"
    src.write_text("text\nso furious angry\nhappy delighted\n", encoding="utf-8")
    model = tmp_path / "seeds" / "seed1"
    assert main(["predict", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["label"] in {"anger", "fear", "joy", "neutral"} for r in rows)


def test_goemotions_ekman_with_semeval_runs_and_predicts_in_the_taxonomy(tmp_path, data_dir):
    out = tmp_path / "run"
    flags = ["--task", "goemotions", "--taxonomy", "ekman", "--add-train", "semeval", "--source-weights", "0.02"]
    flags += [*TINY, "--data-dir", str(data_dir), "--max-train-samples", "300", "--max-eval-samples", "60"]
    flags += ["--test-file", str(data_dir / "goemotions" / "dev.tsv")]
    assert main([*flags, "--oversample-rare", "60", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    merged, after = (results["sources"]["label_counts"][k] for k in ("merged", "oversampled"))
    assert all(after[k] >= min(60, merged[k]) and after[k] >= merged[k] for k in merged)  # after the merge
    assert merged == results["train"]["label_counts"] and sum(after.values()) > sum(merged.values())
    names = [*EKMAN, "neutral"]
    assert results["dev"]["label_names"] == names and results["sources"]["fed_labels"] == names
    assert results["sources"]["sources"][0]["name"] == "goemotions (ekman)"
    assert results["sources"]["sources"][1]["trained_on"] == round(0.02 * results["sources"]["sources"][1]["mapped"])
    config = json.loads((out / "model" / "config.json").read_text())
    assert list(config["id2label"].values()) == names and results["test"]["label_names"] == names
    assert results["test"]["n_examples"] == 5426  # --test-file relabelled in the taxonomy, every example kept
    card = (out / "model" / "README.md").read_text()
    assert "goemotions (ekman taxonomy) with semeval mapped into its labels" in card


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "goemotions", "--add-train", "semeval", "--source-weights", "inf"], "positive finite numbers"),
        (["--task", "goemotions", "--add-train", "semeval", "--source-weights", "1e-5"], "keeps none of the 6743"),
        (["--task", "humor", "--taxonomy", "ekman"], "--taxonomy regroups GoEmotions' labels; --task is humor"),
        (["--task", "recipe-mpr", "--add-train", "semeval"], "recipe-mpr is multiple choice"),
        (["--task", "goemotions", "--add-train", "x.csv"], "--add-train x.csv: give a built-in task"),
        (["--task", "humor", "--add-train", "semeval"], "no label map ships from semeval to humor"),
        (["--task", "goemotions", "--source-weights", "2"], "--source-weights weighs --add-train sources"),
        (["--task", "goemotions", "--add-train", "semeval", "--source-weights", "1", "2"], "gives 2 weights for 1"),
        (
            ["--task", "goemotions", "--add-train", "semeval", "--source-weights", "0"],
            "must be positive finite numbers",
        ),
        (["--task", "goemotions", "--add-train", "nope.toml"], "nope.toml: no such file"),
        (["--task", "goemotions", "--add-train", "."], "give a built-in task"),
        (["--task", "goemotions", "--add-train", "semeval", "--head", "generative"], "--head generative is not"),
    ],
)
def test_source_mistakes_are_one_line_and_exit_2(flags, message, tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert main([*flags, "--data-dir", str(data_dir), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_a_source_files_own_mistakes_name_it(tmp_path, data_dir, capsys):
    bad = tmp_path / "bad.toml"
    for text, message in (
        ('file = "x.csv"\ntask = "semeval"\n', "say where the examples come from"),
        ('task = "semeval"\ncolumns = 1\n', "unknown key 'columns'"),
        ('task = "semeval"\nempty = "drop"\n[map]\njoy = "happiness"\n', "names 'happiness', which is not a label"),
        ('task = "recipe-mpr"\n', "task = 'recipe-mpr'; choose one of humor, semeval, goemotions"),
        ('file = "x.csv"\nlabel_names = 5\n', "label_names = 5 should be a list of label names"),
        ('file = "x.csv"\ndelimiter = "pipe"\n', "delimiter = 'pipe'; choose one of tab, comma, semicolon, bar"),
        ("file = 3\n", "file = 3 should be a string"),
        ('file = "x.csv"\ntext_col = "TEXT"\nempty = "drop"\n[map]\na = "joy"\n', "(set in "),
    ):
        (tmp_path / "x.csv").write_text("text,label\nhello,a\n", encoding="utf-8")
        bad.write_text(text, encoding="utf-8")
        assert main(["--task", "goemotions", "--add-train", str(bad), "--data-dir", str(data_dir)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and message in err and err.count("\n") == 1
    (tmp_path / "d.toml").mkdir()
    assert main(["--task", "goemotions", "--add-train", str(tmp_path / "d.toml"), "--data-dir", str(data_dir)]) == 2
    assert "d.toml: cannot be read" in capsys.readouterr().err


def test_an_interrupted_run_with_sources_resumes_from_its_settings_alone(tmp_path, monkeypatch, capsys):
    train, dev, source = _custom(tmp_path)
    flags = ["--dev-file", str(dev), "--add-train", str(source), "--epochs", "2", "--checkpoint"]
    straight = tmp_path / "straight"
    assert main([*_run(straight, train, *flags)]) == 0
    # Ctrl-C while the 3rd batch of the 2nd epoch (10 batches each) is prepared
    interrupt_fit(monkeypatch, 12, lambda out_dir, resume: not resume)
    out = tmp_path / "stopped"
    assert main([*_run(out, train, *flags)]) == 130
    assert main(["--resume", str(out)]) == 0  # add_train and its weights come back from config.json
    a, b = (json.loads((d / "results.json").read_text()) for d in (out, straight))
    assert a["sources"]["sources"] == b["sources"]["sources"] and a["dev"]["macro_f1"] == b["dev"]["macro_f1"]


def test_add_train_repeats_and_reaches_the_config(tmp_path, data_dir):
    cfg = make_config(task="goemotions", add_train=("semeval",), source_weights=(0.5,))
    assert cfg.data.add_train == ("semeval",) and cfg.data.source_weights == (0.5,)
    from minitune.flags import build_parser

    ns = build_parser().parse_args(
        ["--task", "goemotions", "--add-train", "semeval", "--add-train", "a.toml", "b.toml"]
    )
    assert ns.add_train == ["semeval", "a.toml", "b.toml"]
    config = tmp_path / "run.toml"
    text = (
        'task = "goemotions"\n[[data.add_train]]\ntask = "semeval"\nempty = "drop"\n[data.add_train.map]\njoy = "joy"\n'
    )
    config.write_text(text, encoding="utf-8")
    cfg = make_config(config=str(config), data_dir=str(data_dir))
    assert cfg.data.add_train == ({"task": "semeval", "empty": "drop", "map": {"joy": "joy"}},)
    task = read_task(cfg.data, cfg.seed)  # the inline table reads like a source file
    assert task.added_counts[0]["source"] == "semeval" and task.label_names[task.added[0].label.index(1)] == "joy"
