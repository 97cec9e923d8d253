"""Examples -> token features, once per run (and across runs, through data/token_cache.py); and rare-label
oversampling for multi-label training.

A feature is what batching.collate pads: {"input_ids", "token_type_ids", "label"}; for multiple choice each key
holds one list per choice, every choice encoded as the pair (query, option), or for a bi-encoder the query alone
followed by each option alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minitune.data.long_text import window_encodings
from minitune.data.tasks import MULTI_LABEL, MULTIPLE_CHOICE, Example
from minitune.data.token_cache import TokenCache, tokenizer_fingerprint


def tokenize(
    examples: Sequence[Example],
    tokenizer,
    kind: str,
    max_length: int,
    bi: bool = False,
    chunk_overlap: int | None = None,
    cache: TokenCache | None = None,
) -> list[dict]:
    """`bi` (multiple choice for a bi-encoder): row 0 is the query alone and rows 1..C the options alone, so the
    model embeds each text separately (models/pooling.bi_scores). `chunk_overlap` set: each text whole, as
    overlapping windows (data/long_text.py); None: truncated to max_length. `cache`: tokenized texts to read from
    and add to, opened by open_cache with the same settings."""

    def encode(some: list[Example]) -> list[dict]:
        if chunk_overlap is not None:
            return window_encodings([ex.text for ex in some], tokenizer, max_length, chunk_overlap)
        if kind == MULTIPLE_CHOICE:
            return [(_bi_feature if bi else _choice_feature)(ex, tokenizer, max_length) for ex in some]
        pairs = [ex.pair for ex in some] if some and some[0].pair is not None else None
        return tokenizer.encode_batch([ex.text for ex in some], pairs, max_length=max_length)

    if cache is None or not examples:
        encoded = encode(list(examples))
    else:
        same = (cache.tokenizer, cache.layout) == (
            tokenizer_fingerprint(tokenizer),
            _layout(kind, max_length, bi, chunk_overlap),
        )
        if not same:  # its rows would be another encoding's, and this call's would be written into its folder
            raise ValueError(f"the token cache was opened for another tokenizer or other settings ({cache.layout})")
        encoded = cache.encode(examples, encode)
    features = []
    for ex, enc in zip(examples, encoded):
        f = {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}
        if chunk_overlap is not None:
            f["windows"] = True
        if ex.label is not None:
            f["label"] = [float(v) for v in ex.label] if kind == MULTI_LABEL else int(ex.label)
        features.append(f)
    return features


def open_cache(
    folder: Path | None, tokenizer, kind: str, max_length: int, bi: bool = False, chunk_overlap: int | None = None
) -> TokenCache | None:
    """The token cache (data/token_cache.py) in `folder` for tokenize with this tokenizer and these settings; None:
    no cache. Opening reads every shard of its folder, so a fine-tune opens it once for all its sets."""
    return None if folder is None else TokenCache(folder, tokenizer, _layout(kind, max_length, bi, chunk_overlap))


def _layout(kind: str, max_length: int, bi: bool, chunk_overlap: int | None) -> dict:
    return {"max_length": max_length, "overlap": chunk_overlap, "choices": kind == MULTIPLE_CHOICE, "bi": bi}


def _bi_feature(ex: Example, tokenizer, max_length: int) -> dict:
    enc = tokenizer.encode_batch([ex.text, *ex.choices], max_length=max_length)
    return {"input_ids": [e["input_ids"] for e in enc], "token_type_ids": [e["token_type_ids"] for e in enc]}


def _choice_feature(ex: Example, tokenizer, max_length: int) -> dict:
    enc = tokenizer.encode_batch([ex.text] * len(ex.choices), list(ex.choices), max_length=max_length)
    return {"input_ids": [e["input_ids"] for e in enc], "token_type_ids": [e["token_type_ids"] for e in enc]}


def oversample_rare(Y: np.ndarray, min_count: int, seed: int) -> np.ndarray:
    """Indices of the training set with examples of rare labels repeated until each label has >= min_count
    positives (or as close as repeating its examples allows). Frequent labels are left alone."""
    rng = np.random.default_rng(seed)
    extra: list[np.ndarray] = []
    counts = Y.sum(axis=0).astype(np.int64)
    for label in np.argsort(counts):  # rarest first: their copies also count toward labels they co-occur with
        have = counts[label]
        if have == 0 or have >= min_count:
            continue
        rows = np.flatnonzero(Y[:, label])
        added = rng.choice(rows, size=min_count - have, replace=True)
        extra.append(added)
        counts += Y[added].sum(axis=0).astype(np.int64)
    return np.concatenate([np.arange(len(Y)), *extra]) if extra else np.arange(len(Y))
