"""The sentence-transformers layout: how a checkpoint declares its pooling, and how a pooled model is saved.

A sentence-transformers checkpoint lists its modules in `modules.json` (Transformer, Pooling, optionally Normalize);
the Pooling module's `config.json` names the mode with `pooling_mode_*` flags (older files) or `pooling_mode`
(newer ones). `declared_pooling` reads those; models/pooling.py computes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from minitune.errors import CheckpointError

# sentence-transformers' Pooling flags -> our mode names (models/pooling.MODES)
_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_NAMES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len"}


@dataclass(frozen=True)
class Declared:
    """What a checkpoint's own files say about reading it: a pooling mode (None: the files say nothing) and
    whether its embeddings are L2-normalised."""

    mode: str | None = None
    normalize: bool = False
    transformer_path: str = ""  # where the Transformer module's config.json and weights sit, relative


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read as JSON ({e}): download the model again") from None


def _mode(config: dict, where: Path) -> str:
    if isinstance(config.get("pooling_mode"), str):
        modes = [_NAMES.get(config["pooling_mode"], config["pooling_mode"])]
    else:
        modes = [name for flag, name in _FLAGS.items() if config.get(flag)]
        modes += [f for f in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken") if config.get(f)]
    if len(modes) != 1 or modes[0] not in _FLAGS.values():
        raise CheckpointError(
            f"{where}: pooling {modes or 'none'} is not supported (one of cls, mean, max, mean_sqrt_len): "
            "pass `pooling` explicitly to use another head"
        )
    return modes[0]


def declared_pooling(model_dir: Path) -> Declared:
    """The pooling a checkpoint's sentence-transformers files declare; Declared() when it has none."""
    if model_dir.suffix.lower() == ".gguf" or not (model_dir / "modules.json").is_file():
        return Declared()
    modules = _read_json(model_dir / "modules.json")
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m.get("path", "") for m in modules if isinstance(m, dict)}
    if "Pooling" not in kinds:
        return Declared()
    where = model_dir / kinds["Pooling"] / "config.json"
    return Declared(_mode(_read_json(where), where), "Normalize" in kinds, kinds.get("Transformer", ""))
