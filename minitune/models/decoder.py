"""Llama (2, 3, 3.1, 3.2), Qwen2/Qwen2.5 and Gemma decoders: one model class, families told apart by config flags.

References: Touvron et al. 2023 (Llama), Llama 3 (wavelength-dependent RoPE rescaling), Qwen2 technical report,
Gemma (Mesnard et al. 2024), RoFormer (Su et al. 2021) for rotary embeddings, Ainslie et al. 2023 for grouped-query
attention. The reference implementation is transformers' `modeling_llama.py`, `modeling_qwen2.py`,
`modeling_gemma.py` and `modeling_rope_utils.py`.

What must match the reference (tested in tests/test_decoder.py against transformers on tiny random configs):
- state_dict() keys equal the Hub's (`model.layers.0.self_attn.q_proj.weight`, `model.norm.weight`, `score.weight`);
- RMSNorm cast order: Llama/Qwen2 normalise in fp32, cast to the input dtype, then multiply by the weight; Gemma
  multiplies by (1 + weight) in fp32 and casts last;
- Gemma scales embeddings by sqrt(hidden) rounded to the activation dtype (bf16: sqrt(3072) -> 55.5);
- RoPE (models/rope.py): inv_freq in fp32, half-split rotation, Llama 3 wavelength rescaling, cos/sin in fp32 cast
  to the activation dtype; position ids are arange(T) even under left padding, as the reference's classifier;
- Qwen2 has bias on q/k/v but not on o; Gemma takes head_dim from its config and uses tanh-GELU.
Where we differ on purpose: the classifier reads the last real token from the attention mask (the reference uses
the last token that is not the pad id, which is wrong when pad == eos).

This file holds the arithmetic only. Elsewhere: config.json parsing and its checks (`DecoderConfig`,
`config_from_hf`, `MODEL_TYPES`; re-exported here for the family registry) in models/decoder_config.py; the
unpadded path in models/decoder_unpadded.py; what a block's attention reads (`AttentionInputs`) in
models/attention.py.

Generation (models/generate.py, which holds the `KVCache`) uses `DecoderForCausalLM`: each layer appends its new
keys and values to its cache and attends over all of them; the mask then covers the cached keys too (queries are the
last t of S positions). This file sees the cache only structurally (`DecoderCache`, models/attention.py), so it never
imports generation. Tested in tests/test_generate.py: cached logits equal uncached ones, greedy tokens equal the
reference's generate().
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minitune.errors import ConfigError
from minitune.models.activations import ACTIVATIONS
from minitune.models.attention import UNPAD_MIN_SHARE, AttentionInputs, DecoderCache, choose_packing
from minitune.models.decoder_config import MODEL_TYPES, DecoderConfig, config_from_hf  # noqa: F401 (re-exported)
from minitune.models.decoder_unpadded import packed_self_attention, run_blocks_unpadded
from minitune.models.heads import Classifier
from minitune.models.rope import RotaryEmbedding, apply_rope

_ARCH_NAMES = {"llama": "Llama", "qwen2": "Qwen2", "gemma": "Gemma"}


# ---------------------------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, plus_one: bool):
        super().__init__()
        self.eps, self.plus_one = eps, plus_one
        # Gemma stores w with the 1 taken out, so a fresh norm is the identity in both layouts.
        self.weight = nn.Parameter(torch.zeros(dim) if plus_one else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.plus_one:
            return (h * (1.0 + self.weight.float())).to(dtype)
        # Llama casts before the weight multiply: bf16 rounding happens here, not after.
        return self.weight * h.to(dtype)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, Hkv * groups, T, D), each kv head serving `groups` consecutive query heads."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.groups, self.dropout = cfg.num_kv_groups, cfg.attention_dropout
        h, q, kv = cfg.hidden_size, self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.q_proj = nn.Linear(h, q, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, kv, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, kv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q, h, bias=cfg.o_bias)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        if inputs.pack is not None:
            return packed_self_attention(self, x, inputs.cos, inputs.sin, inputs.pack)
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rope(q, inputs.cos, inputs.sin), apply_rope(k, inputs.cos, inputs.sin)
        if inputs.cache is not None:
            k, v = inputs.cache.update(k, v)  # (B, Hkv, S, D): the cached keys and values, then these
        p = self.dropout if self.training else 0.0
        scale = self.head_dim**-0.5
        mask, dead = inputs.mask, inputs.dead_queries
        if mask is None:  # no padding: the causal flag lets SDPA pick its fastest kernel, GQA without copies
            # One new query after a cache sees every key; is_causal would align it with the first key instead.
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=p, is_causal=t > 1, scale=scale, enable_gqa=self.groups > 1
            )
        else:  # masked GQA would fall back to the slow math kernel on GPU; repeat kv instead
            k, v = _repeat_kv(k, self.groups), _repeat_kv(v, self.groups)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, H*D)
        if dead is not None:  # left-pad queries see no key; the reference's SDPA returns 0 for them
            y = y.masked_fill(dead[..., None], 0.0)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        # Registration order gives the Hub's key order in state_dict() and in saved files.
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), inputs)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_masks(attention_mask: torch.Tensor | None, t: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(B, S) 1/0 padding mask over all keys, the queries being the last t of them (S > t after a KV cache) ->
    ((B, 1, t, S) boolean SDPA mask, (B, t) "dead query" flags), or (None, None) when nothing is padded and
    attention can use is_causal (t == S) or needs no mask (t == 1).

    A left-pad query has no real key at or before it. SDPA gives 0 for such a fully masked row on PyTorch's CPU
    kernel, but finiteness is not promised on every backend, and a NaN there would reach real tokens through
    0 * NaN in the next layer's value product. So such rows attend to themselves, and their output is zeroed
    afterwards, which equals the reference.
    """
    s = t if attention_mask is None else attention_mask.shape[1]
    if attention_mask is None or (bool(attention_mask.all()) and (t == s or t == 1)):
        return None, None
    keep = attention_mask.bool()
    # Built from index comparisons and an integer cumsum: the same masks as tril / eye / a bool cumsum, in operations
    # that ONNX Runtime also runs (minitune export traces this function).
    key = torch.arange(s, device=keep.device)
    query = key[s - t :]  # query i sits at key position s - t + i
    causal, itself = key[None, :] <= query[:, None], key[None, :] == query[:, None]  # (t, S) key vs query
    dead = (keep.long().cumsum(-1) == 0)[:, s - t :]  # (B, t)
    mask = (causal & keep[:, None, :]) | (dead[:, :, None] & itself)
    return mask[:, None], dead  # (B, 1, t, S), (B, t)


