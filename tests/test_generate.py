"""KV-cache generation against transformers: cached logits equal a full forward pass, and greedy tokens equal the
reference's generate(do_sample=False) token for token for Llama, Qwen2 and Gemma tiny random configs (batched,
left-padded prompts of different lengths) and for the real SmolLM2; sampling is seeded; stop strings stop."""

from __future__ import annotations

import functools

import pytest
import torch

from minitune.errors import ParameterError
from minitune.models import decoder as dec
from minitune.models.generate import GenerationConfig, KVCache, generate, left_pad, positions, top_p_filter
from test_decoder import hub  # the same shrunk config.json: 2 layers, hidden 64, vocab 100
from tolerance import assert_close_scaled

transformers = pytest.importorskip("transformers", reason="parity tests compare against transformers")

PAD, BOS, EOS, VOCAB = 0, 1, 2, 100


CONFIGS = {
    "llama": hub("llama", rope_theta=10000.0, tie_word_embeddings=False),
    "qwen2": hub("qwen2", rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "gemma": hub("gemma", head_dim=24, hidden_act="gelu", tie_word_embeddings=True),
}
PROMPTS = [[5, 17, 33, 41, 8, 60, 72], [9, 44, 3], [71, 12, 25, 88, 13]]


@functools.cache
def pair(name: str):
    """The reference CausalLM with peaked random weights, and ours holding the same weights."""
    cfg = transformers.AutoConfig.for_model(**CONFIGS[name])
    ref = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.copy_((0.0 if name == "gemma" else 1.0) + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((1.0 if "embed" in n else 0.15) * torch.randn(p.shape, generator=g))
    ours = dec.build(dec.config_from_hf(CONFIGS[name]), "causal_lm", 0)
    state = ref.state_dict()
    if ours.cfg.tie_word_embeddings:
        state.pop("lm_head.weight")  # the reference's tied lm_head is the embedding matrix
    ours.load_state_dict(state, strict=True)
    return ref.eval(), ours.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_logits_equal_uncached(name):
    _, ours = pair(name)
    ids, mask = left_pad(PROMPTS, PAD)
    follow = torch.tensor([[11, 12, 13], [21, 22, 23], [31, 32, 33]])
    cache = KVCache(ours.cfg.num_hidden_layers)
    with torch.no_grad():
        steps = [ours(ids, mask, positions(mask), cache)]
        for j in range(follow.shape[1]):
            mask = torch.cat((mask, torch.ones(3, 1, dtype=torch.long)), 1)
            steps.append(ours(follow[:, j : j + 1], mask, positions(mask)[:, -1:], cache))
        full = ours(torch.cat((ids, follow), 1), mask, positions(mask))
    assert len(cache) == full.shape[1]
    real = mask.bool()
    # 1e-5 of the logits' scale (they reach ~10 with these peaked weights): summation order differs, nothing else
    assert_close_scaled(torch.cat(steps, 1)[real], full[real], atol=1e-5, rtol=1e-5, name="cached logits")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_tokens_equal_reference_generate(name):
    ref, ours = pair(name)
    ids, mask = left_pad(PROMPTS, PAD)
    want = ref.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )[:, ids.shape[1] :]
    got = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=12, eos_token_ids=[EOS], pad_token_id=PAD))
    for row, toks in zip(want.tolist(), got):
        assert toks == row[: len(toks)]
        assert all(t == PAD for t in row[len(toks) :])  # the reference pads what follows an eos
    # without the cache: the same tokens
    slow = GenerationConfig(max_new_tokens=12, eos_token_ids=[EOS], pad_token_id=PAD, use_cache=False)
    assert generate(ours, PROMPTS, slow) == got


def test_greedy_stops_at_eos_and_keeps_it():
    _, ours = pair("llama")
    free = generate(ours, PROMPTS[:1], GenerationConfig(max_new_tokens=6))[0]
    stop = free[2]
    got = generate(ours, PROMPTS[:1], GenerationConfig(max_new_tokens=6, eos_token_ids=[stop]))[0]
    assert got == free[: free.index(stop) + 1]


def test_stop_strings_end_a_row():
    _, ours = pair("qwen2")
    free = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=8))
    decode = lambda toks: " ".join(f"t{t}" for t in toks)  # noqa: E731
    target = f"t{free[0][3]}"
    got = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=8, stop_strings=[target], decode=decode))
    assert got[0] == free[0][: free[0].index(free[0][3]) + 1]
    for g, f in zip(got, free):
        assert g == f[: len(g)] and (len(g) == 8 or target in decode(g))


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
    _, ours = pair("gemma")
    # a hot temperature: the peaked random model would repeat one token otherwise
    cfg = lambda seed: GenerationConfig(max_new_tokens=6, do_sample=True, temperature=20.0, top_p=0.95, seed=seed)  # noqa: E731
    a, b, c = (generate(ours, PROMPTS, cfg(s)) for s in (3, 3, 4))
    assert a == b and a != c
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = top_p_filter(logits, 0.8).isfinite()[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert top_p_filter(logits, 0.1).isfinite()[0].tolist() == [True, False, False, False]
    # top_p that keeps one token is greedy
    greedy = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=6))
    nucleus1 = GenerationConfig(max_new_tokens=6, do_sample=True, top_p=1e-6, seed=1)
    assert generate(ours, PROMPTS, nucleus1) == greedy


def test_generation_config_errors():
    with pytest.raises(ParameterError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ParameterError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ParameterError, match="decode"):
        GenerationConfig(stop_strings=["\n"])


@pytest.mark.slow
def test_smollm2_greedy_equals_reference_generate():
    """The real SmolLM2 (dequantized from its GGUF) in ours and in transformers' LlamaForCausalLM."""
    from minitune.checkpoints.load import load_model, load_tokenizer
    from minitune.data.chat import load_chat_template

    ours = load_model("smollm2", head="causal_lm")
    tok = load_tokenizer("smollm2")
    template = load_chat_template("smollm2", tok)
    cfg = transformers.LlamaConfig(**{k: v for k, v in ours.hf_config.items() if k != "architectures"})
    ref = transformers.LlamaForCausalLM(cfg).eval()
    state = ours.state_dict() | {"lm_head.weight": ours.model.embed_tokens.weight}
    ref.load_state_dict(state, strict=True)
    texts = ["What is the capital of France?", "Is this review positive or negative? 'Great film!'", "Say hi."]
    prompts = [template.encode(tok, [{"role": "user", "content": t}]) for t in texts]
    eos = tok.eos_token_id
    ids, mask = left_pad(prompts, eos)
    want = ref.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=eos, eos_token_id=eos
    )[:, ids.shape[1] :]
    got = generate(ours, prompts, GenerationConfig(max_new_tokens=6, eos_token_ids=[eos], pad_token_id=eos))
    for row, toks in zip(want.tolist(), got):
        assert toks == row[: len(toks)]
    assert "Paris" in tok.decode(got[0])
