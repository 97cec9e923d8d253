"""DistilBERT encoder (Sanh et al., 2019). DistilRoBERTa is a RoBERTa checkpoint and loads through bert.py.

Reference implementation: transformers' `modeling_distilbert.py`. What must match (tests/test_encoders.py):
- state_dict() keys equal the Hub's (`distilbert.transformer.layer.0.attention.q_lin.weight`, `pre_classifier.weight`);
- no token-type embeddings, positions 0..T-1, LayerNorm eps 1e-12 everywhere (not read from the config);
- post-LN blocks; dropout after the FFN but none after the attention's out_lin;
- heads: hidden[:, 0] -> pre_classifier -> ReLU -> dropout -> classifier; multiple choice the same with Linear(dim, 1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from minitune.errors import ConfigError
from minitune.models.activations import ACTIVATIONS
from minitune.models.attention import UNPAD_MIN_SHARE, Packing, first_tokens, run_layers, self_attention
from minitune.models.heads import Classifier, flatten_choices, unflatten_choices

MODEL_TYPES = ("distilbert",)
EPS = 1e-12


@dataclass
class DistilBertConfig:
    model_type: str
    vocab_size: int
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    max_position_embeddings: int = 512
    seq_classif_dropout: float = 0.2
    pad_token_id: int = 0
    initializer_range: float = 0.02

    # Names the shared machinery (optimizer groups, LoRA defaults, reports) reads across families.
    @property
    def hidden_size(self) -> int:
        return self.dim

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers


def config_from_hf(d: dict) -> DistilBertConfig:
    if d.get("activation", "gelu") not in ACTIVATIONS:
        raise ConfigError(f"activation={d['activation']!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    known = {f.name for f in fields(DistilBertConfig)}
    return DistilBertConfig(**{k: v for k, v in d.items() if k in known and v is not None})


class Block(nn.Module):
    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        d = cfg.dim
        self.n_heads, self.attn_dropout = cfg.n_heads, cfg.attention_dropout
        self.act = ACTIVATIONS[cfg.activation]
        self.attention = nn.ModuleDict({n: nn.Linear(d, d) for n in ("q_lin", "k_lin", "v_lin", "out_lin")})
        self.sa_layer_norm = nn.LayerNorm(d, eps=EPS)
        self.ffn = nn.ModuleDict({"lin1": nn.Linear(d, cfg.hidden_dim), "lin2": nn.Linear(cfg.hidden_dim, d)})
        self.output_layer_norm = nn.LayerNorm(d, eps=EPS)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, pack: Packing | None = None, first_only: bool = False
    ) -> torch.Tensor:
        """x: (B, T, D), or (N, D) real tokens only when `pack` says where they sit; `first_only` as in bert.py."""
        att = self.attention
        p = self.attn_dropout if self.training else 0.0
        q_in = first_tokens(x, pack) if first_only else x
        a = self_attention(
            att["q_lin"](q_in), att["k_lin"](x), att["v_lin"](x), self.n_heads, bias, pack, p, first_only
        )
        x = self.sa_layer_norm(q_in + att["out_lin"](a))
        h = self.dropout(self.ffn["lin2"](self.act(self.ffn["lin1"](x))))
        return self.output_layer_norm(x + h)


class DistilBertModel(nn.Module):
    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        self.embeddings = nn.ModuleDict(
            {
                "word_embeddings": nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_token_id),
                "position_embeddings": nn.Embedding(cfg.max_position_embeddings, cfg.dim),
                "LayerNorm": nn.LayerNorm(cfg.dim, eps=EPS),
            }
        )
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.transformer = nn.ModuleDict({"layer": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))})
        self.gradient_checkpointing = False
        self.unpad_min_share = UNPAD_MIN_SHARE

    def forward(self, input_ids, attention_mask=None, first_token_only: bool = False) -> torch.Tensor:
        emb = self.embeddings
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = emb["word_embeddings"](input_ids) + emb["position_embeddings"](pos)
        x = self.emb_dropout(emb["LayerNorm"](x))
        return run_layers(
            self.transformer["layer"],
            x,
            attention_mask,
            self.unpad_min_share,
            first_token_only,
            self.gradient_checkpointing and self.training,
        )


class DistilBertClassifier(Classifier):
    base_prefix = "distilbert"

    def __init__(self, cfg: DistilBertConfig, head: str, num_labels: int):
        super().__init__()
        self.cfg, self.task_head, self.num_labels = cfg, head, num_labels
        self.distilbert = DistilBertModel(cfg)
        self.pre_classifier = nn.Linear(cfg.dim, cfg.dim)
        self.classifier = nn.Linear(cfg.dim, 1 if head == "multiple_choice" else num_labels)
        self.dropout = nn.Dropout(cfg.seq_classif_dropout)

    @property
    def base(self) -> DistilBertModel:
        return self.distilbert

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        shape = input_ids.shape
        input_ids, attention_mask, _ = flatten_choices(input_ids, attention_mask, None)
        first = self.distilbert(input_ids, attention_mask, first_token_only=True)  # (B, D)
        x = self.dropout(F.relu(self.pre_classifier(first)))
        return unflatten_choices(self.classifier(x), shape)


def build(cfg: DistilBertConfig, head: str, num_labels: int) -> DistilBertClassifier:
    return DistilBertClassifier(cfg, head, num_labels)


def hf_architecture(model_type: str, head: str) -> str:
    return "DistilBert" + ("ForSequenceClassification" if head == "sequence" else "ForMultipleChoice")


def usable_positions(hf: dict) -> int | None:
    """The longest input the position table serves (positions count from 0)."""
    return hf.get("max_position_embeddings")
