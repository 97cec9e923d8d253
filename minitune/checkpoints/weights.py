"""Checkpoint readers: names, shapes and lazy readers of every tensor (load.py does the strict 1:1 copy).

Formats: `model.safetensors`, sharded safetensors (`model.safetensors.index.json`), and, for repositories that only
have it, `pytorch_model.bin` read with `torch.load(weights_only=True)` -- nothing is ever unpickled without it.
GGUF files go through minitune.gguf and arrive here as an in-memory state dict.

Why a meta-device build: the module's parameters are never allocated; each checkpoint tensor is read (and cast to the
requested dtype) one at a time and becomes the parameter itself, so a checkpoint is never held twice in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from minitune.errors import CheckpointError

log = logging.getLogger("minitune")

# Keys the reference keeps in checkpoints that are not weights (legacy buffers), dropped silently.
_BUFFER_SUFFIXES = ("position_ids", "rotary_emb.inv_freq", "token_type_ids")


@dataclass
class CheckpointIndex:
    """Names and shapes of a checkpoint's tensors, and how to read each one, without reading any data."""

    path: Path
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    readers: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)

    def add(self, name: str, shape, reader: Callable[[], torch.Tensor]) -> None:
        self.shapes[name] = tuple(shape)
        self.readers[name] = reader


def _fix_legacy_name(name: str) -> str:
    # Old TF-converted checkpoints name LayerNorm parameters gamma/beta; the reference renames them on load.
    if name.endswith(".gamma"):
        return name[: -len(".gamma")] + ".weight"
    if name.endswith(".beta"):
        return name[: -len(".beta")] + ".bias"
    return name


# safetensors dtype names -> torch dtypes, for reading tensor bytes with plain file reads.
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _index_safetensors(index: CheckpointIndex, file: Path) -> None:
    """Validate the file with safetensors, then read each tensor with a plain read into fresh memory.

    Why not safetensors' own (memory-mapped) tensors: they stay backed by the file, so the whole mapping lives as
    long as any one of them, and a quantizing load (QLoRA) would keep every page it touched resident.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:  # checks the header against the file's size
            names = list(handle.keys())
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{file}: not a readable safetensors file ({e}); it is truncated or corrupt: delete it and download it "
            "again"
        ) from None
    start = 8 + header_len
    for n in names:
        info = header[n]
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{file}: tensor {n!r} has dtype {info['dtype']}, which minitune does not read")
        begin, end = info["data_offsets"]
        index.add(
            _fix_legacy_name(n),
            info["shape"],
            lambda n=n, i=info, b=begin, e=end: _read_tensor(file, n, i, start + b, e - b),
        )


def _read_tensor(file: Path, name: str, info: dict, offset: int, nbytes: int) -> torch.Tensor:
    buf = bytearray(nbytes)
    with open(file, "rb") as f:
        f.seek(offset)
        if f.readinto(buf) != nbytes:
            raise CheckpointError(f"{file}: tensor {name!r} is cut short: the file is truncated; download it again")
    if not nbytes:
        return torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
    return torch.frombuffer(buf, dtype=_ST_DTYPES[info["dtype"]]).view(info["shape"])


def _index_pytorch_bin(index: CheckpointIndex, file: Path) -> None:
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(
            f"{file}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}); it is corrupt or holds "
            "more than tensors: convert it to safetensors with a tool you trust"
        ) from None
    for n, t in sd.items():
        index.add(_fix_legacy_name(n), t.shape, lambda t=t: t)


def index_checkpoint(model_dir: Path) -> CheckpointIndex:
    """Find the weights in a Hub-layout directory and index them."""
    index = CheckpointIndex(model_dir)
    single, sharded = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        _index_safetensors(index, single)
    elif sharded.is_file():
        try:
            weight_map = json.loads(sharded.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{sharded}: not a valid shard index ({e}): download it again") from None
        for shard in sorted(set(weight_map.values())):
            if not (model_dir / shard).is_file():
                raise CheckpointError(f"{sharded} names shard {shard!r}, which is missing: download it again")
            _index_safetensors(index, model_dir / shard)
    elif (model_dir / "pytorch_model.bin").is_file():
        _index_pytorch_bin(index, model_dir / "pytorch_model.bin")
    else:
        raise CheckpointError(
            f"{model_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin: "
            "point to a directory holding the checkpoint's weights"
        )
    return index


def set_tensor(model: nn.Module, key: str, value: torch.Tensor, requires_grad: bool = True) -> None:
    """Make `value` the parameter or buffer `key` of `model` (no copy: the tensor itself)."""
    module_name, _, leaf = key.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=requires_grad and value.is_floating_point())
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise KeyError(key)


def describe_keys(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
