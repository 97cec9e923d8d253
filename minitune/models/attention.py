"""Attention over padded or packed (unpadded) tokens: bidirectional for the encoders, causal for the decoders.

The padding mask for scaled_dot_product_attention; `Packing`, which takes the pads out of a batch so per-token layers
run on real tokens only; `packed_attention`, attention over the packed stack (FlashAttention's variable-length kernel
on CUDA, one call per sequence on CPU, else one masked call on the re-padded block); `self_attention` over either
layout for the encoders; sliding-window attention (`band`, `banded_attention`, and `packed_attention`'s `window`),
which ModernBERT's local layers use; and `run_layers`, the encoder block stack that decides when unpadding pays and
when the last block may compute the first token only. `UNPAD_MIN_SHARE`, the padding share from which every family
unpads (`choose_packing`). DeBERTa has its own attention (relative positions); the decoders use `Packing` and
`packed_attention` for their unpadded path, and `AttentionInputs` to hand their blocks what attention reads (with
`LayerCache` / `DecoderCache`, the shape of models/generate.py's KV cache as the model files see it).

Reference for the kernel: torch.nn.attention.varlen.varlen_attn (torch 2.13): q, k, v (N, heads, D) with the
cumulative sequence lengths (B + 1,) int32 and the longest length; window (-1, 0) is causal, (w, w) a bidirectional
window of w keys each side. It has no dropout, runs fp16/bf16 on CUDA only (FlashAttention 2: sm80+), and must give
the masked SDPA's output on real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def attention_bias(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1/0 mask -> (B, 1, 1, T) boolean mask for scaled_dot_product_attention (True = attend).

    None when nothing is padded, so SDPA can take its unmasked (faster) kernel.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask[:, None, None, :].bool()


class Packing:
    """Where the real tokens of a padded (B, T) batch sit, to run per-token layers on real tokens only.

    Projections, MLPs and norms act on each token independently, so they can run on the (N, H) stack of real
    tokens; only attention needs to know which tokens belong together. `unpad` takes the real rows out of a
    (B, T, H) block, `pad` re-forms the block (zeros at pads). Rows are taken in order, so each sequence's real
    tokens are one contiguous run of the stack, `lengths[b]` long.

    `per_sequence` (CPU by default): attention runs sequence by sequence on its own tokens, with no mask and no
    pad at all. Elsewhere one masked call on the re-padded block is cheaper than B small kernel launches.
    """

    def __init__(self, attention_mask: torch.Tensor, per_sequence: bool | None = None):
        self.B, self.T = attention_mask.shape
        self.keep = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of real tokens
        if per_sequence is None:
            per_sequence = attention_mask.device.type == "cpu"
        n = attention_mask.sum(1)
        self.lengths = n.tolist() if per_sequence else None
        ends = n.cumsum(0)
        self.starts = ends - n  # (B,) row of each sequence's first token in the stack (right padding)
        # What the variable-length kernel reads: (B + 1,) offsets of each sequence in the stack, and the longest.
        self.cu_seqlens = F.pad(ends, (1, 0)).to(torch.int32)
        self.min_len, self.max_len = torch.stack(n.aminmax()).tolist()  # one device sync for both
        # Each real token's column in the padded batch: the position ids a padded run gives it (decoders' RoPE).
        self.columns = self.keep % self.T  # (N,)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.B * self.T, -1).index_select(0, self.keep)  # (N, H)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(self.B * self.T, x.shape[-1]).index_copy(0, self.keep, x)
        return out.view(self.B, self.T, -1)  # (B, T, H)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, bias: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """q (B, Tq, H) against k, v (B, T, H); Tq is T, or 1 when only first tokens ask."""
    B, Tq, H = q.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, t.shape[1], n_heads, H // n_heads).transpose(1, 2)  # (B, nh, T, hd)

    a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=bias, dropout_p=dropout_p)
    return a.transpose(1, 2).reshape(B, Tq, H)  # (B, Tq, H)


def self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    bias: torch.Tensor | None,
    pack: Packing | None,
    dropout_p: float,
    first_only: bool = False,
) -> torch.Tensor:
    """Bidirectional multi-head attention over projected q, k, v, in and out in the same layout: (B, T, H), or
    (N, H) real tokens when `pack` is given. A pad key is never attended to; a pad query's output is discarded
    (padded layout) or never computed (packed).

    `first_only`: q holds only each sequence's first token, (B, H) from `first_tokens`, while k and v hold every
    token. One masked call of B single-token queries; output (B, H).
    """
    if first_only:
        kv = (pack.pad(k), pack.pad(v)) if pack is not None else (k, v)  # (B, T, H)
        return _sdpa(q[:, None], *kv, n_heads, bias, dropout_p)[:, 0]  # (B, H)
    if pack is None:
        return _sdpa(q, k, v, n_heads, bias, dropout_p)
    n, h = q.shape
    if pack.lengths is None and varlen_refusal(q.device, q.dtype, h // n_heads, dropout_p) is not None:
        return pack.unpad(_sdpa(pack.pad(q), pack.pad(k), pack.pad(v), n_heads, bias, dropout_p))
    qs, ks, vs = (t.view(n, n_heads, h // n_heads) for t in (q, k, v))  # (N, nh, hd)
    return packed_attention(qs, ks, vs, pack, causal=False, dropout_p=dropout_p).reshape(n, h)


@lru_cache(maxsize=1)
def varlen_kernel():
    """torch.nn.attention.varlen.varlen_attn (torch >= 2.10), or None. Imported on first CUDA use only: its module
    pulls in torch._dynamo, which adds about 2 s to every start-up (measured with python -X importtime)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # pragma: no cover - depends on the installed torch
        return None
    return varlen_attn


