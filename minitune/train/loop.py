"""The one training loop: accumulation, mixed precision, loss scaling, clipping, schedule, evaluation, early
stopping, best-model keeping and resumable checkpoints. No callbacks: every step is written out below.

Gradient accumulation equals the large-batch update: each micro-batch's mean loss is weighted by its share of the
examples in the accumulation window (n_micro / n_window), so 4 micro-batches of 8 give exactly the gradient of one
batch of 32 (up to float summation order), whatever their padded lengths.

A non-finite loss or gradient, in any precision, is counted and its step skipped, never applied; with fp16 the
dynamic loss scaler also backs off.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .amp import DynamicLossScaler, autocast_context
from .checkpoint import load_checkpoint, save_checkpoint, trainable_state
from .optim import build_optimizer, build_scheduler


@dataclass
class LoopState:
    step: int = 0  # optimizer steps applied
    epoch: int = 0  # epochs completed
    best: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    skipped_steps: int = 0
    tokens: int = 0
    stopped_early: bool = False


@dataclass
class TrainData:
    features: Sequence[dict]
    sampler: object  # a batching sampler: set_epoch, __iter__ -> list[int], __len__, state_dict
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class MetricsLog:
    """metrics.jsonl: one JSON object per line, flushed so a crash loses nothing already logged."""

    def __init__(self, path: Path, append: bool):
        self.file = open(path, "a" if append else "w", encoding="utf-8")

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def forward_loss(model, loss_fn, batch: dict, precision: str, device: torch.device):
    """Mean loss of one micro-batch (in fp32) and its number of real tokens."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with autocast_context(precision, device.type):
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    return loss_fn(logits.float(), batch["labels"]), int(batch["attention_mask"].sum())


def accumulate_gradients(model, loss_fn, micro_batches: list[dict], precision: str, device: torch.device,
                         scaler: DynamicLossScaler) -> tuple[float, int]:
    """Backward over one accumulation window; the summed gradient equals the gradient of the window's mean loss.

    Each micro-batch's mean loss is weighted by its share of the window's examples, so unequal micro-batches
    (the last one of an epoch, token-budget batches) are weighted correctly. Returns (window loss, real tokens).
    """
    n = sum(len(b["labels"]) for b in micro_batches)
    loss, tokens = 0.0, 0
    for batch in micro_batches:
        share = len(batch["labels"]) / n
        micro, t = forward_loss(model, loss_fn, batch, precision, device)
        scaler.scale(micro * share).backward()
        loss, tokens = loss + micro.item() * share, tokens + t
    return loss, tokens


def fit(model: nn.Module, loss_fn: nn.Module, data: TrainData, evaluate: Callable[[nn.Module], dict], cfg,
        out_dir: Path, device: torch.device) -> LoopState:
    """Train `model` in place; at the end it holds the best weights seen by `evaluate` (on cfg.metric)."""
    out_dir = Path(out_dir)
    steps_per_epoch = math.ceil(len(data.sampler) / cfg.grad_accum)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.llrd)
    scheduler = build_scheduler(optimizer, cfg.scheduler, total, int(cfg.warmup_ratio * total))
    scaler = DynamicLossScaler(enabled=cfg.precision == "fp16")
    params = [p for p in model.parameters() if p.requires_grad]
    state = LoopState()
    if cfg.resume:
        state = LoopState(**load_checkpoint(out_dir / "checkpoint", model, optimizer, scheduler, scaler,
                                            data.sampler))
    log = MetricsLog(out_dir / "metrics.jsonl", append=bool(cfg.resume))
    bar = tqdm(total=total, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    window: list[list[int]] = []
    t0, tokens0 = time.perf_counter(), state.tokens

    def step_window() -> None:
        nonlocal t0, tokens0
        model.train()
        loss, tokens = accumulate_gradients(model, loss_fn, [data.collate([data.features[i] for i in idx])
                                                             for idx in window], cfg.precision, device, scaler)
        found_inf = scaler.unscale_(optimizer) or not math.isfinite(loss)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad if cfg.clip_grad > 0 else float("inf"))
        applied = not found_inf and scaler.step(optimizer)
        scaler.update()  # backs off after an inf (fp16), grows after clean steps
        optimizer.zero_grad(set_to_none=True)
        window.clear()
        state.tokens += tokens
        if not applied:
            state.skipped_steps += 1
            return
        scheduler.step()
        state.step += 1
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == total:
            now = time.perf_counter()
            tps = (state.tokens - tokens0) / max(now - t0, 1e-9)
            t0, tokens0 = now, state.tokens
            lr = optimizer.param_groups[-1]["lr"]
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
            log.write(type="train", step=state.step, epoch=state.epoch, loss=loss, lr=lr, grad_norm=float(norm),
                      tokens_per_s=tps, peak_mem_bytes=peak_memory_bytes(device), skipped_steps=state.skipped_steps)

    def evaluate_and_keep() -> None:
        metrics = evaluate(model)
        value = metrics[cfg.metric]
        improved = state.best is None or value > state.best
        if improved:
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            _save_best(model, out_dir)
        else:
            state.bad_evals += 1
        if getattr(scheduler, "needs_metric", False):
            scheduler.step(metric=value)
        log.write(type="eval", step=state.step, epoch=state.epoch, improved=improved, **metrics)
        tqdm.write(f"eval step {state.step}: {cfg.metric}={value:.4f}" + (" (best)" if improved else ""))
        if cfg.patience and state.bad_evals >= cfg.patience:
            state.stopped_early = True

    def checkpoint() -> None:
        save_checkpoint(out_dir / "checkpoint", model, optimizer, scheduler, scaler, data.sampler, asdict(state))

    try:
        for epoch in range(state.epoch, epochs):
            if state.step >= total or state.stopped_early:
                break
            data.sampler.set_epoch(epoch)
            remaining = len(data.sampler) - data.sampler.state_dict()["batches_done"]
            for i, idx in enumerate(data.sampler):  # lazily, so the sampler's position is the consumed position
                window.append(idx)
                if len(window) < cfg.grad_accum and i < remaining - 1:
                    continue
                before = state.step
                step_window()
                if cfg.eval_every and state.step > before and state.step % cfg.eval_every == 0:
                    evaluate_and_keep()
                    checkpoint()
                if state.step >= total or state.stopped_early:
                    break
            state.epoch = epoch + 1
            if not cfg.eval_every:
                evaluate_and_keep()
            checkpoint()
        if state.best is None or (cfg.eval_every and state.step % cfg.eval_every):
            evaluate_and_keep()  # the last steps were not evaluated yet
    finally:
        bar.close()
        log.close()
    _restore_best(model, out_dir)
    return state


def _save_best(model: nn.Module, out_dir: Path) -> None:
    from safetensors.torch import save_file

    from ..modeling import _atomic_write

    state = trainable_state(model)
    _atomic_write(out_dir / "best.safetensors", lambda p: save_file(state, str(p)))


def _restore_best(model: nn.Module, out_dir: Path) -> None:
    from safetensors.torch import load_file

    path = out_dir / "best.safetensors"
    if path.is_file():
        own = model.state_dict()
        with torch.no_grad():
            for k, v in load_file(str(path)).items():
                own[k].copy_(v)
