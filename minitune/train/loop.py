"""The one training loop: accumulation, mixed precision, loss scaling, clipping, schedule, evaluation, early
stopping, best-model keeping and resumable checkpoints. No callbacks: every step is written out below.

One optimizer step's gradient, over its accumulation window of micro-batches (and their adversarial passes), is
train/gradients.py's.

A non-finite loss or gradient, in any precision, is counted and its step skipped (fp16: the loss scaler backs off).

Under torchrun the same loop trains one shard of each global batch per process (train/distributed.py) through DDP
or FSDP2 (train/parallel.py): micro-batch weights, the gradient sync on a window's last micro-batch, the window
loss and stop requests agreed across ranks, rank 0 alone logging and writing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from minitune.checkpoints.atomic import atomic_write
from minitune.config.sections import DistributedSettings, LoopSettings
from minitune.train.adversarial import Adversary
from minitune.train.amp import DynamicLossScaler, choose_precision
from minitune.train.checkpoint import load_checkpoint, rng_state, save_checkpoint
from minitune.train.distributed import (
    Silent,
    any_rank,
    average_grads,
    barrier,
    gather_rng,
    is_main,
    rank,
    reduce_window,
    window_shares,
    world_size,
)
from minitune.train.embedding_grads import sparse_embedding_grads, zero_grads
from minitune.train.gradients import accumulate_gradients
from minitune.train.interrupt import StopRequest, TrainingInterrupted
from minitune.train.loss_weighting import AdaptiveLoss
from minitune.train.metrics_log import metrics_log, peak_memory_bytes
from minitune.train.optim import build_optimizer, build_scheduler
from minitune.train.parallel import (
    full_trainable_state,
    is_sharded,
    load_full_state,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    wrap_model,
)


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
    total_steps: int = 0  # optimizer steps the run plans
    last_eval_step: int = -1  # the step the last evaluation saw
    best_epoch: int = 0  # the epoch (from 1) under way at the best evaluation
    start: dict | None = None  # evaluate()'s dict before the first step; saved with checkpoints, never re-evaluated
    window_loss: float = 0.0  # the steps' losses since the last log, summed (the log is their mean, as the Trainer's)
    window_steps: int = 0
    window_adv_loss: float = 0.0  # adversarial training: the perturbed losses of the same steps, summed
    evals: int = 0  # evaluations after training steps (the score before training is not one)
    pruned: str | None = None  # why a search's pruner stopped the run (experiments/search.py), if it did
    loss_log_vars: list | None = None  # loss_weighting uncertainty: the learned log-variances (train/loss_weighting.py)


@dataclass
class TrainData:
    features: Sequence[dict]
    sampler: object  # a batching sampler: set_epoch, __iter__ -> list[int], __len__, state_dict
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]


class Loop:
    """What one `fit` owns: optimizer, schedule, scaler, logs and the loop state, with one method per phase."""

    def __init__(self, model, loss_fn, data: TrainData, evaluate, cfg: LoopSettings, out_dir: Path, device, run: dict):
        self.model, self.loss_fn, self.data, self.evaluate, self.cfg = model, loss_fn, data, evaluate, cfg
        self.out_dir, self.device, self.resume, self.signature = Path(out_dir), device, run["resume"], run["signature"]
        self.judge = run["judge"]
        self.total, self.epochs = self._plan(cfg)
        dist = run["distributed"]  # DDP, or FSDP2 sharding in place (so before the optimizer sees the parameters)
        self.train_model = wrap_model(model, device, dist.fsdp, cfg.precision, dist.fsdp_cpu_offload)
        self.sharded = is_sharded(self.train_model)
        # a summed loss's adaptive weights (train/loss_weighting.py), in an AdamW group of their own when learned
        modules = loss_fn.modules() if isinstance(loss_fn, nn.Module) else ()
        self.weighting = next((m for m in modules if isinstance(m, AdaptiveLoss)), None)
        self.loss_params = [p for p in self.weighting.parameters() if p.requires_grad] if self.weighting else []
        group = {"name": "loss_weights", "params": self.loss_params, "param_names": ["loss.log_vars"]}
        group["weight_decay"] = 0.0
        extra = [group | {"lr": self.weighting.lr}] if self.loss_params else []
        self.optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.llrd, extra_groups=extra)
        self.adversary = Adversary(model, cfg.adversary) if cfg.adversary.adversarial else None
        # Warmup rounds up, as the reference does: a short run still gets a warmup step.
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * self.total)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, self.total, warmup)
        self.scaler = DynamicLossScaler(enabled=cfg.precision == "fp16")
        self.params = [p for p in model.parameters() if p.requires_grad]
        # CPU only: CUDA's caching allocator has no page faults to save, and its sparse add is not deterministic.
        self.kept_grads = sparse_embedding_grads(model) if device.type == "cpu" and world_size() == 1 else []
        self.state = self._resumed_state() if self.resume else LoopState()
        if self.weighting is not None and self.state.loss_log_vars is not None:
            self.weighting.load_state(self.state.loss_log_vars)
        self.state.total_steps = self.total
        resume_step = self.state.step if self.resume else None
        # distributed: rank 0 alone writes metrics.jsonl (and TensorBoard events or MLflow metrics)
        self.log = metrics_log(self.out_dir, resume_step, cfg.report_to) if is_main() else Silent()
        bar = dict(desc="train", unit="step", dynamic_ncols=True, disable=not is_main())
        self.bar = tqdm(total=self.total, initial=self.state.step, **bar)
        self.t0, self.tokens0 = time.perf_counter(), self.state.tokens
        self.epoch = self.state.epoch  # the epoch under way (0-based); logs count epochs from 1
        self.saved_step = -1  # the step of the last checkpoint written
        self.train_loss = math.nan  # the last logged training loss, printed beside the eval loss
        self.payload, self.payload_kept = None, False  # evaluate()'s payload for the best weights of this process

    def _resumed_state(self) -> LoopState:
        load = load_sharded_checkpoint if self.sharded else load_checkpoint  # FSDP: every rank its shards
        return LoopState(**load(self.out_dir / "checkpoint", *self._kept(), self.signature, rank()))

    def _kept(self) -> tuple:
        """What a checkpoint holds besides the loop's state: model, optimizer, schedule, loss scaler, sampler."""
        return self.model, self.optimizer, self.scheduler, self.scaler, self.data.sampler

    def _plan(self, cfg: LoopSettings) -> tuple[int, int]:
        """(optimizer steps, epochs) of the run. Each epoch is counted: token-budget batches vary in number from
        one epoch to the next, and the schedule must end where training ends."""
        per_epoch = lambda e: math.ceil(self.data.sampler.num_batches(e) / cfg.grad_accum)  # noqa: E731
        if not cfg.max_steps:
            return sum(per_epoch(e) for e in range(cfg.epochs)), cfg.epochs
        steps, epochs = 0, 0
        while steps < cfg.max_steps:
            steps, epochs = steps + per_epoch(epochs), epochs + 1
        return cfg.max_steps, epochs

    def done(self) -> bool:
        return self.state.step >= self.total or self.state.stopped_early

    def step(self, window: list[list[int]]) -> bool:
        """One optimizer step over an accumulation window of batches; False when it was skipped (non-finite)."""
        self.train_model.train()
        batches = [self.data.collate([self.data.features[i] for i in idx]) for idx in window]
        if self.weighting is not None:
            self.weighting.set_progress(self.state.step / max(self.total, 1))
        adversary = self.adversary if self.adversary and self.adversary.active(self.epoch) else None
        how = (self.cfg.precision, self.device, self.scaler, window_shares(window), adversary)
        loss, tokens = accumulate_gradients(self.train_model, self.loss_fn, batches, *how)
        loss, tokens = reduce_window(loss, tokens)  # distributed: the global window's, on every rank
        average_grads(self.loss_params)  # distributed: DDP reduces the model's gradients, not the loss's
        found_inf = any_rank(self.scaler.unscale_(self.optimizer) or not math.isfinite(loss))
        clip = self.cfg.clip_grad if self.cfg.clip_grad > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        lr = self.optimizer.param_groups[-1]["lr"]  # the lr this step applies (the head's: the peak under LLRD)
        applied = not found_inf and self.scaler.step(self.optimizer)
        self.scaler.update()  # backs off after an inf (fp16), grows after clean steps
        zero_grads(self.optimizer, self.kept_grads)
        self.state.tokens += tokens
        if not applied:
            self.state.skipped_steps += 1
            return False
        self.scheduler.step()
        self.state.step += 1
        self.state.window_loss, self.state.window_steps = self.state.window_loss + loss, self.state.window_steps + 1
        if adversary is not None:  # distributed: the global window's, as the clean loss
            self.state.window_adv_loss += reduce_window(adversary.loss, 0)[0]
        self.bar.update(1)
        if self.state.step % self.cfg.log_every == 0 or self.state.step == self.total:
            extra = {"adv_loss": self.state.window_adv_loss / self.state.window_steps} if adversary else {}
            self.log_step(float(norm), lr, extra | (self.weighting.logged() if self.weighting else {}))
        return True

    def log_step(self, grad_norm: float, lr: float, extra: dict) -> None:
        """One train record: the mean loss of the steps since the last one (the logging window, kept across a
        resume), and this step's learning rate and gradient norm; with adversarial training the mean perturbed loss of
        the same steps, with adaptive loss weights this step's weights."""
        loss = self.state.window_loss / self.state.window_steps
        self.state.window_loss, self.state.window_steps, self.state.window_adv_loss = 0.0, 0, 0.0
        now = time.perf_counter()
        tps = (self.state.tokens - self.tokens0) / max(now - self.t0, 1e-9)
        self.t0, self.tokens0 = now, self.state.tokens
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.train_loss = loss
        self.log.write(
            type="train",
            step=self.state.step,
            epoch=self.epoch + 1,
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            tokens_per_s=tps,
            peak_mem_bytes=peak_memory_bytes(self.device),
            skipped_steps=self.state.skipped_steps,
            **extra,
        )

    def evaluate_and_keep(self) -> None:
        """Evaluate; keep the weights if they are the best so far; count toward early stopping."""
        state, metric = self.state, self.cfg.metric
        metrics, payload = self.evaluate(self.model)
        state.last_eval_step, state.evals = state.step, state.evals + 1
        value = metrics[metric]
        improved = state.best is None or value > state.best
        if improved:
            state.best, state.best_step, state.best_epoch, state.bad_evals = value, state.step, self.epoch + 1, 0
            _save_best(self.model, self.out_dir)
            self.payload, self.payload_kept = payload, True
        else:
            state.bad_evals += 1
        if getattr(self.scheduler, "needs_metric", False):
            self.scheduler.step(metric=value)
        self.log.write(type="eval", step=state.step, epoch=self.epoch + 1, improved=improved, **metrics)
        losses = f", loss {metrics['loss']:.4f} (train {self.train_loss:.4f})" if "loss" in metrics else ""
        say = tqdm.write if is_main() else lambda _: None  # distributed: rank 0 prints
        say(f"eval step {state.step}: {metric}={value:.4f}{losses}" + (" (best)" if improved else ""))
        if self.cfg.patience and state.bad_evals >= self.cfg.patience and not self.done():
            state.stopped_early = True
            say(
                f"early stop at step {state.step} of {self.total}: no improvement in {self.cfg.patience} evaluations "
                f"(patience counts evaluations); best {metric}={state.best:.4f} at step {state.best_step}"
            )
        # A search's pruner sees every evaluation (its k-th, with the score) and may stop a losing run; the run then
        # ends as an early stop does, with its best weights, report and results.
        if self.judge is not None:  # distributed: rank 0 asks, every rank stops with it
            reason = self.judge(state.evals, state.step, value) if is_main() else None
            if any_rank(reason is not None) and not self.done():
                state.stopped_early, state.pruned = True, reason or "pruned (rank 0's judge)"
                say(f"pruned at step {state.step} of {self.total}: {reason}")

    def evaluate_start(self) -> None:
        """The untrained model's score, recorded as step 0 (`before_training`); not a candidate for the best weights
        (its payload is not kept)."""
        metrics, _ = self.evaluate(self.model)
        self.state.start = metrics
        self.log.write(type="eval", step=0, epoch=0, before_training=True, **metrics)
        say = tqdm.write if is_main() else lambda _: None
        say(f"before training: {self.cfg.metric}={metrics[self.cfg.metric]:.4f}")

    def checkpoint(self) -> None:
        if not self.cfg.checkpoint:
            return
        self.saved_step = self.state.step
        if self.weighting is not None:
            self.state.loss_log_vars = self.weighting.state()
        rngs = gather_rng(rng_state())  # distributed: every rank's RNG, saved by rank 0
        if not (is_main() or self.sharded):
            return
        (save_sharded_checkpoint if self.sharded else save_checkpoint)(
            self.out_dir / "checkpoint",
            *self._kept(),
            asdict(self.state),
            self.signature,
            keep=self.cfg.keep_checkpoints or 1,
            finished=self.done(),
            rank_rngs=rngs,
        )

    def stop(self) -> None:
        """Checkpoint the steps trained so far and stop (a Ctrl-C or SIGTERM asked for it)."""
        if self.saved_step != self.state.step:
            self.checkpoint()
        written = str(self.out_dir / "checkpoint") if self.cfg.checkpoint and self.state.step else None
        raise TrainingInterrupted(self.state.step, written)

    def close(self) -> None:
        self.bar.close()
        self.log.close()