def varlen_refusal(device: torch.device, dtype: torch.dtype, head_dim: int, dropout_p: float) -> str | None:
    """Why FlashAttention's variable-length kernel cannot run this attention, or None when it can."""
    if device.type != "cuda":
        return f"the kernel runs on CUDA only, not {device.type}"
    if varlen_kernel() is None:
        return "this torch has no torch.nn.attention.varlen"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"the kernel takes fp16 or bf16, not {dtype}"
    if dropout_p > 0:
        return "the kernel has no attention dropout"
    if head_dim % 8 or head_dim > 256:
        return f"head dim {head_dim}: the kernel takes multiples of 8 up to 256"
    if not _flash_capable(device.index if device.index is not None else torch.cuda.current_device()):
        return "FlashAttention 2 needs compute capability 8.0 or newer"
    return None


@lru_cache(maxsize=8)
def _flash_capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)


def _autocast_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype attention computes in: autocast's where it is on (SDPA is on its low-precision list, so fp32 q, k, v
    after the decoders' fp32 RoPE tables are cast there too), else q's own."""
    if q.dtype == torch.float32 and torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return q.dtype


def _masked_block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pack: Packing,
    causal: bool,
    dropout_p: float,
    scale: float | None,
    window: int | None = None,
) -> torch.Tensor:
    """Fallback: re-pad (N, h, D) to (B, h, T, D), one masked SDPA call, unpad. A pad query attends to itself only
    (its output is dropped), so no row is fully masked and no backend can put a NaN there."""
    keep = pack.keep.new_zeros(pack.B * pack.T, dtype=torch.bool).index_fill(0, pack.keep, True).view(pack.B, pack.T)
    allowed = keep[:, None, :].expand(pack.B, pack.T, pack.T)  # (B, Tq, Tk)
    if causal:
        allowed = allowed & torch.ones(pack.T, pack.T, dtype=torch.bool, device=q.device).tril()
    if window is not None:
        allowed = allowed & band(pack.T, window, q.device)
    allowed = allowed | (torch.eye(pack.T, dtype=torch.bool, device=q.device) & ~keep[:, :, None])

    def block(t: torch.Tensor) -> torch.Tensor:
        return pack.pad(t.flatten(1)).view(pack.B, pack.T, t.shape[1], -1).transpose(1, 2)  # (B, h, T, D)

    y = F.scaled_dot_product_attention(
        block(q), block(k), block(v), attn_mask=allowed[:, None], dropout_p=dropout_p, scale=scale
    )  # (B, h, T, D)
    return pack.unpad(y.transpose(1, 2).reshape(pack.B, pack.T, -1)).view_as(q)  # (N, h, D)


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pack: Packing,
    causal: bool,
    dropout_p: float,
    scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Attention within each sequence of the packed stack: q (N, h, D), k and v (N, h_kv, D) -> (N, h, D).

    Key/value heads fewer than query heads (grouped-query) are shared by consecutive query heads. `window`
    (bidirectional only): a query sees the keys at most that many positions away. The kernel, in order of
    preference: FlashAttention's variable-length kernel (CUDA, fp16/bf16, no dropout: `varlen_refusal`); one SDPA
    call per sequence on its own tokens (`pack.lengths`, CPU; `banded_attention` under a window); one masked call on
    the re-padded block.
    """
    groups = q.shape[1] // k.shape[1]
    dtype = _autocast_dtype(q)
    if varlen_refusal(q.device, dtype, q.shape[-1], dropout_p) is None:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)  # what SDPA's autocast does on the padded path
        reach = (-1, 0) if causal else (-1, -1) if window is None else (window, window)
        cu, m = pack.cu_seqlens, pack.max_len
        return varlen_kernel()(q, k, v, cu, cu, m, m, scale=scale, window_size=reach, enable_gqa=groups > 1)
    if pack.lengths is not None and window is not None:
        out = []
        for qs, ks, vs in zip(q.split(pack.lengths), k.split(pack.lengths), v.split(pack.lengths)):  # (n, h, D)
            y = banded_attention(qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1), window, dropout_p)
            out.append(y.transpose(0, 1))  # (n, h, D)
        return torch.cat(out)
    if pack.lengths is not None:
        runs = zip(q.split(pack.lengths), k.split(pack.lengths), v.split(pack.lengths))
        out = []
        for qs, ks, vs in runs:  # (n, h, D) each
            # 4-D (1, h, n, D): torch's CPU flash kernel takes 4-D inputs only; 3-D ones fall back to the math
            # kernel, measured 1.6x slower at 60 tokens and 3.4x at 4,096 (one thread, forward and backward).
            y = F.scaled_dot_product_attention(
                *(t.transpose(0, 1)[None] for t in (qs, ks, vs)),
                dropout_p=dropout_p,
                is_causal=causal,
                scale=scale,
                enable_gqa=groups > 1,
            )  # (1, h, n, D)
            out.append(y[0].transpose(0, 1))
        return torch.cat(out)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (N, h, D)
    return _masked_block_attention(q, k, v, pack, causal, dropout_p, scale, window)


