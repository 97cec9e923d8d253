"""minitune.models.decoder against transformers (the reference) on tiny random configs.

Parity: Llama with llama3 RoPE scaling (tied and untied, both config.json layouts), Llama with biases, Qwen2 (q/k/v
bias) and Gemma (own head_dim, legacy "gelu"): the reference's state_dict loads strictly into ours and logits and
hidden states agree to 1e-5 in fp32 under left, right and no padding. Then each numeric quirk on its own (RoPE tables,
llama3 inv_freq, RMSNorm casts in bf16, Gemma's bf16 embedding scale), position ids under left padding, gradient
checkpointing, pooling when pad == eos, config parsing and its errors.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch.testing import assert_close

from minitune.errors import ConfigError
from minitune.models import decoder as dec
from minitune.models.rope import rope_inv_freq
from tolerance import assert_close_scaled

transformers = pytest.importorskip("transformers", reason="parity tests compare against transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm, GemmaTextScaledWordEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

PAD, BOS, EOS, NUM_LABELS = 0, 1, 2, 3
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # small original context so the 8 frequencies of head_dim 16 fall in all three llama3 bands
    "original_max_position_embeddings": 64,
}


def hub(model_type: str, **over) -> dict:
    """A config.json as the Hub has it, shrunk: 2 layers, hidden 64, 4 query / 2 kv heads, vocab 100."""
    d = dict(
        model_type=model_type,
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=128,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    d.update(over)
    return d


CONFIGS = {
    # transformers 4 layout: top-level rope_theta + rope_scaling
    "llama3_tied": hub("llama", rope_theta=500000.0, rope_scaling=dict(LLAMA3), tie_word_embeddings=True),
    # transformers 5 layout: everything under rope_parameters
    "llama3_untied": hub("llama", rope_parameters=dict(LLAMA3, rope_theta=500000.0), tie_word_embeddings=False),
    "llama_bias": hub("llama", attention_bias=True, mlp_bias=True, rope_theta=10000.0),
    "qwen2": hub("qwen2", rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "gemma": hub("gemma", head_dim=24, hidden_act="gelu", tie_word_embeddings=True),
}


def reference(d: dict, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The transformers classifier with weights big enough that attention is peaked and RoPE matters.

    Built in `dtype` as from_pretrained(dtype=...) builds it: that keeps RoPE's inv_freq in fp32, while
    `.to(torch.bfloat16)` on a built reference would round inv_freq to bf16 (we never do that)."""
    cfg = transformers.AutoConfig.for_model(
        **{k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}, num_labels=NUM_LABELS
    )
    model = transformers.AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # Gemma stores w with 1 taken out, Llama/Qwen2 around 1
                mean = 0.0 if d["model_type"] == "gemma" else 1.0
                p.copy_(mean + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model.eval()


@functools.cache
def pair(name: str) -> tuple[torch.nn.Module, dec.DecoderForSequenceClassification]:
    ref = reference(CONFIGS[name])
    ours = dec.build(dec.config_from_hf(CONFIGS[name]), "sequence", NUM_LABELS)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def batch(lengths: list[int], side: str, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows of real ids in [3, 100) (never pad/bos/eos, so the reference's pad-id rule finds the same last
    token as the mask), padded with PAD on `side`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), t), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        span = slice(t - n, t) if side == "left" else slice(0, n)
        ids[i, span] = torch.randint(3, 100, (n,), generator=g)
        mask[i, span] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_keys_equal_the_hub(name):
    ref, ours = pair(name)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert not list(ours.buffers()), "no buffers: nothing outside the checkpoint to load or to put on a device"
    keys = set(ours.state_dict())
    assert {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "score.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.0.input_layernorm.weight",
    } <= keys
    assert "score.bias" not in keys
    if name == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in keys and "model.layers.0.self_attn.o_proj.bias" not in keys


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("side", ["left", "right", "none"])
def test_logits_and_hidden_states_match_reference(name, side):
    ref, ours = pair(name)
    if side == "none":
        ids, mask = batch([7, 7], "right", 7, seed=3)
    else:
        ids, mask = batch([9, 4, 6, 1], side, 9, seed=1)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
        assert_close(ours(ids, mask), expected, atol=1e-5, rtol=1e-5)
        # every position, pads included: left-pad rows must be the reference's zeros-from-attention, not NaN
        hidden = ref.model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_close(ours.model(ids, mask), hidden, atol=1e-5, rtol=1e-5)
        if side == "none":
            assert_close(ours(ids), expected, atol=1e-5, rtol=1e-5)
    assert expected.abs().max() > 0.1, "logits too small for the comparison to mean anything"