def accumulation_windows(sampler, accum: int) -> Iterator[tuple[list[list[int]], bool]]:
    """The rest of the sampler's epoch as windows of `accum` batches (one optimizer step each; the epoch's last window
    may be shorter), each with whether it ends the epoch. Batches are drawn lazily, so the sampler's position, which
    checkpoints save, is always the consumed position."""
    remaining = len(sampler) - sampler.state_dict()["batches_done"]
    window: list[list[int]] = []
    for i, idx in enumerate(sampler):
        window.append(idx)
        last = i == remaining - 1
        if len(window) == accum or last:
            yield window, last
            window = []


@dataclass
class Fitted:
    """What `fit` returns: the loop's state (its `start` is the score before training) and the payload that
    `evaluate` returned for the best weights, which the model holds."""

    state: LoopState
    payload: object


def fit(
    model: nn.Module,
    loss_fn: nn.Module,
    data: TrainData,
    evaluate: Callable[[nn.Module], tuple[dict, object]],
    cfg: LoopSettings,
    out_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    signature: dict | None = None,
    distributed: DistributedSettings | None = None,
    judge: Callable[[int, int, float], str | None] | None = None,
    score_start: bool = True,
) -> Fitted:
    """Train `model` in place; at the end it holds the best weights seen by `evaluate` (on cfg.metric).

    `evaluate(model)` returns (metrics, payload): the metrics select and are logged; the best evaluation's payload
    (e.g. the dev probabilities) comes back in the result. Evaluation (and a checkpoint) comes after every epoch, or
    every `cfg.eval_every` steps, and (`score_start`) once before the first step: the starting score, in state.start
    and as step 0 of metrics.jsonl, never the best. `resume` continues from out_dir/checkpoint (its settings must equal
    `signature`), and evaluates the restored best weights again if their evaluation was in an earlier process.
    `judge(k, step, value)`, a search's pruner, sees the k-th evaluation and returns why to stop the run, or None."""
    cfg = replace(cfg, precision=choose_precision(cfg.precision, device)[0])  # auto, once (a run: done already)
    run = dict(resume=resume, signature=signature or {}, distributed=distributed or DistributedSettings(), judge=judge)
    loop = Loop(model, loss_fn, data, evaluate, cfg, out_dir, device, run)
    stop = StopRequest()
    with stop:
        try:
            if score_start and loop.state.start is None and loop.state.step == 0 and not resume and loop.total:
                loop.evaluate_start()
            _train_epochs(loop, stop)
            if loop.state.best is None or loop.state.last_eval_step != loop.state.step:
                loop.evaluate_and_keep()  # the last steps were not evaluated yet (eval_every, or a stop there)
        finally:
            loop.close()
    barrier()  # distributed: rank 0 has written best.safetensors
    _restore_best(model, loop.out_dir)
    payload = loop.payload if loop.payload_kept else evaluate(model)[1]
    return Fitted(loop.state, payload)


