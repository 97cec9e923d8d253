"""The unpadded attention path: cumulative lengths, the kernel dispatch, the CPU fallbacks against the padded path, the
decoders' unpadded path, and (on a CUDA device) FlashAttention's variable-length kernel against the padded path."""

import pytest
import torch
import torch.nn.functional as F

from minitune.models import attention as att
from minitune.models import bert, decoder, modernbert
from tolerance import assert_close_scaled

BERT_HUB = dict(
    model_type="bert",
    vocab_size=99,
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,  # head dim 64, as the large models
    intermediate_size=96,
    max_position_embeddings=64,
    type_vocab_size=2,
    pad_token_id=0,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
)
LLAMA_HUB = dict(
    model_type="llama",
    vocab_size=99,
    hidden_size=128,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query: two query heads per kv head
    head_dim=32,
    max_position_embeddings=128,
    pad_token_id=0,
    rope_theta=10000.0,
)


def mask_of(lengths: list[int], t: int, side: str = "right") -> torch.Tensor:
    """(B, T) 1/0 mask with `lengths` real tokens per row, padded on `side`."""
    cols = torch.arange(t)[None]
    n = torch.tensor(lengths)[:, None]
    return (cols >= t - n if side == "left" else cols < n).long()


def batch(lengths: list[int], t: int, side: str = "right", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mask_of(lengths, t, side)
    ids = torch.randint(3, 99, mask.shape, generator=torch.Generator().manual_seed(seed)) * mask
    return ids, mask


@pytest.mark.parametrize("side", ["right", "left"])
def test_packing_cumulative_lengths_and_columns(side):
    pack = att.Packing(mask_of([5, 2, 7], 7, side))
    assert pack.cu_seqlens.tolist() == [0, 5, 7, 14] and pack.cu_seqlens.dtype == torch.int32
    assert (pack.min_len, pack.max_len) == (2, 7)
    first = [0, 0, 0] if side == "right" else [2, 5, 0]  # column of each sequence's first real token
    expected = [c for f, n in zip(first, [5, 2, 7]) for c in range(f, f + n)]
    assert pack.columns.tolist() == expected


def test_dispatch_names_why_the_kernel_cannot_run():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert "CUDA only" in att.varlen_refusal(cpu, torch.bfloat16, 64, 0.0)
    assert "fp16 or bf16" in att.varlen_refusal(cuda, torch.float32, 64, 0.0)
    assert "dropout" in att.varlen_refusal(cuda, torch.bfloat16, 64, 0.1)
    assert "head dim 60" in att.varlen_refusal(cuda, torch.float16, 60, 0.0)
    assert "head dim 512" in att.varlen_refusal(cuda, torch.float16, 512, 0.0)


def padded_reference(q, k, v, mask, causal, scale=None):
    """Masked SDPA on the padded block (B, h, T, D), kv heads repeated for grouped-query."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    t = mask.shape[1]
    allowed = mask.bool()[:, None, None, :].expand(-1, 1, t, t)
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool).tril()
    dead = ~allowed.any(-1, keepdim=True)  # left-pad queries of a causal mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | dead, scale=scale)
    return out.masked_fill(dead, 0.0)


@pytest.mark.parametrize("per_sequence", [True, False])
@pytest.mark.parametrize("causal,side", [(False, "right"), (True, "right"), (True, "left")])
def test_fallbacks_equal_the_padded_path_with_gradients(per_sequence, causal, side):
    """On CPU packed_attention takes one of the fallbacks; both equal masked SDPA on the padded block, forward and
    backward, with grouped-query kv heads."""
    torch.manual_seed(0)
    mask = mask_of([6, 2, 9, 4], 9, side)
    shapes = {"q": (4, 4, 9, 8), "k": (4, 2, 9, 8), "v": (4, 2, 9, 8)}
    ref_in = {n: torch.randn(s, requires_grad=True) for n, s in shapes.items()}
    ours_in = {n: t.detach().clone().requires_grad_() for n, t in ref_in.items()}
    keep = mask.bool()
    ref = padded_reference(*ref_in.values(), mask, causal).transpose(1, 2)[keep]  # (N, h, D), the stack's order
    pack = att.Packing(mask, per_sequence=per_sequence)
    packed = {n: t.transpose(1, 2)[keep] for n, t in ours_in.items()}  # (N, h, D)
    out = att.packed_attention(packed["q"], packed["k"], packed["v"], pack, causal=causal, dropout_p=0.0)
    assert_close_scaled(out, ref, name="output")
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g)
    for n in shapes:
        real = keep[:, None, :, None].expand_as(ref_in[n])  # pad rows of the inputs get no gradient in either path
        assert_close_scaled(ours_in[n].grad[real], ref_in[n].grad[real], name=f"d{n}")


def test_varlen_dispatch_calls_the_kernel_with_the_packing(monkeypatch):
    """Where the kernel may run, it gets the packing's cumulative lengths and longest length, the causal window for
    decoders and the full one for encoders, grouped-query kv heads as they are; its output is the result."""
    calls = []

    def fake_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append(dict(cu=cu_q.tolist(), same=cu_q is cu_k, max=(max_q, max_k), window=window_size, gqa=enable_gqa))
        return torch.full_like(q, 7.0)

    monkeypatch.setattr(att, "varlen_kernel", lambda: fake_kernel)
    monkeypatch.setattr(att, "varlen_refusal", lambda *a: None)
    pack = att.Packing(mask_of([3, 1, 4], 4), per_sequence=True)
    q, kv = torch.randn(8, 4, 8), torch.randn(8, 2, 8)
    out = att.packed_attention(q, kv, kv, pack, causal=True, dropout_p=0.0)
    assert torch.equal(out, torch.full_like(q, 7.0))
    assert calls == [dict(cu=[0, 3, 4, 8], same=True, max=(4, 4), window=(-1, 0), gqa=True)]
    att.self_attention(q.flatten(1), q.flatten(1), q.flatten(1), 4, None, pack, 0.0)
    assert calls[1]["window"] == (-1, -1) and calls[1]["gqa"] is False


def test_under_autocast_the_kernel_gets_the_autocast_dtype(monkeypatch):
    """The decoders' RoPE tables are fp32, so q and k reach attention in fp32 under autocast; SDPA would cast them to
    the autocast dtype, and the kernel must be asked about (and given) that dtype, not refused for fp32."""
    asked, got = [], []
    monkeypatch.setattr(att, "varlen_refusal", lambda device, dtype, *a: asked.append(dtype))
    monkeypatch.setattr(
        att, "varlen_kernel", lambda: lambda q, k, v, *a, **kw: got.append((q.dtype, k.dtype, v.dtype)) or q
    )
    pack = att.Packing(mask_of([3, 2], 3))
    q = torch.randn(5, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        att.packed_attention(q, q, q, pack, causal=True, dropout_p=0.0)
    att.packed_attention(q, q, q, pack, causal=True, dropout_p=0.0)
    assert asked == [torch.bfloat16, torch.float32]
    assert got == [(torch.bfloat16,) * 3, (torch.float32,) * 3]


def _decoder_grads(model, ids, mask):
    model.zero_grad()
    logits = model(ids, mask)
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointed", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
def test_decoder_unpadded_path_equals_padded(side, checkpointed):
    """Logits and every gradient of the decoder classifier, unpadded (real tokens only, each at its padded column
    for RoPE) against padded, on a ragged batch with grouped-query attention."""
    torch.manual_seed(0)
    model = decoder.build(decoder.config_from_hf(LLAMA_HUB), "sequence", 3).train()
    model.gradient_checkpointing = checkpointed
    ids, mask = batch([9, 3, 6, 1], 9, side)
    seen = []
    hook = att.Packing.__init__

    def spy(self, *a, **k):
        seen.append(1)
        hook(self, *a, **k)

    model.set_unpadded(False)
    ref_logits, ref_grads = _decoder_grads(model, ids, mask)
    model.set_unpadded(True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(att.Packing, "__init__", spy)
        logits, grads = _decoder_grads(model, ids, mask)
    assert seen, "the unpadded path did not run"
    assert_close_scaled(logits, ref_logits, name="logits")
    assert ref_grads.keys() == grads.keys()
    for n in ref_grads:
        assert_close_scaled(grads[n], ref_grads[n], name=n)


def test_decoder_with_an_empty_row_stays_padded():
    """A row with no real token reads a pad position in the padded path; the unpadded path stands aside."""
    model = decoder.build(decoder.config_from_hf(LLAMA_HUB), "sequence", 3).eval()
    ids, mask = batch([5, 0, 3], 5)
    model.set_unpadded(False)
    ref = model(ids, mask)
    model.set_unpadded(True)
    assert torch.equal(model(ids, mask), ref)


# ---------------------------------------------------------------------------------------------- GPU

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the variable-length kernel runs on CUDA only"
)
GPU_TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _cuda_ready(dtype):
    why = att.varlen_refusal(torch.device("cuda"), dtype, 64, 0.0)
    if why:
        pytest.skip(why)


def _grads(model, ids, mask, unpadded: bool):
    model.set_unpadded(unpadded)
    model.zero_grad()
    with torch.autocast("cuda", dtype=model.dtype_under_test):
        logits = model(ids, mask).float()
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["bert", "llama", "modernbert"])
def test_gpu_varlen_kernel_equals_padded_path(family, dtype):
    """On CUDA under autocast, with attention dropout off (the kernel has none), the unpadded path runs the
    variable-length kernel; logits and gradients equal the padded path's within the dtype's rounding."""
    _cuda_ready(dtype)
    torch.manual_seed(0)
    if family == "bert":
        model = bert.build(bert.config_from_hf(BERT_HUB), "sequence", 3)
    elif family == "modernbert":  # windows of 8 each side, shorter than most sequences below: the kernel's window
        hub = dict(vocab_size=99, hidden_size=256, num_attention_heads=4, intermediate_size=96, num_hidden_layers=3)
        model = modernbert.build(
            modernbert.config_from_hf({**hub, "local_attention": 16, "pad_token_id": 0}), "sequence", 3
        )
    else:
        model = decoder.build(decoder.config_from_hf({**LLAMA_HUB, "head_dim": 64, "hidden_size": 256}), "sequence", 3)
    model = model.cuda().eval()  # eval: no dropout, so the kernel may run; gradients still flow
    model.dtype_under_test = dtype
    ids, mask = batch([37, 5, 64, 12, 1, 50], 64, seed=1)
    ids, mask = ids.cuda(), mask.cuda()
    calls = []
    kernel = att.varlen_kernel()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(att, "varlen_kernel", lambda: lambda *a, **k: calls.append(1) or kernel(*a, **k))
        logits, grads = _grads(model, ids, mask, unpadded=True)
    assert calls, "the variable-length kernel did not run"
    ref_logits, ref_grads = _grads(model, ids, mask, unpadded=False)
    tol = GPU_TOL[dtype]
    assert_close_scaled(logits, ref_logits, atol=tol, rtol=tol, name="logits")
    for n in ref_grads:
        assert_close_scaled(grads[n], ref_grads[n], atol=tol, rtol=tol, name=n)
