"""Checkpoints to resume from: model, optimizer, scheduler, loss scaler, every RNG and the sampler position.

Written atomically: everything goes into a fresh temporary directory beside the target, which then replaces the
previous checkpoint by rename, so a crash mid-write leaves the last good checkpoint in place. Weights are
safetensors; the trainer state is read back with `torch.load(weights_only=True)`: it holds only tensors, numbers,
strings, lists and dicts, never pickled objects.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from minitune.errors import CheckpointError

WEIGHTS, STATE, SIGNATURE, PROGRESS = "model.safetensors", "trainer_state.pt", "signature.json", "progress.json"
ROTATED = "{name}-step{step:07d}"  # an older checkpoint kept beside the newest (keep > 1)


def rng_state() -> dict:
    state = {"python": json.dumps(random.getstate()), "numpy": json.dumps(_np_state()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _np_state() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), pos, has_gauss, gauss]


def set_rng_state(state: dict) -> None:
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = json.loads(state["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint must keep: every trainable parameter (all of them for full fine-tuning, adapters for LoRA)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(
    directory: Path,
    model,
    optimizer,
    scheduler,
    scaler,
    sampler,
    loop_state: dict,
    signature: dict,
    keep: int = 1,
    finished: bool = False,
    rank_rngs: list[dict] | None = None,
) -> None:
    """`signature`: the settings a resumed run must share with this one (checked by load_checkpoint). `keep`: how
    many checkpoints to keep; the newest is always `directory`, older ones `<directory>-step<N>` beside it.
    `finished`: the run has nothing left to train (recorded in progress.json). `rank_rngs`: under
    torch.distributed, every rank's RNG state (rank 0 writes the checkpoint)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    old, kept = _displaced(directory, keep, loop_state.get("step", 0))
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        (tmp / SIGNATURE).write_text(json.dumps(signature, sort_keys=True) + "\n", encoding="utf-8")
        progress = {"step": loop_state.get("step", 0), "epoch": loop_state.get("epoch", 0), "finished": finished}
        (tmp / PROGRESS).write_text(json.dumps(progress) + "\n", encoding="utf-8")
        state = _trainer_state(optimizer, scheduler, scaler, sampler, loop_state, signature, rank_rngs)
        torch.save(state, tmp / STATE)
        shutil.rmtree(old, ignore_errors=True)  # left over if an earlier run died between the renames below
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        if not kept:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in rotated(directory)[max(keep - 1, 0) :]:
        shutil.rmtree(stale, ignore_errors=True)


def _displaced(directory: Path, keep: int, step: int) -> tuple[Path, bool]:
    """Where the current checkpoint goes when a new one replaces it, and whether it stays there: renamed
    `<directory>-step<N>` to be kept (keep > 1), else `<directory>.old` until the new one is in place."""
    previous = read_progress(directory) if keep > 1 else None
    if previous and previous["step"] == step:
        previous = None  # the same step saved again (after its evaluation): replace it, do not keep it twice
    if previous:
        return directory.with_name(ROTATED.format(name=directory.name, step=previous["step"])), True
    return directory.with_name(directory.name + ".old"), False


def _trainer_state(optimizer, scheduler, scaler, sampler, loop_state: dict, signature: dict, rank_rngs) -> dict:
    """Everything but the weights, as torch.load(weights_only=True) reads it back: tensors, numbers, strings."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
        **({"rank_rngs": rank_rngs} if rank_rngs else {}),
        "loop": loop_state,
        "signature": json.dumps(signature, sort_keys=True),
    }


def rotated(directory: Path) -> list[Path]:
    """The older checkpoints kept beside `directory`, newest first."""
    directory = Path(directory)
    return sorted(directory.parent.glob(f"{directory.name}-step*"), reverse=True)


def read_progress(directory: Path) -> dict | None:
    """{"step", "epoch", "finished"} of the newest readable checkpoint in `directory`, or None."""
    found = _readable(Path(directory))
    try:
        return json.loads((found / PROGRESS).read_text(encoding="utf-8")) if found else None
    except (OSError, ValueError):
        return None


def _readable(directory: Path) -> Path | None:
    """The checkpoint directory, or what a crash between save_checkpoint's two renames left: its `.old` twin, or
    the newest rotated one."""
    for d in (directory, directory.with_name(directory.name + ".old"), *rotated(directory)[:1]):
        if (d / STATE).is_file() and ((d / WEIGHTS).is_file() or (d / "shards").is_dir()):  # shards: FSDP
            return d
    return None


def _compare_signature(saved: dict, signature: dict, where: Path) -> None:
    changed = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
    if changed:
        was = ", ".join(f"`{k}` {saved.get(k)}" for k in changed)
        raise CheckpointError(f"`resume` {where}: the run was started with {was}; resume with the same settings")


def check_resumable(directory: Path, signature: dict) -> None:
    """Before anything is written: a checkpoint is there and was made with these settings. Cheap (reads only the
    small signature file); load_checkpoint checks again on the real state."""
    where = Path(directory).parent
    found = _readable(Path(directory))
    if found is None:
        raise CheckpointError(f"`resume` {where}: no checkpoint there; start without `resume`")
    if (found / SIGNATURE).is_file():
        try:
            saved = json.loads((found / SIGNATURE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"`resume` {where}: {found / SIGNATURE} cannot be read ({e}); it is corrupt: start without `resume`"
            ) from None
        _compare_signature(saved, signature, where)


def load_checkpoint(
    directory: Path, model, optimizer, scheduler, scaler, sampler, signature: dict, rank: int = 0
) -> dict:
    """Restore everything save_checkpoint wrote (this `rank`'s RNG under torch.distributed); returns the loop state."""
    where = Path(directory).parent
    directory = _readable(Path(directory))
    if directory is None:
        raise CheckpointError(f"`resume` {where}: no checkpoint there; start without `resume`")
    try:
        weights = load_file(str(directory / WEIGHTS))
        state = torch.load(directory / STATE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"`resume` {where}: the checkpoint cannot be read ({type(e).__name__}: {e}); "
            "it is corrupt: start without `resume`"
        ) from None
    _compare_signature(json.loads(state.get("signature", "{}")), signature, where)
    own = model.state_dict()
    if set(weights) != {k for k, p in model.named_parameters() if p.requires_grad} or any(
        own[k].shape != v.shape for k, v in weights.items()
    ):
        raise CheckpointError(
            f"`resume` {where}: the checkpoint's weights do not fit this model; resume with the "
            "same `model` and options"
        )
    with torch.no_grad():
        for k, v in weights.items():
            own[k].copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rank_rngs"][rank] if "rank_rngs" in state else state["rng"])
    return state["loop"]
