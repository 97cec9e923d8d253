"""DeBERTa-v2 / v3 / mDeBERTa-v3 encoders (model_type `deberta-v2`): disentangled attention over relative positions.

References: He et al. 2021, "DeBERTa: Decoding-enhanced BERT with Disentangled Attention"; He et al. 2023,
"DeBERTaV3: Improving DeBERTa using ELECTRA-Style Pre-Training with Gradient-Disentangled Embedding Sharing". The
reference implementation is transformers' `modeling_deberta_v2.py`.

What must match the reference (tests/test_deberta.py, against transformers on tiny random configs, fp32):
- state_dict() keys equal the Hub's (`deberta.encoder.layer.0.attention.self.query_proj.weight`,
  `deberta.encoder.rel_embeddings.weight`, `pooler.dense.weight`, `classifier.weight`);
- embeddings: word (+ absolute positions when `position_biased_input`) (+ token types when `type_vocab_size` > 0),
  then `embed_proj` (no bias) when `embedding_size` != `hidden_size`, LayerNorm, times the attention mask, dropout;
- attention scores: content-to-content plus, per `pos_att_type`, content-to-position q_i . Kr[d(i, j)] and
  position-to-content k_j . Qr[d(i, j)], where d(i, j) = i - j (log-bucketed beyond `position_buckets` / 2)
  shifted by the span and clamped to the table; all divided by sqrt(head_dim * (1 + number of position terms));
  Kr, Qr project the (LayerNormed, per `norm_rel_ebd`) relative table through the content key/query projections
  (`share_att_key`, v3) or through their own `pos_key_proj` / `pos_query_proj` (v2);
- post-LN blocks as BERT's; heads: ContextPooler (dropout -> dense -> `pooler_hidden_act`) -> dropout ->
  classifier, for sequence classification and multiple choice.

Where we differ from the reference, with the same logits and gradients in fp32:
- the 1/scale is applied to the query (and to Qr) before the matmuls, not to the products: in fp16 the unscaled
  products of large activations overflow 65504 and the softmax turns to NaN (tests/test_deberta.py builds such
  activations: the unscaled product is inf in fp16, our logits stay finite and near fp32's);
- pad queries are not masked (their rows are discarded), only pad keys; pads can leave after the embeddings and
  the last block can compute the first token alone, as for bert.py: relative positions are per sequence, so
  each packed sequence gets its own relative-position term, which is what the padded path computes for its
  real tokens (right padding, as our tokenizers pad encoder batches);
- only the rows of the relative table that the batch's distances can read (about 2T of 2*span) are normalised and
  projected (`RelativeIndex`), where the reference projects the whole table in every layer;
- DeBERTa-v2-xlarge/xxlarge's ConvLayer (`conv_kernel_size` > 0) is refused at load time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from minitune.errors import ConfigError
from minitune.models.activations import ACTIVATIONS
from minitune.models.attention import UNPAD_MIN_SHARE, Packing, choose_packing, first_tokens
from minitune.models.heads import Classifier, flatten_choices, unflatten_choices

MODEL_TYPES = ("deberta-v2",)


@dataclass
class DebertaConfig:
    model_type: str
    vocab_size: int
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    attention_head_size: int | None = None
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    pad_token_id: int = 0
    position_biased_input: bool = True
    pos_att_type: list[str] = field(default_factory=list)
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    embedding_size: int | None = None
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    cls_dropout: float | None = None

    @property
    def head_size(self) -> int:
        return self.attention_head_size or self.hidden_size // self.num_attention_heads

    @property
    def span(self) -> int:
        """Half the rows of the relative table: relative positions reach -span..span-1 after clamping."""
        if self.position_buckets > 0:
            return self.position_buckets
        return self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings

    @property
    def max_distance(self) -> int:
        """The `max_position` of the log buckets (-1 in config.json means max_position_embeddings)."""
        return self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings


def config_from_hf(d: dict) -> DebertaConfig:
    if (d.get("conv_kernel_size") or 0) > 0:
        raise ConfigError(
            f"conv_kernel_size={d['conv_kernel_size']} (DeBERTa-v2-xlarge's convolution layer) is not supported; "
            "use a DeBERTa-v3 or mDeBERTa-v3 checkpoint"
        )
    for key in ("hidden_act", "pooler_hidden_act"):
        if d.get(key, "gelu") not in ACTIVATIONS:
            raise ConfigError(f"{key}={d[key]!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    if d.get("pooler_hidden_size", d.get("hidden_size")) != d.get("hidden_size"):
        raise ConfigError("pooler_hidden_size different from hidden_size is not supported")
    known = {f.name for f in fields(DebertaConfig)}
    kw = {k: v for k, v in d.items() if k in known and (v is not None or k == "cls_dropout")}
    pos = kw.get("pos_att_type") or []
    kw["pos_att_type"] = [p.strip() for p in pos.lower().split("|")] if isinstance(pos, str) else list(pos)
    return DebertaConfig(**kw)


def log_bucket(rel: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """Relative positions within +-buckets/2 stay as they are; farther ones shrink logarithmically so that
    +-max_position lands on +-(buckets - 1). Float32 arithmetic in the reference's order, since the ceil is
    sensitive to the last bit."""
    mid = buckets // 2
    far = rel.abs()
    far = torch.where(far < mid, torch.full_like(far, mid - 1), far)
    log_ratio = torch.log(far / mid) / torch.log(torch.tensor((max_position - 1) / mid))
    log_pos = torch.ceil(log_ratio * (mid - 1)) + mid
    return torch.where(far <= mid, rel.float(), log_pos * torch.sign(rel)).long()


class RelativeIndex:
    """Row of the relative table each (query, key) pair reads, (Tq, T), built once per length per forward.
    Queries are positions 0..Tq-1 of their sequence (Tq = 1: the first token only).

    Sequences of at most T tokens read only the rows of distances -(T-1)..T-1: `rows`, about 2T of the table's
    2*span (512 in v3). Only those rows are normalised and projected, and indices count from the first of them:
    on short texts this skips most of the reference's per-layer projections of the whole table (unread rows get
    no gradient there either, so logits and gradients are unchanged)."""

    def __init__(self, cfg: DebertaConfig, device: torch.device, longest: int):
        self.cfg, self.device, self.cache = cfg, device, {}
        ends = self._rows_of(torch.tensor([1 - longest, longest - 1])).tolist()
        self.rows = slice(ends[0], ends[1] + 1)

    def _rows_of(self, rel: torch.Tensor) -> torch.Tensor:
        if self.cfg.position_buckets > 0:
            rel = log_bucket(rel, self.cfg.position_buckets, self.cfg.max_distance)
        span = self.cfg.span
        return (rel + span).clamp(0, 2 * span - 1)

    def __call__(self, tq: int, t: int) -> torch.Tensor:
        if (tq, t) not in self.cache:
            pos = torch.arange(max(tq, t), device=self.device)
            rel = pos[:tq, None] - pos[None, :t]  # (Tq, T): i - j
            self.cache[tq, t] = self._rows_of(rel) - self.rows.start
        return self.cache[tq, t]


class Embeddings(nn.Module):
    def __init__(self, cfg: DebertaConfig):
        super().__init__()
        e = cfg.embedding_size or cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, e, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, e) if cfg.position_biased_input else None
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, e) if cfg.type_vocab_size > 0 else None
        self.embed_proj = nn.Linear(e, cfg.hidden_size, bias=False) if e != cfg.hidden_size else None
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor:
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(torch.arange(input_ids.shape[1], device=input_ids.device))
        if self.token_type_embeddings is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.token_type_embeddings(types)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        x = self.LayerNorm(x)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        return self.dropout(x)


class DisentangledAttention(nn.Module):
    """The `attention.self` module: projections and the disentangled scores, over padded or packed tokens."""

    def __init__(self, cfg: DebertaConfig):
        super().__init__()
        h, a = cfg.hidden_size, cfg.num_attention_heads * cfg.head_size
        self.cfg, self.n_heads, self.d = cfg, cfg.num_attention_heads, cfg.head_size
        self.query_proj, self.key_proj, self.value_proj = nn.Linear(h, a), nn.Linear(h, a), nn.Linear(h, a)
        self.c2p, self.p2c = "c2p" in cfg.pos_att_type, "p2c" in cfg.pos_att_type
        if cfg.relative_attention and not cfg.share_att_key:
            if self.c2p:
                self.pos_key_proj = nn.Linear(h, a)
            if self.p2c:
                self.pos_query_proj = nn.Linear(h, a)
        self.pos_dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)
        self.scale = math.sqrt(self.d * (1 + self.c2p + self.p2c))

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:-1], self.n_heads, self.d).transpose(-3, -2)  # (..., nh, T, d)

    def positions(self, rel: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Kr and Qr/scale, (nh, rows, d) each, from this layer's dropout of the shared relative table."""
        rel = self.pos_dropout(rel)
        share = self.cfg.share_att_key
        kr = self.heads((self.key_proj if share else self.pos_key_proj)(rel)) if self.c2p else None
        qr = self.heads((self.query_proj if share else self.pos_query_proj)(rel)) / self.scale if self.p2c else None
        return kr, qr

    def attend(self, q, k, v, key_mask, rel_pos, index) -> torch.Tensor:
        """q (B, Tq, A) against k, v (B, T, A) of sequences that start at position 0; key_mask (B, T) or None;
        index (Tq, T) rows of the relative table. Output (B, Tq, A)."""
        B, Tq, _ = q.shape
        q, k, v = self.heads(q) / self.scale, self.heads(k), self.heads(v)  # (B, nh, T, d); q pre-scaled for fp16
        scores = q @ k.transpose(-1, -2)  # (B, nh, Tq, T)
        if rel_pos is not None:
            kr, qr = rel_pos
            T = k.shape[-2]
            if kr is not None:  # content -> position: q_i . Kr[index[i, j]]
                scores = scores + torch.gather(q @ kr.transpose(-1, -2), -1, index.expand(B, self.n_heads, Tq, T))
            if qr is not None:  # position -> content: k_j . Qr[index[i, j]]
                p2c = torch.gather(k @ qr.transpose(-1, -2), -1, index.T.expand(B, self.n_heads, T, Tq))
                scores = scores + p2c.transpose(-1, -2)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        return (probs @ v).transpose(1, 2).reshape(B, Tq, -1)  # (B, Tq, A)

    def forward(self, x, q_in, key_mask, pack: Packing | None, first_only: bool, rel, index) -> torch.Tensor:
        """x: (B, T, H) or packed (N, H); q_in: x, or the first tokens (B, H) when `first_only`. Output in
        q_in's layout."""
        q, k, v = self.query_proj(q_in), self.key_proj(x), self.value_proj(x)
        rel_pos = self.positions(rel) if rel is not None else None
        if first_only:
            kv = (pack.pad(k), pack.pad(v)) if pack is not None else (k, v)  # (B, T, A)
            return self.attend(q[:, None], *kv, key_mask, rel_pos, index(1, kv[0].shape[1]))[:, 0]  # (B, A)
        if pack is None:
            return self.attend(q, k, v, key_mask, rel_pos, index(q.shape[1], k.shape[1]))
        if pack.lengths is None:  # one masked call on the re-padded block
            out = self.attend(pack.pad(q), pack.pad(k), pack.pad(v), key_mask, rel_pos, index(pack.T, pack.T))
            return pack.unpad(out)
        runs = zip(q.split(pack.lengths), k.split(pack.lengths), v.split(pack.lengths))  # each sequence alone
        return torch.cat(
            [self.attend(a[None], b[None], c[None], None, rel_pos, index(len(a), len(a)))[0] for a, b, c in runs]
        )


