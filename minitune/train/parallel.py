"""The module that trains under torch.distributed: DDP around the model, or the model sharded in place by FSDP2.

DDP keeps a whole replica per rank and all-reduces gradients. FSDP2 (`torch.distributed.fsdp.fully_shard`) shards
each transformer block's parameters, gradients and optimizer state over the ranks:
- `--fsdp grad-op` (ZeRO-2): parameters stay gathered from a block's forward to its backward
  (reshard_after_forward=False): one all-gather per block and step, more memory.
- `--fsdp full` (ZeRO-3): parameters are resharded after each block's forward and gathered again in backward.
With `--precision bf16` the policy computes in bf16 parameters and reduces gradients in fp32; the optimizer keeps
fp32 shards. `--fsdp-cpu-offload` keeps shards, gradients and optimizer state in CPU memory (GPUs only).

FSDP checkpoints go through torch.distributed.checkpoint: every rank writes its shards of the model and the
optimizer into checkpoint/shards/, rank 0 the rest (schedule, scaler, sampler, each rank's RNG, loop state), so a
resume reads them back onto the same world size. The best weights and the final model/ are consolidated: full
tensors gathered on rank 0, which holds an unsharded CPU copy of the model (`consolidated`) to save them in the
Hub layout.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from minitune.errors import CheckpointError, ConfigError
from minitune.train.checkpoint import (
    PROGRESS,
    SIGNATURE,
    STATE,
    check_resumable,
    rng_state,
    set_rng_state,
    trainable_state,
)
from minitune.train.distributed import barrier, is_main, world_size

SHARDS = "shards"
# torch.distributed.fsdp and torch.distributed.checkpoint are imported where they are used: together they cost
# about 1.3 s at every start-up (python -X importtime), and only --fsdp runs need them.


def _whole_on_rank0():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only


def is_sharded(model: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported yet: nothing can have been sharded
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def wrap_model(
    model: nn.Module, device: torch.device, fsdp: str | None = None, precision: str = "fp32", cpu_offload: bool = False
) -> nn.Module:
    """The module that trains: the model itself in one process, DDP around it under torchrun, or the model itself
    sharded in place by FSDP2 when `fsdp` is given (so build the optimizer after this)."""
    if fsdp:
        return shard_model(model, fsdp, device, precision, cpu_offload)
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units FSDP gathers one at a time: the members of every ModuleList (transformer layers)."""
    return [m for ml in model.modules() if isinstance(ml, nn.ModuleList) for m in ml]


def shard_model(model: nn.Module, mode: str, device: torch.device, precision: str, cpu_offload: bool) -> nn.Module:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if cpu_offload and device.type != "cuda":  # the runner checks it first; here for callers of fit
        raise ConfigError("`fsdp_cpu_offload` moves GPU memory to the CPU: it needs `device` cuda")
    if is_main():  # the unsharded copy rank 0 fills with the gathered weights to save model/ (not a submodule)
        model.__dict__["consolidation_target"] = copy.deepcopy(model).cpu()
    kw = dict(
        reshard_after_forward=mode == "full",
        mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy(),
        offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    )
    for block in blocks(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def sync_context(model: nn.Module, sync: bool):
    """Gradient reduction only on a window's last micro-batch: DDP's no_sync (around forward and backward), FSDP2's
    set_requires_gradient_sync."""
    if is_sharded(model):
        return _gradient_sync(model, sync)
    if not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return nullcontext()


@contextmanager
def _gradient_sync(model, sync: bool):
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """trainable_state; under FSDP gathered from every rank (call it on all of them) and whole on rank 0 only."""
    if not is_sharded(model):
        return trainable_state(model)
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in get_model_state_dict(model, options=_whole_on_rank0()).items() if k in names}


def load_full_state(model: nn.Module, path: Path) -> None:
    """Load whole tensors (best.safetensors) into a model, sharded or not."""
    state = load_file(str(path))
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    own = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def consolidated(model: nn.Module) -> nn.Module:
    """The model to save as model/: itself, or under FSDP rank 0's unsharded copy holding the gathered weights
    (call it on every rank; only rank 0's result is whole)."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_whole_on_rank0())
    target = model.__dict__.get("consolidation_target")
    if target is not None:
        target.load_state_dict(full)
    return target


# ----------------------------------------------------------------------------------------------- checkpoints


def save_sharded_checkpoint(directory, model, optimizer, scheduler, scaler, sampler, loop_state, signature, **opts):
    """save_checkpoint for FSDP (on every rank), with its arguments: model and optimizer shards through
    torch.distributed.checkpoint, the rest from rank 0. Written beside the target and swapped in by rank 0, so a
    crash mid-write keeps the last good checkpoint. Only the newest is kept (`keep` above 1 is not implemented for
    sharded checkpoints)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    finished, rank_rngs = opts.get("finished", False), opts.get("rank_rngs")
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / SHARDS))
    if is_main():
        rest = dict(scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), sampler=sampler.state_dict())
        rest |= dict(rng=rng_state(), rank_rngs=rank_rngs, loop=loop_state, signature=json.dumps(signature))
        torch.save(rest, tmp / STATE)
        (tmp / SIGNATURE).write_text(json.dumps(signature, sort_keys=True) + "\n", encoding="utf-8")
        progress = {"step": loop_state.get("step", 0), "epoch": loop_state.get("epoch", 0), "finished": finished}
        (tmp / PROGRESS).write_text(json.dumps(progress) + "\n", encoding="utf-8")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_sharded_checkpoint(
    directory: Path, model, optimizer, scheduler, scaler, sampler, signature: dict, rank: int
) -> dict:
    """load_checkpoint for FSDP (on every rank): each rank reads its shards back; returns the loop state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    directory = Path(directory)
    check_resumable(directory, signature)
    if not (directory / SHARDS).is_dir():
        raise CheckpointError(f"`resume` {directory.parent}: the checkpoint was not written under `fsdp`")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(directory / SHARDS))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rest = torch.load(directory / STATE, map_location="cpu", weights_only=True)
    scheduler.load_state_dict(rest["scheduler"])
    scaler.load_state_dict(rest["scaler"])
    sampler.load_state_dict(rest["sampler"])
    set_rng_state(rest["rank_rngs"][rank])
    return rest["loop"]
