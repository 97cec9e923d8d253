"""NF4 (4-bit NormalFloat) weight quantization and a frozen NF4 linear layer, the base of QLoRA.

What it does: builds the 16-value NormalFloat codebook from normal quantiles, quantizes a weight blockwise (absmax
over blocks of 64, nearest code of w/absmax, two codes per byte), optionally double-quantizes the absmax values, and
provides `NF4Linear` (dequantize-per-call matmul whose autograd graph keeps only the packed weight) plus the helpers
that swap a model's nn.Linear layers for it, whole-model or tensor by tensor while a checkpoint streams in.

References: Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs" (2023), §3 NormalFloat and double
quantization; bitsandbytes (the reference implementation) for the codebook values and the nibble order.

What must match: the codebook equals bitsandbytes' NF4 table within 1e-6; the 4-bit codes and packed bytes equal
bitsandbytes' quantize_4bit(quant_type="nf4", blocksize=64) byte for byte (first element of a pair in the high
nibble, ties between two codes go to the lower one); without double quantization the dequantized values are equal too.

Double quantization (our 8-bit code, not bitsandbytes'): the absmax values minus their mean are quantized with a
*linear symmetric int8* code per block of 256 (q = round(127·c/s), s = max|c| of the block, fp32 s stored).
bitsandbytes uses its non-linear "dynamic" 8-bit map instead; ours is simpler to read and its error is bounded by
s/254 per absmax, so a weight's error grows by at most that (times |code| ≤ 1). Storage per parameter:
4 (codes) + 8/64 (int8 absmax) + 32/(64·256) (fp32 block scales) + a 4-byte mean ≈ 4.127 bits.

Saved state (ours, not the Hub/bitsandbytes serialisation): an NF4Linear's state_dict holds `weight_packed` (uint8),
`weight_absmax` (int8 with double quantization, else fp32), `weight_absmax_scale` and `weight_absmax_offset` (fp32,
double quantization only) and `bias` (full precision). It round-trips through our own save/load only; QLoRA runs save
the adapter alone, and a full-precision `<name>.weight` (a Hub checkpoint) loaded into an NF4Linear is quantized.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minitune.errors import CheckpointError

_STORED = ("weight_packed", "weight_absmax", "weight_absmax_scale", "weight_absmax_offset")
DQ_BLOCKSIZE = 256  # absmax values per double-quantization block (QLoRA §3)
KEEP_FULL_PRECISION = ("score", "classifier", "lm_head", "pre_classifier", "pooler", "head")


def nf4_codebook() -> Tensor:
    """The 16 NF4 values, ascending, in [-1, 1]: 7 negative, an exact 0, 8 positive (fp32, shape (16,)).

    Each level sits at a quantile of N(0, 1) so that every level covers the same probability mass (QLoRA §3). An exact
    zero needs an asymmetric split: the negative half gets 2^3 - 1 = 7 levels and the positive half 2^3 = 8. Each half
    takes evenly spaced probabilities from `outer` down to 1/2, drops the 1/2 point (that is the zero, added once),
    and the union is divided by its largest value so it spans [-1, 1]. `outer` cannot be 1 (the quantile is
    infinite); the outermost level sits at 1 - delta with delta = (1/(2*15) + 1/(2*16)) / 2, the "middle of the last
    of n equal bins" rule 1 - 1/(2n) averaged over the 15 and 16 levels of the two halves.
    """
    outer = 1.0 - 0.5 * (1.0 / 30.0 + 1.0 / 32.0)
    pos = torch.special.ndtri(torch.linspace(outer, 0.5, 9, dtype=torch.float64)[:-1])  # 8 positive levels
    neg = -torch.special.ndtri(torch.linspace(outer, 0.5, 8, dtype=torch.float64)[:-1])  # 7 negative levels
    values = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return (values / values.max()).to(torch.float32)


@dataclass
class NF4Tensor:
    """A quantized weight: every tensor here is what gets stored (see `nbytes`)."""

    packed: Tensor  # uint8 (ceil(n/2),): two 4-bit codes per byte, element 2i in the high nibble
    absmax: Tensor  # (n_blocks,): fp32, or int8 when double-quantized
    absmax_scale: Tensor | None  # fp32 (ceil(n_blocks/256),): max |absmax - offset| per 256-block
    absmax_offset: Tensor | None  # fp32 (): mean of the absmax values
    shape: torch.Size
    blocksize: int
    dtype: torch.dtype  # the original weight's dtype, the default for dequantization

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    def stored_tensors(self) -> list[Tensor]:
        return [t for t in (self.packed, self.absmax, self.absmax_scale, self.absmax_offset) if t is not None]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored_tensors())


def pack_codes(codes: Tensor) -> Tensor:
    """uint8 codes in [0, 15], shape (n,) -> uint8 (ceil(n/2),); an odd tail is padded with code 0."""
    if codes.numel() % 2:
        codes = F.pad(codes, (0, 1))
    return (codes[0::2] << 4) | codes[1::2]


def unpack_codes(packed: Tensor, n: int) -> Tensor:
    """Inverse of `pack_codes`: uint8 (ceil(n/2),) -> uint8 (n,)."""
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n]


def _blocks(flat: Tensor, blocksize: int) -> Tensor:
    """(n,) -> (n_blocks, blocksize), zero-padded; zeros never change a block's absmax."""
    pad = (-flat.numel()) % blocksize
    return F.pad(flat, (0, pad)).view(-1, blocksize)


