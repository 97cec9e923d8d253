"""Tests for minitune.adapters.nf4: codebook, packing, error bounds, storage, NF4Linear, model/stream helpers,
bitsandbytes."""

import math

import pytest
import torch
from torch import nn

from minitune.adapters.nf4 import (
    NF4Linear,
    dequantize_nf4,
    nf4_absmax,
    nf4_codebook,
    nf4_weight_names,
    pack_codes,
    quantize_model_,
    quantize_nf4,
    quantize_state_dict_stream,
    unpack_codes,
)
from minitune.errors import CheckpointError

# QLoRA (Dettmers et al., 2023), Appendix E: the NF4 data type values (the same table bitsandbytes hard-codes).
PUBLISHED_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def _bnb():
    """bitsandbytes.functional if its CPU quantize_4bit runs here, else skip with the reason."""
    try:
        import bitsandbytes.functional as bnbf

        bnbf.quantize_4bit(torch.randn(64, 64), blocksize=64, quant_type="nf4")
    except Exception as e:  # import error, missing native library, no CPU kernel
        pytest.skip(f"bitsandbytes CPU 4-bit path unavailable: {type(e).__name__}: {e}")
    return bnbf


def _brute_force_codes(w: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook index per element by exhaustive search (argmin takes the lower index on ties)."""
    blocks = w.reshape(-1, blocksize).double()
    absmax = blocks.abs().amax(1, keepdim=True)
    table = torch.tensor(PUBLISHED_NF4, dtype=torch.float64)
    idx = ((blocks / absmax)[..., None] - table).abs().argmin(-1)  # (n_blocks, blocksize, 16) -> (n_blocks, blocksize)
    return idx.reshape(-1), absmax.squeeze(1)


def test_codebook_matches_published_table():
    code = nf4_codebook()
    assert code.shape == (16,) and code.dtype == torch.float32
    assert torch.allclose(code, torch.tensor(PUBLISHED_NF4), atol=1e-6, rtol=0)
    assert (code[:7] < 0).all() and code[7] == 0 and (code[8:] > 0).all()  # 7 negative, exact zero, 8 positive


def test_codebook_matches_bitsandbytes():
    bnbf = _bnb()
    assert torch.allclose(nf4_codebook(), bnbf.get_4bit_type("nf4", device="cpu"), atol=1e-6, rtol=0)


def test_pack_unpack_exact_on_all_codes():
    codes = torch.cartesian_prod(torch.arange(16), torch.arange(16)).reshape(-1).to(torch.uint8)  # all 256 pairs
    packed = pack_codes(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 256
    assert sorted(packed.tolist()) == list(range(256))  # every byte value exactly once: the packing is a bijection
    assert packed[1].item() == 0x01 and packed[16].item() == 0x10  # first element of a pair in the high nibble
    assert torch.equal(unpack_codes(packed, codes.numel()), codes)
    odd = codes[:31]
    assert torch.equal(unpack_codes(pack_codes(odd), 31), odd)


def test_codes_are_nearest_codebook_value():
    w = torch.randn(32, 256)
    q = quantize_nf4(w, double_quant=False)
    expected, absmax = _brute_force_codes(w)
    assert torch.equal(unpack_codes(q.packed, w.numel()).long(), expected)
    assert torch.allclose(q.absmax.double(), absmax, rtol=0, atol=0)


def test_roundtrip_error_bounds_gaussian():
    w = torch.randn(256, 512)
    code = torch.tensor(PUBLISHED_NF4, dtype=torch.float64)
    gaps = code[1:] - code[:-1]
    half_max_gap = gaps.max().item() / 2
    blocks = w.reshape(-1, 64).double()
    absmax = blocks.abs().amax(1)

    err = (dequantize_nf4(quantize_nf4(w, double_quant=False)).double() - w.double()).reshape(-1, 64).abs()
    assert (err.amax(1) <= half_max_gap * absmax * (1 + 1e-6)).all()
    # Tighter, per element: no further than half the gap to the neighbouring code on its side.
    idx, _ = _brute_force_codes(w)
    left = torch.cat([gaps[:1], gaps])[idx]
    right = torch.cat([gaps, gaps[-1:]])[idx]
    local = torch.maximum(left, right).view(-1, 64) / 2 * absmax[:, None]
    assert (err <= local * (1 + 1e-6) + 1e-7).all()

    # Mean error against the expectation derived by integrating |x - Q(x)| over N(0, 1) truncated at each block's
    # absmax a (the other 63 entries of a block are |x| < a; the absmax entry itself is exact).
    grid = torch.linspace(-1, 1, 2001, dtype=torch.float64)  # x / a
    quantized = code[(grid[:, None] - code).abs().argmin(1)]
    pdf = torch.exp(-0.5 * (absmax[:, None] * grid) ** 2)  # (n_blocks, grid), unnormalised N(0, 1) density
    per_block = absmax * ((grid - quantized).abs() * pdf).sum(1) / pdf.sum(1)
    expected = per_block.mean().item() * 63 / 64
    measured = err.mean().item()
    assert 0.99 * expected <= measured <= 1.01 * expected, (measured, expected)


def test_double_quant_error_bound():
    w = torch.randn(256, 1024) * 0.02
    q = quantize_nf4(w, double_quant=True)
    assert q.absmax.dtype == torch.int8 and q.absmax_scale.dtype == torch.float32
    true_absmax = w.reshape(-1, 64).abs().amax(1).double()
    centred = (true_absmax - true_absmax.mean()).view(-1, 256)
    step = (centred.abs().amax(1) / 254).repeat_interleave(256)  # linear int8: at most half a step of s/127
    assert ((nf4_absmax(q).double() - true_absmax).abs() <= step * (1 + 1e-5) + 1e-9).all()
    # Codes are computed from the exact absmax, so they equal the single-quantized ones.
    assert torch.equal(q.packed, quantize_nf4(w, double_quant=False).packed)
    code_gap = max(b - a for a, b in zip(PUBLISHED_NF4, PUBLISHED_NF4[1:]))
    err = (dequantize_nf4(q).double() - w.double()).reshape(-1, 64).abs().amax(1)
    assert (err <= code_gap / 2 * true_absmax + step + 1e-7).all()


def test_storage_bits_per_parameter():
    layer = NF4Linear.from_linear(nn.Linear(4096, 256, bias=False))
    stored = sum(t.numel() * t.element_size() for t in layer.state_dict().values())  # every saved tensor
    n = 4096 * 256
    bits = 8 * stored / n
    assert bits <= 4.13
    assert math.isclose(bits, 4 + 8 / 64 + 32 / (64 * 256) + 32 / n, rel_tol=1e-9)
    assert layer.quantized().nbytes() == stored
    plain = NF4Linear.from_linear(nn.Linear(4096, 256, bias=False), double_quant=False)
    assert math.isclose(8 * plain.quantized().nbytes() / n, 4 + 32 / 64)


def test_nf4_linear_forward_and_input_grad_match_dense():
    lin = nn.Linear(128, 48)
    layer = NF4Linear.from_linear(lin)
    assert not any(p.dtype == torch.uint8 for p in layer.parameters())  # packed weight is a buffer
    assert {n for n, _ in layer.named_buffers()} >= {"weight_packed", "weight_absmax"}
    w = layer.dequantize()
    x = torch.randn(3, 5, 128, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y_ref = x_ref @ w.T + lin.bias
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    assert lin.bias.grad is not None  # the full-precision bias still gets its gradient


def test_nf4_linear_compute_dtype_follows_input():
    layer = NF4Linear.from_linear(nn.Linear(64, 32))
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    ref = (x.float() @ layer.dequantize(torch.bfloat16).float().T).to(torch.bfloat16) + layer.bias.to(torch.bfloat16)
    assert torch.allclose(y.float(), ref.float(), atol=0.05, rtol=0.02)


def test_autograd_saves_only_packed_weight():
    out_f, in_f = 96, 128
    layer = NF4Linear.from_linear(nn.Linear(in_f, out_f))
    x = torch.randn(8, in_f, requires_grad=True)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    assert saved, "the hook saw nothing: the check would be vacuous"
    assert ((out_f * in_f + 1) // 2,) in [s for s, _ in saved]  # the packed weight is what is kept
    for shape, dtype in saved:
        assert shape != (out_f, in_f) and shape != (in_f, out_f), shape
        assert not (dtype.is_floating_point and math.prod(shape) >= out_f * in_f), (shape, dtype)
    y.sum().backward()
    assert x.grad is not None


def test_quantize_model_skips_heads_and_frees_linears():
    model = nn.ModuleDict(
        {
            "encoder": nn.ModuleDict({"q": nn.Linear(64, 64), "emb": nn.Embedding(10, 64)}),
            "score": nn.Linear(64, 3),
            "classifier": nn.ModuleDict({"dense": nn.Linear(64, 64)}),
        }
    )
    ref = model["encoder"]["q"].weight.detach().clone()
    names = quantize_model_(model)
    assert names == ["encoder.q"]
    assert isinstance(model["encoder"]["q"], NF4Linear)
    assert isinstance(model["score"], nn.Linear) and isinstance(model["classifier"]["dense"], nn.Linear)
    assert isinstance(model["encoder"]["emb"], nn.Embedding)
    assert not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.startswith("encoder"))
    assert torch.equal(model["encoder"]["q"].dequantize(), dequantize_nf4(quantize_nf4(ref)))


def test_stream_loader_quantizes_weights_on_arrival():
    source = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    checkpoint = source.state_dict()
    with torch.device("meta"):
        target = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    quantize_model_(target, skip=lambda n: n == "2")
    assert not target[0].has_weight and target[0].weight_packed.device.type == "cpu"
    assert nf4_weight_names(target) == {"0.weight"}
    passed = dict(quantize_state_dict_stream(target, checkpoint.items()))
    assert set(passed) == {"0.bias", "2.weight", "2.bias"}
    target.load_state_dict(passed, strict=False, assign=True)
    assert target[0].has_weight
    x = torch.randn(5, 64)
    expected = source[2](torch.relu(x @ dequantize_nf4(quantize_nf4(source[0].weight)).T + source[0].bias))
    assert torch.allclose(target(x), expected, atol=1e-6)


def test_hub_state_dict_loads_into_nf4_model_and_own_state_roundtrips():
    source = nn.Linear(64, 16)
    layer = NF4Linear(64, 16)
    result = layer.load_state_dict(source.state_dict())  # full-precision weight: quantized on load
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(layer.dequantize(), dequantize_nf4(quantize_nf4(source.weight)))
    copy = NF4Linear(64, 16)
    copy.load_state_dict(layer.state_dict())  # our own format round-trips
    assert torch.equal(copy.dequantize(), layer.dequantize()) and torch.equal(copy.bias, source.bias)


def test_wrong_shape_checkpoint_is_a_checkpoint_error():
    layer = NF4Linear(64, 16)
    with pytest.raises(CheckpointError, match="expects"):
        layer.load_weight(torch.randn(16, 32))


def test_agrees_with_bitsandbytes_quantize_4bit():
    bnbf = _bnb()
    w = torch.randn(96, 320)
    qb, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = quantize_nf4(w, double_quant=False)
    assert torch.equal(qb.reshape(-1), ours.packed)  # same codes, same nibble order
    assert torch.equal(state.absmax, ours.absmax)
    ref = bnbf.dequantize_4bit(qb, state)
    # The codebooks differ by ~1 ulp (ours is derived, theirs hard-coded), so allow that much times absmax.
    assert torch.allclose(dequantize_nf4(ours), ref, atol=1e-6 * w.abs().max().item(), rtol=0)

    qb2, state2 = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours2 = quantize_nf4(w, double_quant=True)
    assert torch.equal(qb2.reshape(-1), ours2.packed)  # codes come from the exact absmax in both
    # Different 8-bit absmax codes (dynamic map vs our linear int8): both close to the exact dequantization.
    exact = dequantize_nf4(ours)
    tol = 0.01 * w.abs().max().item()
    assert torch.allclose(bnbf.dequantize_4bit(qb2, state2), exact, atol=tol)
    assert torch.allclose(dequantize_nf4(ours2), exact, atol=tol)


def test_dtype_cast_keeps_quantization_state_fp32():
    for double_quant in (True, False):
        layer = NF4Linear.from_linear(nn.Linear(128, 64), double_quant=double_quant)
        before = layer.dequantize(torch.float32)
        layer.to(torch.bfloat16)
        assert layer.bias.dtype == torch.bfloat16  # the bias follows the model's dtype
        assert layer.nf4_code.dtype == torch.float32 and layer.weight_packed.dtype == torch.uint8
        assert all(b.dtype != torch.bfloat16 for b in layer.buffers())
        assert torch.equal(layer.dequantize(torch.float32), before)
        assert layer(torch.randn(2, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16
