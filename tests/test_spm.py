"""The SentencePiece reader (data/spm.py) against sentencepiece itself, on v3-shaped models trained in the test.

DeBERTa-v3's spm.model is a unigram model with [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, the nmt_nfkc charsmap and
[MASK] added after the pieces by the tokenizer config. The reference ids are sentencepiece's, wrapped as
`[CLS] A [SEP] (B [SEP])`: what DeBERTa-v3 was trained on and what transformers 4's sentencepiece-backed
DebertaV2Tokenizer returned. (transformers 5's DebertaV2Tokenizer rebuilds its normaliser without the charsmap,
so it maps e.g. fullwidth letters to [UNK]; the last test pins where it agrees with us and where it does not.)
"""

import io
import json
import random

import pytest

import minitune
from minitune.data.spm import V3_TOKENIZER_CONFIG, V3_TRAINER_ARGS

spm = pytest.importorskip("sentencepiece")

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "love",
    "hate",
    "joy",
    "fear",
    "anger",
    "sadness",
    "surprise",
    "gratitude",
    "amusement",
    "curiosity",
    "admiration",
    "disappointment",
    "relief",
    "pride",
    "remorse",
    "embarrassment",
    "nervousness",
    "optimism",
    "realization",
    "really",
    "very",
    "so",
    "much",
    "good",
    "bad",
    "great",
    "terrible",
    "happy",
    "sad",
    "thank",
    "you",
    "lol",
    "omg",
    "wow",
    "yes",
    "no",
    "maybe",
    "never",
    "always",
]
EXTRAS = [
    "Café naïve résumé façade coöperate Ångström São Paulo Zürich",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "I love this 😍🔥 so much!!! 👍🏽 🇫🇷 ❤️",
    "visit https://example.com/path?q=1&x=2 or www.test.org/a_b-c now",
    "1234567 3.14159 -42 1e10 $100,000 50% #1 @user",
    "don't won't can't it's I'm you're",
    "ＦＵＬＬＷＩＤＴＨ ﬁne ½ ™ ① Ⅷ",
    "Привет мир Γειά σου κόσμε مرحبا بالعالم",
]


def texts(n=320, seed=0):
    rng = random.Random(seed)
    out = list(EXTRAS) + [
        "",
        " ",
        "   leading and   repeated   spaces   ",
        "tab\there\nnewline\r\nend",
        "a\u00a0b\u2003c",
        "e\u0301 combining",
        "unknown ЖЖЖ ᚠᚢᚦ ꙮ",
        "[MASK] and [CLS] inside text",
        "!!!!!! ?????",
        "a" * 60,
    ]
    pool = WORDS + " ".join(EXTRAS).split()
    while len(out) < n:
        words = rng.choices(pool, k=rng.randint(1, 14))
        glue = rng.choice([" ", " ", " ", "  ", ", ", " - ", "\t"])
        text = glue.join(words)
        if rng.random() < 0.2:
            text = " " * rng.randint(1, 3) + text
        if rng.random() < 0.2:
            text = text.upper() if rng.random() < 0.5 else text.capitalize()
        out.append(text)
    return out


