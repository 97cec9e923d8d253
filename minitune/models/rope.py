"""Rotary position embeddings (Su et al. 2021) as the Llama family uses them, with Llama 3's frequency rescaling.

Reference: transformers' `modeling_rope_utils.py` (default and "llama3" inverse frequencies) and the rotary code of
`modeling_llama.py`. What must match (tests/test_decoder.py): inv_freq computed in fp32; Llama 3 slows long
wavelengths by `factor`, keeps short ones and blends linearly between; the half-split rotation
(rotate_half(x) = cat(-x2, x1)), not the interleaved one; cos/sin computed in fp32 and cast to the activation dtype.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn


class RopeSettings(Protocol):
    """The fields of a decoder config that rotary embeddings read (DecoderConfig has them all)."""

    head_dim: int
    rope_theta: float
    rope_type: str  # "default" or "llama3"
    rope_factor: float
    rope_low_freq_factor: float
    rope_high_freq_factor: float
    rope_original_max_position_embeddings: int


def rope_inv_freq(cfg: RopeSettings, device: torch.device | None = None) -> torch.Tensor:
    """(head_dim / 2,) fp32 inverse frequencies, with the Llama 3 wavelength rescaling when configured."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    if cfg.rope_type != "llama3":
        return inv
    factor, lo, hi = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    ctx = cfg.rope_original_max_position_embeddings
    wavelen = 2 * math.pi / inv
    # Long wavelengths (beyond ctx / lo) are slowed by `factor`, short ones (below ctx / hi) kept; in between, a
    # linear blend in ctx / wavelen.
    slowed = torch.where(wavelen > ctx / lo, inv / factor, inv)
    blend = (ctx / wavelen - lo) / (hi - lo)
    blended = (1 - blend) * slowed / factor + blend * slowed
    middle = ~(wavelen < ctx / hi) & ~(wavelen > ctx / lo)
    return torch.where(middle, blended, slowed)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the given positions. inv_freq is recomputed per call (head_dim/2 numbers) rather than kept
    as a buffer, so it stays fp32 under model.to(bf16) and needs nothing special when built on the meta device."""

    def __init__(self, cfg: RopeSettings):
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv = rope_inv_freq(self.cfg, device=x.device)
        freqs = position_ids[..., None].float() * inv  # (B, T, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, D): half-split layout
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (rotate_half(x) * sin)
