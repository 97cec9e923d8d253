"""Model families: each module exports MODEL_TYPES, config_from_hf, build and hf_architecture."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..errors import ConfigError
from . import bert, decoder, distilbert, ffnn

_FAMILIES: list[ModuleType] = [bert, distilbert, decoder, ffnn]

FAMILIES: dict[str, ModuleType] = {t: fam for fam in _FAMILIES for t in fam.MODEL_TYPES}


def family_for(model_type: str | None, where: Path | str) -> ModuleType:
    if model_type not in FAMILIES:
        raise ConfigError(f"{where}: model_type {model_type!r} is not supported; supported: "
                          f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]
