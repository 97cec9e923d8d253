"""LoRA adapters: the wrapper layer, target selection, merge/unmerge, and adapters saved in PEFT's layout.

What it does: `LoRALinear` adds y += s·B(A(dropout(x))) to a frozen linear layer (an nn.Linear, or an NF4Linear for
QLoRA); `apply_lora` wraps the layers whose names match target patterns and freezes all but the adapters and the
classification head; `save_adapter` / `load_adapter` write and read adapter_config.json + adapter_model.safetensors
that peft's `PeftModel.from_pretrained` reads, and read what peft's `save_pretrained` writes.

References: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021): A ~ kaiming-uniform, B = 0,
scaling alpha/r; Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA" (2023): alpha/sqrt(r).
Reference implementation: peft (LoRA layer arithmetic; key names in utils/save_and_load.py).

What must match: forward equals peft's LoRA layer (base(x) + lora_B(lora_A(dropout(x))) * scaling); the base `weight`
and `bias` keep their names (as in torchtune), so a base checkpoint loads 1:1 into a wrapped model; adapter files use
peft's keys: our `<path>.lora_A.weight` is saved as `base_model.model.<path>.lora_A.weight` (same for lora_B), and
every parameter of a trained head module `<head>` (peft's modules_to_save) as `base_model.model.<head>.<param>`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import CheckpointError, ConfigError

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
HEAD_NAMES = ("score", "classifier", "pre_classifier", "pooler")
_DECODER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_BERT = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
_DISTILBERT = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")
DEFAULT_TARGETS = {"llama": _DECODER, "qwen2": _DECODER, "gemma": _DECODER, "mistral": _DECODER,
                   "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "distilbert": _DISTILBERT}


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: y = base(x) + scaling · B(A(dropout(x))).

    For an nn.Linear base the wrapper adopts its `weight` and `bias` Parameters under the same names (no `base.`
    prefix), so checkpoints written for the plain model load unchanged. Any other base (an NF4Linear for QLoRA, or
    any module with `in_features`/`out_features`) is kept as the submodule `base` and called as is.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if r <= 0:
            raise ConfigError(f"--lora-r: rank must be a positive integer, got {r}; use e.g. --lora-r 8")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.dropout_p, self.use_rslora = r, alpha, dropout, use_rslora
        self.scaling = alpha / (math.sqrt(r) if use_rslora else r)
        if isinstance(base, nn.Linear):
            self.weight, self.bias, self.base = base.weight, base.bias, None
            device, dtype = self.weight.device, dtype or self.weight.dtype
        else:
            self.base = base
            tensors = [*base.parameters(), *base.buffers()]
            device = tensors[0].device if tensors else None
            dtype = dtype or torch.float32  # adapters over a quantized base train in full precision
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        # The pre-merge weight while merged (see `merge`); not saved, but moved by `.to()` with the module.
        self.register_buffer("weight_unmerged", None, persistent=False)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        # A as nn.Linear's own default init, B zero: the wrapped layer starts out equal to the base layer.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def merged(self) -> bool:
        return self.weight_unmerged is not None

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias) if self.base is None else self.base(x)
        if self.merged:
            return out
        h = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        return out + (self.lora_B(self.lora_A(h)) * self.scaling).to(out.dtype)

    def delta_weight(self) -> Tensor:
        """scaling · B·A in fp32, shape (out_features, in_features)."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scaling·B·A; the LoRA branch is then skipped. A second call does nothing.

        The original tensor is kept (not recomputed as W' - s·B·A, which rounds differently), so `unmerge` gives W
        back bit for bit; merging is for inference/export, where that extra copy is the price of exactness.
        """
        if self.base is not None:
            raise ConfigError("LoRA merge: the base weights are quantized (NF4), so the update cannot be merged "
                              "without re-quantizing; save the adapter instead, or merge into a full-precision base")
        if self.merged:
            return
        self.weight_unmerged = self.weight.data
        self.weight.data = (self.weight_unmerged.float() + self.delta_weight()).to(self.weight.dtype)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact pre-merge weight; the LoRA branch is active again. Does nothing when not merged."""
        if self.merged:
            self.weight.data = self.weight_unmerged
            self.weight_unmerged = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha}, "
                f"scaling={self.scaling:g}, merged={self.merged}")