def _train_epochs(loop: Loop, stop: StopRequest) -> None:
    """The epochs left: each window of micro-batches one optimizer step, then evaluation and checkpoints as the
    settings ask, stopping early, at max_steps or when Ctrl-C asked."""
    cfg, state, sampler = loop.cfg, loop.state, loop.data.sampler
    for epoch in range(state.epoch, loop.epochs):
        if loop.done():
            break
        loop.epoch = epoch
        sampler.set_epoch(epoch)
        for window, ends_epoch in accumulation_windows(sampler, cfg.grad_accum):
            applied = loop.step(window)
            if cfg.eval_every and applied and state.step % cfg.eval_every == 0:
                loop.evaluate_and_keep()
                loop.checkpoint()
            elif cfg.save_every and applied and state.step % cfg.save_every == 0:
                loop.checkpoint()
            if any_rank(stop.requested):  # distributed: every rank stops at the same step
                loop.stop()
            if loop.done() and not ends_epoch:
                break
        else:  # the epoch's every batch was trained on
            state.epoch = epoch + 1  # epochs completed
        if not cfg.eval_every:
            loop.evaluate_and_keep()
        loop.checkpoint()
        if any_rank(stop.requested):
            loop.stop()


def loop_summary(cfg: LoopSettings, state: LoopState, fresh_head: bool, t0: float) -> dict:
    """The loop's state as a report reads it, with the run's time since `t0`. A fresh head's before-training score
    is chance level; with no optimizer step (`epochs` 0) the one evaluation is the score before (and without)
    training."""
    summary = asdict(state) | {"metric": cfg.metric, "patience": cfg.patience, "start_is_chance": fresh_head}
    if state.total_steps == 0:
        summary |= {"start": {cfg.metric: state.best}, "best": None, "best_epoch": 0}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def _save_best(model: nn.Module, out_dir: Path) -> None:
    state = full_trainable_state(model)  # FSDP: gathered onto rank 0, which alone writes
    if is_main():
        atomic_write(out_dir / "best.safetensors", lambda p: save_file(state, p))


def _restore_best(model: nn.Module, out_dir: Path) -> None:
    path = out_dir / "best.safetensors"
    if path.is_file():
        load_full_state(model, path)