def train(path, byte_fallback: bool):
    rng = random.Random(1)
    corpus = EXTRAS * 20 + [" ".join(rng.choices(WORDS, k=10)) for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=600,
        hard_vocab_limit=False,
        byte_fallback=byte_fallback,
        character_coverage=0.995,
        minloglevel=2,
        **V3_TRAINER_ARGS,
    )
    path.mkdir()
    (path / "spm.model").write_bytes(model.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps(V3_TOKENIZER_CONFIG))
    (path / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


@pytest.fixture(scope="module", params=[False, True], ids=["v3", "byte_fallback"])
def trained(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "model"
    return path, train(path, request.param), request.param


def reference(sp, a, b=None):
    ids = [1, *sp.encode(a), 2]
    return ids + [*sp.encode(b), 2] if b else ids


def test_ids_equal_sentencepiece_on_varied_texts(trained):
    path, sp, byte_fallback = trained
    tok = minitune.load_tokenizer(path)
    assert not (path / "tokenizer.json").exists() and len(texts()) >= 300
    ties = 0
    for text in texts():
        if "[MASK]" in text:  # special tokens written in the text are matched whole (below), as transformers does
            continue
        got, want = tok.encode(text, max_length=512), reference(sp, text)
        if got == want:
            continue
        # Two segmentations of equal total score, e.g. "!!!" as "!" "!!" here and "!!" "!" in sentencepiece: the
        # two Viterbi searches break ties differently (transformers' fast DeBERTa tokenizer, built on the same
        # `tokenizers` Unigram, shares this). This tiny model has many equal piece scores (its corpus repeats
        # lines), so ties are common here. Anything but a tie is a real difference.
        score = lambda ids: sum(sp.get_score(i) for i in ids)  # noqa: E731
        assert sp.decode(got) == sp.decode(want) and abs(score(got) - score(want)) < 1e-4, (text, got, want)
        ties += 1
    assert ties <= len(texts()) // 5, f"{ties} tie-broken texts"  # 46 of 320 here
    if byte_fallback:  # characters outside the pieces come out as bytes, not [UNK]
        assert 3 not in tok.encode("ꙮ ᚠ")
        assert sp.id_to_piece(tok.encode("ꙮ")[-2]).startswith("<0x")


def test_pairs_and_token_types(trained):
    path, sp, _ = trained
    tok = minitune.load_tokenizer(path)
    rng = random.Random(2)
    all_texts = texts()
    firsts, seconds = rng.sample(all_texts, 60), rng.sample(all_texts, 60)
    for row, a, b in zip(tok.encode_batch(firsts, seconds, max_length=512), firsts, seconds):
        want = reference(sp, a, b)
        if row["input_ids"] != want:
            continue  # a Viterbi tie (see above); the token types below are what this test is about
        n_a = len(sp.encode(a)) + 2
        assert row["token_type_ids"] == [0] * n_a + [1] * (len(want) - n_a)
    assert tok.encode("hello", "") == reference(sp, "hello")  # an empty pair encodes as a single text


def test_special_tokens_from_the_config_and_round_trip(trained, tmp_path):
    path, sp, _ = trained
    tok = minitune.load_tokenizer(path)
    assert tok.pad_token_id == 0 and tok.special_tokens["cls"] == "[CLS]"
    mask_id = tok.token_to_id("[MASK]")
    assert mask_id == sp.get_piece_size()  # added after the pieces, as the Hub's v3 tokenizers have it
    assert tok.encode("a [MASK] b") == [1, *sp.encode("a"), mask_id, *sp.encode("b"), 2]
    assert tok.encode("[CLS] x [UNK]") == [1, 1, *sp.encode("x"), 3, 2]  # special tokens in a text match whole
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(
        (path / "config.json").read_text()
    )  # tokenizer.json now exists and is preferred
    again = minitune.load_tokenizer(tmp_path)
    for text in texts()[:80]:
        assert again.encode(text) == tok.encode(text)


def test_transformers5_deberta_tokenizer_agrees_except_where_it_skips_the_charsmap(tmp_path):
    """On the v3-shaped model (transformers 5's DebertaV2Tokenizer has no byte fallback)."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "model"
    sp = train(path, byte_fallback=False)
    ours, theirs = minitune.load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
    nfkc_free = [t for t in texts() if not any(c in t for c in "ＦＵＬＷＩＤＴＨﬁ½™①Ⅷ\u00a0\u2003")]
    assert len(nfkc_free) >= 200
    same = sum(ours.encode(t, max_length=512) == theirs(t)["input_ids"] for t in nfkc_free)
    assert same >= len(nfkc_free) - 2
    for text in ("[CLS] x [UNK]", "a [MASK] b", "x[SEP]y", "[PAD]"):  # special tokens written in a text
        assert ours.encode(text) == theirs(text)["input_ids"]
    full = "ＦＵＬＬＷＩＤＴＨ"
    assert ours.encode(full) == reference(sp, full) != theirs(full)["input_ids"]