def _quantize_absmax(absmax: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Double quantization: fp32 absmax (n_blocks,) -> (int8 codes, fp32 scales per 256-block, fp32 mean)."""
    offset = absmax.mean()
    centred = _blocks(absmax - offset, DQ_BLOCKSIZE)  # (n_blocks2, 256)
    scale = centred.abs().amax(dim=1)
    q = torch.round(centred * (127.0 / scale.clamp_min(1e-30))[:, None]).clamp(-127, 127)
    return q.to(torch.int8).reshape(-1)[: absmax.numel()], scale, offset


def _dequantize_absmax(q: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    centred = _blocks(q.float(), DQ_BLOCKSIZE) * (scale / 127.0)[:, None]  # (n_blocks2, 256)
    # An absmax is never negative; clamping only moves a value towards the true one.
    return (centred.reshape(-1)[: q.numel()] + offset).clamp_min(0.0)


def quantize_nf4(weight: Tensor, blocksize: int = 64, double_quant: bool = True) -> NF4Tensor:
    """Blockwise NF4 quantization of any float tensor (flattened in row-major order)."""
    if not weight.is_floating_point():
        raise TypeError(f"quantize_nf4 needs a floating-point tensor, got {weight.dtype}")
    flat = weight.detach().reshape(-1).float()
    blocks = _blocks(flat, blocksize)  # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    # Multiply by the reciprocal (as bitsandbytes does) so a value on a decision boundary rounds the same way.
    scaled = blocks * absmax.clamp_min(1e-38).reciprocal()[:, None]
    code = nf4_codebook().to(flat.device)
    midpoints = (code[:-1] + code[1:]) / 2
    # bucketize with right=False puts a value equal to a midpoint in the lower bin: ties go to the lower code.
    codes = torch.bucketize(scaled.reshape(-1)[: flat.numel()], midpoints).to(torch.uint8)
    scale = offset = None
    if double_quant:
        absmax, scale, offset = _quantize_absmax(absmax)
    return NF4Tensor(pack_codes(codes), absmax, scale, offset, weight.shape, blocksize, weight.dtype)


def nf4_absmax(q: NF4Tensor) -> Tensor:
    """The per-block absmax as fp32, undoing the double quantization when there is one."""
    if q.double_quant:
        return _dequantize_absmax(q.absmax, q.absmax_scale, q.absmax_offset)
    return q.absmax


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype | None = None, code: Tensor | None = None) -> Tensor:
    """codebook[code] * absmax of its block, computed in fp32 and cast to `dtype` (default: the original dtype).

    `code` is the codebook already on the right device (NF4Linear keeps one); None builds it.
    """
    n = math.prod(q.shape)
    code = nf4_codebook().to(q.packed.device) if code is None else code
    values = _blocks(code[unpack_codes(q.packed, n).int()], q.blocksize)  # (n_blocks, blocksize); int32 indices
    out = (values * nf4_absmax(q)[:, None]).reshape(-1)[:n]
    return out.view(q.shape).to(dtype or q.dtype)


class _NF4Matmul(torch.autograd.Function):
    """y = x @ dequant(W).T; saves only the packed weight, re-dequantizes it in backward (grad wrt x only)."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        packed: Tensor,
        absmax: Tensor,
        scale: Tensor | None,
        offset: Tensor | None,
        code: Tensor,
        meta: tuple[torch.Size, int],
    ) -> Tensor:
        shape, blocksize = meta
        # Under autocast the compute dtype is autocast's; otherwise it follows the input.
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        w = dequantize_nf4(NF4Tensor(packed, absmax, scale, offset, shape, blocksize, dtype), code=code)
        ctx.save_for_backward(packed, absmax, scale, offset, code)
        ctx.meta, ctx.dtype, ctx.x_dtype = meta, dtype, x.dtype
        return x.to(dtype) @ w.t()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        packed, absmax, scale, offset, code = ctx.saved_tensors
        shape, blocksize = ctx.meta
        w = dequantize_nf4(NF4Tensor(packed, absmax, scale, offset, shape, blocksize, ctx.dtype), code=code)
        grad_x = (grad_out.to(ctx.dtype) @ w).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None, None, None


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4; the bias stays in full precision.

    The packed weight lives in buffers (never trained, moved by `.to()`, saved in our own format; see module doc).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        blocksize: int = 64,
        double_quant: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.blocksize, self.double_quant, self.weight_dtype = blocksize, double_quant, dtype
        n = in_features * out_features
        n_blocks = -(-n // blocksize)
        self.register_buffer("weight_packed", torch.zeros((n + 1) // 2, dtype=torch.uint8, device=device))
        absmax_dtype = torch.int8 if double_quant else torch.float32
        self.register_buffer("weight_absmax", torch.zeros(n_blocks, dtype=absmax_dtype, device=device))
        n_scales = -(-n_blocks // DQ_BLOCKSIZE)
        scale = torch.zeros(n_scales, device=device) if double_quant else None
        self.register_buffer("weight_absmax_scale", scale)
        self.register_buffer("weight_absmax_offset", torch.zeros((), device=device) if double_quant else None)
        self.register_buffer("nf4_code", nf4_codebook().to(device), persistent=False)  # built once, not saved
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self.has_weight = False  # False until a real weight was quantized in (placeholders while loading)

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, double_quant: bool = True) -> NF4Linear:
        """Quantize `linear`'s weight (a meta-device weight gives an empty placeholder to fill with `load_weight`)."""
        w = linear.weight
        device = torch.device("cpu") if w.is_meta else w.device
        module = cls(linear.in_features, linear.out_features, False, blocksize, double_quant, device, w.dtype)
        module.bias = linear.bias  # the same Parameter: full precision, keeps its requires_grad
        if not w.is_meta:
            module.load_weight(w)
        return module

    def quantized(self) -> NF4Tensor:
        return NF4Tensor(
            self.weight_packed,
            self.weight_absmax,
            self.weight_absmax_scale,
            self.weight_absmax_offset,
            torch.Size((self.out_features, self.in_features)),
            self.blocksize,
            self.weight_dtype,
        )

    @torch.no_grad()
    def load_weight(self, weight: Tensor) -> None:
        """Quantize a full-precision (out, in) weight into this module's buffers (on the buffers' device)."""
        expected = (self.out_features, self.in_features)
        if tuple(weight.shape) != expected:
            raise CheckpointError(
                f"NF4 weight: checkpoint tensor has shape {tuple(weight.shape)}, the layer expects "
                f"{expected}; use the checkpoint that matches this model's config.json"
            )
        q = quantize_nf4(weight.to(self.weight_packed.device), self.blocksize, self.double_quant)
        for name, t in zip(_STORED, q.stored_tensors()):
            getattr(self, name).copy_(t)
        self.weight_dtype, self.has_weight = weight.dtype, True

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        return dequantize_nf4(self.quantized(), dtype, self.nf4_code)

    def forward(self, x: Tensor) -> Tensor:
        q = self.quantized()
        y = _NF4Matmul.apply(
            x, q.packed, q.absmax, q.absmax_scale, q.absmax_offset, self.nf4_code, (q.shape, q.blocksize)
        )
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` must not round the fp32 statistics or the codebook: move them, keep fp32.
        fp32 = {n: b for n, b in self._buffers.items() if b is not None and b.dtype == torch.float32}
        super()._apply(fn, recurse)
        for name, old in fp32.items():
            if self._buffers[name].dtype != torch.float32:
                self._buffers[name] = old.to(self._buffers[name].device)
        return self

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A Hub checkpoint carries the full-precision `weight`: quantize it here instead of expecting our buffers.
        key = prefix + "weight"
        if key not in state_dict:
            return super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
        self.load_weight(state_dict[key])
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        ours = {prefix + name for name in _STORED}
        missing_keys[:] = [k for k in missing_keys if k not in ours]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"blocksize={self.blocksize}, double_quant={self.double_quant}"
        )


def default_skip(name: str) -> bool:
    """Keep classification heads (and the lm_head) in full precision: they are trained or too small to matter."""
    return any(part in KEEP_FULL_PRECISION for part in name.split("."))


def quantize_model_(
    model: nn.Module, skip: Callable[[str], bool] = default_skip, blocksize: int = 64, double_quant: bool = True
) -> list[str]:
    """Replace every nn.Linear whose qualified name `skip` rejects by an NF4Linear, in place; returns their names.

    Layers are swapped one at a time, so the full-precision weight of each is dropped (freed unless referenced
    elsewhere) before the next is quantized. Embeddings and norms are not nn.Linear and stay as they are.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n and not skip(n)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, NF4Linear.from_linear(getattr(parent, child), blocksize, double_quant))
    return names


def nf4_weight_names(model: nn.Module) -> set[str]:
    """Checkpoint names (`<module>.weight`) that NF4Linear modules of `model` consume in quantized form."""
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, NF4Linear)}


def quantize_state_dict_stream(model: nn.Module, tensors: Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
    """Loader hook: quantize each `<module>.weight` meant for an NF4Linear as it arrives, pass the rest through.

    Run `quantize_model_` on the (possibly meta-device) model first, then feed the checkpoint's (name, tensor) pairs
    through this generator and copy what it yields as usual; only one full-precision weight is alive at a time.
    The consumed names are `nf4_weight_names(model)`: count them as loaded in a strict key check.
    """
    targets = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, NF4Linear)}
    for name, tensor in tensors:
        module = targets.get(name)
        if module is None:
            yield name, tensor
        else:
            module.load_weight(tensor)
