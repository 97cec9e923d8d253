"""BERT, RoBERTa and XLM-RoBERTa encoders: one code path, variants by config flags.

References: Devlin et al. 2019 (BERT), Liu et al. 2019 (RoBERTa), Conneau et al. 2020 (XLM-R); the reference
implementation is transformers' `modeling_bert.py` / `modeling_roberta.py` / `modeling_xlm_roberta.py`.

What must match the reference (tested in tests/test_encoders.py against transformers on tiny random configs):
- state_dict() keys equal the Hub's (`bert.encoder.layer.0.attention.self.query.weight`, `roberta.embeddings...`,
  `classifier.out_proj.weight`), so loading a checkpoint is a checked 1:1 copy;
- RoBERTa position ids start after `padding_idx` and skip pads (`cumsum(ids != pad) * (ids != pad) + pad`), computed
  from the input ids, not the attention mask, exactly as the reference does;
- post-LN blocks `LayerNorm(x + dropout(dense(h)))`, the config's activation and layer-norm eps;
- heads: BERT seq-cls pooler -> tanh -> dropout -> classifier; RoBERTa seq-cls on <s>: dropout -> dense -> tanh ->
  dropout -> out_proj (no pooler); multiple choice for both: pooler -> dropout -> Linear(h, 1) over (B*C, T).
  These are `pooling` cls. A checkpoint that declares sentence-embedding pooling (mean, max) gets a head on that
  pooled vector instead, and `choice_scorer` bi scores options by cosine similarity (models/pooling.py); transformers
  has no class for either, see checkpoints/save.py for how they are saved.

Where we compute less than the reference, with the same logits and gradients (tests/test_encoders.py): pads
leave after the embeddings when enough of a batch is padding (`choose_packing`, threshold `UNPAD_MIN_SHARE`, both
in models/attention.py), and since every head reads only the first token, the last block computes that token's row
alone (`run_layers`).
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
from minitune.models.pooling import bi_scores, pool

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
POOLINGS = ("cls", "mean", "max", "mean_sqrt_len")  # heads this family builds (models/pooling.py)


@dataclass
class BertConfig:
    model_type: str
    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    classifier_dropout: float | None = None

    @property
    def roberta_positions(self) -> bool:
        return self.model_type != "bert"

    @property
    def prefix(self) -> str:
        # The Hub stores the encoder under the family name: `bert.` for BERT, `roberta.` for RoBERTa and XLM-R.
        return "bert" if self.model_type == "bert" else "roberta"


def config_from_hf(d: dict) -> BertConfig:
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(
            f"position_embedding_type={d['position_embedding_type']!r} is not supported (only 'absolute')"
        )
    if d.get("hidden_act", "gelu") not in ACTIVATIONS:
        raise ConfigError(f"hidden_act={d['hidden_act']!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    known = {f.name for f in fields(BertConfig)}
    # A null in config.json means "use the default" for every field but classifier_dropout, where null is meaningful.
    return BertConfig(**{k: v for k, v in d.items() if k in known and (v is not None or k == "classifier_dropout")})


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.cfg.roberta_positions:
            # RoBERTa numbers real tokens from pad+1 and gives pads the pad position (hence 514 positions for 512).
            real = input_ids.ne(self.cfg.pad_token_id).int()
            return torch.cumsum(real, dim=1) * real + self.cfg.pad_token_id
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(self.position_ids(input_ids))
        )
        return self.dropout(self.LayerNorm(x))


class Layer(nn.Module):
    """One post-LN block. Submodules sit in ModuleDicts only so their names equal the Hub's."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.attn_dropout = cfg.attention_probs_dropout_prob
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.attention = nn.ModuleDict(
            {
                "self": nn.ModuleDict({"query": nn.Linear(h, h), "key": nn.Linear(h, h), "value": nn.Linear(h, h)}),
                "output": nn.ModuleDict({"dense": nn.Linear(h, h), "LayerNorm": nn.LayerNorm(h, eps=eps)}),
            }
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(h, cfg.intermediate_size)})
        self.output = nn.ModuleDict(
            {"dense": nn.Linear(cfg.intermediate_size, h), "LayerNorm": nn.LayerNorm(h, eps=eps)}
        )
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, pack: Packing | None = None, first_only: bool = False
    ) -> torch.Tensor:
        """x: (B, T, H), or (N, H) real tokens only when `pack` says where they sit. `first_only`: compute the
        output of each sequence's first token only, (B, H); every token still serves as key and value."""
        sa, ao = self.attention["self"], self.attention["output"]
        p = self.attn_dropout if self.training else 0.0
        q_in = first_tokens(x, pack) if first_only else x
        a = self_attention(sa["query"](q_in), sa["key"](x), sa["value"](x), self.n_heads, bias, pack, p, first_only)
        x = ao["LayerNorm"](q_in + self.dropout(ao["dense"](a)))
        h = self.act(self.intermediate["dense"](x))
        return self.output["LayerNorm"](x + self.dropout(self.output["dense"](h)))


