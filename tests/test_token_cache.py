"""The tokenization cache (data/token_cache.py): what it returns equals tokenizing afresh; it is read instead of
tokenizing whenever the tokenizer, the length settings and the texts are the same, and every change of one of them
tokenizes again; damaged or unwritable folders cost a warning, not a wrong feature."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from minitune import load_tokenizer
from minitune.cli import main
from minitune.data.features import open_cache, tokenize
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.tasks import Example
from minitune.data.token_cache import TokenCache

TEXTS = [
    "why did the chicken cross the road",
    "the meeting is moved to noon on thursday",
    "I told my wife she was drawing her eyebrows too high. She looked surprised.",
    "ünïcode, emoji 🙂 and   spaces",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def counting(tokenizer, monkeypatch):
    """Count the texts the tokenizer is asked to encode."""
    asked = []
    for name in ("encode_batch", "encode_windows"):
        real = getattr(tokenizer, name)
        monkeypatch.setattr(
            tokenizer, name, lambda texts, *a, _real=real, **k: asked.extend(texts) or _real(texts, *a, **k)
        )
    return asked


def cached(exs, tokenizer, kind, max_length, folder, bi=False, chunk_overlap=None):
    """tokenize through the cache in `folder`, opened afresh as a new run would."""
    cache = open_cache(folder, tokenizer, kind, max_length, bi, chunk_overlap)
    return tokenize(exs, tokenizer, kind, max_length, bi, chunk_overlap, cache)


def examples(texts=TEXTS, **kw):
    return [Example(text=t, label=i % 2, **kw) for i, t in enumerate(texts)]


def test_hits_equal_fresh_tokenization_for_any_subset_and_order(tokenizer, tmp_path, monkeypatch):
    exs = examples()
    fresh = tokenize(exs, tokenizer, SINGLE_LABEL, 16)
    asked = counting(tokenizer, monkeypatch)
    assert cached(exs, tokenizer, SINGLE_LABEL, 16, tmp_path) == fresh
    assert len(asked) == len(exs)
    asked.clear()
    assert cached(exs, tokenizer, SINGLE_LABEL, 16, tmp_path) == fresh
    subset = [exs[3], exs[0]]  # another seed's subset, another fold's order
    assert cached(subset, tokenizer, SINGLE_LABEL, 16, tmp_path) == [fresh[3], fresh[0]]
    assert asked == []  # nothing tokenized again
    # labels come from the examples, not the cache: the same text with another label keeps its own
    relabelled = [Example(text=TEXTS[0], label=[1.0, 0.0])]
    assert cached(relabelled, tokenizer, MULTI_LABEL, 16, tmp_path)[0]["label"] == [1.0, 0.0]
    assert asked == []


def test_each_key_change_tokenizes_again(tokenizer, tmp_path, monkeypatch):
    exs = examples()
    cached(exs, tokenizer, SINGLE_LABEL, 16, tmp_path)
    asked = counting(tokenizer, monkeypatch)
    # another length setting: another folder, everything tokenized at the new length
    longer = cached(exs, tokenizer, SINGLE_LABEL, 32, tmp_path)
    assert len(asked) == len(exs) and longer == tokenize(exs, tokenizer, SINGLE_LABEL, 32)
    assert len(list(tmp_path.iterdir())) == 2
    asked.clear()
    # a changed file: only the changed text is tokenized
    changed = examples([*TEXTS[:2], TEXTS[2] + " Really.", *TEXTS[3:]])
    assert cached(changed, tokenizer, SINGLE_LABEL, 16, tmp_path) == tokenize(changed, tokenizer, SINGLE_LABEL, 16)
    assert asked[:1] == [TEXTS[2] + " Really."] and len([t for t in asked if t == TEXTS[2] + " Really."]) == 2
    # pairs are part of an example's key
    asked.clear()
    paired = [Example(text=TEXTS[0], pair="a second segment", label=0)]
    got = cached(paired, tokenizer, SINGLE_LABEL, 16, tmp_path)
    assert got == tokenize(paired, tokenizer, SINGLE_LABEL, 16) and 1 in got[0]["token_type_ids"]
    # a cache opened for other settings is refused, not read
    with pytest.raises(ValueError, match="opened for"):
        tokenize(exs, tokenizer, SINGLE_LABEL, 32, cache=open_cache(tmp_path, tokenizer, SINGLE_LABEL, 16))


def test_another_tokenizer_does_not_read_this_ones_rows(tokenizer, tmp_path, monkeypatch):
    exs = examples()
    cached(exs, tokenizer, SINGLE_LABEL, 16, tmp_path)
    other = load_tokenizer("minilm")
    other._tok.add_tokens(["chick"])  # a changed vocabulary: other ids for the same text
    asked = counting(other, monkeypatch)
    got = cached(exs, other, SINGLE_LABEL, 16, tmp_path)
    assert len(asked) == len(exs) and got == tokenize(exs, other, SINGLE_LABEL, 16)
    assert got[0]["input_ids"] != tokenize(exs, tokenizer, SINGLE_LABEL, 16)[0]["input_ids"]
    assert len(list(tmp_path.iterdir())) == 2
    # a cache opened for one tokenizer is refused with another: it would write the other's ids into its folder
    with pytest.raises(ValueError, match="another tokenizer"):
        tokenize(exs, other, SINGLE_LABEL, 16, cache=open_cache(tmp_path, tokenizer, SINGLE_LABEL, 16))


@pytest.mark.parametrize("layout", ["choices", "bi", "windows"])
def test_nested_layouts_round_trip(tokenizer, tmp_path, monkeypatch, layout):
    if layout == "windows":
        exs, kind, kw = examples([" ".join(["word"] * 40), "short"]), SINGLE_LABEL, {"chunk_overlap": 4}
    else:
        options = ("a red apple", "a green pear with a long description", "")
        exs, kind = [Example(text=t, choices=options, label=1) for t in TEXTS[:3]], MULTIPLE_CHOICE
        kw = {"bi": layout == "bi"}
    fresh = tokenize(exs, tokenizer, kind, 16, **kw)
    cached(exs, tokenizer, kind, 16, tmp_path, **kw)
    asked = counting(tokenizer, monkeypatch)
    assert cached(exs, tokenizer, kind, 16, tmp_path, **kw) == fresh and asked == []
    if layout == "windows":
        assert len(fresh[0]["input_ids"]) > 1 and fresh[0]["windows"] is True


@pytest.mark.parametrize(
    "damage",
    [
        {"counts": -1},  # would read a plain row as a list of sequences
        {"counts": 1},  # a nested row in a plain cache
        {"ids": lambda a: a[:, None]},  # 2-D ids: rows of one-id lists
        {"ids": lambda a: a.astype(np.float32)},  # float ids compare equal to ints, and are not ids
        {"counts": lambda a: np.int32(0)},  # 0-d
        {"lengths": lambda a: -a},
        {"keys": lambda a: a[:-1]},
    ],
)
def test_a_shard_with_inconsistent_arrays_is_skipped(tokenizer, tmp_path, caplog, damage):
    exs = examples()
    fresh = tokenize(exs, tokenizer, SINGLE_LABEL, 16)
    cached(exs, tokenizer, SINGLE_LABEL, 16, tmp_path)
    (shard,) = list(tmp_path.glob("*/*.npz"))
    with np.load(shard) as z:
        arrays = {k: z[k] for k in z.files}
    for name, change in damage.items():
        arrays[name] = change(arrays[name]) if callable(change) else np.full_like(arrays[name], change)
    with open(shard, "wb") as f:
        np.savez(f, **arrays)
    with caplog.at_level(logging.WARNING, logger="minitune"):
        got = cached(exs, tokenizer, SINGLE_LABEL, 16, tmp_path)
    assert "token cache: skipped" in caplog.text
    assert got == fresh and all(type(i) is int for f in got for i in f["input_ids"])


def test_a_damaged_shard_is_skipped_and_an_unwritable_folder_only_warns(tokenizer, tmp_path, caplog, monkeypatch):
    exs = examples()
    fresh = tokenize(exs, tokenizer, SINGLE_LABEL, 16)
    cached(exs, tokenizer, SINGLE_LABEL, 16, tmp_path)
    (shard,) = list(tmp_path.glob("*/*.npz"))
    shard.write_bytes(shard.read_bytes()[:50])  # a torn write from some other tool
    with caplog.at_level(logging.WARNING, logger="minitune"):
        assert cached(exs, tokenizer, SINGLE_LABEL, 16, tmp_path) == fresh
    assert "token cache: skipped" in caplog.text
    caplog.clear()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="minitune"):
        assert cached(exs, tokenizer, SINGLE_LABEL, 16, blocked) == fresh
    assert "could not write" in caplog.text


def test_runs_and_seed_members_reuse_the_cache_and_off_writes_none(tmp_path, data_dir, caplog, monkeypatch):
    cache = tmp_path / "cache"
    base = ["--task", "humor", "--model", "ffnn", "--data-dir", str(data_dir), "--max-train-samples", "40"]
    base += ["--max-eval-samples", "20", "--epochs", "1", "--max-length", "24", "--token-cache", str(cache)]
    reads = []  # the cache is opened (its shards read) once per fine-tune, for train and dev together
    monkeypatch.setattr(TokenCache, "_read", lambda self, _real=TokenCache._read: reads.append(1) or _real(self))
    with caplog.at_level(logging.INFO, logger="minitune"):
        assert main([*base, "--output-dir", str(tmp_path / "a")]) == 0
    assert "0 of 40 examples read, 40 tokenized" in caplog.text and "0 of 20 examples read" in caplog.text
    assert len(reads) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="minitune"):  # two seed members: other subsets of the same files
        assert main([*base, "--output-dir", str(tmp_path / "b"), "--seeds", "42", "43"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("token cache")]
    assert lines and "20 of 20 examples read, 0 tokenized" in lines[1]  # dev: the first run's
    assert len(reads) == 1 + 2  # the first run, then one per member
    assert all("tokenized" in line for line in lines)
    seed_42 = [line for line in lines if "40 of 40 examples read" in line]
    assert seed_42  # seed 42's subset is the first run's
    shards, default = sorted(cache.rglob("*.npz")), Path(os.environ["MINITUNE_CACHE_DIR"])
    default_shards = sorted(default.rglob("*.npz"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="minitune"):  # new texts (another subset), but nothing kept
        args = [*base[:-2], "--token-cache", "off", "--output-dir", str(tmp_path / "c"), "--seed", "7"]
        assert main(args) == 0
    assert sorted(cache.rglob("*.npz")) == shards and "token cache" not in caplog.text
    assert sorted(default.rglob("*.npz")) == default_shards  # nor in the default folder


def test_a_resumed_run_reads_its_tokens_from_the_cache(tmp_path, data_dir, caplog, monkeypatch):
    from conftest import interrupt_fit

    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["--task", "humor", "--model", "ffnn", "--data-dir", str(data_dir), "--max-train-samples", "40"]
    args += ["--max-eval-samples", "20", "--epochs", "2", "--max-length", "24", "--token-cache", str(cache)]
    args += ["--batch-size", "8", "--output-dir", str(out)]
    interrupt_fit(monkeypatch, 2, lambda out_dir, resume: not resume)  # Ctrl-C at the 3rd batch
    assert main(args) == 130
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="minitune"):
        assert main([*args, "--resume", str(out)]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("token cache")]
    assert len(lines) == 2 and all(" 0 tokenized" in line for line in lines), lines
