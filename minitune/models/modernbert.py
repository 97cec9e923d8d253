"""ModernBERT, and the Ettin and mmBERT encoders built on it: a pre-norm encoder with rotary positions, alternating
global and sliding-window attention, and a GeGLU MLP, designed to run on real tokens only.

References: Warner et al. 2024, "Smarter, Better, Faster, Longer" (arXiv 2412.13663); Weller et al. 2025 (Ettin);
Marone et al. 2025 (mmBERT). The reference implementation is transformers' `modeling_modernbert.py`
(`ModernBertForSequenceClassification`, `ModernBertForMultipleChoice`).

What must match the reference (tests/test_modernbert.py, tiny random configs, logits and every gradient at 1e-5):
- state_dict() keys equal the Hub's (`model.layers.0.attn.Wqkv.weight`, `head.dense.weight`, `classifier.weight`);
  layer 0 has no `attn_norm` (an identity: the embeddings' norm already normalised its input);
- embeddings are the token table and a LayerNorm (bias only if `norm_bias`), no position or token-type table;
- layer i attends globally when i % global_attn_every_n_layers == 0 (or as `layer_types` says), else to the keys
  with |i - j| <= local_attention // 2; each kind has its own rotary θ (global_rope_theta, local_rope_theta),
  positions counted from 0 at the first column;
- the MLP is GeGLU: Wi gives (input, gate) halves, out = Wo(act(input) * gate);
- the head pools (classifier_pooling: the first token, or the mean of real tokens after the final norm), then
  dense -> activation -> norm -> dropout -> classifier. Multiple choice scores each (B*C, T) row with a 1-unit
  classifier; the reference takes its first real token as <cls>, which is column 0 under right padding.

Where we compute less, with the same logits: pads leave after the embeddings (`choose_packing`), and attention runs
on the packed tokens (models/attention.py `packed_attention` with a window): on CPU sequence by sequence, a sliding
layer block by block (`banded_attention`: no n x n mask once a sequence is longer than a few windows); on CUDA,
FlashAttention's variable-length kernel with the window (left = right = local_attention // 2) where it can run
(`varlen_refusal` names why not; then one masked call on the re-padded block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from minitune.errors import ConfigError
from minitune.models.activations import ACTIVATIONS
from minitune.models.attention import (
    UNPAD_MIN_SHARE,
    Packing,
    band,
    choose_packing,
    packed_attention,
    varlen_refusal,
)
from minitune.models.heads import Classifier, flatten_choices, unflatten_choices
from minitune.models.pooling import bi_scores, pool
from minitune.models.rope import apply_rope

MODEL_TYPES = ("modernbert",)
POOLINGS = ("cls", "mean")  # both are the reference head (classifier_pooling); mean also serves the bi-encoder
HEAD_POOLS = True  # `pooling` chooses the reference head's classifier_pooling (checkpoints/load.py)
GLOBAL, LOCAL = "full_attention", "sliding_attention"  # the reference's layer_types


@dataclass
class ModernBertConfig:
    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int = 50283
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    attention_bias: bool = False
    attention_dropout: float = 0.0
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    layer_types: list[str] | None = None
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    classifier_pooling: str = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    model_type: str = "modernbert"

    def __post_init__(self) -> None:
        if self.layer_types is None:
            every = self.global_attn_every_n_layers
            self.layer_types = [GLOBAL if i % every == 0 else LOCAL for i in range(self.num_hidden_layers)]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def half_window(self) -> int:
        """A sliding-window layer's query sees keys at most this many positions away, on either side."""
        return self.local_attention // 2


