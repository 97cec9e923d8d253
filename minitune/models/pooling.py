"""Pooling token states into one vector per sequence, and the bi-encoder that scores options by cosine similarity.

References: Reimers & Gurevych 2019 (Sentence-BERT) for mean / max / CLS pooling; the reference implementation is
sentence-transformers' `Pooling` and `Normalize` modules, whose files (`modules.json`, `1_Pooling/config.json`) a
checkpoint uses to declare how it was trained to be read (checkpoints/sentence_layout.py reads them).

What must match the reference (tests/test_pooling.py):
- `pool` equals a hand computation, and `embed` of the packaged all-MiniLM-L6-v2 equals sentence-transformers' own
  `encode` at 1e-5;
- a pad never enters a mean or a max: the padded and the unpadded (packed) encoder paths give the same vectors.

Names: `cls` for a classification head means the family's reference head (BERT's pooler, RoBERTa's dense-tanh head
on <s>), which is what transformers' class computes. For an *embedding* (`embed`, the bi-encoder) `cls` is the first
token's hidden state as sentence-transformers reads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOLINGS = ("auto", "cls", "mean", "max")  # what a user may ask for
MODES = ("cls", "mean", "max", "mean_sqrt_len")  # what a checkpoint may declare (sentence-transformers' names)
CHOICE_SCORERS = ("auto", "cross", "bi")
# Fixed similarity scale of the bi-encoder: the scale all-MiniLM-L6-v2 (and sentence-transformers'
# MultipleNegativesRankingLoss by default) was trained with, so training starts from the pretrained geometry.
BI_SCALE = 20.0


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """(B, T, H) token states and a (B, T) 1/0 mask -> (B, H). Pads never count: they are left out of the sum and
    the length, and can never be a maximum."""
    if mode == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        attention_mask = hidden.new_ones(hidden.shape[:2])
    keep = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    if mode == "max":
        return hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    total = (hidden * keep).sum(dim=1)  # (B, H)
    length = keep.sum(dim=1).clamp(min=1e-9)  # (B, 1); an all-pad row gives zeros, not NaN
    if mode == "mean":
        return total / length
    if mode == "mean_sqrt_len":
        return total / length.sqrt()
    raise ValueError(f"unknown pooling mode {mode!r}")


def bi_scores(embed, input_ids, attention_mask=None, token_type_ids=None, in_batch: bool = False) -> torch.Tensor:
    """Multiple choice as sentence-embedding similarity: logit_c = BI_SCALE * cos(query, option_c).

    Input (B, 1 + C, T): row 0 of each item is the query alone, rows 1..C its options alone (data/features.py), so
    the query and every option of a batch are encoded in one pass of `embed` ((N, T) -> (N, H)). The scale is fixed,
    not learned: it only sets how sharp the softmax is (the ranking, hence accuracy, does not depend on it), the
    checkpoint was trained at this scale, and a fixed scale leaves nothing outside the sentence-transformers layout
    to save.

    `in_batch` (training): every other item's options in the batch are negatives too, as sentence-transformers'
    MultipleNegativesRankingLoss trains: logits (B, C + (B - 1) * C), the item's own options first, so the target
    is still the answer's position among them. Another item's option with the same tokens as one of the item's own
    (Recipe-MPR reuses option texts across items) may be this item's answer: its logit is -inf, out of the softmax.
    """
    B, R, T = input_ids.shape  # R = 1 + C

    def flat(t):
        return None if t is None else t.reshape(B * R, T)  # (B*R, T)

    e = embed(flat(input_ids), flat(attention_mask), flat(token_type_ids)).view(B, R, -1)  # (B, R, H)
    e = F.normalize(e, dim=-1)  # cosine, whether or not the embedding is normalised already
    query, options = e[:, 0], e[:, 1:]  # (B, H), (B, C, H)
    own = BI_SCALE * torch.einsum("bh,bch->bc", query, options)  # (B, C)
    if not in_batch or B == 1:
        return own
    every = BI_SCALE * query @ options.reshape(-1, e.shape[-1]).T  # (B, B*C): each query against every option
    option_ids = input_ids[:, 1:]  # (B, C, T)
    same = (option_ids[:, :, None] == option_ids.reshape(1, 1, -1, T)).all(-1).any(1)  # (B, B*C): one of its own
    every = every.masked_fill(same, float("-inf"))
    others = ~torch.eye(B, dtype=torch.bool, device=e.device)
    return torch.cat([own, every.view(B, B, R - 1)[others].view(B, -1)], dim=1)  # (B, C + (B-1)*C)
