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
- RoPE: inv_freq in fp32, half-split rotation, Llama 3 wavelength rescaling, cos/sin in fp32 cast to the
  activation dtype; position ids are arange(T) even under left padding, as the reference's sequence classifier;
- Qwen2 has bias on q/k/v but not on o; Gemma takes head_dim from its config and uses tanh-GELU.
Where we differ on purpose: the classifier reads the last real token from the attention mask (the reference uses
the last token that is not the pad id, which is wrong when pad == eos).

Generation (models/generate.py) uses `DecoderForCausalLM` and a `KVCache`: each layer appends its new keys and
values to the cache and attends over all of them; the mask then covers the cached keys too (queries are the last
t of S positions). Tested in tests/test_generate.py: cached logits equal uncached ones, greedy tokens equal the
reference's generate().
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minitune.errors import ConfigError
from minitune.models.activations import ACTIVATIONS
from minitune.models.attention import Packing, choose_packing
from minitune.models.bert import UNPAD_MIN_SHARE
from minitune.models.decoder_unpadded import packed_self_attention, run_blocks_unpadded
from minitune.models.heads import Classifier
from minitune.models.rope import RotaryEmbedding, apply_rope

MODEL_TYPES = ("llama", "qwen2", "gemma")
_ARCH_NAMES = {"llama": "Llama", "qwen2": "Qwen2", "gemma": "Gemma"}
_ROPE_TYPES = ("default", "llama3")


@dataclass
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default" or "llama3"
    rope_factor: float = 1.0  # llama3 only, as are the three fields below
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_plus_one: bool = False  # Gemma: x_norm * (1 + weight)
    scale_embeddings: bool = False  # Gemma: embeddings * sqrt(hidden)
    tie_word_embeddings: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        where = "config.json"
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{where}: model_type {self.model_type!r} is not a decoder family; use one of {', '.join(MODEL_TYPES)}"
            )
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{where}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; fix the head counts"
            )
        if self.head_dim % 2:
            raise ConfigError(f"{where}: head_dim={self.head_dim} is odd; rotary embeddings need an even head_dim")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"{where}: hidden_act={self.hidden_act!r} is not supported; use one of {', '.join(sorted(ACTIVATIONS))}"
            )
        if self.rope_type not in _ROPE_TYPES:
            raise ConfigError(
                f"{where}: rope type {self.rope_type!r} is not supported; "
                f"use one of {', '.join(_ROPE_TYPES)} (rope_parameters / rope_scaling)"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"{where}: pad_token_id={self.pad_token_id} is outside the vocabulary "
                f"(vocab_size={self.vocab_size}); set a valid pad_token_id"
            )

    @property
    def num_kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, d: dict) -> DecoderConfig:
        """A Hub config.json dict; rope settings in the transformers 4 layout (rope_theta, rope_scaling) or the 5
        layout (rope_parameters)."""
        kind = d.get("model_type")
        if kind not in MODEL_TYPES:
            raise ConfigError(
                f"config.json: model_type {kind!r} is not a decoder family; use one of {', '.join(MODEL_TYPES)}"
            )
        sizes = {
            k: _required(d, k)
            for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        }
        heads, gemma = sizes["num_attention_heads"], kind == "gemma"
        _reject_unsupported(d, kind, sizes["num_hidden_layers"])
        act = d.get("hidden_act") or ("gelu_pytorch_tanh" if gemma else "silu")
        if gemma and act == "gelu":  # the reference reads Gemma's legacy "gelu" as the tanh approximation
            act = "gelu_pytorch_tanh"
        attention_bias = bool(d.get("attention_bias", False))
        max_pos = d.get("max_position_embeddings") or {"llama": 2048, "qwen2": 32768, "gemma": 8192}[kind]
        return cls(
            model_type=kind,
            **sizes,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or (256 if gemma else sizes["hidden_size"] // heads),
            rms_norm_eps=d.get("rms_norm_eps") or 1e-6,
            hidden_act=act,
            max_position_embeddings=max_pos,
            **_rope_fields(d, max_pos),
            qkv_bias=True if kind == "qwen2" else attention_bias,
            o_bias=False if kind == "qwen2" else attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)) if kind == "llama" else False,
            norm_plus_one=gemma,
            scale_embeddings=gemma,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", gemma)),
            attention_dropout=float(d.get("attention_dropout") or 0.0),
            initializer_range=d.get("initializer_range") or 0.02,
            pad_token_id=d.get("pad_token_id", 0 if gemma else None),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )


def _required(d: dict, key: str) -> int:
    if d.get(key) is None:
        raise ConfigError(f"config.json: missing {key!r}; the file is incomplete, download it again")
    return d[key]


def _reject_unsupported(d: dict, kind: str, n_layers: int) -> None:
    """Features of these families we do not implement: fail loudly rather than compute something else."""
    if kind == "qwen2" and d.get("use_sliding_window"):
        first_sliding = d.get("max_window_layers", 28)
        if d.get("sliding_window", 4096) is not None and first_sliding < n_layers:
            raise ConfigError(
                "config.json: use_sliding_window=true is not supported; set it to false "
                "(sequences shorter than sliding_window give the same result)"
            )
    if "sliding_attention" in (d.get("layer_types") or []):
        raise ConfigError("config.json: layer_types has sliding_attention layers, which are not supported")
    if d.get("use_bidirectional_attention"):
        raise ConfigError("config.json: use_bidirectional_attention=true is not supported; only causal decoders")
    if d.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("config.json: partial_rotary_factor != 1 is not supported for llama/qwen2/gemma")


def _rope_fields(d: dict, max_pos: int) -> dict:
    """RoPE settings from either layout. Priority as the reference: rope_scaling, then rope_parameters; theta from
    inside that dict, else top-level rope_theta, else 10000."""
    p = d.get("rope_scaling") or d.get("rope_parameters") or {}
    if any(isinstance(v, dict) for v in p.values()):
        raise ConfigError("config.json: per-layer-type rope_parameters are not supported for llama/qwen2/gemma")
    if p.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("config.json: partial_rotary_factor != 1 is not supported for llama/qwen2/gemma")
    out = {
        "rope_theta": float(p.get("rope_theta", d.get("rope_theta", 10000.0))),
        "rope_type": p.get("rope_type", p.get("type", "default")),
    }
    if out["rope_type"] == "llama3":
        missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in p]
        if missing:
            raise ConfigError(f"config.json: llama3 rope scaling lacks {', '.join(missing)}; add them")
        # A top-level original_max_position_embeddings wins over the one in the dict, as in the reference.
        ctx = d.get("original_max_position_embeddings") or p.get("original_max_position_embeddings") or max_pos
        out.update(
            rope_factor=float(p["factor"]),
            rope_low_freq_factor=float(p["low_freq_factor"]),
            rope_high_freq_factor=float(p["high_freq_factor"]),
            rope_original_max_position_embeddings=ctx,
        )
    return out


def config_from_hf(d: dict) -> DecoderConfig:
    return DecoderConfig.from_hf(d)


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

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        dead: torch.Tensor | None,
        kv: LayerKV | None = None,
        pack: Packing | None = None,
    ) -> torch.Tensor:
        if pack is not None:
            return packed_self_attention(self, x, cos, sin, pack)
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            k, v = kv.update(k, v)  # (B, Hkv, S, D): the cached keys and values, then these
        p = self.dropout if self.training else 0.0
        scale = self.head_dim**-0.5
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

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        dead: torch.Tensor | None,
        kv: LayerKV | None = None,
        pack: Packing | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, dead, kv, pack)
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


class LayerKV:
    """One layer's cached keys and values, (B, Hkv, S, D) each."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


class KVCache:
    """Every layer's keys and values so far: a prefill fills it, each decoding step appends one position."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerKV() for _ in range(n_layers)]

    def __len__(self) -> int:
        k = self.layers[0].k
        return 0 if k is None else k.shape[2]

    def take(self, rows: torch.Tensor) -> None:
        """Re-form the batch from these rows (repeated rows: one prompt shared by several continuations)."""
        for kv in self.layers:
            kv.k, kv.v = kv.k[rows], kv.v[rows]


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
        cache: KVCache | None = None,
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
            kv = cache.layers[i] if cache is not None else None
            if ckpt:
                x = checkpoint(layer, x, cos, sin, mask, dead, kv, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, dead, kv)
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
    if model_type not in _ARCH_NAMES:
        raise ConfigError(f"model_type {model_type!r} is not a decoder family; use one of {', '.join(MODEL_TYPES)}")
    if head not in HEADS:
        raise ConfigError(
            f"head={head!r} is not supported for {model_type} (decoder) models; use one of {', '.join(HEADS)}"
        )
    return _ARCH_NAMES[model_type] + ("ForCausalLM" if head == "causal_lm" else "ForSequenceClassification")


def usable_positions(hf: dict) -> int | None:
    """None: rotary positions have no table to index past; the limit is the tokenizer's and the context's."""
    return None