def test_llama3_scaling_is_needed_for_parity():
    """Sensitivity check: the same weights with plain RoPE miss the reference, so the parity above tests llama3."""
    ref, ours = pair("llama3_untied")
    plain = dec.build(dataclasses.replace(ours.cfg, rope_type="default"), "sequence", NUM_LABELS)
    plain.load_state_dict(ours.state_dict())
    ids, mask = batch([9, 5], "right", 9, seed=2)
    with torch.no_grad():
        gap = (plain.eval()(ids, mask) - ref(input_ids=ids, attention_mask=mask).logits).abs().max()
    assert gap > 1e-3


@pytest.mark.parametrize("name", ["llama3_tied", "gemma"])
def test_bf16_model_matches_reference(name):
    ref, ours = pair(name)
    ref16 = reference(CONFIGS[name], torch.bfloat16)
    assert ref16.model.rotary_emb.inv_freq.dtype == torch.float32
    ours16 = dec.build(ours.cfg, "sequence", NUM_LABELS).to(torch.bfloat16).eval()
    ours16.load_state_dict(ref16.state_dict(), strict=True)
    ids, mask = batch([8, 3, 5], "left", 8, seed=4)
    with torch.no_grad():
        hidden = ref16.model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_close(ours16.model(ids, mask), hidden, atol=0, rtol=0)
        logits = ref16(input_ids=ids, attention_mask=mask).logits
        assert_close(ours16(ids, mask), logits, atol=2e-2, rtol=2e-2)  # pool-then-score vs score-then-pool


# ---------------------------------------------------------------------------------------------- numeric quirks


@pytest.mark.parametrize("name", ["llama3_tied", "gemma", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_cos_sin_match_reference_rotary_module(name, dtype):
    ref, ours = pair(name)
    x = torch.zeros(1, dtype=dtype)
    far = torch.randint(0, 100000, (2, 17), generator=torch.Generator().manual_seed(0))  # large angles, per row
    positions = [torch.arange(4096)[None], far]
    for pos in positions:
        got, want = ours.model.rotary_emb(x, pos), ref.model.rotary_emb(x, position_ids=pos)
        for g, w in zip(got, want):
            assert g.dtype == dtype
            assert_close(g, w, atol=0, rtol=0)


@pytest.mark.parametrize(
    "params",
    [
        dict(head_dim=16, rope_theta=500000.0, factor=8.0, low=1.0, high=4.0, ctx=64),  # the tiny parity config
        dict(head_dim=128, rope_theta=500000.0, factor=8.0, low=1.0, high=4.0, ctx=8192),  # Llama 3.1 8B
        dict(head_dim=64, rope_theta=500000.0, factor=32.0, low=1.0, high=4.0, ctx=8192),  # Llama 3.2 1B
    ],
)
def test_llama3_inv_freq_matches_reference_init(params):
    rope = {
        "rope_type": "llama3",
        "rope_theta": params["rope_theta"],
        "factor": params["factor"],
        "low_freq_factor": params["low"],
        "high_freq_factor": params["high"],
        "original_max_position_embeddings": params["ctx"],
    }
    d = hub("llama", hidden_size=4 * params["head_dim"], num_attention_heads=4, rope_parameters=rope)
    hf_cfg = transformers.AutoConfig.for_model(**d)
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg)
    cfg = dec.config_from_hf(d)
    got = rope_inv_freq(cfg)
    assert got.dtype == torch.float32
    assert_close(got, want, atol=0, rtol=0)
    plain = rope_inv_freq(dataclasses.replace(cfg, rope_type="default"))
    wavelen = 2 * torch.pi / plain
    bands = (wavelen < params["ctx"] / params["high"], wavelen > params["ctx"] / params["low"])
    assert bands[0].any() and bands[1].any() and (~bands[0] & ~bands[1]).any(), "all three bands exercised"
    assert_close(got[bands[0]], plain[bands[0]], atol=0, rtol=0)  # high frequencies untouched
    assert_close(got[bands[1]], plain[bands[1]] / params["factor"], atol=0, rtol=0)  # low ones slowed


def _alt_llama_order(x, w, eps):
    """The cast order the reference does NOT use: multiply in fp32, cast last."""
    h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return (w.float() * h).to(x.dtype)


def test_rmsnorm_llama_cast_order_in_bf16():
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(16, 64, generator=g)).to(torch.bfloat16)
    w = (1 + 0.3 * torch.randn(64, generator=g)).to(torch.bfloat16)
    ref, ours = LlamaRMSNorm(64, eps=1e-6).to(torch.bfloat16), dec.RMSNorm(64, 1e-6, plus_one=False).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.copy_(w)
        ours.weight.copy_(w)
        assert_close(ours(x), ref(x), atol=0, rtol=0)
        assert not torch.equal(_alt_llama_order(x, w, 1e-6), ref(x)), "the test distinguishes the cast orders"
        # fp32 weights with bf16 activations (autocast): the product promotes to fp32, as in the reference
        ref32, ours32 = LlamaRMSNorm(64, eps=1e-6), dec.RMSNorm(64, 1e-6, plus_one=False)
        ref32.weight.copy_(w.float())
        ours32.weight.copy_(w.float())
        assert ours32(x).dtype == ref32(x).dtype == torch.float32
        assert_close(ours32(x), ref32(x), atol=0, rtol=0)


