"""LoRA and QLoRA in a run: wrap the loaded model, and export it so it loads anywhere.

`apply_adapters` wraps the target linears of a loaded model in LoRALinear (minitune/lora.py); with
`--quantize nf4` the model was already loaded with its frozen linears in NF4 (load_model(quantize="nf4")).

`export_state_dict` gives the plain Hub state dict of a wrapped model: each LoRA layer merged,
W' = W + s*B*A, and an NF4 base dequantized first, so model/ is an ordinary checkpoint that minitune,
transformers and `run.py predict` load with no adapter machinery, computing exactly the function that was
trained (the NF4 base enters as its dequantized values, which is what the training forward used). The
adapter itself is saved beside it in the PEFT layout (adapter/), for use on the original base weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .lora import LoRALinear, apply_lora, save_adapter
from .nf4 import NF4Linear


def apply_adapters(model: nn.Module, cfg) -> list[str]:
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()] if cfg.lora_targets else None
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2.0 * cfg.lora_r
    names = apply_lora(model, cfg.lora_r, alpha, cfg.lora_dropout, targets, model_type=model.cfg.model_type)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # NF4 weights are buffers: count them too, or QLoRA's trainable share would look twice as large.
    total = sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))
    print(f"LoRA r={cfg.lora_r} alpha={alpha} on {len(names)} layers: {trainable:,} trainable of {total:,} "
          f"parameters ({100 * trainable / max(total, 1):.2f}%)")
    return names


def _merged_linear(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a layer as one plain linear: LoRA merged, an NF4 base dequantized."""
    if isinstance(m, NF4Linear):
        return m.dequantize(m.weight_dtype), m.bias
    if not isinstance(m, LoRALinear):
        return m.weight, m.bias
    if m.base is None:
        weight, bias = m.weight, m.bias
        delta = 0 if m.merged else m.delta_weight()
        return (weight.float() + delta).to(weight.dtype), bias
    weight, bias = _merged_linear(m.base)
    return (weight.float() + m.delta_weight()).to(weight.dtype), bias


@torch.no_grad()
def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under Hub names, LoRA merged and NF4 dequantized; unchanged for a plain model."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, NF4Linear))}
    layers = {n: m for n, m in layers.items() if not any(n.startswith(o + ".") for o in layers)}  # outermost
    prefixes = tuple(f"{n}." for n in layers)
    out = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    for name, m in layers.items():
        weight, bias = _merged_linear(m)
        out[f"{name}.weight"] = weight
        if bias is not None:
            out[f"{name}.bias"] = bias
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_adapter_dir(model: nn.Module, target_dir: Path, base: str | None) -> None:
    """The model's LoRA layers as a PEFT adapter in `target_dir`; base_model_name_or_path is what peft can open
    (a Hub id or a real path)."""
    from .hub import ALIASES, resolve_model

    target = ALIASES.get(base or "", base)
    if target and target.startswith("pip:"):  # a packaged model: name the file it resolved to
        target = str(resolve_model(base))
    save_adapter(model, target_dir, base_model_name_or_path=target)