def default_targets(model_type: str) -> list[str]:
    """The layers LoRA wraps by default for a model family: all attention projections and the MLP."""
    if model_type not in DEFAULT_TARGETS:
        raise ConfigError(f"--lora-targets: no default LoRA targets for model_type {model_type!r}; pass module-name "
                          f"patterns, e.g. --lora-targets q_proj,v_proj (families with defaults: "
                          f"{', '.join(DEFAULT_TARGETS)})")
    return list(DEFAULT_TARGETS[model_type])


def infer_model_type(model: nn.Module) -> str | None:
    """model_type from a minitune model (`model_type` or `cfg.model_type`) or a transformers one (`config`)."""
    for holder in (model, getattr(model, "cfg", None), getattr(model, "config", None)):
        kind = getattr(holder, "model_type", None)
        if isinstance(kind, str) and kind:
            return kind
    return None


def matches(name: str, pattern: str) -> bool:
    """Does a module's qualified name match a target pattern?

    `re:<regex>` is a full-match regex on the qualified name. Otherwise the pattern is an fnmatch glob matched
    against the qualified name or any dotted suffix of it, so `query` matches `...attention.self.query` and
    `output.dense` matches `...layer.0.output.dense`; for patterns without wildcards this is exactly peft's rule
    for a list of target_modules (name == pattern or name ends with "." + pattern).
    """
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def head_module_names(model: nn.Module, trainable_extra: tuple[str, ...] | list[str] = HEAD_NAMES) -> list[str]:
    """Outermost modules whose last name component is in `trainable_extra` (the classification head)."""
    heads: list[str] = []
    for name, _ in model.named_modules():
        if name and name.rsplit(".", 1)[-1] in trainable_extra and not _inside(name, heads):
            heads.append(name)
    return heads


def _inside(name: str, roots: list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _linear_candidates(model: nn.Module, heads: list[str]) -> list[str]:
    """Linear-like modules that may take an adapter: not in the head, not already (inside) a LoRALinear."""
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    return [n for n, m in model.named_modules()
            if n and hasattr(m, "in_features") and hasattr(m, "out_features") and not isinstance(m, LoRALinear)
            and not _inside(n, heads) and not _inside(n, wrapped)]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def set_trainable(model: nn.Module, heads: list[str]) -> None:
    """Freeze everything except LoRA A/B and the parameters of the head modules."""
    for name, p in model.named_parameters():
        parts = name.split(".")
        p.requires_grad_("lora_A" in parts or "lora_B" in parts or _inside(name.rpartition(".")[0], heads))


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0, targets: list[str] | None = None,
               use_rslora: bool = False, trainable_extra: tuple[str, ...] = HEAD_NAMES,
               model_type: str | None = None) -> list[str]:
    """Wrap the target linear layers of `model` in LoRALinear, in place; returns the wrapped names in order.

    `targets` are patterns for `matches` (default: `default_targets` of the model's family). Head modules named in
    `trainable_extra` are never wrapped; they stay fully trainable and are saved with the adapter.
    """
    heads = head_module_names(model, trainable_extra)
    if targets is None:
        kind = model_type or infer_model_type(model)
        if kind is None:
            raise ConfigError("--lora-targets: cannot tell the model family to pick default LoRA targets; pass "
                              "module-name patterns, e.g. --lora-targets query,value")
        targets = default_targets(kind)
    candidates = _linear_candidates(model, heads)
    for pattern in targets:
        if not any(matches(n, pattern) for n in candidates):
            examples = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in candidates})[:12])
            raise ConfigError(f"--lora-targets: pattern {pattern!r} matches no linear layer of this model; "
                              f"use names such as: {examples}")
    chosen = [n for n in candidates if any(matches(n, p) for p in targets)]
    for name in chosen:
        _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, use_rslora))
    set_trainable(model, heads)
    return chosen


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state_dict(model: nn.Module, heads: list[str]) -> dict[str, Tensor]:
    """PEFT-named tensors: LoRA A/B of every LoRALinear and every parameter/buffer of the head modules."""
    out = {}
    for name, t in model.state_dict().items():
        owner = name.rpartition(".")[0]
        if name.endswith((".lora_A.weight", ".lora_B.weight")) or _inside(owner, heads):
            out[PEFT_PREFIX + name] = t.detach().contiguous()
    return out


