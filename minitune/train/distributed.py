"""Training on several processes with torch.distributed: one process per device, started by torchrun.

    torchrun --nproc-per-node 2 run.py --task humor --model minilm            # 2 GPUs (or 2 CPU processes)

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them nothing here does anything
and a run is the single-process run it always was. With them:

- `setup` joins the process group (NCCL on CUDA, gloo on CPU) with a bounded timeout, after the run's inputs were
  checked, so a user error ends every rank before any collective and is printed once (by rank 0).
- `ShardedSampler` deals the single-process run's global batches: each global micro-batch is cut into `world`
  contiguous shards (neighbours in a length-sorted batch have similar lengths, so shards stay padding-light), one per
  rank. Every rank runs the same number of micro-batches and optimizer steps, and each example is seen once per
  epoch. A global batch smaller than the world leaves some ranks an empty shard: they run one example with weight 0,
  so every rank still joins the gradient all-reduce.
- `window_shares` is the loop's accumulation rule with the global window: a micro-batch weighs
  world * n_micro / n_window_global, because DDP averages gradients over ranks. The summed gradient then equals the
  single-process gradient of the global window's mean loss (up to float summation order).
- `gathered_scores` shards evaluation across ranks and gathers the scores, so metrics, thresholds and early stopping
  are identical on every rank.
- Rank 0 alone writes (`is_main`); checkpoints carry every rank's RNG state (`gather_rng`).

DDP and FSDP2 wrapping, the gradient-sync context and sharded checkpoints are in train/parallel.py.

Not exact: dropout draws its masks from each rank's own stream, so with dropout on, an N-process run follows a
different (equally valid) random path than one process; with dropout off (or in eval) it matches within fp32
summation order.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from minitune.errors import CheckpointError, ConfigError


def env_world_size() -> int:
    """Processes in the run, from torchrun's environment (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """The process that writes outputs and prints: rank 0 (read from the environment before the group exists, so a
    user error found before `setup` is printed once too)."""
    return rank() == 0


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def check_launch(fsdp: str | None, cpu_offload: bool, device: torch.device) -> None:
    """Before anything runs: FSDP shards across processes, so it needs torchrun's; its CPU offload needs GPUs."""
    if fsdp and env_world_size() == 1:
        raise ConfigError(
            f"`fsdp` {fsdp} shards the model across processes: start the run with torchrun --nproc-per-node N"
        )
    if cpu_offload and device.type != "cuda":
        raise ConfigError("`fsdp_cpu_offload` moves GPU memory to the CPU: it needs `device` cuda")


