"""One optimizer step's gradient: the mean loss of its accumulation window of micro-batches, backpropagated.

Gradient accumulation equals the large-batch update: each micro-batch's mean loss is weighted by its share of the
examples in the accumulation window (n_micro / n_window), so 4 micro-batches of 8 give exactly the gradient of one
batch of 32 (up to float summation order), whatever their padded lengths. One exception: class-weighted
cross-entropy normalises each micro-batch by its own sum of weights (as torch does), so under accumulation its
micro-batches are weighted by examples, not by class weight. With adversarial training each micro-batch is trained
on twice, as it is and perturbed (train/adversarial.py), with the same weight.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from minitune.data.long_text import pool_windows
from minitune.train.adversarial import Adversary
from minitune.train.amp import DynamicLossScaler, autocast_context
from minitune.train.parallel import sync_context


def forward_loss(model, loss_fn, batch: dict, precision: str, device: torch.device):
    """Mean loss of one micro-batch (in fp32) and its number of real tokens."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with autocast_context(precision, device.type):
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    logits = pool_windows(logits, batch)  # a long text's windows -> one row per text (data/long_text.py)
    return loss_fn(logits.float(), batch["labels"]), int(batch["attention_mask"].sum())


def accumulate_gradients(
    model,
    loss_fn,
    micro_batches: list[dict],
    precision: str,
    device: torch.device,
    scaler: DynamicLossScaler,
    shares: list[float] | None = None,
    adversary: Adversary | None = None,
) -> tuple[float, int]:
    """Backward over one accumulation window; the summed gradient equals the gradient of the window's mean loss.

    Each micro-batch's mean loss is weighted by its share of the window's examples, so unequal micro-batches
    (the last one of an epoch, token-budget batches) are weighted correctly. Returns (window loss, real tokens).
    `shares` overrides the weights (distributed.window_shares: each rank's share of the global window); gradients
    are all-reduced across ranks on the last micro-batch only. `adversary`: each micro-batch is trained on once more,
    perturbed; its share-weighted perturbed loss is left in `adversary.loss`.
    """
    n = sum(len(b["labels"]) for b in micro_batches)
    shares = shares or [len(b["labels"]) / n for b in micro_batches]
    loss, tokens = 0.0, 0
    each = adversary is not None and adversary.kind != "awp"  # FGM, PGD: each micro-batch attacked after its backward
    if adversary is not None:
        adversary.loss = 0.0
    for i, (batch, share) in enumerate(zip(micro_batches, shares)):
        last = i == len(micro_batches) - 1
        # adversarial training: the clean backward stays local, the perturbed one synchronises (train/adversarial.py)
        with sync_context(model, last and adversary is None), adversary.watch() if each else nullcontext():
            micro, t = forward_loss(model, loss_fn, batch, precision, device)
            scaler.scale(micro * share).backward()
        if each:
            adversary.loss += share * adversary.attack(
                lambda b=batch: forward_loss(model, loss_fn, b, precision, device)[0],
                lambda x, w=share: scaler.scale(x * w),
                sync_context(model, last),
                lambda: sync_context(model, False),
            )
        loss, tokens = loss + micro.item() * share, tokens + (t if share else 0)
    if adversary is not None and not each:  # AWP: the whole window again, under weights moved by its gradient
        with adversary.weights_perturbed():
            for i, (batch, share) in enumerate(zip(micro_batches, shares)):
                with sync_context(model, i == len(micro_batches) - 1):
                    perturbed = forward_loss(model, loss_fn, batch, precision, device)[0]
                    scaler.scale(perturbed * share).backward()
                adversary.loss += share * float(perturbed.detach())
    return loss, tokens
