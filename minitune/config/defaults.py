"""Defaults per task, from the source documents (the humor document is explicit; the others follow their papers),
and the bag-of-embeddings baseline's, which trains from scratch. Keys are settings' flat names (config/sections.py).

Precedence, lowest to highest: the dataclass defaults, these, a `--config run.toml` file, then the flags given.
"""

from __future__ import annotations

TASK_DEFAULTS: dict[str, dict] = {
    "humor": dict(
        lr=2e-5,
        warmup_ratio=0.1,
        scheduler="cosine",
        label_smoothing=0.1,
        llrd=0.95,
        batch_size=8,
        grad_accum=4,
        patience=5,
        epochs=5,
    ),
    "semeval": dict(
        lr=3e-5, warmup_ratio=0.1, scheduler="linear", epochs=5, batch_size=32, metric="jaccard", patience=3
    ),
    "goemotions": dict(
        lr=5e-5, warmup_ratio=0.1, scheduler="linear", epochs=4, batch_size=32, threshold=0.3, metric="macro_f1"
    ),
    "recipe-mpr": dict(
        lr=2e-5, warmup_ratio=0.1, scheduler="linear", epochs=5, batch_size=8, metric="accuracy", max_length=64
    ),
    "custom": dict(),
}

# The bag-of-embeddings baseline trains from scratch: a far larger step size and no layer structure to decay.
FFNN_DEFAULTS = dict(lr=1e-3, llrd=None, label_smoothing=0.0, epochs=10, patience=3, batch_size=32, grad_accum=1)


def defaults_for(chosen: dict) -> dict:
    """The defaults that apply under the settings a user chose (flat names): the task's, the baseline's, and none
    of a task's label smoothing when another loss than ce was chosen (the smoothing belongs to the default loss)."""
    defaults = dict(TASK_DEFAULTS.get(chosen.get("task"), {}))
    if chosen.get("model", "minilm") == "ffnn":
        defaults.update(FFNN_DEFAULTS)
    if chosen.get("loss") not in (None, "ce") and "label_smoothing" not in chosen:
        defaults.pop("label_smoothing", None)
    return defaults


DEFAULT_FOLDS = 5  # minitune cv's K when `folds` is not given


def default_metric(task: str | None) -> str:
    return "accuracy" if task == "recipe-mpr" else "macro_f1"
