"""load_model / load_tokenizer: a Hub checkpoint becomes one of our own modules (saving: checkpoints/save.py).

The walk: name -> local directory (hub.resolve_model) -> config.json -> family (models/) -> module built on the meta
device -> checkpoint index -> strict key check -> each tensor read, cast and assigned -> fresh head initialised if
the checkpoint carries none for this task.

The key check is strict in the way a user needs: a missing or mis-shaped base weight, or an unknown key inside the
base model, is an error that names the keys; a checkpoint's other heads (an MLM head, `lm_head`, NSP) and legacy
buffers (`position_ids`) are dropped with a logged note, as the reference does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from torch import nn

from minitune.adapters.nf4 import NF4Linear, quantize_model_
from minitune.checkpoints.gguf import read_gguf
from minitune.checkpoints.gguf_llama import gguf_hub_tensors, gguf_to_hf_config, gguf_tokenizer
from minitune.checkpoints.hub import resolve_model
from minitune.checkpoints.sentence_layout import declared_pooling, head_tensors
from minitune.checkpoints.weights import _BUFFER_SUFFIXES, CheckpointIndex, describe_keys, index_checkpoint, set_tensor
from minitune.data.tokenizer import Tokenizer
from minitune.errors import CheckpointError, ConfigError, ParameterError
from minitune.models import family_for
from minitune.models.heads import Classifier, init_fresh
from minitune.models.pooling import CHOICE_SCORERS, POOLINGS

log = logging.getLogger("minitune")

DTYPES = {
    None: torch.float32,
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
HEADS = ("sequence", "multiple_choice", "causal_lm")  # causal_lm: decoders, for generation


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ParameterError(f"`dtype` {dtype!r} is not supported; use one of fp32, bf16, fp16")
    return DTYPES[dtype]


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no config.json: point to a Hugging Face model directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}): download it again") from None


def _checkpoint_head(hf: dict, family, head: str) -> tuple[bool, list[str] | None]:
    """(whether the checkpoint was saved with a head for this task, its label names if it names them)."""
    if family.hf_architecture(hf["model_type"], head) not in (hf.get("architectures") or []):
        return False, None
    return True, _labels(hf, head)


def _labels(hf: dict, head: str) -> list[str] | None:
    id2label = hf.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)] if id2label and head == "sequence" else None


def load_model(
    name_or_path,
    num_labels: int | None = None,
    head: str = "sequence",
    dtype=None,
    quantize: str | None = None,
    pooling: str = "auto",
    choice_scorer: str = "auto",
) -> nn.Module:
    """A classifier of our own modules with the checkpoint's weights; `model(input_ids, attention_mask)` -> logits.

    quantize="nf4" stores every linear layer but the head in NF4 as it is read (QLoRA): each full-precision
    weight is quantized on arrival, so the full-precision model is never held whole.

    pooling: auto reads the checkpoint's sentence-transformers files (checkpoints/sentence_layout.py) and falls back
    to the family's reference head (cls); cls, mean or max choose. choice_scorer (multiple choice): bi scores options
    by cosine similarity of embeddings, cross encodes (query, option) pairs; auto is bi when the checkpoint declares
    a sentence-embedding pooling.
    """
    if quantize not in (None, "nf4"):
        raise ParameterError(f"`quantize` {quantize!r} is not supported; use nf4")
    if head not in HEADS:
        raise ParameterError(f"`head` {head!r} is not supported; use one of {', '.join(HEADS)}")
    path = resolve_model(str(name_or_path))
    hf, index = _open_checkpoint(path)
    family = family_for(hf.get("model_type"), path)
    try:
        cfg = family.config_from_hf(hf)
    except ConfigError as e:  # a setting of the checkpoint's config.json this family cannot honour
        where = path if path.suffix.lower() == ".gguf" else path / "config.json"
        raise CheckpointError(f"{where}: {e}") from None
    declared, has_head, ckpt_labels = _declared_for_head(path, hf, family, head)
    mode, scorer = resolve_pooling(family, hf, declared, pooling, head, choice_scorer)
    mode, has_head = _head_pooling(family, hf, pooling, mode, scorer, has_head)
    index, pooled_head = _with_pooled_head(path, hf, mode, index)
    if pooled_head:
        has_head, ckpt_labels = True, _labels(hf, head)
    if num_labels is None:
        num_labels = len(ckpt_labels) if ckpt_labels else 2
    with torch.device("meta"):
        model = family.build(cfg, head, num_labels, mode, scorer) if mode != "cls" or scorer == "bi" else None
        model = model or family.build(cfg, head, num_labels)
    model.normalize = declared.normalize
    index = index or index_checkpoint(path)
    head_loaded = _copy_weights(model, index, resolve_dtype(dtype), use_head=has_head, quantize=quantize)
    hub = model.hub_config() if isinstance(model, Classifier) else {}  # what its head adds to config.json
    model.hf_config, model.task_head, model.name_or_path = {**hf, **hub}, head, str(name_or_path)
    model.label_names = ckpt_labels if head_loaded else None
    model.head_trained = head_loaded or scorer == "bi"  # False: a fresh, untrained head; bi has no head
    return model.eval()


def _head_pooling(family, hf: dict, pooling: str, mode: str, scorer: str, has_head: bool) -> tuple[str, bool]:
    """(pooling mode, whether the checkpoint's head fits it). A head trained on another pooled vector is not loaded.
    Where the family's reference head itself pools either way (ModernBERT's `classifier_pooling`), `auto` is the
    checkpoint's own choice and cls / mean choose; elsewhere minitune records a pooled head as `minitune_pooling`."""
    if getattr(family, "HEAD_POOLS", False) and scorer != "bi":
        mode = hf.get("classifier_pooling", "cls") if pooling == "auto" else mode
        return mode, has_head and hf.get("classifier_pooling", "cls") == mode
    return mode, has_head and hf.get("minitune_pooling", "cls") == mode