def band(n: int, half: int, device, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
    """(rows, cols) boolean mask of the positions within `half` of each other: what a sliding-window query sees."""
    i = torch.arange(n, device=device)
    return (i[rows, None] - i[None, cols]).abs() <= half


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, half: int, dropout_p: float) -> torch.Tensor:
    """One sequence's sliding-window attention (keys at most `half` away), q, k, v (h, n, D) -> (h, n, D).

    A short sequence takes one call with its n x n band. A long one goes block by block: each block of `2 * half`
    queries reads only the keys its window can reach, so memory grows as n * window instead of n^2.
    """
    n = q.shape[1]
    q, k, v = q[None], k[None], v[None]  # (1, h, n, D): 4-D for the CPU flash kernel (see packed_attention)
    if n <= half + 1:  # every pair is within the window: no mask at all
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)[0]
    block = 2 * half
    if n <= 2 * block:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=band(n, half, q.device), dropout_p=dropout_p)[0]
    out = []
    for s in range(0, n, block):
        e = min(s + block, n)
        lo, hi = max(0, s - half), min(n, e + half)
        mask = band(n, half, q.device, slice(s, e), slice(lo, hi))  # (e - s, hi - lo)
        out.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, lo:hi], v[:, :, lo:hi], mask, dropout_p))
    return torch.cat(out, dim=2)[0]  # (h, n, D)


