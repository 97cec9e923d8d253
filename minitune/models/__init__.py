"""Model families. Each module exports MODEL_TYPES, config_from_hf, build, hf_architecture and usable_positions."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from torch import nn

from minitune.errors import ConfigError, ParameterError
from minitune.models import bert, deberta, decoder, distilbert, ffnn, modernbert

_FAMILIES: list[ModuleType] = [bert, distilbert, deberta, modernbert, decoder, ffnn]

FAMILIES: dict[str, ModuleType] = {t: fam for fam in _FAMILIES for t in fam.MODEL_TYPES}


def family_for(model_type: str | None, where: Path | str) -> ModuleType:
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


EMBEDDING_NAMES = ("word_embeddings", "embed_tokens", "tok_embeddings", "embed")  # each family's token table


def word_embedding(model: nn.Module) -> nn.Embedding:
    """The model's token-embedding table, whose output adversarial training perturbs and integrated gradients
    follows: the one nn.Embedding named as some family names it."""
    found = [m for n, m in model.named_modules() if isinstance(m, nn.Embedding) and n.split(".")[-1] in EMBEDDING_NAMES]
    if len(found) != 1:
        raise ParameterError(
            f"`model` {type(model).__name__}: {len(found)} token-embedding tables named {', '.join(EMBEDDING_NAMES)}; "
            "exactly one is needed: pass a minitune model"
        )
    return found[0]