def _open_checkpoint(path: Path) -> tuple[dict, CheckpointIndex | None]:
    """(config.json dict, tensor index) of a resolved checkpoint. A GGUF file is indexed now (its config comes from
    the same read); a Hub directory's index is left for later (None)."""
    if path.suffix.lower() != ".gguf":
        return read_config(path), None
    g = read_gguf(path)
    hf, index = gguf_to_hf_config(g), CheckpointIndex(path)
    for name, (shape, load) in gguf_hub_tensors(g).items():
        index.add(name, shape, load)
    return hf, index


def _with_pooled_head(
    path: Path, hf: dict, mode: str, index: CheckpointIndex | None
) -> tuple[CheckpointIndex | None, bool]:
    """(the index, whether it now holds a pooled head): a pooled head minitune saved beside the encoder
    (sentence-transformers' Dense module) is read when the checkpoint was trained with this pooling."""
    pooled_head = head_tensors(path) if hf.get("minitune_pooling", "cls") == mode and mode != "cls" else {}
    if not pooled_head:
        return index, False
    index = index or index_checkpoint(path)
    for name, (shape, reader) in pooled_head.items():
        index.add(name, shape, reader)
    return index, True


def _resolved_config(name_or_path) -> tuple[Path, dict]:
    path = resolve_model(str(name_or_path))
    return path, gguf_to_hf_config(read_gguf(path)) if path.suffix.lower() == ".gguf" else read_config(path)


def model_type_of(name_or_path) -> tuple[Path, str | None, dict | None]:
    """(local path, model_type, config.json) of a checkpoint without loading it; a .gguf file is a Llama-family
    decoder whose config is not read here (its metadata is a full file read)."""
    path = resolve_model(str(name_or_path))
    if path.suffix.lower() == ".gguf":
        return path, "llama", None
    hf = read_config(path)
    return path, hf.get("model_type"), hf


def trained_head(name_or_path) -> str:
    """The head a saved classifier was trained as: multiple_choice (a transformers multiple-choice class, or a model
    minitune saved with a choice scorer), else sequence."""
    hf = _resolved_config(name_or_path)[1]
    architectures = hf.get("architectures") or []
    multiple = hf.get("minitune_choice_scorer") or any(a.endswith("ForMultipleChoice") for a in architectures)
    return "multiple_choice" if multiple else "sequence"