def test_rmsnorm_gemma_plus_one_in_fp32_in_bf16():
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(16, 64, generator=g)).to(torch.bfloat16)
    w = (0.3 * torch.randn(64, generator=g)).to(torch.bfloat16)
    ref, ours = GemmaRMSNorm(64, eps=1e-6).to(torch.bfloat16), dec.RMSNorm(64, 1e-6, plus_one=True).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.copy_(w)
        ours.weight.copy_(w)
        assert_close(ours(x), ref(x), atol=0, rtol=0)
        h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        llama_order = (1 + w) * h.to(torch.bfloat16)  # cast first, (1 + w) in bf16
        assert not torch.equal(llama_order, ref(x)), "the test distinguishes the cast orders"
    assert torch.equal(dec.RMSNorm(8, 1e-6, plus_one=True).weight, torch.zeros(8)), "fresh Gemma norm is identity"


def test_gemma_embedding_scale_rounds_to_bf16():
    hidden = 3072  # Gemma 7B: sqrt(3072) = 55.4256..., 55.5 in bf16
    cfg = dec.DecoderConfig(
        model_type="gemma",
        vocab_size=16,
        hidden_size=hidden,
        intermediate_size=8,
        num_hidden_layers=0,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        hidden_act="gelu_pytorch_tanh",
        norm_plus_one=True,
        scale_embeddings=True,
        pad_token_id=0,
    )
    ours = dec.DecoderModel(cfg).to(torch.bfloat16)
    ref = GemmaTextScaledWordEmbedding(16, hidden, 0, embed_scale=hidden**0.5).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(16, hidden).to(torch.bfloat16))
        ours.embed_tokens.weight.copy_(ref.weight)
    ids = torch.arange(1, 16)[None]
    got, want = ours.embed(ids), ref(ids)
    assert got.dtype == torch.bfloat16
    assert_close(got, want, atol=0, rtol=0)
    assert torch.equal(want, ref.weight[ids] * 55.5)
    assert not torch.equal((ref.weight[ids].float() * hidden**0.5).to(torch.bfloat16), want)


# ---------------------------------------------------------------------------------------------- positions, pooling


def _capture_positions(module: torch.nn.Module, seen: list) -> torch.utils.hooks.RemovableHandle:
    def hook(_m, args, kwargs):
        seen.append(kwargs["position_ids"] if "position_ids" in kwargs else args[1])

    return module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("unpadded", [False, True])
@pytest.mark.parametrize("name", ["llama3_tied", "gemma"])
def test_position_ids_are_arange_under_left_padding(name, unpadded):
    """The reference's classifier passes no position ids, so positions are arange(T) even for left-padded rows
    (the first real token of a 3-token row in a 9-wide batch sits at position 6). Pin both to that; the unpadded
    path gives each real token of the (N,) stack its column."""
    ref, ours = pair(name)
    ours.set_unpadded(unpadded)
    ids, mask = batch([9, 3], "left", 9, seed=5)
    seen_ref, seen_ours = [], []
    handles = [_capture_positions(ref.model.rotary_emb, seen_ref), _capture_positions(ours.model.rotary_emb, seen_ours)]
    try:
        with torch.no_grad():
            ref(input_ids=ids, attention_mask=mask)
            ours(ids, mask)
    finally:
        for h in handles:
            h.remove()
    arange = torch.arange(9).expand(2, 9)
    assert torch.equal(seen_ref[0].expand(2, 9), arange)
    if unpadded:
        assert torch.equal(seen_ours[0], arange[mask.bool()][None])  # (1, N): 0..8, then 6, 7, 8
    else:
        assert torch.equal(seen_ours[0].expand(2, 9), arange)