class Layer(nn.Module):
    """One post-LN block. Submodules sit in ModuleDicts only so their names equal the Hub's."""

    def __init__(self, cfg: DebertaConfig):
        super().__init__()
        h, a, eps = cfg.hidden_size, cfg.num_attention_heads * cfg.head_size, cfg.layer_norm_eps
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.attention = nn.ModuleDict(
            {
                "self": DisentangledAttention(cfg),
                "output": nn.ModuleDict({"dense": nn.Linear(a, h), "LayerNorm": nn.LayerNorm(h, eps=eps)}),
            }
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(h, cfg.intermediate_size)})
        self.output = nn.ModuleDict(
            {"dense": nn.Linear(cfg.intermediate_size, h), "LayerNorm": nn.LayerNorm(h, eps=eps)}
        )
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, key_mask, pack, first_only, rel, index) -> torch.Tensor:
        """x: (B, T, H), or (N, H) real tokens when `pack` says where they sit; `first_only` as in bert.py."""
        ao = self.attention["output"]
        q_in = first_tokens(x, pack) if first_only else x
        a = self.attention["self"](x, q_in, key_mask, pack, first_only, rel, index)
        x = ao["LayerNorm"](q_in + self.dropout(ao["dense"](a)))
        h = self.act(self.intermediate["dense"](x))
        return self.output["LayerNorm"](x + self.dropout(self.output["dense"](h)))