def choice_scorer_for(name_or_path, choice_scorer: str = "auto") -> str:
    """cross or bi: how load_model will score a multiple-choice head of this checkpoint (read from its files)."""
    path, hf = _resolved_config(name_or_path)
    family = family_for(hf.get("model_type"), path)
    declared = _declared_for_head(path, hf, family, "multiple_choice")[0]  # decided as load_model decides it
    return resolve_pooling(family, hf, declared, "auto", "multiple_choice", choice_scorer)[1]


def _declared_for_head(path, hf: dict, family, head: str):
    """(declared pooling, has a head for `head`, its labels). A transformers head trained for this task reads the
    family's reference pooling, whatever sentence-transformers files sit beside it."""
    declared = declared_pooling(path)
    has_head, labels = _checkpoint_head(hf, family, head)
    if has_head and "minitune_pooling" not in hf:
        declared = dataclasses.replace(declared, mode=None)
    return declared, has_head, labels


def resolve_pooling(family, hf: dict, declared, pooling: str, head: str, choice_scorer: str) -> tuple[str, str]:
    """(pooling mode, choice scorer) for this checkpoint and request; see load_model."""
    if pooling not in POOLINGS:
        raise ParameterError(f"`pooling` {pooling!r} is not supported; use one of {', '.join(POOLINGS)}")
    if choice_scorer not in CHOICE_SCORERS:
        raise ParameterError(f"`choice_scorer` {choice_scorer!r} is not supported; use one of auto, cross, bi")
    # A model minitune saved records the pooling it was trained with; else the sentence-transformers files speak.
    mode = pooling if pooling != "auto" else hf.get("minitune_pooling") or declared.mode or "cls"
    scorer = hf.get("minitune_choice_scorer") if choice_scorer == "auto" else choice_scorer
    scorer = scorer or ("bi" if declared.mode else "cross")
    scorer = scorer if head == "multiple_choice" else "cross"
    supported = getattr(family, "POOLINGS", ("cls",))
    if pooling == "auto" and mode not in supported:  # declared, but this family builds its reference head only
        log.warning(
            "%s declares %s pooling; model_type %r has its reference head only",
            hf.get("_name_or_path", "the checkpoint"),
            mode,
            hf.get("model_type"),
        )
        mode = "cls"
        scorer = "cross" if choice_scorer == "auto" else scorer
    if mode not in supported or (scorer == "bi" and len(supported) == 1):
        what = f"`pooling` {mode}" if mode not in supported else "`choice_scorer` bi"
        raise ParameterError(
            f"{what} is not available for model_type {hf.get('model_type')!r} (this family builds its reference "
            "head only): use `pooling` cls / `choice_scorer` cross, or a BERT, RoBERTa or XLM-R checkpoint"
        )
    if scorer == "bi" and pooling == "auto" and mode == "cls" and declared.mode is None:
        mode = "mean"  # no declared pooling: a bi-encoder of a plain encoder reads the mean of its tokens
    return mode, scorer


def _normalise_names(index: CheckpointIndex, prefix: str) -> dict[str, str]:
    """Checkpoint name -> model name. A bare base model (no `bert.` prefix) gets the prefix added."""
    names = list(index.shapes)
    bare = not any(n.startswith(prefix + ".") for n in names)
    return {n: (f"{prefix}.{n}" if bare else n) for n in names}


def _copy_weights(
    model: nn.Module, index: CheckpointIndex, dtype: torch.dtype, use_head: bool, quantize: str | None = None
) -> bool:
    """The strict 1:1 copy. Returns whether the checkpoint's head was loaded (else a fresh head is initialised)."""
    prefix = model.base_prefix
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    to_model = _normalise_names(index, prefix)
    found = {to_model[n]: index.shapes[n] for n in index.shapes}
    head_keys = {k for k in expected if not k.startswith(prefix + ".")}
    _check_keys(model, index.path, expected, found, head_keys)
    head_fits = use_head and all(found.get(k) == expected[k] for k in head_keys)
    pretrained = getattr(model, "pretrained_head", ())  # Classifier's: a pretraining head's weights it reuses
    shared = {k for k in head_keys if k.startswith(pretrained) and found.get(k) == expected[k]}
    usable = lambda k: k not in head_keys or head_fits or k in shared  # noqa: E731
    dropped = [k for k in found if k not in expected or not usable(k)]
    if dropped:
        log.info("not used from the checkpoint: %s", describe_keys(dropped))
    taken = [k for k in expected if k in found and usable(k)]
    _read_weights(model, index, {m: n for n, m in to_model.items()}, taken, dtype, quantize)
    fresh = [k for k in expected if k not in found or not usable(k)]
    _init_fresh(model, fresh, dtype)
    return bool(head_keys) and head_fits