class DecoderModel(nn.Module):
    """Token ids -> final-normed hidden states (B, T, H)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one)
        self.rotary_emb = RotaryEmbedding(cfg)
        self.gradient_checkpointing = False
        self.unpad_min_share = UNPAD_MIN_SHARE  # Classifier.set_unpadded sets it

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, H)
        if self.cfg.scale_embeddings:
            # sqrt(hidden) goes through fp32 into the activation dtype before the multiply, as the reference.
            scale = torch.tensor(self.cfg.hidden_size**0.5, dtype=torch.float32, device="cpu")
            x = x * scale.to(x.dtype).item()
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DecoderCache | None = None,
        unpad: bool = False,
    ) -> torch.Tensor:
        """With a cache, attention_mask covers the cached positions and these (B, S); position_ids are then due
        (generate.py counts them from the mask, as the reference's generate does).

        `unpad` (the sequence classifier; no cache, default positions): when enough of the batch is padding, the
        blocks run on the real tokens only and the result comes back padded, zeros at pads
        (models/decoder_unpadded.py)."""
        t = input_ids.shape[1]
        x = self.embed(input_ids)
        pack = choose_packing(attention_mask, self.unpad_min_share) if unpad and cache is None else None
        if pack is not None and position_ids is None and pack.min_len > 0:  # an empty row reads a pad
            return run_blocks_unpadded(self, x, pack)
        if position_ids is None:  # arange even with left padding, like the reference (RoPE is relative anyway)
            position_ids = torch.arange(t, device=x.device)[None]  # (1, T)
        cos, sin = self.rotary_emb(x, position_ids)
        cos, sin = cos[:, None], sin[:, None]  # (B|1, 1, T, D), broadcast over heads
        if cache is not None and attention_mask is None and len(cache):
            attention_mask = torch.ones(x.shape[0], len(cache) + t, dtype=torch.long, device=x.device)
        mask, dead = attention_masks(attention_mask, t)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            inputs = AttentionInputs(cos, sin, mask, dead, cache=cache.layers[i] if cache is not None else None)
            x = checkpoint(layer, x, inputs, use_reentrant=False) if ckpt else layer(x, inputs)
        return self.norm(x)


# ---------------------------------------------------------------------------------------------- heads


def last_token_index(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) index of the last real token, from the mask: right for left and right padding and when pad == eos.
    Without a mask every row is taken as full; a row with no real token gives 0."""
    b, t = input_ids.shape
    if attention_mask is None:
        return torch.full((b,), t - 1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(t, device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(-1)


def init_head(module: nn.Module, std: float) -> None:
    """The reference's init for a fresh head: Linear weights N(0, std), biases zero."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DecoderForSequenceClassification(Classifier):
    """forward(input_ids, attention_mask) -> logits (B, num_labels), read at the last real token."""

    base_prefix = "model"

    def __init__(self, cfg: DecoderConfig, num_labels: int):
        super().__init__()
        self.cfg, self.num_labels = cfg, num_labels
        self.model = DecoderModel(cfg)
        self.score = nn.Linear(cfg.hidden_size, num_labels, bias=False)
        init_head(self.score, cfg.initializer_range)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.model.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.model.gradient_checkpointing = on

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """token_type_ids is accepted for a call shared with the encoders and ignored (decoders have none)."""
        hidden = self.model(input_ids, attention_mask, unpad=True)  # (B, T, H)
        idx = last_token_index(input_ids, attention_mask)
        b = input_ids.shape[0]
        # Pool first, then score: the reference scores every token, then picks one; equal up to matmul rounding.
        return self.score(hidden[torch.arange(b, device=hidden.device), idx])  # (B, num_labels)


class DecoderForCausalLM(nn.Module):
    """forward(input_ids, attention_mask, position_ids, cache) -> next-token logits (B, T, V) in fp32 (or of the
    last `keep_last` positions only). A tied checkpoint has no lm_head weight: the embedding matrix serves."""

    base_prefix = "model"

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.model = DecoderModel(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, *inputs, keep_last: int | None = None) -> torch.Tensor:
        """inputs: those of DecoderModel.forward (input_ids, attention_mask, position_ids, cache)."""
        hidden = self.model(*inputs)  # (B, T, H)
        if keep_last is not None:
            hidden = hidden[:, -keep_last:]
        weight = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        return F.linear(hidden, weight).float()  # (B, T, V)


HEADS = ("sequence", "causal_lm")


def build(cfg: DecoderConfig, head: str, num_labels: int) -> nn.Module:
    if head not in HEADS:
        raise ConfigError(
            f"head={head!r} is not supported for {cfg.model_type} (decoder) models; use one of {', '.join(HEADS)}"
        )
    return DecoderForCausalLM(cfg) if head == "causal_lm" else DecoderForSequenceClassification(cfg, num_labels)


def hf_architecture(model_type: str, head: str) -> str:
    """model_type is one of MODEL_TYPES: the registry (models/__init__.py family_for) sends only those here."""
    if head not in HEADS:
        raise ConfigError(
            f"head={head!r} is not supported for {model_type} (decoder) models; use one of {', '.join(HEADS)}"
        )
    return _ARCH_NAMES[model_type] + ("ForCausalLM" if head == "causal_lm" else "ForSequenceClassification")


def usable_positions(hf: dict) -> int | None:
    """None: rotary positions have no table to index past; the limit is the tokenizer's and the context's."""
    return None
