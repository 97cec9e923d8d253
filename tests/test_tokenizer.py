"""minitune.data.tokenizer.Tokenizer against transformers' AutoTokenizer on real text.

Reference: transformers (tests only). Checked: input_ids / token_type_ids / attention_mask for singles, pairs
(longest-first truncation with the special tokens in the budget) and padded batches, on the real all-MiniLM
tokenizer and on two tokenizers trained here on real texts because no RoBERTa / XLM-R tokenizer files exist
offline: a byte-level BPE in RoBERTa's layout and a Unigram in XLM-R's (SentencePiece) layout.
"""

import csv
import json
from pathlib import Path

import pytest
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from minitune.data.tokenizer import Tokenizer
from minitune.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers", reason="the reference tokenizers come from transformers")

from conftest import MINILM_DIR as MINILM  # noqa: E402

SINGLE_LENGTHS = (None, 8, 33, 128)
# Not below 12: tokenizers also builds every overflow window, which for a pair holding the 800-token text
# grows with the square of (length / max_length) and would only slow the test down.
PAIR_LENGTHS = (12, 31, 64, 256)
ROBERTA_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


# ------------------------------------------------------------------ real text


def _humor(data_dir):
    with open(data_dir / "hahackathon" / "train.csv", encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def _tsv_column(path, column, skip_header):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return [row[column] for row in rows[1 if skip_header else 0 :]]


@pytest.fixture(scope="module")
def corpus(data_dir):
    humor = _humor(data_dir)
    tweets = _tsv_column(data_dir / "semeval2018_ec" / "2018-E-c-En-train.txt", 1, skip_header=True)
    comments = _tsv_column(data_dir / "goemotions" / "train.tsv", 0, skip_header=False)
    return humor, tweets, comments


@pytest.fixture(scope="module")
def texts(corpus):
    """About 25 real texts chosen for variety: emoji, mojibake, odd whitespace, very long."""
    humor, tweets, comments = corpus
    picked = humor[:4] + tweets[:4] + comments[:4]
    picked += sorted(humor, key=len)[-2:]
    picked += [t for t in humor if "â" in t][:3]  # mis-decoded emoji / punctuation
    picked += [t for t in humor if "  " in t][:2] + [t for t in humor if t != t.strip()][:2]
    picked += [t for t in tweets[:1000] if any(ord(c) >= 0x1F300 for c in t)][:3]
    picked += [t for t in tweets if "\u00a0" in t][:1]
    picked.append(" ".join(humor[100:124]))  # longer than every model_max_length here
    picked = list(dict.fromkeys(picked))
    assert len(picked) >= 24 and any("â" in t for t in picked) and any("  " in t for t in picked)
    assert any(ord(c) >= 0x1F300 for t in picked for c in t) and max(map(len, picked)) > 2500
    return picked


@pytest.fixture(scope="module")
def pairs(texts):
    return texts[::-1]


# ------------------------------------------------------------------ trained RoBERTa / XLM-R style tokenizers


def _write_dir(directory: Path, tok: tokenizers.Tokenizer, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512, **config}))
    specials = {k: v for k, v in config.items() if k.endswith("_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials))
    return directory


@pytest.fixture(scope="module")
def training_texts(corpus):
    humor, tweets, comments = corpus
    return humor[:1200] + tweets[:800] + comments[:1000]


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory, training_texts):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_texts, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    config = {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": False, "errors": "replace", **ROBERTA_TOKENS}
    return _write_dir(tmp_path_factory.mktemp("roberta"), tok, config)


@pytest.fixture(scope="module")
def roberta_prefix_left_dir(roberta_dir, tmp_path_factory):
    """Same tokenizer.json, but the config asks for add_prefix_space and left padding (the config wins)."""
    config = json.loads((roberta_dir / "tokenizer_config.json").read_text())
    config.update(add_prefix_space=True, padding_side="left")
    tok = tokenizers.Tokenizer.from_file(str(roberta_dir / "tokenizer.json"))
    return _write_dir(tmp_path_factory.mktemp("roberta_left"), tok, config)


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory, training_texts):
    tok = tokenizers.Tokenizer(models.Unigram())
    # A bare Metaspace, as older Hub files have: it keeps runs of spaces, which transformers 5 collapses.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # A small seed set and fast shrinking keep training near a second; the pieces stay word-like.
    trainer = trainers.UnigramTrainer(
        vocab_size=1000,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        seed_size=5000,
        shrinking_factor=0.5,
        n_sub_iterations=1,
        max_piece_length=8,
        show_progress=False,
    )
    tok.train_from_iterator(training_texts, trainer)
    tok.add_special_tokens(["<mask>"])  # last, as in XLM-R
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return _write_dir(
        tmp_path_factory.mktemp("xlmr"), tok, {"tokenizer_class": "XLMRobertaTokenizer", **ROBERTA_TOKENS}
    )


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory, training_texts):
    """ModernBERT's layout: a byte-level BPE whose tokenizer.json carries the [CLS] A [SEP] (B [SEP]) template,
    read as it is (tokenizer_class PreTrainedTokenizerFast), with 8,192 positions."""
    specials = ["|||IP_ADDRESS|||", "<|padding|>", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_texts, trainer)
    cls_, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_), ("[SEP]", sep)],
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        **{f"{n}_token": f"[{n.upper()}]" for n in ("cls", "sep", "pad", "mask", "unk")},
    }
    return _write_dir(tmp_path_factory.mktemp("modernbert"), tok, config)


