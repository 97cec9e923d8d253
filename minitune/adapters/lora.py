"""LoRA: the wrapper layer, target selection, merge/unmerge. Files in peft's layout: adapters/peft_format.py.

What it does: `LoRALinear` adds y += s·B(A(dropout(x))) to a frozen linear layer (an nn.Linear, or an NF4Linear for
QLoRA); `apply_lora` wraps the layers whose names match target patterns and freezes all but the adapters and the
classification head.

References: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021): A ~ kaiming-uniform, B = 0,
scaling alpha/r; Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA" (2023): alpha/sqrt(r).
Reference implementation: peft (LoRA layer arithmetic; key names in utils/save_and_load.py).

What must match: forward equals peft's LoRA layer (base(x) + lora_B(lora_A(dropout(x))) * scaling); the base `weight`
and `bias` keep their names (as in torchtune), so a base checkpoint loads 1:1 into a wrapped model.
"""

from __future__ import annotations

import fnmatch
import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minitune.adapters.nf4 import NF4Linear
from minitune.config.sections import AdapterSettings
from minitune.errors import ConfigError, ParameterError
from minitune.train.distributed import is_main

HEAD_NAMES = ("score", "classifier", "pre_classifier", "pooler", "head")  # head: ModernBERT's dense -> act -> norm
_DECODER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_BERT = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
_DEBERTA = ("query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense", "output.dense")
_DISTILBERT = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")
_MODERNBERT = ("Wqkv", "Wo", "Wi")  # Wo: attention's and the MLP's output
DEFAULT_TARGETS = {
    "llama": _DECODER,
    "qwen2": _DECODER,
    "gemma": _DECODER,
    "mistral": _DECODER,
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": _DISTILBERT,
    "deberta-v2": _DEBERTA,
    "modernbert": _MODERNBERT,
}


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: y = base(x) + scaling · B(A(dropout(x))).

    For an nn.Linear base the wrapper adopts its `weight` and `bias` Parameters under the same names (no `base.`
    prefix), so checkpoints written for the plain model load unchanged. Any other base (an NF4Linear for QLoRA, or
    any module with `in_features`/`out_features`) is kept as the submodule `base` and called as is.
    """

    def __init__(
        self,
        base: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if r <= 0:
            raise ParameterError(f"`r` must be a positive integer, got {r}; use e.g. 8")
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
            raise ConfigError(
                "LoRA merge: the base weights are quantized (NF4), so the update cannot be merged "
                "without re-quantizing; save the adapter instead, or merge into a full-precision base"
            )
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
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha}, "
            f"scaling={self.scaling:g}, merged={self.merged}"
        )


def default_targets(model_type: str) -> list[str]:
    """The layers LoRA wraps by default for a model family: all attention projections and the MLP."""
    if model_type not in DEFAULT_TARGETS:
        raise ParameterError(
            f"`lora_targets`: no default LoRA targets for model_type {model_type!r}; pass module-name "
            f"patterns, e.g. q_proj,v_proj (families with defaults: {', '.join(DEFAULT_TARGETS)})"
        )
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
        if name and name.rsplit(".", 1)[-1] in trainable_extra and not inside(name, heads):
            heads.append(name)
    return heads


def inside(name: str, roots: list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _linear_candidates(model: nn.Module, heads: list[str]) -> list[str]:
    """Linear-like modules that may take an adapter: not in the head, not already (inside) a LoRALinear."""
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    return [
        n
        for n, m in model.named_modules()
        if n
        and hasattr(m, "in_features")
        and hasattr(m, "out_features")
        and not isinstance(m, LoRALinear)
        and not inside(n, heads)
        and not inside(n, wrapped)
    ]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def set_trainable(model: nn.Module, heads: list[str]) -> None:
    """Freeze everything except LoRA A/B and the parameters of the head modules."""
    for name, p in model.named_parameters():
        parts = name.split(".")
        p.requires_grad_("lora_A" in parts or "lora_B" in parts or inside(name.rpartition(".")[0], heads))


def apply_lora(
    model: nn.Module,
    lora_r: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    lora_targets: list[str] | None = None,
    use_rslora: bool = False,
    trainable_extra: tuple[str, ...] = HEAD_NAMES,
    model_type: str | None = None,
) -> list[str]:
    """Wrap the target linear layers of `model` in LoRALinear, in place; returns the wrapped names in order.

    `lora_targets` are patterns for `matches` (default: `default_targets` of the model's family). Head modules named
    in `trainable_extra` are never wrapped; they stay fully trainable and are saved with the adapter.
    """
    heads = head_module_names(model, trainable_extra)
    if lora_targets is None:
        kind = model_type or infer_model_type(model)
        if kind is None:
            raise ParameterError(
                "`lora_targets`: cannot tell the model family to pick default LoRA targets; pass "
                "module-name patterns, e.g. query,value"
            )
        lora_targets = default_targets(kind)
    candidates = _linear_candidates(model, heads)
    for pattern in lora_targets:
        if not any(matches(n, pattern) for n in candidates):
            examples = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in candidates})[:12])
            raise ParameterError(
                f"`lora_targets`: pattern {pattern!r} matches no linear layer of this model; use names such as: "
                f"{examples}"
            )
    chosen = [n for n in candidates if any(matches(n, p) for p in lora_targets)]
    for name in chosen:
        wrapped = LoRALinear(model.get_submodule(name), lora_r, lora_alpha, lora_dropout, use_rslora)
        replace_module(model, name, wrapped)
    set_trainable(model, heads)
    return chosen


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_adapters(model: nn.Module, adapter: AdapterSettings) -> tuple[list[str], int, int]:
    """`apply_lora` from a run's adapter settings: alpha defaults to 2r, targets to the family's. Returns (wrapped
    layer names, trainable parameters, all parameters); NF4 weights are buffers, counted too, or QLoRA's trainable
    share would look twice as large."""
    names = apply_lora(
        model,
        adapter.lora_r,
        adapter.alpha(),
        adapter.lora_dropout,
        adapter.targets(),
        model_type=infer_model_type(model),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear)
    )
    return names, trainable, total


def add_lora(model: nn.Module, adapter: AdapterSettings) -> None:
    """`apply_adapters`, said once (rank 0 under torchrun): how many layers, and the trainable share."""
    names, trainable, total = apply_adapters(model, adapter)
    if is_main():
        print(
            f"LoRA r={adapter.lora_r} alpha={adapter.alpha()} on {len(names)} layers: {trainable:,} trainable of "
            f"{total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
        )