class Encoder(nn.Module):
    """The Hub's `deberta.encoder`: the blocks and the relative-position table they share."""

    def __init__(self, cfg: DebertaConfig):
        super().__init__()
        self.cfg = cfg
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        if cfg.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * cfg.span, cfg.hidden_size)
        norm = [x.strip() for x in cfg.norm_rel_ebd.lower().split("|")]
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if "layer_norm" in norm else None

    def relative_table(self, rows: slice) -> torch.Tensor | None:
        """(rows, H) of the table (see RelativeIndex), normalised once per forward and shared by every layer."""
        if not self.cfg.relative_attention:
            return None
        rel = self.rel_embeddings.weight[rows]
        return self.LayerNorm(rel) if self.LayerNorm is not None else rel  # row-wise: slicing first is exact


class DebertaModel(nn.Module):
    """The bare encoder under the Hub's `deberta.` prefix."""

    def __init__(self, cfg: DebertaConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.gradient_checkpointing = False
        self.unpad_min_share = UNPAD_MIN_SHARE

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, first_token_only=False) -> torch.Tensor:
        """Hidden states (B, T, H); with `first_token_only`, the first token's only, (B, H) (see bert.py)."""
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        x = self.embeddings(input_ids, token_type_ids, attention_mask)
        key_mask = attention_mask.bool() if attention_mask is not None else None
        pack = choose_packing(attention_mask, self.unpad_min_share)
        first = first_token_only and (key_mask is None or bool(key_mask[:, 0].all()))
        index = RelativeIndex(self.encoder.cfg, input_ids.device, input_ids.shape[1])
        rel = self.encoder.relative_table(index.rows)
        x = pack.unpad(x) if pack is not None else x  # (N, H)
        layers = self.encoder.layer
        for i, layer in enumerate(layers):
            args = (x, key_mask, pack, first and i == len(layers) - 1, rel, index)
            x = (
                checkpoint(layer, *args, use_reentrant=False)
                if self.gradient_checkpointing and self.training
                else layer(*args)
            )
        if first:
            return x  # (B, H)
        x = pack.pad(x) if pack is not None else x  # (B, T, H)
        return x[:, 0] if first_token_only else x