def setup(device: torch.device, timeout_s: float = 600.0) -> DistContext:
    """Join torchrun's process group; a no-op context without torchrun. On CUDA each process takes the GPU of its
    LOCAL_RANK and talks NCCL; on CPU, gloo. A collective waiting longer than `timeout_s` (a peer hung or died)
    raises instead of hanging."""
    if env_world_size() == 1:
        return DistContext(0, 1, 0, device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible: "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
    return DistContext(dist.get_rank(), dist.get_world_size(), local, device)


def teardown(clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first waits for the others (no collective is still
    under way anywhere) and the wrappers that hold the group in reference cycles (DDP) are freed, so the group is
    destroyed while the interpreter is fully alive. After an error the ranks do not wait: another may be gone."""
    if not dist.is_initialized():
        return
    gc.collect()
    if clean:
        dist.barrier()
    dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a torchrun process without interpreter finalization, its output flushed first. Gloo's worker threads can
    outlive destroy_process_group; one that releases a tensor with Python references while the interpreter is torn
    down takes the GIL, which aborts the process ("terminate called without an active exception", the exit race
    of pytorch/pytorch#179291) after the run has finished and written everything. Every file minitune writes is
    closed (and renamed into place) by now, so skipping finalization loses nothing."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------- batching


class Shard(list):
    """One rank's part of a global micro-batch: its example indices, the global batch's size, and whether the shard
    is a weight-0 stand-in (the global batch had fewer examples than there are ranks)."""

    def __init__(self, indices, global_size: int, empty: bool = False):
        super().__init__(indices)
        self.global_size, self.empty = global_size, empty


def shard_of(batch: list[int], rank: int, world: int) -> Shard:
    """Contiguous shard `rank` of `world` (sizes differ by at most one; the first shards take the extra examples)."""
    parts = np.array_split(np.asarray(batch, dtype=np.int64), world)
    part = parts[rank].tolist()
    if not part:  # a stand-in, weighted 0: every rank must run backward for the gradient all-reduce
        return Shard(batch[:1], len(batch), empty=True)
    return Shard(part, len(batch))


class ShardedSampler:
    """A batching sampler (random, bucketed or token-budget) whose global batches are dealt across ranks: iterating
    yields this rank's shard of each global batch. Epochs, lengths and the resume position are the wrapped
    sampler's, identical on every rank."""

    def __init__(self, sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, rank, world

    def __iter__(self):
        for batch in self.sampler:
            yield shard_of(batch, self.rank, self.world)

    def __len__(self) -> int:
        return len(self.sampler)

    def num_batches(self, epoch: int) -> int:
        return self.sampler.num_batches(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def shard_sampler(sampler):
    """The sampler itself in a single process, else this rank's ShardedSampler."""
    return sampler if world_size() == 1 else ShardedSampler(sampler, rank(), world_size())


def window_shares(window: list[list[int]]) -> list[float]:
    """Each micro-batch's loss weight in an accumulation window: n_micro / n_window in one process; under DDP,
    which averages gradients over ranks, world * n_micro / n_window_global, and 0 for a stand-in shard."""
    world = world_size()
    n_global = sum(getattr(b, "global_size", len(b)) for b in window)
    return [0.0 if getattr(b, "empty", False) else world * len(b) / n_global for b in window]


def reduce_window(loss: float, tokens: int) -> tuple[float, int]:
    """The global window's loss (each rank holds world x its part) and real tokens, the same on every rank."""
    if world_size() == 1:
        return loss, tokens
    t = torch.tensor([loss, float(tokens)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]) / world_size(), int(t[1])


def average_grads(params: list[torch.Tensor]) -> None:
    """The mean of each parameter's gradient over ranks, in place: for parameters outside the DDP-wrapped model (a
    loss's learned weights), which DDP does not reduce."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a step skipped for a non-finite loss is skipped everywhere)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ----------------------------------------------------------------------------------------------- evaluation


def gathered_scores(score_fn, features: list, every_rank: bool = False) -> np.ndarray:
    """score_fn(features) -> (N, C) scores, computed over rank-strided shards and gathered back into the features'
    order on every rank. `every_rank`: each rank scores everything (under FSDP every forward is a collective, so
    the ranks must run the same batches)."""
    world = world_size()
    if world == 1 or every_rank:
        return score_fn(features)
    mine = score_fn(features[rank() :: world]) if len(features) > rank() else None
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    out = np.empty((len(features), *next(p for p in parts if p is not None).shape[1:]), dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        if p is not None:
            out[r::world] = p
    return out


def gathered_rows(rows_fn, items: list) -> list:
    """rows_fn(items) -> one result per item (any picklable object), computed over rank-strided shards and gathered
    back into the items' order on every rank (generated answers: scores with their texts)."""
    world = world_size()
    if world == 1:
        return rows_fn(items)
    mine = rows_fn(items[rank() :: world]) if len(items) > rank() else []
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    out: list = [None] * len(items)
    for r, p in enumerate(parts):
        out[r::world] = p
    return out


# ----------------------------------------------------------------------------------------------- checkpoints


class Silent:
    """metrics.jsonl on ranks other than 0: they log nothing (rank 0 logs the global figures)."""

    def write(self, **record) -> None:
        pass

    def close(self) -> None:
        pass


def gather_rng(state: dict) -> list[dict] | None:
    """Every rank's RNG state (this rank's is `state`), on every rank; None in one process."""
    if world_size() == 1:
        return None
    states: list = [None] * world_size()
    dist.all_gather_object(states, state)
    return states


def world_signature(signature: dict) -> dict:
    """A resume signature that records the world size of a multi-process run (single-process signatures are
    unchanged, so their checkpoints stay resumable)."""
    n = env_world_size()
    return signature | {"world_size": n} if n > 1 else signature


def check_world_size(saved_signature: Path) -> None:
    """`resume` with another number of processes would deal other shards and lose the ranks' RNG streams."""
    if not saved_signature.is_file():
        return
    try:
        saved = int(json.loads(saved_signature.read_text(encoding="utf-8")).get("world_size", 1))
    except (OSError, ValueError):
        return  # check_resumable reports an unreadable signature
    now = env_world_size()
    if saved != now:
        raise CheckpointError(
            f"`resume` {saved_signature.parent.parent}: the checkpoint was written by {saved} process(es), this run "
            f"has {now}; resume with the same world size (torchrun --nproc-per-node {saved}, or no torchrun for 1)"
        )