def test_mask_gives_every_query_a_key():
    """No fully masked SDPA row whatever the kernel: left-pad queries (and only they) attend to themselves."""
    ids, mask = batch([6, 2, 1], "left", 6, seed=9)
    sdpa_mask, dead = dec.attention_masks(mask, 6)
    assert sdpa_mask.shape == (3, 1, 6, 6) and bool(sdpa_mask.any(-1).all())
    assert torch.equal(dead, mask == 0)  # left padding: the dead queries are exactly the pads
    causal_real = torch.ones(6, 6, dtype=torch.bool).tril() & mask.bool()[:, None, :]
    assert torch.equal(sdpa_mask[:, 0] & ~dead[:, :, None], causal_real & ~dead[:, :, None])
    ids, mask = batch([6, 2], "right", 6, seed=9)
    assert not dec.attention_masks(mask, 6)[1].any(), "right-pad queries still see the real tokens before them"
    assert dec.attention_masks(torch.ones(2, 6), 6) == (None, None)


def test_left_padding_does_not_change_logits():
    """RoPE is relative, so shifted positions and masked pads leave a row's logits as if it were alone."""
    _, ours = pair("qwen2")
    ids, mask = batch([9, 3], "left", 9, seed=6)
    with torch.no_grad():
        alone = ours(ids[1:, 6:], mask[1:, 6:])
        assert_close(ours(ids, mask)[1:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_equals_eos_pools_at_last_real_token(side):
    """pad == eos and each row ends in a real eos: the mask says the eos is the last real token. The reference's
    "last id that is not pad" rule stops one token early; ours must equal the reference's per-token scores at the
    eos, and differ from its pooled output."""
    d = dict(CONFIGS["llama3_untied"], pad_token_id=EOS)
    ref = reference(d)
    ours = dec.build(dec.config_from_hf(d), "sequence", NUM_LABELS)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    lengths, t = [8, 4, 6], 8
    ids, mask = batch(lengths, side, t, seed=7)
    ids[mask == 0] = EOS
    last = torch.tensor([t - 1 if side == "left" else n - 1 for n in lengths])
    ids[torch.arange(3), last] = EOS  # a real eos closes every row
    with torch.no_grad():
        per_token = ref.score(ref.model(input_ids=ids, attention_mask=mask).last_hidden_state)  # (B, T, L)
        expected = per_token[torch.arange(3), last]
        got = ours(ids, mask)
        assert_close(got, expected, atol=1e-5, rtol=1e-5)
        ref_pooled = ref(input_ids=ids, attention_mask=mask).logits
    assert (got - ref_pooled).abs().max() > 1e-3, "the reference's pad-id rule picks another token here"
    assert torch.equal(dec.last_token_index(ids, mask), last)


# ---------------------------------------------------------------------------------------------- training


def _grads(model, ids, mask, labels, monkeypatch) -> tuple[dict, int]:
    calls = []  # counted in forward itself: module hooks do not fire again when checkpointing recomputes
    forward = dec.MLP.forward
    monkeypatch.setattr(dec.MLP, "forward", lambda self, x: calls.append(1) or forward(self, x))
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(ids, mask), labels).backward()
    monkeypatch.setattr(dec.MLP, "forward", forward)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)


def test_gradient_checkpointing_gives_same_gradients_with_frozen_embeddings(monkeypatch):
    ref, base = pair("llama3_untied")
    ours = dec.build(base.cfg, "sequence", NUM_LABELS)
    ours.load_state_dict(base.state_dict())
    ours.train()
    ours.model.embed_tokens.weight.requires_grad_(False)  # block inputs do not require grad
    ids, mask = batch([9, 4, 6], "left", 9, seed=8)
    labels = torch.tensor([0, 2, 1])
    plain, n_plain = _grads(ours, ids, mask, labels, monkeypatch)
    ours.gradient_checkpointing = True
    assert ours.model.gradient_checkpointing
    ckpt, n_ckpt = _grads(ours, ids, mask, labels, monkeypatch)
    assert n_plain == 2 and n_ckpt == 4, "checkpointing recomputed each block in backward"
    assert plain.keys() == ckpt.keys() and "model.layers.0.self_attn.q_proj.weight" in plain
    for k in plain:
        assert_close_scaled(ckpt[k], plain[k], atol=1e-6, rtol=1e-6, name=k)
    # and the gradients are the reference's
    ref.zero_grad()
    torch.nn.functional.cross_entropy(ref(input_ids=ids, attention_mask=mask).logits, labels).backward()
    ref_params = dict(ref.named_parameters())
    for k in plain:
        assert_close_scaled(plain[k], ref_params[k].grad, atol=1e-5, rtol=1e-5, name=k)
    ref.zero_grad()


