"""Saving in the Hub layout: `save_pretrained` for a model, `save_model_dir` for what a run leaves behind.

A saved model is config.json (architectures, id2label, problem_type) and model.safetensors under the Hub's weight
names, so minitune's load_model and transformers' AutoModelForSequenceClassification both load it. A head on a
mean- or max-pooled vector, or a bi-encoder, has no transformers class: it is saved in the sentence-transformers
layout instead (checkpoints/sentence_layout.py), which sentence-transformers loads with the same pooling. A model with
LoRA adapters or NF4 base weights is saved merged and dequantized (adapters/merge.py); its adapter goes beside it in
peft's layout. Every file is written atomically: a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from minitune.adapters.lora import lora_modules
from minitune.adapters.merge import export_state_dict
from minitune.adapters.peft_format import save_adapter
from minitune.checkpoints.atomic import atomic_dir, atomic_write, atomic_write_text
from minitune.checkpoints.hub import ALIASES, resolve_model
from minitune.checkpoints.model_card import model_card
from minitune.checkpoints.sentence_layout import bare_architecture, write_sentence_modules
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.models import family_for


def save_pretrained(
    model: nn.Module, out_dir, label_names: list[str] | None = None, problem_type: str | None = None
) -> None:
    """The Hub layout: config.json (architectures, id2label) and model.safetensors, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family = family_for(model.hf_config.get("model_type"), out)
    cfg = dict(model.hf_config)
    names = label_names or model.label_names or [f"LABEL_{i}" for i in range(model.num_labels)]
    if model.task_head == "sequence":
        cfg["id2label"] = {str(i): n for i, n in enumerate(names)}
        cfg["label2id"] = {n: i for i, n in enumerate(names)}
    cfg["architectures"] = [family.hf_architecture(cfg["model_type"], model.task_head)]
    if problem_type:
        cfg["problem_type"] = problem_type
    pooled = getattr(model, "pooling", "cls") != "cls" or getattr(model, "choice_scorer", None) == "bi"
    for key in ("pooling", "choice_scorer"):  # what load_model reads back: the head was trained on this
        cfg.pop(f"minitune_{key}", None)
        if getattr(model, key, None) is not None:
            cfg[f"minitune_{key}"] = getattr(model, key)
    state = export_state_dict(model)  # plain Hub names: LoRA merged, NF4 dequantized
    if (
        pooled
    ):  # no transformers class pools this way: the sentence-transformers layout (checkpoints/sentence_layout.py)
        cfg["architectures"] = [bare_architecture(cfg["architectures"][0])]
        head = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
        state = {k: v for k, v in state.items() if k.startswith(model.base_prefix + ".")}
        write_sentence_modules(out, model.cfg.hidden_size, model.pooling, model.normalize, head or None, _write)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()} or {torch.float32}
    cfg["dtype"] = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else "float32"
    atomic_write(out / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"}))
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    model.label_names = names


def _write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        atomic_write_text(path, content)
    else:
        atomic_write(path, lambda p: save_file(content, p, metadata={"format": "pt"}))


def adapter_base_name(name_or_path: str | None) -> str | None:
    """What peft can open as the adapter's base_model_name_or_path: a Hub id or a real path, not our alias."""
    target = ALIASES.get(name_or_path or "", name_or_path)
    if target and target.startswith("pip:"):  # a packaged model: name the file it resolved to
        target = str(resolve_model(name_or_path))
    return target


def save_adapter_dir(path: Path, model: nn.Module) -> None:
    """The model's LoRA adapter alone, in peft's layout, swapped in whole at `path`."""
    base = adapter_base_name(getattr(model, "name_or_path", None))
    atomic_dir(path, lambda target: save_adapter(model, target, base_model_name_or_path=base))


def save_model_dir(
    out_dir: Path,
    model: nn.Module,
    tokenizer,
    kind: str,
    label_names: list[str] | None,
    thresholds: dict | None = None,
    trained_on: str | None = None,
) -> None:
    """A run's model/ (model, tokenizer, thresholds.json for multi-label and README.md, its card: what it is and how
    to load it; `trained_on` names the task) and, for a LoRA run, adapter/.

    Whole directories are swapped in: nothing from an earlier run in the same output directory survives beside them.
    """
    problem_type = {MULTI_LABEL: "multi_label_classification", SINGLE_LABEL: "single_label_classification"}.get(kind)
    label_names = None if kind == MULTIPLE_CHOICE else label_names  # options have no names

    def write_model(target: Path) -> None:
        save_pretrained(model, target, label_names=label_names, problem_type=problem_type)
        tokenizer.save_pretrained(target)
        if thresholds is not None:
            atomic_write_text(target / "thresholds.json", json.dumps(thresholds, indent=2) + "\n")
        atomic_write_text(target / "README.md", model_card(target, model, kind, label_names, trained_on))

    atomic_dir(out_dir / "model", write_model)
    if lora_modules(model):
        save_adapter_dir(out_dir / "adapter", model)
    elif (out_dir / "adapter").is_dir():
        shutil.rmtree(out_dir / "adapter")  # an earlier LoRA run's adapter does not belong to these weights
