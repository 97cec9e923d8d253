"""Model families. Each module exports MODEL_TYPES, config_from_hf, build, hf_architecture and usable_positions."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from minitune.errors import ConfigError
from minitune.models import bert, deberta, decoder, distilbert, ffnn, modernbert

_FAMILIES: list[ModuleType] = [bert, distilbert, deberta, modernbert, decoder, ffnn]

FAMILIES: dict[str, ModuleType] = {t: fam for fam in _FAMILIES for t in fam.MODEL_TYPES}


def family_for(model_type: str | None, where: Path | str) -> ModuleType:
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]
