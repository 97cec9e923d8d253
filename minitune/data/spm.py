"""A SentencePiece model file (spm.model) as a `tokenizers` Unigram tokenizer, without the sentencepiece package.

Why: DeBERTa-v3 and mDeBERTa-v3 repositories ship `spm.model`, often without tokenizer.json. The file is a small
protobuf (sentencepiece's `ModelProto`); we read the three parts we need ourselves:
- pieces (field 1): piece (1, string), score (2, float), type (3: 1 normal, 2 unknown, 3 control, 4 user-defined,
  5 unused, 6 byte);
- trainer spec (field 2): model_type (3; 1 = unigram), byte_fallback (35);
- normaliser spec (field 3): precompiled_charsmap (2), add_dummy_prefix (3), remove_extra_whitespaces (4).

References: sentencepiece's sentencepiece_model.proto (field numbers) and normalizer.cc (the order of
normalisation, whitespace removal and the dummy prefix); the `tokenizers` Unigram model and Precompiled normaliser,
which run the same Viterbi segmentation and charsmap.

What must match: the ids of sentencepiece itself, `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]` with token types
0 then 1, which is what DeBERTa-v3 was trained on (tests/test_spm.py, a v3-shaped model trained in the test).
"""

from __future__ import annotations

import struct
from pathlib import Path

import tokenizers
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from minitune.errors import CheckpointError

UNKNOWN, CONTROL, USER_DEFINED, BYTE = 2, 3, 4, 6
# What DeBERTa-v3's files look like, for building look-alikes (tests/test_spm.py, benchmarks/tiny_deberta.py):
# its spm.model as sentencepiece trainer arguments, and its tokenizer_config.json ([MASK] follows the pieces).
V3_TRAINER_ARGS = dict(
    model_type="unigram",
    normalization_rule_name="nmt_nfkc",
    pad_id=0,
    pad_piece="[PAD]",
    bos_id=1,
    bos_piece="[CLS]",
    eos_id=2,
    eos_piece="[SEP]",
    unk_id=3,
    unk_piece="[UNK]",
)
V3_TOKENIZER_CONFIG = {
    "tokenizer_class": "DebertaV2Tokenizer",
    "do_lower_case": False,
    "split_by_punct": False,
    "vocab_type": "spm",
    "model_max_length": 512,
    **{f"{n}_token": f"[{n.upper()}]" for n in ("pad", "unk", "cls", "sep", "mask")},
    "bos_token": "[CLS]",
    "eos_token": "[SEP]",
}
SPM_FILES = ("spm.model", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "sentencepiece.model")


def _fields(buf: bytes, where: Path):
    """(field number, wire type, value) of one protobuf message; value: int, bytes or 4/8 raw bytes."""
    i, n = 0, len(buf)

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            if i >= n:
                raise CheckpointError(f"{where}: truncated SentencePiece model: download it again")
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while i < n:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 2:
            size = varint()
            yield number, wire, buf[i : i + size]
            i += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, wire, buf[i : i + width]
            i += width
        else:
            raise CheckpointError(f"{where}: not a SentencePiece model (protobuf wire type {wire}): check the file")


def read_spm(path: Path) -> dict:
    """pieces [(piece, score, type)], model_type, byte_fallback, charsmap, add_dummy_prefix, remove_extra_ws."""
    buf = Path(path).read_bytes()
    out = {
        "pieces": [],
        "model_type": 1,
        "byte_fallback": False,
        "charsmap": b"",
        "add_dummy_prefix": True,
        "remove_extra_whitespaces": True,
    }
    for number, _, value in _fields(buf, path):
        if number == 1:
            piece, score, kind = "", 0.0, 1
            for f, _, v in _fields(value, path):
                if f == 1:
                    piece = v.decode("utf-8")
                elif f == 2:
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    kind = v
            out["pieces"].append((piece, score, kind))
        elif number == 2:
            for f, _, v in _fields(value, path):
                if f == 3:
                    out["model_type"] = v
                elif f == 35:
                    out["byte_fallback"] = bool(v)
        elif number == 3:
            for f, _, v in _fields(value, path):
                if f == 2:
                    out["charsmap"] = bytes(v)
                elif f == 3:
                    out["add_dummy_prefix"] = bool(v)
                elif f == 4:
                    out["remove_extra_whitespaces"] = bool(v)
    if not out["pieces"]:
        raise CheckpointError(f"{path}: no pieces in this SentencePiece model: download it again")
    return out


def spm_tokenizer(path: Path, cls_token: str, sep_token: str, lowercase: bool = False) -> tokenizers.Tokenizer:
    """The Unigram tokenizer of a SentencePiece model, with DeBERTa's `[CLS] A [SEP] B [SEP]` post-processor."""
    spec = read_spm(path)
    if spec["model_type"] != 1:
        raise CheckpointError(f"{path}: a SentencePiece model of type {spec['model_type']} (not unigram): unsupported")
    pieces = spec["pieces"]
    unk = next((i for i, (_, _, kind) in enumerate(pieces) if kind == UNKNOWN), 0)
    tok = tokenizers.Tokenizer(Unigram([(p, s) for p, s, _ in pieces], unk_id=unk, byte_fallback=spec["byte_fallback"]))
    # Control pieces ([CLS], [SEP], [PAD]) and [UNK] are never produced from text, but written in a text they match
    # whole, as transformers' added special tokens do; user-defined pieces always match whole.
    tok.add_special_tokens([p for p, _, kind in pieces if kind in (CONTROL, UNKNOWN)])
    tok.add_tokens([tokenizers.AddedToken(p, normalized=False) for p, _, kind in pieces if kind == USER_DEFINED])
    # sentencepiece's order: the charsmap, then whitespace runs collapsed and the ends stripped.
    steps = [normalizers.Lowercase()] if lowercase else []
    if spec["charsmap"]:
        steps.append(normalizers.Precompiled(spec["charsmap"]))
    if spec["remove_extra_whitespaces"]:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    tok.normalizer = normalizers.Sequence(steps)
    scheme = "always" if spec["add_dummy_prefix"] else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme=scheme)]
    )
    ids = {t: tok.token_to_id(t) for t in (cls_token, sep_token)}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        tok.add_special_tokens(missing)
        ids = {t: tok.token_to_id(t) for t in (cls_token, sep_token)}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=list(ids.items()),
    )
    return tok


def find_spm(directory: Path) -> Path | None:
    return next((directory / n for n in SPM_FILES if (directory / n).is_file()), None)