def first_tokens(x: torch.Tensor, pack: Packing | None) -> torch.Tensor:
    """(B, H) hidden states of each sequence's first token, from the padded (B, T, H) or packed (N, H) layout."""
    return x[:, 0] if pack is None else x.index_select(0, pack.starts)


# Unpad when at least this share of a batch is padding (see benchmarks/padding.py for where it pays).
UNPAD_MIN_SHARE = 0.15


def choose_packing(attention_mask: torch.Tensor | None, min_pad_share: float) -> Packing | None:
    """Unpad only when enough of the batch is padding to pay for the gathers and scatters around attention."""
    if attention_mask is None or min_pad_share > 1:
        return None
    real = int(attention_mask.sum())
    if real == attention_mask.numel() or 1 - real / attention_mask.numel() < min_pad_share:
        return None
    return Packing(attention_mask)


def run_layers(
    layers,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None,
    unpad_min_share: float,
    first_token_only: bool,
    checkpointed: bool,
) -> torch.Tensor:
    """The encoder blocks over embeddings x (B, T, H): (B, T, H) hidden states, or (B, H) first-token states.

    When at least `unpad_min_share` of the batch is padding, pads leave once, after the embeddings, and come
    back (as zeros) at the end (`choose_packing`).

    `first_token_only` (what the classification heads read): after the last block's keys and values, no other
    token's output is used, so that block runs its queries, attention output, MLP and norms on B rows instead
    of every token. Exact, since those layers act on each row alone; it saves ~14% of a step's matmuls on
    MiniLM's 6 blocks (1/L of the blocks in general). It needs a real first token (right padding); otherwise
    every token runs and the first row is taken.
    """
    bias = attention_bias(attention_mask)
    pack = choose_packing(attention_mask, unpad_min_share) if bias is not None else None
    first = first_token_only and (attention_mask is None or bool(attention_mask[:, 0].all()))
    x = pack.unpad(x) if pack is not None else x  # (N, H)
    for i, layer in enumerate(layers):
        args = (x, bias, pack, first and i == len(layers) - 1)
        x = checkpoint(layer, *args, use_reentrant=False) if checkpointed else layer(*args)
    if first:
        return x  # (B, H)
    x = pack.pad(x) if pack is not None else x  # (B, T, H); zeros at pads when unpadded
    return x[:, 0] if first_token_only else x


# ---------------------------------------------------------------------------------------------- decoder blocks
# The KV cache lives with generation (models/generate.py: LayerKV, KVCache), its only users; these protocols say
# what the decoders read of it, so the model files never import generation (structural typing only).


class LayerCache(Protocol):
    """One layer's cache: `update` appends this step's keys and values (B, Hkv, t, D) and returns all of them so far,
    (B, Hkv, S, D)."""

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class DecoderCache(Protocol):
    """Every layer's cache, and how many positions it holds."""

    @property
    def layers(self) -> Sequence[LayerCache]: ...

    def __len__(self) -> int: ...


@dataclass
class AttentionInputs:
    """What a decoder block's attention reads besides its hidden states. Padded path: the rotary tables, the masks of
    `attention_masks` (models/decoder.py) and, when generating, this layer's cache. Unpadded path (models/
    decoder_unpadded.py): the rotary tables of the real tokens and their `Packing`; the other fields stay None."""

    cos: torch.Tensor  # (B|1, 1, T, D) padded, (N, 1, D) packed; sin likewise
    sin: torch.Tensor
    mask: torch.Tensor | None = None  # (B, 1, T, S) boolean SDPA mask; None: causal (or, for one query, none)
    dead_queries: torch.Tensor | None = None  # (B, T) left-pad queries with no key, their output zeroed
    cache: LayerCache | None = None  # this layer's keys and values so far (generation)
    pack: Packing | None = None  # set: the unpadded path, (N, H) real tokens
