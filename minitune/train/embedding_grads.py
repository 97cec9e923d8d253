"""The word-embedding gradient as sparse rows added into a dense buffer kept for the run (CPU): same gradient, no
zero-filled table allocated per micro-batch."""

from __future__ import annotations

import torch
from torch import nn

SPARSE_MIN_ROWS = 4096  # vocabulary-sized tables; position and segment tables stay dense


KeptGrads = list[tuple[nn.Parameter, torch.Tensor]]


def sparse_embedding_grads(model: nn.Module, min_rows: int = SPARSE_MIN_ROWS) -> KeptGrads:
    """Let large embedding tables take their gradient as sparse rows, added into one dense buffer kept for the run.

    Why: the dense backward of an embedding allocates and zero-fills the whole table on every micro-batch
    (30522 x 384 for MiniLM, 250002 x 1024 for XLM-R); on CPU that fresh allocation page-faults, and it was 7%
    of a MiniLM training step. Adding each micro-batch's rows into a buffer that stays mapped gives the same
    gradient (up to the order of float additions), and AdamW still sees a dense gradient: zeros where no token
    was used, as in the reference. Returns (parameter, buffer) pairs for `zero_grads`.
    """
    kept = []
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight.requires_grad and module.num_embeddings >= min_rows:
            module.sparse = True
            module.weight.grad = torch.zeros_like(module.weight)
            kept.append((module.weight, module.weight.grad))
    return kept


def zero_grads(optimizer: torch.optim.Optimizer, kept: KeptGrads) -> None:
    """Free every gradient, except the kept embedding buffers: zeroed in place, ready for the next sparse rows."""
    optimizer.zero_grad(set_to_none=True)
    for p, buffer in kept:
        p.grad = buffer.zero_()
