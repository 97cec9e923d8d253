"""Paraphrases by an instruct decoder (data/paraphrase.py): one list of `copies` per text, the same for the same
seed whatever the cache held, read back from the cache without loading the model, appended for new texts only, a
torn last line and malformed lines survived, bad cache paths and bad models refused in one line. A tiny random
Llama with a word-level tokenizer and a ChatML-shaped template stands in for an instruct model (its answers are
noise, which is all these tests need); one slow test asks the real SmolLM2."""

from __future__ import annotations

import json

import pytest
import tokenizers
import torch
from safetensors.torch import save_file
from tokenizers import models, pre_tokenizers

import minitune.data.paraphrase as para
from minitune.data.readers import DataWarning
from minitune.data.tokenizer import Tokenizer
from minitune.errors import ConfigError, ParameterError
from minitune.models import decoder as dec

SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "fast", "slow", "big", "red", "and", "it", "was"]
WORDS += ["is", ".", ",", "!", "?"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXTS = ["the cat sat on the mat .", "a big dog ran fast !", "it was red and slow ?"]


def tiny_decoder(folder, chat_template: str | None = CHATML):
    """A 2-layer random Llama over a 25-word vocabulary, saved as a Hub directory: with so few tokens a row ends
    (samples <|im_end|>) within its budget about half the time."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = tokenizers.Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + WORDS)}, unk_token="<|unk|>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(SPECIALS)
    config = {"chat_template": chat_template} if chat_template else {}
    tokens = dict(pad_token="<|pad|>", bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|unk|>")
    Tokenizer(raw, **tokens, config=config).save_pretrained(folder)
    hf = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    lm = dec.build(dec.config_from_hf(hf), "causal_lm", 0)
    with torch.no_grad():
        lm.model.embed_tokens.weight.mul_(0.05)  # small logits: near-uniform samples, so <|im_end|> comes up often
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(tiny_decoder(tmp_path_factory.mktemp("tiny_instruct")))


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def answers(path) -> dict[str, str]:
    return {line["key"]: line["answer"] for line in lines(path)}


def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although every paraphrase was in the cache")

    for name in ("load_model", "load_tokenizer", "model_type_of", "generate"):
        monkeypatch.setattr(para, name, refuse)


def test_copies_of_every_text_in_order_cached_once_per_text_and_copy(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    texts = [*TEXTS, TEXTS[0]]  # a repeated text is written once
    got = para.paraphrases(texts, tiny, copies=2, seed=0, cache=None)
    assert len(got) == 4 and all(len(row) == 2 and all(isinstance(p, str) and p for p in row) for row in got)
    assert got[3] == got[0]
    cache = next((tmp_path / "xdg" / "minitune" / "paraphrases").glob("*.jsonl"))  # the default: the user cache
    written = lines(cache)
    assert len(written) == 6 and {(w["text"], w["k"]) for w in written} == {(t, k) for t in TEXTS for k in (0, 1)}
    for w in written:  # the cleaned answer, or the text itself where the answer was empty or cut
        row = got[TEXTS.index(w["text"])]
        assert row[w["k"]] in (para._clean(w["answer"], w["text"]), w["text"])


def test_answers_cut_by_the_token_budget_give_the_text_back_and_are_counted(tmp_path, tiny, monkeypatch, caplog):
    monkeypatch.setattr(para, "MAX_NEW_TOKENS", 1)  # no answer ends before it: each is cut, or empty
    with caplog.at_level("INFO", logger="minitune"):
        got = para.paraphrases(TEXTS, tiny, copies=1, seed=0, cache=str(tmp_path / "p.jsonl"))
    assert got == [[t] for t in TEXTS]
    assert "3 of 3 are the original text instead" in caplog.text


def test_same_seed_same_paraphrases_whatever_the_cache_held(tmp_path, tiny):
    fresh = para.paraphrases(TEXTS, tiny, copies=2, seed=3, cache=str(tmp_path / "a.jsonl"))
    para.paraphrases(TEXTS[1:2], tiny, copies=1, seed=3, cache=str(tmp_path / "b.jsonl"))
    again = para.paraphrases(TEXTS, tiny, copies=2, seed=3, cache=str(tmp_path / "b.jsonl"))
    assert again == fresh
    assert answers(tmp_path / "b.jsonl") == answers(tmp_path / "a.jsonl")  # raw answers too, not only fallbacks
    para.paraphrases(TEXTS, tiny, copies=2, seed=4, cache=str(tmp_path / "c.jsonl"))
    other = sorted(answers(tmp_path / "c.jsonl").values())
    assert other != sorted(answers(tmp_path / "a.jsonl").values())  # another seed, other samples


def test_a_rerun_reads_the_cache_and_loads_no_model(tmp_path, tiny, monkeypatch):
    cache = tmp_path / "p.jsonl"
    first = para.paraphrases(TEXTS, tiny, copies=2, seed=0, cache=str(cache))
    before = cache.read_bytes()
    no_loading(monkeypatch)
    assert para.paraphrases(TEXTS, tiny, copies=2, seed=0, cache=str(cache)) == first
    assert para.paraphrases(TEXTS[2:], tiny, copies=1, seed=0, cache=str(cache)) == [first[2][:1]]
    assert cache.read_bytes() == before


def test_new_texts_are_appended_and_old_ones_not_written_again(tmp_path, tiny):
    cache = tmp_path / "p.jsonl"
    first = para.paraphrases(TEXTS[:2], tiny, copies=2, seed=0, cache=str(cache))
    before = cache.read_bytes()
    more = para.paraphrases(TEXTS, tiny, copies=3, seed=0, cache=str(cache))
    assert cache.read_bytes().startswith(before)
    added = lines(cache)[4:]
    assert sorted((w["text"], w["k"]) for w in added) == sorted(
        [(TEXTS[0], 2), (TEXTS[1], 2), (TEXTS[2], 0), (TEXTS[2], 1), (TEXTS[2], 2)]
    )
    assert [row[:2] for row in more[:2]] == first


def test_a_torn_last_line_is_ignored_and_written_again(tmp_path, tiny, caplog):
    cache = tmp_path / "p.jsonl"
    first = para.paraphrases(TEXTS, tiny, copies=1, seed=0, cache=str(cache))
    whole = cache.read_bytes()
    cache.write_bytes(whole[:-15])  # a crash in the middle of the last line
    with caplog.at_level("INFO", logger="minitune"):
        assert para.paraphrases(TEXTS, tiny, copies=1, seed=0, cache=str(cache)) == first
    assert "torn last line" in caplog.text
    assert sorted(cache.read_bytes().splitlines()) == sorted(whole.splitlines())  # no glued or half line left


def test_malformed_lines_are_skipped_with_a_warning_and_written_again(tmp_path, tiny):
    cache = tmp_path / "p.jsonl"
    first = para.paraphrases(TEXTS, tiny, copies=1, seed=0, cache=str(cache))
    good = cache.read_text(encoding="utf-8").splitlines()
    cache.write_text("\n".join(["not json", good[0], '{"key": 1}', '{"key": "x", "answer": "y"}', *good[2:]]) + "\n")
    with pytest.warns(DataWarning, match=r"skipped 3 malformed cache lines \(lines 1, 3, 4\)"):
        assert para.paraphrases(TEXTS, tiny, copies=1, seed=0, cache=str(cache)) == first
    rewritten = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()[5:]]
    assert [w["text"] for w in rewritten] == [json.loads(good[1])["text"]]  # the line replaced, written again


def one_line(error, param: str, match: str, call) -> None:
    """`call` raises `error` naming `param` (rendered as its flag by the CLI), in one line matching `match`."""
    with pytest.raises(error, match=match) as info:
        call()
    assert param in info.value.params and "\n" not in str(info.value)


def test_a_cache_path_that_cannot_be_a_file_is_one_clear_error(tmp_path, tiny):
    def ask(cache):
        return lambda: para.paraphrases(TEXTS, tiny, copies=1, seed=0, cache=str(cache))

    one_line(ConfigError, "paraphrase_cache", "is a directory: name a file in it", ask(tmp_path))
    (tmp_path / "afile").write_text("x")
    one_line(ConfigError, "paraphrase_cache", "cannot write it .*writable file", ask(tmp_path / "afile" / "p.jsonl"))


def test_a_model_that_is_no_instruct_decoder_is_one_clear_error(tmp_path):
    def ask(model, copies=1):
        return lambda: para.paraphrases(TEXTS, model, copies=copies, seed=0, cache=str(tmp_path / "p.jsonl"))

    one_line(ConfigError, "paraphrase_model", "minilm: model_type bert is not a decoder", ask("minilm"))
    one_line(ConfigError, "paraphrase_model", r"\./nowhere: .*no such file or directory", ask("./nowhere"))
    base = tiny_decoder(tmp_path / "base", chat_template=None)
    one_line(ConfigError, "paraphrase_model", "no chat template, so it is not an instruct model", ask(base))
    one_line(ParameterError, "augment_copies", "must be at least 1", ask("minilm", copies=0))


@pytest.mark.parametrize(
    "answer, text, want",
    [
        ("Paraphrase: The cat rested.", "The cat sat.", "The cat rested."),
        ('Here is a rephrased version:\n"The cat rested."', "The cat sat.", "The cat rested."),
        ("Sentence: The cat rested.\n\nThis keeps the tone.", "The cat sat.", "The cat rested."),
        ("\u201cThe cat rested.\u201d", "The cat sat.", "The cat rested."),
        ('"Quoted," she said.', '"Quoted," he said.', '"Quoted," she said.'),  # quotes the text has stay
        ("Rewritten text:", "The cat sat.", ""),  # a lead and nothing after it: the text stands in
        ("TENNESSEE: best state", "TENNESSEE: We are the best state.", "TENNESSEE: best state"),
    ],
)
def test_answers_lose_their_lead_quotes_and_commentary(answer, text, want):
    assert para._clean(answer, text) == want


@pytest.mark.slow
def test_smollm2_writes_paraphrases_unlike_its_input(tmp_path):
    # SmolLM2-135M samples its answers, and a CPU's rounding picks which sample a seed gives: about one answer in
    # six comes back unchanged (the model repeats the text, or the token budget cuts it), and a text can do so
    # twice. So the test asks that most answers, over four texts and two copies, differ from their text
    # (5-8 of 8 across seeds 0-7 on the dev machine; 10 s on one CPU core).
    texts = [
        "I told my cat a joke. It did not laugh.",
        "My phone battery lasts longer than my diet.",
        "The meeting could have been an email.",
        "I am on a seafood diet: I see food and I eat it.",
    ]
    got = para.paraphrases(texts, "smollm2", copies=2, seed=0, cache=str(tmp_path / "p.jsonl"), device=None)
    assert [len(row) for row in got] == [2] * len(texts)
    assert all(isinstance(p, str) and p.strip() for row in got for p in row)
    changed = sum(p.strip().lower() != text.strip().lower() for text, row in zip(texts, got) for p in row)
    assert changed >= 4, got