class DebertaClassifier(Classifier):
    """Sequence classification (logits (B, num_labels)) or multiple choice (input (B, C, T), logits (B, C))."""

    base_prefix = "deberta"

    def __init__(self, cfg: DebertaConfig, head: str, num_labels: int):
        super().__init__()
        self.cfg, self.task_head, self.num_labels = cfg, head, num_labels
        # Absolute positions some checkpoints carry though the config turns them off; the reference skips them too.
        self.ignored_checkpoint_keys = () if cfg.position_biased_input else ("embeddings.position_embeddings.weight",)
        self.deberta = DebertaModel(cfg)
        self.pooler = nn.ModuleDict({"dense": nn.Linear(cfg.hidden_size, cfg.hidden_size)})
        self.pooler_dropout = nn.Dropout(cfg.pooler_dropout)
        self.pooler_act = ACTIVATIONS[cfg.pooler_hidden_act]
        self.classifier = nn.Linear(cfg.hidden_size, 1 if head == "multiple_choice" else num_labels)
        self.dropout = nn.Dropout(cfg.cls_dropout if cfg.cls_dropout is not None else cfg.hidden_dropout_prob)

    @property
    def base(self) -> DebertaModel:
        return self.deberta

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        shape = input_ids.shape
        input_ids, attention_mask, token_type_ids = flatten_choices(input_ids, attention_mask, token_type_ids)
        first = self.deberta(input_ids, attention_mask, token_type_ids, first_token_only=True)  # (B, H)
        pooled = self.pooler_act(self.pooler["dense"](self.pooler_dropout(first)))
        return unflatten_choices(self.classifier(self.dropout(pooled)), shape)


def build(cfg: DebertaConfig, head: str, num_labels: int) -> DebertaClassifier:
    return DebertaClassifier(cfg, head, num_labels)


def hf_architecture(model_type: str, head: str) -> str:
    return "DebertaV2" + ("ForSequenceClassification" if head == "sequence" else "ForMultipleChoice")


def usable_positions(hf: dict) -> int | None:
    """The longest input the model was trained for. Without absolute positions (v3) longer inputs would run
    (relative positions saturate in the last bucket), but we keep to the pretrained range."""
    return hf.get("max_position_embeddings")
