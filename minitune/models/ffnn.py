"""The bag-of-embeddings feed-forward baseline (the source documents' first model): the floor every
transformer must beat.

mean of token embeddings over real tokens -> Linear -> ReLU -> dropout -> Linear. It uses the MiniLM
tokenizer's vocabulary, starts from random weights, and saves as model_type "minitune-ffnn" (our own config;
transformers has no such class, so only minitune.load_model reads it back).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from minitune.models.heads import Classifier, flatten_choices, unflatten_choices

MODEL_TYPES = ("minitune-ffnn",)


@dataclass
class FFNNConfig:
    model_type: str = "minitune-ffnn"
    vocab_size: int = 30522
    embed_dim: int = 128
    hidden_dim: int = 256
    dropout: float = 0.1
    pad_token_id: int = 0
    initializer_range: float = 0.1


def config_from_hf(d: dict) -> FFNNConfig:
    known = {f.name for f in fields(FFNNConfig)}
    return FFNNConfig(**{k: v for k, v in d.items() if k in known})


class BagOfEmbeddings(Classifier):
    base_prefix = "encoder"

    def __init__(self, cfg: FFNNConfig, head: str, num_labels: int):
        super().__init__()
        self.cfg, self.task_head, self.num_labels = cfg, head, num_labels
        self.encoder = nn.ModuleDict(
            {"embed": nn.Embedding(cfg.vocab_size, cfg.embed_dim), "hidden": nn.Linear(cfg.embed_dim, cfg.hidden_dim)}
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_dim, 1 if head == "multiple_choice" else num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        shape = input_ids.shape
        input_ids, attention_mask, _ = flatten_choices(input_ids, attention_mask, None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        m = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
        # Mean over real tokens only: padding must not dilute the bag.
        bag = (self.encoder["embed"](input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, E)
        h = self.dropout(torch.relu(self.encoder["hidden"](bag)))
        return unflatten_choices(self.classifier(h), shape)


def build(cfg: FFNNConfig, head: str, num_labels: int) -> BagOfEmbeddings:
    return BagOfEmbeddings(cfg, head, num_labels)


def hf_architecture(model_type: str, head: str) -> str:
    return "BagOfEmbeddings" + ("ForSequenceClassification" if head == "sequence" else "ForMultipleChoice")


def build_ffnn(vocab_size: int, num_labels: int, head: str, pad_token_id: int | None) -> BagOfEmbeddings:
    cfg = FFNNConfig(vocab_size=vocab_size, pad_token_id=pad_token_id or 0)
    model = build(cfg, head, num_labels)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=cfg.initializer_range)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    model.hf_config = {k: getattr(cfg, k) for k in (f.name for f in fields(FFNNConfig))}
    model.task_head = head
    return model


def usable_positions(hf: dict) -> int | None:
    """None: a bag of embeddings has no positions."""
    return None