def _check_keys(
    model: nn.Module, where: Path, expected: dict[str, tuple], found: dict[str, tuple], head_keys: set[str]
) -> None:
    """The strict key check of the base model (model names on both sides): every weight present with its shape, and
    no unknown key inside the base model; buffers, pooler weights and the family's ignored keys aside."""
    prefix = model.base_prefix
    in_base = lambda k: k.startswith(prefix + ".")  # noqa: E731
    # Pooler weights may be absent (checkpoints trained without NSP); the reference initialises them fresh.
    optional = {k for k in expected if ".pooler." in k}
    missing = [k for k in expected if k not in found and k not in head_keys and k not in optional]
    unexpected = [
        k
        for k in found
        if in_base(k)
        and k not in expected
        and not k.endswith(_BUFFER_SUFFIXES)
        and ".pooler." not in k
        and not k.endswith(getattr(model, "ignored_checkpoint_keys", ()))
    ]
    mismatched = [k for k in found if k in expected and k not in head_keys and found[k] != expected[k]]
    if missing:
        raise CheckpointError(
            f"{where}: missing weights {describe_keys(missing)}: the checkpoint does not fit "
            "its config.json (wrong or partial download?)"
        )
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(
            f"{where}: {k} has shape {list(found[k])} but the config implies {list(expected[k])} "
            f"({len(mismatched)} mismatched): config.json and the weights disagree"
        )
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected weights {describe_keys(unexpected)}: this checkpoint is not a "
            f"{model.cfg.model_type} model of this config"
        )


def _read_weights(
    model: nn.Module,
    index: CheckpointIndex,
    from_model: dict[str, str],
    keys: list[str],
    dtype: torch.dtype,
    quantize: str | None,
) -> None:
    """Read each of `keys` (model names; `from_model` gives the checkpoint's), cast floats to dtype and assign it;
    with quantize="nf4", every linear but the head is an NF4 placeholder, filled as its weight arrives."""
    nf4 = {}
    if quantize == "nf4":
        quantize_model_(model)
        nf4 = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, NF4Linear)}
    for key in keys:
        t = index.readers[from_model[key]]()
        t = t.to(dtype) if t.is_floating_point() else t
        if key in nf4:
            nf4[key].load_weight(t)
        else:
            set_tensor(model, key, t)


def _init_fresh(model: nn.Module, keys: list[str], dtype: torch.dtype) -> None:
    """Weights the checkpoint does not carry (a new head, a missing pooler), initialised as the reference does."""
    if not keys:
        return
    log.info("initialised fresh: %s", describe_keys(keys))
    for key in keys:
        module_name, _, leaf = key.rpartition(".")
        module = model.get_submodule(module_name)
        shape = (module._parameters.get(leaf) if leaf in module._parameters else module._buffers[leaf]).shape
        t = torch.empty(shape, dtype=dtype)
        if isinstance(model, Classifier):
            model.init_fresh_(key, t)  # a family may initialise its head as its reference does
        else:
            init_fresh(model, key, t)
        set_tensor(model, key, t)


def load_tokenizer(name_or_path) -> Tokenizer:
    """The checkpoint's tokenizer (tokenizer.json + its special tokens), or the one built from a GGUF file."""
    path = resolve_model(str(name_or_path))
    if path.suffix.lower() == ".gguf":
        tok, special = gguf_tokenizer(read_gguf(path))
        return Tokenizer(tok, **special)
    return Tokenizer.from_dir(path)
