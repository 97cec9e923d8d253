"""Tokenizing examples once into features, and rare-label oversampling, on real data."""

import numpy as np

import minitune
from minitune.data.features import oversample_rare, tokenize
from minitune.data.tasks import label_array, load_task


def test_rare_labels_reach_the_floor_and_frequent_ones_are_left_alone(data_dir):
    task = load_task("goemotions", data_dir)
    Y = label_array(task)
    keep = oversample_rare(Y, 500, seed=0)
    before, after = Y.sum(0), Y[keep].sum(0)
    assert np.all(after >= np.minimum(before, 500).clip(min=0)) and np.all(after[before > 0] >= 500)
    assert np.array_equal(keep[: len(Y)], np.arange(len(Y)))  # every original example once, copies appended
    copied = keep[len(Y) :]
    assert np.all(Y[copied][:, before < 500].any(axis=1))  # copies all carry a rare label
    assert np.array_equal(keep, oversample_rare(Y, 500, seed=0))  # deterministic per seed


def test_tokenize_single_pairs_and_choices(data_dir):
    tok = minitune.load_tokenizer("minilm")
    task = load_task("recipe-mpr", data_dir)
    feats = tokenize(task.train[:3], tok, task.kind, max_length=40)
    for ex, f in zip(task.train[:3], feats):
        assert len(f["input_ids"]) == len(ex.choices) == 5 and f["label"] == ex.label
        for option, ids in zip(ex.choices, f["input_ids"]):
            assert ids == tok.encode(ex.text, option, max_length=40)
    semeval = load_task("semeval", data_dir)
    f = tokenize(semeval.train[:2], tok, semeval.kind, max_length=64)[0]
    assert f["label"] == [float(v) for v in semeval.train[0].label] and f["input_ids"][0] == tok.encode("")[0]
