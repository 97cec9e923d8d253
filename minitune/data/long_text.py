"""Texts longer than the model reads, read whole: overlapping windows, and one prediction per text from its windows.

`--long-text chunk` cuts each text into windows of `max_length` tokens (special tokens included), each sharing
`chunk_overlap` tokens with the next, so no sentence is cut without being seen whole in some window. Every window
is encoded as its own sequence with the checkpoint's special tokens ([CLS] ... [SEP]), and the text's logits are the
mean of its windows' logits (`pool_windows`).

Why the mean of logits: every window is evidence about the whole text, the mean weighs each window alike however
many there are, and every window gets a gradient in training (a max would train one window per text and let a
single odd window decide). Averaging logits, not probabilities, is the geometric mean of the windows' odds, which
keeps a confident window from being washed out by hedging ones as much as a plain probability mean would. A label
that one part of a long text carries is diluted by the others; where that matters (multi-label tags found in one
paragraph), lower the threshold or train with shorter windows.

The windows come from the tokenizer itself (tokenizers' overflow with a stride), so a window's ids are exactly what
the tokenizer gives that span of text. A batch holds whole texts: `batch_size` counts texts, each brings all its
windows, and the batch carries `window_of` (W,), the text of each of its W windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LONG_TEXT = ("truncate", "chunk")
# In a saved model's config.json: it was trained on windows, {"max_length": window tokens, "overlap": tokens}.
CHUNK_KEY = "minitune_chunk"


def chunk_overlap_of(hf_config: dict) -> int | None:
    """The overlap a saved model's windows were trained with; None: it reads texts truncated."""
    return (hf_config.get(CHUNK_KEY) or {}).get("overlap")


def window_encodings(texts: Sequence[str], tokenizer, max_length: int, overlap: int) -> list[dict]:
    """One encoding per text: "input_ids" and "token_type_ids" hold a list of windows (data/features.tokenize adds
    the label and marks the feature as windows)."""
    encoded = tokenizer.encode_windows(list(texts), max_length, overlap)
    return [
        {"input_ids": [w["input_ids"] for w in windows], "token_type_ids": [w["token_type_ids"] for w in windows]}
        for windows in encoded
    ]


def pool_windows(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """(W, C) logits of a batch's windows -> (B, C), each text's mean over its windows; unchanged without windows."""
    window_of = batch.get("window_of")
    if window_of is None:
        return logits
    n = int(window_of[-1]) + 1  # windows come text by text, in order
    total = logits.new_zeros(n, logits.shape[-1]).index_add(0, window_of, logits)  # (B, C)
    count = torch.bincount(window_of, minlength=n).to(logits.dtype)  # (B,)
    return total / count[:, None]
