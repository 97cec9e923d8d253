"""LoRA adapters on disk in peft's layout: adapter_config.json + adapter_model.safetensors.

`save_adapter` writes what peft's `PeftModel.from_pretrained` reads; `load_adapter` reads what peft's
`save_pretrained` writes (and what `save_adapter` wrote) onto one of our models.

What must match peft (utils/save_and_load.py): our `<path>.lora_A.weight` is saved as
`base_model.model.<path>.lora_A.weight` (same for lora_B), and every parameter of a trained head module `<head>`
(peft's modules_to_save) as `base_model.model.<head>.<param>`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from minitune.adapters.lora import (
    HEAD_NAMES,
    LoRALinear,
    head_module_names,
    inside,
    lora_modules,
    replace_module,
    set_trainable,
)
from minitune.errors import CheckpointError

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module, heads: list[str]) -> dict[str, Tensor]:
    """PEFT-named tensors: LoRA A/B of every LoRALinear and every parameter/buffer of the head modules."""
    out = {}
    for name, t in model.state_dict().items():
        owner = name.rpartition(".")[0]
        if name.endswith((".lora_A.weight", ".lora_B.weight")) or inside(owner, heads):
            out[PEFT_PREFIX + name] = t.detach().contiguous()
    return out


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    task_type: str | None = "SEQ_CLS",
    trainable_extra: tuple[str, ...] = HEAD_NAMES,
) -> Path:
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
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": dropout,
        "use_rslora": rslora,
        "target_modules": sorted(modules),
        "modules_to_save": heads or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_dora": False,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
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
        raise CheckpointError(
            f"{path}: not found; point to a directory written by save_adapter or peft's save_pretrained"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-save the adapter") from None
    unsupported = [k for k in ("use_dora", "lora_bias") if config.get(k)]
    unsupported += ["alpha_pattern"] if config.get("alpha_pattern") else []
    unsupported += ["fan_in_fan_out"] if config.get("fan_in_fan_out") else []
    if config.get("peft_type") != "LORA" or unsupported:
        raise CheckpointError(
            f"{path}: only plain LoRA adapters load here (peft_type={config.get('peft_type')!r}, "
            f"unsupported: {unsupported or 'none'}); use peft for other adapter types"
        )
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
            raise CheckpointError(
                f"{where}: adapter names layer {name!r}, which this model lacks; load it onto "
                f"its base model {config.get('base_model_name_or_path')!r}"
            ) from None
        if not isinstance(module, LoRALinear):
            module = LoRALinear(
                module,
                a.shape[0],
                config.get("lora_alpha", 8),
                config.get("lora_dropout", 0.0),
                config.get("use_rslora", False),
            )
            replace_module(model, name, module)
        if a.shape != module.lora_A.weight.shape or b.shape != module.lora_B.weight.shape:
            raise CheckpointError(
                f"{where}: {name} lora_A/lora_B shapes {tuple(a.shape)}/{tuple(b.shape)} do not "
                f"fit the layer ({module.in_features} -> {module.out_features}, r={module.r}); "
                f"load the adapter onto the base model it was trained on"
            )
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
            raise CheckpointError(
                f"{where}: tensor {PEFT_PREFIX + key} does not fit ({found}); load the adapter "
                f"onto a model with the same base and number of labels"
            )
    model.load_state_dict(tensors, strict=False)