@pytest.fixture(scope="module")
def all_dirs(roberta_dir, roberta_prefix_left_dir, xlmr_dir):
    return {"minilm": MINILM, "roberta": roberta_dir, "roberta_prefix_left": roberta_prefix_left_dir, "xlmr": xlmr_dir}


def _reference(directory):
    return transformers.AutoTokenizer.from_pretrained(str(directory))


# ------------------------------------------------------------------ parity


def _check_singles_and_pairs(ours, ref, texts, pairs):
    for max_length in SINGLE_LENGTHS:
        batch = ours.encode_batch(texts, max_length=max_length)
        for text, row in zip(texts, batch):
            want = ref(text, truncation=True, max_length=max_length, return_token_type_ids=True)
            assert row == {k: want[k] for k in ("input_ids", "token_type_ids", "attention_mask")}, (max_length, text)
            assert ours.encode(text, max_length=max_length) == want["input_ids"]
    for max_length in PAIR_LENGTHS:
        batch = ours.encode_batch(texts, pairs, max_length=max_length)
        for text, pair, row in zip(texts, pairs, batch):
            want = ref(text, pair, truncation=True, max_length=max_length, return_token_type_ids=True)
            assert row == {k: want[k] for k in ("input_ids", "token_type_ids", "attention_mask")}, (max_length, text)
            assert ours.encode(text, pair, max_length=max_length) == want["input_ids"]


@pytest.mark.parametrize("name", ["minilm", "roberta", "roberta_prefix_left", "xlmr"])
def test_singles_and_pairs_match_transformers(name, all_dirs, texts, pairs):
    directory = all_dirs[name]
    ours, ref = Tokenizer.from_dir(directory), _reference(directory)
    assert len(ours) == len(ref) and ours.pad_token_id == ref.pad_token_id
    assert ours.model_max_length == ref.model_max_length == 512 and ours.padding_side == ref.padding_side
    _check_singles_and_pairs(ours, ref, texts, pairs)