def save_adapter(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str | None = None,
                 task_type: str | None = "SEQ_CLS", trainable_extra: tuple[str, ...] = HEAD_NAMES) -> Path:
    """Write adapter_config.json and adapter_model.safetensors in peft's layout; returns the directory."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("save_adapter: the model has no LoRALinear layers; call apply_lora first")
    settings = {(m.r, m.alpha, m.dropout_p, m.use_rslora) for m in modules.values()}
    if len(settings) != 1:
        raise ValueError(f"save_adapter: layers differ in (r, alpha, dropout, rslora): {sorted(settings)}")
    r, alpha, dropout, rslora = settings.pop()
    heads = head_module_names(model, trainable_extra)
    config = {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
        "r": r, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha, "lora_dropout": dropout,
        "use_rslora": rslora, "target_modules": sorted(modules), "modules_to_save": heads or None,
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "use_dora": False, "lora_bias": False, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(adapter_state_dict(model, heads), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return out


def _read_adapter_config(adapter_dir: Path) -> dict:
    path = adapter_dir / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; point to a directory written by save_adapter or peft's "
                              f"save_pretrained") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-save the adapter") from None
    unsupported = [k for k in ("use_dora", "lora_bias") if config.get(k)]
    unsupported += ["alpha_pattern"] if config.get("alpha_pattern") else []
    unsupported += ["fan_in_fan_out"] if config.get("fan_in_fan_out") else []
    if config.get("peft_type") != "LORA" or unsupported:
        raise CheckpointError(f"{path}: only plain LoRA adapters load here (peft_type={config.get('peft_type')!r}, "
                              f"unsupported: {unsupported or 'none'}); use peft for other adapter types")
    return config


def _read_adapter_weights(adapter_dir: Path) -> dict[str, Tensor]:
    path = adapter_dir / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; save the adapter with safetensors (peft's default)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e}); re-save the adapter") from None
    return {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> list[str]:
    """Apply a PEFT-layout LoRA adapter (written by peft or by `save_adapter`) to `model`, in place.

    Layers named by the adapter's lora_A/lora_B keys are wrapped (rank from the tensor shapes, so peft's
    rank_pattern works), the A/B and head tensors are copied, and the model is left frozen but for LoRA and the
    heads. Returns the wrapped module names.
    """
    adapter_dir = Path(adapter_dir)
    config = _read_adapter_config(adapter_dir)
    tensors = _read_adapter_weights(adapter_dir)
    where = adapter_dir / WEIGHTS_NAME
    lora = {k: v for k, v in tensors.items() if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    names = sorted({k.rsplit(".lora_", 1)[0] for k in lora})
    for name in names:
        a, b = lora.get(f"{name}.lora_A.weight"), lora.get(f"{name}.lora_B.weight")
        if a is None or b is None:
            raise CheckpointError(f"{where}: {name} has only one of lora_A/lora_B; re-save the adapter")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{where}: adapter names layer {name!r}, which this model lacks; load it onto "
                                  f"its base model {config.get('base_model_name_or_path')!r}") from None
        if not isinstance(module, LoRALinear):
            module = LoRALinear(module, a.shape[0], config.get("lora_alpha", 8), config.get("lora_dropout", 0.0),
                                config.get("use_rslora", False))
            _replace(model, name, module)
        if a.shape != module.lora_A.weight.shape or b.shape != module.lora_B.weight.shape:
            raise CheckpointError(f"{where}: {name} lora_A/lora_B shapes {tuple(a.shape)}/{tuple(b.shape)} do not "
                                  f"fit the layer ({module.in_features} -> {module.out_features}, r={module.r}); "
                                  f"load the adapter onto the base model it was trained on")
        with torch.no_grad():
            module.lora_A.weight.copy_(a)
            module.lora_B.weight.copy_(b)
    _load_head_tensors(model, {k: v for k, v in tensors.items() if k not in lora}, where)
    set_trainable(model, head_module_names(model))
    return names


def _load_head_tensors(model: nn.Module, tensors: dict[str, Tensor], where: Path) -> None:
    own = model.state_dict()
    for key, t in tensors.items():
        if key not in own or own[key].shape != t.shape:
            found = "missing in the model" if key not in own else f"shape {tuple(own[key].shape)} != {tuple(t.shape)}"
            raise CheckpointError(f"{where}: tensor {PEFT_PREFIX + key} does not fit ({found}); load the adapter "
                                  f"onto a model with the same base and number of labels")
    model.load_state_dict(tensors, strict=False)