def config_from_hf(d: dict) -> ModernBertConfig:
    """Both config.json spellings: the published checkpoints' (global_attn_every_n_layers, global_rope_theta,
    local_rope_theta) and transformers 5's (layer_types, rope_parameters per layer type)."""
    d = dict(d)
    rope = d.get("rope_parameters") or {}
    for kind, key in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
        params = rope.get(kind) or {}
        if params.get("rope_type", "default") != "default":
            raise ConfigError(f"rope_parameters[{kind!r}]: rope_type {params['rope_type']!r} is not supported")
        if "rope_theta" in params:
            d[key] = params["rope_theta"]
    for key in ("hidden_activation", "classifier_activation"):
        if d.get(key, "gelu") not in ACTIVATIONS:
            raise ConfigError(f"{key}={d[key]!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    if d.get("classifier_pooling", "cls") not in ("cls", "mean"):
        raise ConfigError(f"classifier_pooling={d['classifier_pooling']!r} is not supported; use cls or mean")
    every, window = d.get("global_attn_every_n_layers", 3), d.get("local_attention", 128)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"global_attn_every_n_layers={every!r} must be a positive integer (1: every layer global)")
    if not isinstance(window, int) or isinstance(window, bool) or window < 2 or window % 2:
        raise ConfigError(f"local_attention={window!r} must be an even number of tokens, at least 2 (e.g. 128)")
    types = d.get("layer_types")
    if types is not None and (len(types) != d.get("num_hidden_layers", 22) or set(types) - {GLOBAL, LOCAL}):
        raise ConfigError(f"layer_types must give {GLOBAL!r} or {LOCAL!r} for each of the num_hidden_layers layers")
    heads, hidden = d.get("num_attention_heads", 12), d.get("hidden_size", 768)
    if hidden % heads:
        raise ConfigError(f"hidden_size={hidden} must be a multiple of num_attention_heads={heads}")
    known = {f.name for f in fields(ModernBertConfig)}
    return ModernBertConfig(**{k: v for k, v in d.items() if k in known and v is not None})


# ------------------------------------------------------------------------------------------------- attention


def padded_mask(attention_mask: torch.Tensor | None, T: int, half: int | None, device) -> torch.Tensor | None:
    """SDPA's boolean mask for the padded layout: (B|1, 1, T|1, T), or None when every pair may attend.

    A pad query whose window holds no real key would get a fully masked row (NaN from SDPA, which then reaches
    every token through the values); it attends to itself instead, and its output is never read."""
    mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
    # A window covering the whole row needs no band, but a traced graph (ONNX export) must keep it: the trace's
    # short rows would otherwise drop the window for every longer input.
    if half is None or (half + 1 >= T and not torch.jit.is_tracing()):
        return None if mask is None or bool(mask.all()) else mask
    window = band(T, half, device)[None, None]  # (1, 1, T, T)
    if mask is None:
        return window
    return (window & mask) | band(T, 0, device)[None, None]  # the diagonal (no torch.eye: ONNX has no bool EyeLike)


class Attention(nn.Module):
    """Multi-head self-attention with a fused Wqkv and rotary q, k; global, or a window of `half` on each side."""

    def __init__(self, cfg: ModernBertConfig, kind: str):
        super().__init__()
        h = cfg.hidden_size
        self.n_heads, self.head_dim, self.dropout_p = cfg.num_attention_heads, cfg.head_dim, cfg.attention_dropout
        self.half = cfg.half_window if kind == LOCAL else None
        self.Wqkv = nn.Linear(h, 3 * h, bias=cfg.attention_bias)
        self.Wo = nn.Linear(h, h, bias=cfg.attention_bias)
        self.out_drop = nn.Dropout(cfg.attention_dropout)

    def forward(self, x, cos, sin, mask, pack: Packing | None) -> torch.Tensor:
        """x (B, T, H) padded with its SDPA `mask`, or (N, H) real tokens with their `pack`; cos/sin broadcast to
        (..., T or N, heads, D)."""
        p = self.dropout_p if self.training else 0.0
        qkv = self.Wqkv(x).unflatten(-1, (3, self.n_heads, self.head_dim))  # (B, T, 3, h, D) or (N, 3, h, D)
        q, k, v = qkv.unbind(-3)  # (B, T, h, D) or (N, h, D)
        # The reference rotates in fp32 and casts back.
        q, k = (apply_rope(t.float(), cos, sin).to(v.dtype) for t in (q, k))
        if pack is None:
            y = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask, dropout_p=p)
            y = y.transpose(1, 2).flatten(2)  # (B, T, H)
        else:
            y = packed_attention(q, k, v, pack, causal=False, dropout_p=p, window=self.half).flatten(1)  # (N, H)
        return self.out_drop(self.Wo(y))


# ---------------------------------------------------------------------------------------------------- blocks


def _norm(cfg: ModernBertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)