class Encoder(nn.Module):
    """The bare encoder under the Hub's `bert.` / `roberta.` prefix, with an optional pooler."""

    def __init__(self, cfg: BertConfig, pooler: bool):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))})
        self.pooler = nn.ModuleDict({"dense": nn.Linear(cfg.hidden_size, cfg.hidden_size)}) if pooler else None
        self.gradient_checkpointing = False
        self.unpad_min_share = UNPAD_MIN_SHARE

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, first_token_only: bool = False
    ) -> torch.Tensor:
        """Hidden states (B, T, H); with `first_token_only`, the first token's only, (B, H) (see `run_layers`)."""
        x = self.embeddings(input_ids, token_type_ids)
        return run_layers(
            self.encoder["layer"],
            x,
            attention_mask,
            self.unpad_min_share,
            first_token_only,
            self.gradient_checkpointing and self.training,
        )

    def pool(self, first: torch.Tensor) -> torch.Tensor:
        """The BERT pooler on the first token's hidden state (B, H)."""
        return torch.tanh(self.pooler["dense"](first))


class BertClassifier(Classifier):
    """Sequence classification (logits (B, num_labels)) or multiple choice (input (B, C, T), logits (B, C)).

    `pooling` cls is the reference head above; mean / max / mean_sqrt_len pool every real token's final state
    (models/pooling.py) and the head is dropout -> Linear on that vector. `choice_scorer` bi: multiple choice as
    scaled cosine similarity of the query's and each option's embedding (input (B, 1 + C, T)), with no head.
    """

    def __init__(self, cfg: BertConfig, head: str, num_labels: int, pooling: str = "cls", choice_scorer: str = "cross"):
        super().__init__()
        self.cfg, self.task_head, self.num_labels = cfg, head, num_labels
        self.pooling, self.normalize = pooling, False
        self.choice_scorer = choice_scorer if head == "multiple_choice" else None
        self.in_batch_negatives = False  # bi: the batch's other options as negatives while training (bi_scores)
        self.base_prefix = cfg.prefix
        p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        reference = pooling == "cls"
        roberta_seq = cfg.model_type != "bert" and head == "sequence" and reference
        # RoBERTa's sequence head has its own dense layer and no pooler; every other reference head reads the pooler.
        self.add_module(cfg.prefix, Encoder(cfg, pooler=reference and not roberta_seq and self.choice_scorer != "bi"))
        h = cfg.hidden_size
        if self.choice_scorer == "bi":
            self.classifier = None
        elif roberta_seq:
            self.classifier = nn.ModuleDict({"dense": nn.Linear(h, h), "out_proj": nn.Linear(h, num_labels)})
        else:
            self.classifier = nn.Linear(h, 1 if head == "multiple_choice" else num_labels)

    @property
    def base(self) -> Encoder:
        return getattr(self, self.cfg.prefix)

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """(N, T) -> (N, H) sentence embeddings as the checkpoint declares them (normalised if it says so)."""
        v = pool(self.base(input_ids, attention_mask, token_type_ids), attention_mask, self.pooling)
        return F.normalize(v, dim=-1) if self.normalize else v

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if self.choice_scorer == "bi":
            in_batch = self.training and self.in_batch_negatives
            return bi_scores(self.embed, input_ids, attention_mask, token_type_ids, in_batch)  # (B, C), see bi_scores
        shape = input_ids.shape
        input_ids, attention_mask, token_type_ids = flatten_choices(input_ids, attention_mask, token_type_ids)
        if self.pooling != "cls":
            hidden = self.base(input_ids, attention_mask, token_type_ids)  # (B, T, H)
            logits = self.classifier(self.dropout(pool(hidden, attention_mask, self.pooling)))
            return unflatten_choices(logits, shape)
        first = self.base(input_ids, attention_mask, token_type_ids, first_token_only=True)  # (B, H)
        if isinstance(self.classifier, nn.ModuleDict):
            x = self.dropout(first)
            x = self.dropout(torch.tanh(self.classifier["dense"](x)))
            logits = self.classifier["out_proj"](x)
        else:
            logits = self.classifier(self.dropout(self.base.pool(first)))
        return unflatten_choices(logits, shape)


def build(
    cfg: BertConfig, head: str, num_labels: int, pooling: str = "cls", choice_scorer: str = "cross"
) -> BertClassifier:
    return BertClassifier(cfg, head, num_labels, pooling, choice_scorer)


def hf_architecture(model_type: str, head: str) -> str:
    family = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}[model_type]
    return family + ("ForSequenceClassification" if head == "sequence" else "ForMultipleChoice")


def usable_positions(hf: dict) -> int | None:
    """The longest input the position table serves. RoBERTa and XLM-R number real tokens from pad_token_id + 1
    (see Embeddings.position_ids), so their first pad_token_id + 1 rows are never a real token's: 514 - 2 = 512."""
    positions = hf.get("max_position_embeddings")
    if positions is None or hf.get("model_type") == "bert":
        return positions
    return positions - (hf.get("pad_token_id", 0) + 1)
