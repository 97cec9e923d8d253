"""Attention under CPU bf16 autocast (models/attention.sdpa): computed in fp32 and returned in bf16 on CPUs without
AMX tiles, where torch's bf16 attention kernel is the slower one; the kernel's own bf16 path elsewhere."""

import pytest
import torch
import torch.nn.functional as F

from minitune.models import attention as att

RULE = att.cpu_attention_in_fp32  # taken at import, before conftest's fixture pins the rule for the session


def qkv(seed=0, t=24):
    g = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(2, 4, t, 32, generator=g)).to(torch.bfloat16).requires_grad_() for _ in range(3)]


def test_the_rule_reads_amx_from_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(att, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert RULE.__wrapped__() is True
    monkeypatch.setattr(att, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    assert RULE.__wrapped__() is False


@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_without_amx_attention_computes_in_fp32_and_returns_bf16(monkeypatch, mask):
    monkeypatch.setattr(att, "cpu_attention_in_fp32", lambda: True)
    q, k, v = qkv()
    allowed = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(1)) > 0.3
    allowed |= torch.eye(24, dtype=torch.bool)  # no fully masked row
    kw = {} if mask is None else {"attn_mask": allowed}
    if mask == "additive":
        kw = {"attn_mask": torch.zeros(allowed.shape, dtype=torch.bfloat16).masked_fill(~allowed, -1e4)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = att.sdpa(q, k, v, **kw)
        kernel = F.scaled_dot_product_attention(q, k, v, **kw)  # autocast's bf16 kernel
    want_kw = {"attn_mask": kw["attn_mask"].float()} if mask == "additive" else kw
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **want_kw).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    # nearer the exact value than the bf16 kernel (float64 of the same bf16 inputs)
    exact_kw = {"attn_mask": kw["attn_mask"].double()} if mask == "additive" else kw
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), **exact_kw)
    assert (got.double() - exact).abs().mean() < (kernel.double() - exact).abs().mean()
    got.float().square().sum().backward()  # gradients reach the bf16 inputs in their dtype
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


def test_with_amx_or_outside_bf16_autocast_it_is_torchs_kernel(monkeypatch):
    q, k, v = qkv(2)
    monkeypatch.setattr(att, "cpu_attention_in_fp32", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(att.sdpa(q, k, v), F.scaled_dot_product_attention(q, k, v))
    monkeypatch.setattr(att, "cpu_attention_in_fp32", lambda: True)
    assert torch.equal(att.sdpa(q, k, v), F.scaled_dot_product_attention(q, k, v))  # bf16 tensors, no autocast
    f = [t.detach().float() for t in (q, k, v)]
    assert torch.equal(att.sdpa(*f, is_causal=True), F.scaled_dot_product_attention(*f, is_causal=True))


def test_the_benchmark_runs_and_restores_the_rule(tmp_path):
    from benchmarks import cpu_attention

    pinned = att.cpu_attention_in_fp32
    doc = cpu_attention.main(["--quick", "--out", str(tmp_path / "a.json")])
    assert att.cpu_attention_in_fp32 is pinned
    assert set(doc["steps"]) == {"minitune, attention bf16", "minitune, attention fp32", "transformers"}
    assert all(r["bf16"] > 0 and r["fp32"] > 0 for r in doc["kernel_fwd_bwd_s"].values())
