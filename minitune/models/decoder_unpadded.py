"""The decoders' unpadded path: every block of a Llama/Qwen2/Gemma stack on the (N, H) real tokens of a padded batch.

Kept beside models/decoder.py, which calls it, so the family file stays a top-to-bottom read of the reference's
arithmetic. The blocks are the same modules; only attention differs: `packed_attention` (models/attention.py) runs
causal attention within each sequence of the stack (FlashAttention's variable-length kernel on CUDA, one SDPA call
per sequence on CPU). What must match: the padded path's logits and gradients, up to rounding (tests/test_varlen.py).
Each real token keeps its padded column as position id (left or right padding), as the padded path gives it. The
blocks get their attention inputs as one `AttentionInputs` (models/attention.py) with `pack` set.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from minitune.models.attention import AttentionInputs, Packing, packed_attention
from minitune.models.rope import apply_rope


def packed_self_attention(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pack: Packing):
    """A decoder `Attention` module on real tokens: x (N, H), cos/sin (N, 1, D) -> (N, H)."""
    n = x.shape[0]
    q = attn.q_proj(x).view(n, -1, attn.head_dim)  # (N, H, D)
    k = attn.k_proj(x).view(n, -1, attn.head_dim)  # (N, Hkv, D)
    v = attn.v_proj(x).view(n, -1, attn.head_dim)  # (N, Hkv, D)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    p = attn.dropout if attn.training else 0.0
    y = packed_attention(q, k, v, pack, causal=True, dropout_p=p, scale=attn.head_dim**-0.5)  # (N, H, D)
    return attn.o_proj(y.reshape(n, -1))


def run_blocks_unpadded(model: nn.Module, x: torch.Tensor, pack: Packing) -> torch.Tensor:
    """A `DecoderModel`'s blocks and final norm over embeddings x (B, T, H), on the real tokens only; returns
    (B, T, H) with zeros at pads."""
    x = pack.unpad(x)  # (N, H)
    cos, sin = model.rotary_emb(x, pack.columns[None])  # (1, N, D)
    cos, sin = cos[0, :, None], sin[0, :, None]  # (N, 1, D), broadcast over heads
    inputs = AttentionInputs(cos, sin, pack=pack)  # no mask, no cache: attention keeps to each sequence's run
    ckpt = model.gradient_checkpointing and model.training and torch.is_grad_enabled()
    for layer in model.layers:
        x = checkpoint(layer, x, inputs, use_reentrant=False) if ckpt else layer(x, inputs)
    return pack.pad(model.norm(x))  # (B, T, H)