class MLP(nn.Module):
    """GeGLU: Wi makes an input half and a gate half; out = Wo(dropout(act(input) * gate))."""

    def __init__(self, cfg: ModernBertConfig):
        super().__init__()
        self.Wi = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.hidden_activation]
        self.drop = nn.Dropout(cfg.mlp_dropout)
        self.Wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)  # (..., intermediate) each: the Hub stores both halves in one Wi
        return self.Wo(self.drop(self.act(inp) * gate))


class Layer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). Layer 0 reads the embeddings' norm directly."""

    def __init__(self, cfg: ModernBertConfig, index: int):
        super().__init__()
        self.kind = cfg.layer_types[index]
        self.attn_norm = nn.Identity() if index == 0 else _norm(cfg)
        self.attn = Attention(cfg, self.kind)
        self.mlp_norm = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, pack: Packing | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, pack)
        return x + self.mlp(self.mlp_norm(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: ModernBertConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.norm = _norm(cfg)
        self.drop = nn.Dropout(cfg.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class Encoder(nn.Module):
    """The bare encoder under the Hub's `model.` prefix: hidden states after the final norm, (B, T, H)."""

    def __init__(self, cfg: ModernBertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.final_norm = _norm(cfg)
        self.gradient_checkpointing = False
        self.unpad_min_share = UNPAD_MIN_SHARE

    def rotary(self, theta: float, positions: torch.Tensor, dtype: torch.dtype):
        """cos, sin (..., 1, D) for these positions: fp32 angles, cast to the activations' dtype as the reference."""
        d = self.cfg.head_dim
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=positions.device).float() / d))
        freqs = positions[..., None].float() * inv
        angles = torch.cat((freqs, freqs), dim=-1)[..., None, :]  # (..., 1, D): broadcast over heads
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def _pack_pays(self, x: torch.Tensor, T: int) -> bool:
        """Rows several windows long run packed even without pads: a sliding layer then goes band by band on CPU
        (`banded_attention`), or through the variable-length kernel's window on CUDA, instead of a T x T mask.
        Off with the unpadded path (`set_unpadded(False)`)."""
        if self.unpad_min_share > 1 or not (4 * self.cfg.half_window < T and LOCAL in self.cfg.layer_types):
            return False
        if x.device.type == "cpu":
            return True
        p = self.cfg.attention_dropout if self.training else 0.0
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        return varlen_refusal(x.device, dtype, self.cfg.head_dim, p) is None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        x = self.embeddings(input_ids)  # (B, T, H)
        B, T, _ = x.shape
        pack = choose_packing(attention_mask, self.unpad_min_share)
        if pack is None and self._pack_pays(x, T):
            pack = Packing(
                torch.ones(B, T, dtype=torch.long, device=x.device) if attention_mask is None else attention_mask
            )
        positions = pack.columns if pack is not None else torch.arange(T, device=x.device)  # (N,) or (T,)
        x = pack.unpad(x) if pack is not None else x  # (N, H)
        tables = {
            GLOBAL: self.rotary(cfg.global_rope_theta, positions, x.dtype),
            LOCAL: self.rotary(cfg.local_rope_theta, positions, x.dtype),
        }
        masks = {  # the padded layout's; packed attention finds each sequence's tokens from `pack`
            GLOBAL: None if pack else padded_mask(attention_mask, T, None, x.device),
            LOCAL: None if pack else padded_mask(attention_mask, T, cfg.half_window, x.device),
        }
        checkpointed = self.gradient_checkpointing and self.training
        for layer in self.layers:
            args = (x, *tables[layer.kind], masks[layer.kind], pack)
            x = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False) if checkpointed else layer(*args)
        x = self.final_norm(x)
        return pack.pad(x) if pack is not None else x  # (B, T, H); zeros at pads when unpadded


