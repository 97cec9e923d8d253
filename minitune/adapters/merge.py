"""A model with adapters exported so it loads anywhere: LoRA merged, NF4 dequantized.

`export_state_dict` gives the plain Hub state dict of a wrapped model: each LoRA layer merged,
W' = W + s*B*A, and an NF4 base dequantized first, so model/ is an ordinary checkpoint that minitune,
transformers and `minitune predict` load with no adapter machinery, computing exactly the function that was
trained (the NF4 base enters as its dequantized values, which is what the training forward used). The
adapter itself is saved beside it in the PEFT layout (adapter/), for use on the original base weights.
"""

from __future__ import annotations

import torch
from torch import nn

from minitune.adapters.lora import LoRALinear
from minitune.adapters.nf4 import NF4Linear


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