def test_modernbert_layout_matches_transformers(modernbert_dir, texts, pairs):
    ours, ref = Tokenizer.from_dir(modernbert_dir), _reference(modernbert_dir)
    assert ours.model_max_length == ref.model_max_length == 8192
    assert ours.pad_token_id == ref.pad_token_id == ours.token_to_id("[PAD]")
    assert ours.encode("a b")[0] == ours.token_to_id("[CLS]") and ours.encode("a b")[-1] == ours.token_to_id("[SEP]")
    _check_singles_and_pairs(ours, ref, texts, pairs)
    got = ours(texts, pairs, max_length=40, padding="longest")
    want = ref(texts, pairs, truncation=True, max_length=40, padding=True, return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(
        got["attention_mask"], want["attention_mask"]
    )


@pytest.mark.parametrize("name", ["minilm", "roberta_prefix_left", "xlmr"])
@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_padded_batches_match_transformers(name, padding, all_dirs, texts, pairs):
    directory = all_dirs[name]
    ours, ref = Tokenizer.from_dir(directory), _reference(directory)
    ref_padding = True if padding == "longest" else "max_length"
    for batch_pairs, max_length in ((None, 40), (pairs, 40), (pairs, None), (None, 13)):
        got = ours(texts, batch_pairs, max_length=max_length, padding=padding)
        want = ref(
            texts,
            batch_pairs,
            truncation=True,
            max_length=max_length,
            padding=ref_padding,
            return_tensors="pt",
            return_token_type_ids=True,
        )
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert got[key].dtype == torch.long
            assert torch.equal(got[key], want[key]), (key, max_length)
    lists = ours(texts[:3], max_length=20, padding=padding, return_tensors=False)
    assert lists["input_ids"] == ref(texts[:3], truncation=True, max_length=20, padding=ref_padding)["input_ids"]


def test_pairs_really_are_truncated_longest_first(texts):
    """Guards the parity test above: some pairs must lose tokens on both sides, some on one side only."""
    ours = Tokenizer.from_dir(MINILM)
    long_a, long_b, short = texts[-1], sorted(texts, key=len)[-2], "ok"
    full_a, full_b = len(ours.encode(long_a, max_length=10**6)) - 2, len(ours.encode(long_b, max_length=10**6)) - 2
    row = ours.encode_batch([long_a], [long_b], max_length=64)[0]
    kept_a, kept_b = row["token_type_ids"].count(0) - 2, row["token_type_ids"].count(1) - 1
    assert len(row["input_ids"]) == 64 and kept_a + kept_b == 61
    assert 0 < kept_a < full_a and 0 < kept_b < full_b and abs(kept_a - kept_b) <= 1
    row = ours.encode_batch([long_a], [short], max_length=64)[0]
    assert row["token_type_ids"].count(1) == 2  # the short side ("ok" + [SEP]) is untouched


def test_reference_pipeline_rules_are_needed(all_dirs, texts):
    """The tokenizer.json pipelines as stored differ from what transformers runs; from_dir must follow it."""
    ref = _reference(all_dirs["xlmr"])
    raw = tokenizers.Tokenizer.from_file(str(all_dirs["xlmr"] / "tokenizer.json"))
    spaced = [t for t in texts if "  " in t][:4]
    want = [ref(t, truncation=True)["input_ids"] for t in spaced]
    assert any(raw.encode(t).ids != ids for t, ids in zip(spaced, want))
    assert [Tokenizer.from_dir(all_dirs["xlmr"]).encode(t) for t in spaced] == want
    plain, prefixed = Tokenizer.from_dir(all_dirs["roberta"]), Tokenizer.from_dir(all_dirs["roberta_prefix_left"])
    assert plain.encode(texts[0]) != prefixed.encode(texts[0])


def test_tokenizer_json_truncation_and_padding_are_ignored(texts):
    """all-MiniLM's tokenizer.json asks for truncation and fixed padding at 128; transformers ignores both."""
    assert json.loads((MINILM / "tokenizer.json").read_text())["padding"]["strategy"] == {"Fixed": 128}
    ref = _reference(MINILM)
    wrapped = Tokenizer(tokenizers.Tokenizer.from_file(str(MINILM / "tokenizer.json")), pad_token="[PAD]")
    assert len(ref(texts[-1])["input_ids"]) > 512
    for ours in (wrapped, Tokenizer.from_dir(MINILM)):
        assert ours.encode("short") == ref("short")["input_ids"] == [101, 2460, 102]
        assert ours.encode(texts[-1], max_length=300) == ref(texts[-1], truncation=True, max_length=300)["input_ids"]
        assert len(ours.encode(texts[-1])) == 512  # max_length=None means model_max_length


# ------------------------------------------------------------------ save / load round trip


@pytest.mark.parametrize("name", ["minilm", "roberta_prefix_left", "xlmr"])
def test_save_pretrained_round_trip(name, all_dirs, texts, pairs, tmp_path):
    original = _reference(all_dirs[name])
    Tokenizer.from_dir(all_dirs[name]).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["truncation"] is None and saved["padding"] is None
    ours, ref = Tokenizer.from_dir(tmp_path), _reference(tmp_path)
    assert ref.padding_side == original.padding_side and ref.model_max_length == original.model_max_length
    assert len(ref) == len(original) == len(ours)
    for max_length in (24, 100):
        want = original(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
        assert ref(texts, pairs, truncation=True, max_length=max_length)["input_ids"] == want
        assert [r["input_ids"] for r in ours.encode_batch(texts, pairs, max_length=max_length)] == want


def test_wrapped_tokenizer_without_config_round_trips(all_dirs, texts, tmp_path):
    """A tokenizer built elsewhere (as from a GGUF file) is saved as a plain TokenizersBackend."""
    raw = tokenizers.Tokenizer.from_file(str(all_dirs["roberta"] / "tokenizer.json"))
    ours = Tokenizer(raw, bos_token="<s>", eos_token="</s>", model_max_length=64)
    assert ours.pad_token_id is None
    with pytest.raises(ConfigError, match="set_pad_to_eos"):
        ours(texts[:2])
    ours.set_pad_to_eos()
    assert ours.pad_token_id == ours.eos_token_id == 2
    ours.save_pretrained(tmp_path)
    ref = _reference(tmp_path)
    assert ref.pad_token_id == 2 and ref.model_max_length == 64
    got = ours(texts[:6], texts[6:12])
    want = ref(texts[:6], texts[6:12], truncation=True, padding=True, return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"]) and got["input_ids"].shape[1] == 64
    assert torch.equal(got["attention_mask"], want["attention_mask"])


# ------------------------------------------------------------------ decode, errors


def test_decode(all_dirs, texts):
    ref = _reference(MINILM)
    ours = Tokenizer.from_dir(MINILM)
    for text in texts[:8]:
        ids = ours.encode(text)
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    byte_level = Tokenizer.from_dir(all_dirs["roberta"])
    for text in texts[:-1]:  # byte-level BPE loses nothing
        assert byte_level.decode(byte_level.encode(text), skip_special_tokens=True) == text


def test_user_errors(tmp_path, texts):
    def one_line(error_type, match, call):
        with pytest.raises(error_type, match=match) as info:
            call()
        assert "\n" not in str(info.value)

    one_line(CheckpointError, "tokenizer.json: not found", lambda: Tokenizer.from_dir(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    one_line(CheckpointError, "not a valid tokenizers file", lambda: Tokenizer.from_dir(tmp_path))
    (tmp_path / "tokenizer.json").write_text((MINILM / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    one_line(CheckpointError, "tokenizer_config.json: not valid JSON", lambda: Tokenizer.from_dir(tmp_path))
    ours = Tokenizer.from_dir(MINILM)
    one_line(ConfigError, "max_length=3", lambda: ours.encode("a", "b", max_length=3))
    one_line(ConfigError, "padding=", lambda: ours(texts[:2], padding="longest_first"))
    raw = tokenizers.Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    one_line(ConfigError, "padding_side", lambda: Tokenizer(raw, padding_side="middle"))
    one_line(
        ConfigError,
        "needs max_length",
        lambda: Tokenizer(raw, pad_token="[PAD]", model_max_length=None)(texts[:2], padding="max_length"),
    )