class ModernBertClassifier(Classifier):
    """Sequence classification (logits (B, num_labels)) or multiple choice (input (B, C, T), logits (B, C)).

    `pooling` cls or mean is the head's `classifier_pooling` (the first token, or the mean of real tokens; written
    back to config.json, so transformers' class reads the same head; load_model passes the checkpoint's own for
    `auto`). `choice_scorer` bi: multiple choice as the
    scaled cosine similarity of mean-pooled query and option embeddings (models/pooling.py), with no head.
    """

    base_prefix = "model"
    pretrained_head = ("head.",)  # the MLM checkpoints' prediction head: the reference keeps it under this head

    def __init__(self, cfg: ModernBertConfig, head: str, num_labels: int, pooling: str, choice_scorer: str):
        super().__init__()
        self.cfg, self.task_head, self.num_labels = cfg, head, num_labels
        self.choice_scorer = choice_scorer if head == "multiple_choice" else None
        # Either pooling is the reference head, which minitune calls `cls` (saved as transformers' class); the choice
        # lives in classifier_pooling. The bi-encoder keeps its mean (saved in the sentence-transformers layout).
        self.pooling = pooling if self.choice_scorer == "bi" else "cls"
        self.normalize = False
        self.classifier_pooling = pooling if self.choice_scorer != "bi" else cfg.classifier_pooling
        self.in_batch_negatives = False
        self.model = Encoder(cfg)
        if self.choice_scorer == "bi":
            self.head, self.classifier = None, None
            return
        h = cfg.hidden_size
        self.head = nn.ModuleDict({"dense": nn.Linear(h, h, bias=cfg.classifier_bias), "norm": _norm(cfg)})
        self.act = ACTIVATIONS[cfg.classifier_activation]
        self.drop = nn.Dropout(cfg.classifier_dropout)
        self.classifier = nn.Linear(h, 1 if head == "multiple_choice" else num_labels)

    @property
    def base(self) -> Encoder:
        return self.model

    def hub_config(self) -> dict:
        """What config.json must say for transformers' class to compute this head."""
        return {} if self.choice_scorer == "bi" else {"classifier_pooling": self.classifier_pooling}

    def init_fresh_(self, key: str, t: torch.Tensor) -> None:
        """The reference's truncated normals (cut at initializer_cutoff_factor std): the classifier at
        hidden_size^-0.5, the head's dense layer at initializer_range / sqrt(2 * layers)."""
        cfg = self.cfg
        std = {
            "classifier.weight": cfg.hidden_size**-0.5,
            "head.dense.weight": cfg.initializer_range / math.sqrt(2.0 * cfg.num_hidden_layers),
        }.get(key)
        if std is None:
            return super().init_fresh_(key, t)
        cut = cfg.initializer_cutoff_factor * std
        nn.init.trunc_normal_(t, mean=0.0, std=std, a=-cut, b=cut)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """(N, T) -> (N, H) sentence embeddings: the mean of real tokens' final states (normalised if declared)."""
        v = pool(self.model(input_ids, attention_mask), attention_mask, "mean")
        return F.normalize(v, dim=-1) if self.normalize else v

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if self.choice_scorer == "bi":
            in_batch = self.training and self.in_batch_negatives
            return bi_scores(self.embed, input_ids, attention_mask, None, in_batch)  # (B, C), see bi_scores
        shape = input_ids.shape
        input_ids, attention_mask, _ = flatten_choices(input_ids, attention_mask, None)  # (B*C, T) for choices
        hidden = self.model(input_ids, attention_mask)  # (B, T, H)
        pooled = pool(hidden, attention_mask, self.classifier_pooling)  # (B, H)
        if self.classifier_pooling == "cls" and len(shape) == 3 and attention_mask is not None:
            # The reference's multiple-choice head reads each row's first real token (column 0 unless left-padded);
            # its sequence head reads column 0 whatever the padding.
            pooled = hidden[torch.arange(len(hidden), device=hidden.device), attention_mask.argmax(-1)]  # (B, H)
        x = self.head["norm"](self.act(self.head["dense"](pooled)))
        return unflatten_choices(self.classifier(self.drop(x)), shape)


def build(
    cfg: ModernBertConfig, head: str, num_labels: int, pooling: str = "cls", choice_scorer: str = "cross"
) -> ModernBertClassifier:
    return ModernBertClassifier(cfg, head, num_labels, pooling, choice_scorer)


def hf_architecture(model_type: str, head: str) -> str:
    return "ModernBertForSequenceClassification" if head == "sequence" else "ModernBertForMultipleChoice"


def usable_positions(hf: dict) -> int | None:
    """Rotary positions have no table; the checkpoint was trained up to max_position_embeddings (8,192)."""
    return hf.get("max_position_embeddings", 8192)
