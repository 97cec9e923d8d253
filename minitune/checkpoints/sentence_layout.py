"""The sentence-transformers layout: how a checkpoint declares its pooling, and how a pooled model is saved.

Reference: sentence-transformers' model files (modules.json, Pooling and Dense module folders); what must hold is
tested in tests/test_pooling.py: a saved pooled model reloads exactly, sentence-transformers' `encode` of it gives
our logits, and transformers' classification class never runs our head on its own pooler.

A sentence-transformers checkpoint lists its modules in `modules.json` (Transformer, Pooling, optionally Normalize);
the Pooling module's `config.json` names the mode with `pooling_mode_*` flags (older files) or `pooling_mode`
(newer ones). `declared_pooling` reads those; models/pooling.py computes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

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


# Saving. transformers has no class for a head on a mean- or max-pooled vector (its BERT class reads the [CLS]
# pooler), so such a model is written in the sentence-transformers layout: config.json names the bare encoder
# (`BertModel`) and model.safetensors holds its weights only, so transformers' classification classes load the
# encoder and say the head is new (they never run our head on their pooler); modules.json adds the pooling and
# the head as a Dense layer, so sentence-transformers computes exactly our logits (`encode`), and load_model reads
# it all back (`minitune_pooling` in config.json, the head from the Dense module).
_ST_TYPE = "sentence_transformers.models."
_MODE_FLAGS = {name: flag for flag, name in _FLAGS.items()}
HEAD_DIR, IDENTITY = "2_Dense", "torch.nn.modules.linear.Identity"


def bare_architecture(sequence_architecture: str) -> str:
    """`BertForSequenceClassification` -> `BertModel`: the encoder without a head."""
    return sequence_architecture.replace("ForSequenceClassification", "Model").replace("ForMultipleChoice", "Model")


def write_sentence_modules(out: Path, hidden: int, mode: str, normalize: bool, head: dict | None, write) -> None:
    """modules.json, 1_Pooling/ and the head as 2_Dense/ (or 2_Normalize/ for a bi-encoder that normalises).
    `head`: {"weight": (n, H), "bias": (n,)} or None; `write(path, text_or_tensors)` writes one file atomically."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST_TYPE + "Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_TYPE + "Pooling"})
    pooling = {"word_embedding_dimension": hidden} | {flag: _MODE_FLAGS[mode] == flag for flag in _FLAGS}
    write(out / "1_Pooling" / "config.json", json.dumps(pooling, indent=2) + "\n")
    if head is not None:
        modules.append({"idx": 2, "name": "2", "path": HEAD_DIR, "type": _ST_TYPE + "Dense"})
        n = head["weight"].shape[0]
        dense = {"in_features": hidden, "out_features": n, "bias": True, "activation_function": IDENTITY}
        write(out / HEAD_DIR / "config.json", json.dumps(dense, indent=2) + "\n")
        write(out / HEAD_DIR / "model.safetensors", {"linear.weight": head["weight"], "linear.bias": head["bias"]})
    elif normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _ST_TYPE + "Normalize"})
        write(out / "2_Normalize" / "config.json", "{}\n")
    write(out / "modules.json", json.dumps(modules, indent=2) + "\n")


def head_tensors(model_dir: Path) -> dict:
    """The Dense head a pooled minitune model was saved with, under our names: {name: (shape, reader)}."""
    path = model_dir / HEAD_DIR / "model.safetensors"
    if not (model_dir / "modules.json").is_file() or not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)

    def reader(key: str):
        def read():
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(key)

        return read

    return {f"classifier.{k.removeprefix('linear.')}": (shape, reader(k)) for k, shape in shapes.items()}