def test_init_head_is_normal_with_zero_bias():
    head = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.Linear(256, 4, bias=False))
    dec.init_head(head, std=0.02)
    w = head[0].weight
    assert abs(w.std().item() - 0.02) < 0.0005 and abs(w.mean().item()) < 0.0005
    assert torch.equal(head[0].bias, torch.zeros(256))
    fresh = dec.build(dec.config_from_hf(hub("llama", hidden_size=512, initializer_range=0.05)), "sequence", 64)
    assert abs(fresh.score.weight.std().item() - 0.05) < 0.003


def test_builds_on_meta_device():
    with torch.device("meta"):
        model = dec.build(dec.config_from_hf(CONFIGS["gemma"]), "sequence", 2)
    assert all(p.is_meta for p in model.parameters())
    assert model.state_dict()["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 24, 64)


# ---------------------------------------------------------------------------------------------- config


def test_config_layouts_agree_with_reference_parsing():
    old, new = dec.config_from_hf(CONFIGS["llama3_tied"]), dec.config_from_hf(CONFIGS["llama3_untied"])
    assert dataclasses.replace(old, tie_word_embeddings=False) == new
    rp = transformers.AutoConfig.for_model(**CONFIGS["llama3_tied"]).rope_parameters
    assert (
        old.rope_type,
        old.rope_theta,
        old.rope_factor,
        old.rope_low_freq_factor,
        old.rope_high_freq_factor,
        old.rope_original_max_position_embeddings,
    ) == (
        rp["rope_type"],
        rp["rope_theta"],
        rp["factor"],
        rp["low_freq_factor"],
        rp["high_freq_factor"],
        rp["original_max_position_embeddings"],
    )
    legacy_scaling = {("type" if k == "rope_type" else k): v for k, v in LLAMA3.items()}  # pre-4.45 key name
    legacy = dict(CONFIGS["llama3_tied"], rope_scaling=legacy_scaling)
    assert dec.config_from_hf(legacy) == old
    g = dec.config_from_hf(CONFIGS["gemma"])
    assert (g.head_dim, g.hidden_act, g.norm_plus_one, g.scale_embeddings) == (24, "gelu_pytorch_tanh", True, True)
    q = dec.config_from_hf(CONFIGS["qwen2"])
    assert (q.qkv_bias, q.o_bias, q.rope_theta, q.head_dim) == (True, False, 1000000.0, 16)
    assert dec.config_from_hf(hub("llama", head_dim=None)).head_dim == 16


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"model_type": "bert"}, "model_type"),
        ({"hidden_size": None}, "hidden_size"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"hidden_act": "relu2"}, "hidden_act"),
        ({"pad_token_id": 100}, "pad_token_id"),
        (
            {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0},
            "use_sliding_window",
        ),
    ],
)
def test_config_errors_name_the_problem(change, needle):
    with pytest.raises(ConfigError) as e:
        dec.config_from_hf(dict(hub("llama"), **change))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_build_and_architecture_names():
    for name in ("llama3_tied", "qwen2", "gemma"):
        ref, _ = pair(name)
        assert dec.hf_architecture(CONFIGS[name]["model_type"], "sequence") == type(ref).__name__
    assert dec.MODEL_TYPES == ("llama", "qwen2", "gemma")
    cfg = dec.config_from_hf(CONFIGS["qwen2"])
    with pytest.raises(ConfigError, match="sequence"):
        dec.build(cfg, "multiple_choice", 2)
    with pytest.raises(ConfigError, match="sequence"):
        dec.hf_architecture("llama", "multiple_choice")
    assert isinstance(dec.build(cfg, "sequence", 2), dec.DecoderForSequenceClassification)
