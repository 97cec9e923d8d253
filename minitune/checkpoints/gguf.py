"""GGUF files (llama.cpp's single-file checkpoints): the reader and dequantization (gguf_llama.py maps a Llama
file to Hub weights, config and tokenizer).

References: the GGUF format spec (ggml docs/gguf.md: header, typed metadata, tensor table, aligned data section),
ggml's block layouts (ggml-common.h), llama.cpp's convert_hf_to_gguf.py (Llama q/k row permutation, tensor
names) and transformers' GGUF loading path (modeling_gguf_pytorch_utils.py, integrations/gguf/), which is the
reference tests/test_gguf.py checks against.

What must match the reference, on SmolLM2-135M-Instruct.Q4_1.gguf:
- every dequantized tensor equals transformers' (and the gguf package's `quants.dequantize`) exactly: the same
  float32 arithmetic `d * q (+ m)` on fp16 scales;
- state-dict names and shapes are the Hub's, with Llama q/k rows put back in rotate_half order;
- the config fields and the tokenizer's ids (byte-level BPE, the 17 control tokens as specials) equal what
  transformers builds from the same file.
Supported: architecture "llama", tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1, tokenizer model "gpt2" with
GPT-2's split regex. Anything else raises CheckpointError naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minitune.errors import CheckpointError

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # v1 counted with 32-bit ints; nothing current writes it
DEFAULT_ALIGNMENT = 32

# ggml type id -> (name, elements per block, bytes per block); from ggml.h / ggml-common.h. The sizes of types we
# cannot dequantize are still needed to check that their data is inside the file.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
}

# metadata value type id -> numpy dtype of the fixed-size ones; 8 is a string, 9 an array
_VALUE_DTYPES = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] (ne[0]) is the innermost, contiguous one
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int | None  # None for a type id we do not know the block size of

    @property
    def shape(self) -> tuple[int, ...]:
        """The torch shape: ggml dims reversed."""
        return tuple(reversed(self.dims))

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0] if self.ggml_type in GGML_TYPES else f"type {self.ggml_type}"


@dataclass(eq=False)
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensorInfo]  # in file order
    alignment: int
    data: np.ndarray = field(repr=False)  # the whole file as a read-only uint8 memmap

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, in torch shape; read from the memmap only now."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}; the file holds {len(self.tensors)} others")
        if info.ggml_type not in _DEQUANTIZERS:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} is stored as {info.type_name}, which minitune cannot "
                f"dequantize; use a GGUF with {', '.join(_DEQUANT_NAMES)} tensors"
            )
        raw = self.data[info.offset : info.offset + info.nbytes]
        return dequantize(raw, info.ggml_type).reshape(info.shape)


# ---------------------------------------------------------------------------------------------- reading


class _Cursor:
    """Sequential little-endian reads over the mapped file, each checked against its end."""

    def __init__(self, buf: np.ndarray, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> np.ndarray:
        if n < 0 or self.pos + n > len(self.buf):
            raise CheckpointError(
                f"{self.path}: file ends inside the {what} at byte {self.pos}; the file is "
                f"truncated or not GGUF, download it again"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("<Q", what)
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: {what} is not valid UTF-8; the file is corrupt") from None

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _VALUE_DTYPES:
            return self.array(vtype, 1, key)[0]
        if vtype == _STRING:
            return self.string(f"value of {key!r}")
        if vtype == _ARRAY:
            etype, count = self.unpack("<IQ", f"array header of {key!r}")
            if etype in _VALUE_DTYPES:
                return self.array(etype, count, key)
            return [self.value(etype, key) for _ in range(count)]
        raise CheckpointError(f"{self.path}: metadata {key!r} has unknown value type {vtype}; the file is corrupt")

    def array(self, vtype: int, count: int, key: str) -> list:
        dtype = np.dtype(_VALUE_DTYPES[vtype])
        raw = self.take(count * dtype.itemsize, f"value of {key!r}")
        return np.frombuffer(raw, dtype=dtype).tolist()  # Python ints/floats/bools, like the reference


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse header, metadata and tensor table; tensor data stays on disk until `GGUFFile.tensor`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file; check the path")
    if path.stat().st_size < 24:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too short for a GGUF header; download it again")
    data = np.memmap(path, mode="r", dtype=np.uint8)
    cur = _Cursor(data, path)
    if bytes(cur.take(4, "magic")) != GGUF_MAGIC:
        raise CheckpointError(f"{path}: bad magic {bytes(data[:4])!r} (expected b'GGUF'); not a GGUF file")
    version, n_tensors, n_kv = cur.unpack("<IQQ", "header")
    if version not in GGUF_VERSIONS:
        hint = " (a big-endian file?)" if version >= 1 << 16 else ""
        raise CheckpointError(f"{path}: GGUF version {version}{hint} is not supported; use a v2 or v3 file")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        (vtype,) = cur.unpack("<I", f"type of {key!r}")
        metadata[key] = cur.value(vtype, key)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise CheckpointError(f"{path}: general.alignment={alignment!r} is not a positive integer; the file is corrupt")
    table = [_read_tensor_entry(cur) for _ in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment  # round up to the alignment
    tensors = {}
    for name, dims, gtype, rel in table:
        info = GGUFTensorInfo(name, dims, gtype, data_start + rel, _nbytes(path, name, dims, gtype))
        if info.nbytes is not None and info.offset + info.nbytes > len(data):
            raise CheckpointError(
                f"{path}: data of tensor {name!r} runs past the end of the file "
                f"({info.offset + info.nbytes} > {len(data)} bytes); the file is truncated, "
                f"download it again"
            )
        tensors[name] = info
    return GGUFFile(path, version, metadata, tensors, alignment, data)


def _read_tensor_entry(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string("tensor name")
    (n_dims,) = cur.unpack("<I", f"tensor table entry of {name!r}")
    dims = cur.unpack(f"<{n_dims}Q", f"dims of tensor {name!r}")
    gtype, offset = cur.unpack("<IQ", f"tensor table entry of {name!r}")
    return name, tuple(dims), gtype, offset


def _nbytes(path: Path, name: str, dims: tuple[int, ...], gtype: int) -> int | None:
    if gtype not in GGML_TYPES:
        return None
    type_name, block, block_bytes = GGML_TYPES[gtype]
    if dims and dims[0] % block:
        raise CheckpointError(
            f"{path}: tensor {name!r} has rows of {dims[0]} elements, not a multiple of the "
            f"{type_name} block of {block}; the file is corrupt"
        )
    return int(np.prod(dims, dtype=np.int64)) // block * block_bytes


# ---------------------------------------------------------------------------------------------- dequantization


def _half(cols: np.ndarray) -> np.ndarray:
    """(N, 2) bytes -> (N, 1) float32 of the little-endian fp16 they hold."""
    return np.ascontiguousarray(cols).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(N, 16) bytes -> (N, 32) uint8: the low nibbles are elements 0..15, the high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _q8_0(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, 34)  # fp16 d, 32 x int8
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    q *= _half(blocks[:, :2])  # in place: these arrays are the size of the model
    return q


def _q4_0(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, 18)  # fp16 d, 16 bytes of nibbles; value = d * (q - 8)
    q = (_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)).astype(np.float32)
    q *= _half(blocks[:, :2])
    return q


def _q4_1(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, 20)  # fp16 d, fp16 m, 16 bytes of nibbles; value = d * q + m
    q = _nibbles(blocks[:, 4:]).astype(np.float32)
    q *= _half(blocks[:, :2])
    q += _half(blocks[:, 2:4])
    return q


def _bf16(raw: np.ndarray) -> np.ndarray:
    # bf16 is the top half of a float32: widen the bits and shift them into place
    return (np.ascontiguousarray(raw).view("<u2").astype(np.uint32) << 16).view(np.float32)


_DEQUANTIZERS = {
    0: lambda raw: np.ascontiguousarray(raw).view("<f4").astype(np.float32),  # astype copies off the memmap
    1: lambda raw: np.ascontiguousarray(raw).view("<f2").astype(np.float32),
    30: _bf16,
    8: _q8_0,
    2: _q4_0,
    3: _q4_1,
}
_DEQUANT_NAMES = [GGML_TYPES[t][0] for t in _DEQUANTIZERS]


def dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """Raw bytes (1-D uint8) of one tensor -> 1-D float32 values, in ggml element order."""
    if ggml_type not in _DEQUANTIZERS:
        name = GGML_TYPES.get(ggml_type, (f"type {ggml_type}",))[0]
        raise CheckpointError(f"ggml {name} tensors are not supported; use one of {', '.join(_DEQUANT_NAMES)}")
    return _DEQUANTIZERS[ggml_type](raw).reshape(-1)
