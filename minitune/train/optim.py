"""Optimizer parameter groups, AdamW, and learning-rate schedules.

- Weight decay (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization"): applied to matrices only;
  every parameter with ndim < 2 (biases, LayerNorm/RMSNorm weights, the embeddings' LayerNorm) is exempt. On BERT
  and Llama this is the same set Hugging Face's Trainer.get_decay_parameter_names picks by name.
- Layer-wise learning-rate decay (Clark et al., 2020, ELECTRA; Sun et al., 2019, "How to Fine-Tune BERT for Text
  Classification"): the head trains at lr, block i (0-based, of L) at lr * llrd ** (L - i), the embeddings at
  lr * llrd ** (L + 1).
- Schedules: linear warmup from 0, then cosine (half a cycle to 0), linear decay to 0, or constant; the
  multipliers equal transformers' get_{cosine,linear,constant}_schedule_with_warmup at every step. "plateau"
  warms up the same way, then cuts the lr like torch's ReduceLROnPlateau (mode, factor, patience, relative
  threshold, cooldown, min_lr), written here so it composes with warmup and per-group base rates.

How the loop drives a schedule (one interface for all of them):
    after every optimizer step that was applied:   scheduler.step()
    after every evaluation:                          scheduler.step(metric=value)
Step-based schedules ignore the metric call; "plateau" counts steps for its warmup and reacts to metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from minitune.errors import ConfigError, ParameterError

SCHEDULERS = ("cosine", "linear", "constant", "plateau")
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


# ----------------------------------------------------------------------------------------------- groups


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i + 1 for block i, num_layers + 1 for everything above the blocks (pooler, heads, norm).

    DeBERTa's relative-position table (`encoder.rel_embeddings` and its `encoder.LayerNorm`) feeds every block
    as the embeddings do, so it sits with them."""
    if "embeddings" in name or "embed_tokens" in name or ".encoder.LayerNorm." in name:
        return 0
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def count_layers(model: nn.Module) -> int:
    """Blocks seen in parameter names (frozen ones included, so freezing does not shift the depths)."""
    indices = [int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER.search(name))]
    return max(indices) + 1 if indices else 0


def check_optimizer_args(lr: float, weight_decay: float, llrd: float | None) -> None:
    """The one check of the optimizer's numbers (the CLI runs it before anything is written)."""
    if not lr > 0:
        raise ParameterError(f"`lr` must be positive, got {lr} (e.g. 2e-5)")
    if not weight_decay >= 0:
        raise ParameterError(f"`weight_decay` must be >= 0, got {weight_decay} (e.g. 0.01)")
    if llrd is not None and not 0 < llrd <= 1:
        raise ParameterError(f"`llrd` must be in (0, 1], got {llrd} (e.g. 0.9); leave it out for one lr")


def param_groups(model: nn.Module, lr: float, weight_decay: float, llrd: float | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups: (depth, decay) buckets of the trainable parameters, each with its own lr.

    Each group carries "name" (e.g. "layer3.decay", "embeddings.no_decay", "head.decay"; without llrd simply
    "decay"/"no_decay") and "param_names" (kept by torch in the optimizer's state_dict).
    """
    check_optimizer_args(lr, weight_decay, llrd)
    num_layers = count_layers(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = layer_depth(name, num_layers) if llrd is not None else 0
        decay = param.ndim >= 2
        if (depth, decay) not in groups:
            scale = llrd ** (num_layers + 1 - depth) if llrd is not None else 1.0
            groups[(depth, decay)] = {
                "name": _group_name(depth, num_layers, decay, llrd is not None),
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[(depth, decay)]["params"].append(param)
        groups[(depth, decay)]["param_names"].append(name)
    if not groups:
        raise ConfigError("the model has no trainable parameters: unfreeze some layers or add LoRA adapters")
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]


def _group_name(depth: int, num_layers: int, decay: bool, layered: bool) -> str:
    suffix = "decay" if decay else "no_decay"
    if not layered:
        return suffix
    if depth == 0:
        return f"embeddings.{suffix}"
    if depth == num_layers + 1:
        return f"head.{suffix}"
    return f"layer{depth - 1}.{suffix}"


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    llrd: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    extra_groups: list[dict] | None = None,
) -> torch.optim.AdamW:
    """AdamW over param_groups, with the fused kernel on CPU and CUDA parameters (else the foreach kernels).

    Why fused on CPU too: measured on the xlm-roberta-large shape (benchmarks/memory.py), the foreach kernel
    allocates a temporary the size of all parameters, which set the run's peak memory (11.6 vs 10.3 GiB), and
    it was 4-6x slower than the fused step; the two agree to within float32 rounding.
    """
    # extra groups (a loss's learned weights) go first: the last group stays the head's, whose lr the log shows
    groups = (extra_groups or []) + param_groups(model, lr, weight_decay, llrd)
    devices = {p.device.type for g in groups for p in g["params"]}
    kernel = {"fused": True} if devices <= {"cpu", "cuda"} else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kernel)


# ----------------------------------------------------------------------------------------------- schedules


def warmup_multiplier(step: int, warmup_steps: int) -> float:
    return step / max(1, warmup_steps)


def schedule_multiplier(name: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The factor on each group's base lr before optimizer step `step` (0-based), as in transformers."""
    if step < warmup_steps:
        return warmup_multiplier(step, warmup_steps)
    if name == "constant" or name == "plateau":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if name == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


class LRSchedule:
    """Sets every group's lr to its base lr times a multiplier; base lrs are saved so a resume restores them."""

    needs_metric = False

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: Callable[[int], float]) -> None:
        self.optimizer = optimizer
        self.multiplier = multiplier
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.steps = 0
        self._apply()

    def _factor(self) -> float:
        return self.multiplier(self.steps)

    def _apply(self) -> None:
        factor = self._factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self, metric: float | None = None) -> None:
        """metric=None: one optimizer step was taken. A metric (after an evaluation) is ignored here."""
        if metric is None:
            self.steps += 1
            self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()


@dataclass
class PlateauConfig:
    """ReduceLROnPlateau settings; torch's defaults except mode, which suits validation scores (higher = better)."""

    mode: str = "max"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0


class PlateauSchedule(LRSchedule):
    """Linear warmup over steps, then lr x factor whenever the metric has not improved for `patience` evaluations.

    Improvement is relative, as torch's default: better than best * (1 + threshold) in "max" mode, best * (1 -
    threshold) in "min" mode. Metrics reported during warmup are ignored (the model is still warming up).
    """

    needs_metric = True

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, config: PlateauConfig) -> None:
        if config.mode not in ("max", "min"):
            raise ConfigError(f"plateau mode {config.mode!r} must be max (scores) or min (losses)")
        if not 0 < config.factor < 1:
            raise ConfigError(f"plateau factor {config.factor} must be in (0, 1) (e.g. 0.5)")
        self.config = config
        self.warmup_steps = warmup_steps
        self.scales = [1.0] * len(optimizer.param_groups)
        self.best: float | None = None
        self.bad_evals = 0
        self.cooldown_left = 0
        super().__init__(optimizer, lambda step: schedule_multiplier("plateau", step, 0, warmup_steps))

    def _apply(self) -> None:
        factor = self._factor()
        for group, base, scale in zip(self.optimizer.param_groups, self.base_lrs, self.scales):
            group["lr"] = base * factor * scale

    def _improved(self, metric: float) -> bool:
        if self.best is None:
            return True
        rel = self.config.threshold
        if self.config.mode == "max":
            return metric > self.best * (1.0 + rel)
        return metric < self.best * (1.0 - rel)

    def step(self, metric: float | None = None) -> None:
        if metric is None:
            super().step()
            return
        if self.steps < self.warmup_steps:
            return
        if self._improved(metric):
            self.best = metric
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_evals = 0
        if self.bad_evals > self.config.patience:
            self._reduce()
            self.cooldown_left = self.config.cooldown
            self.bad_evals = 0

    def _reduce(self) -> None:
        for i, base in enumerate(self.base_lrs):
            floor = self.config.min_lr / base if base > 0 else 0.0
            self.scales[i] = max(self.scales[i] * self.config.factor, floor)
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "scales": list(self.scales),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "cooldown_left": self.cooldown_left,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scales = list(state["scales"])
        self.best = state["best"]
        self.bad_evals = int(state["bad_evals"])
        self.cooldown_left = int(state["cooldown_left"])
        super().load_state_dict(state)


def check_warmup_steps(warmup_steps: int) -> None:
    if not warmup_steps >= 0:
        raise ParameterError(f"`warmup_steps` must be >= 0, got {warmup_steps}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    warmup_steps: int,
    plateau: PlateauConfig | None = None,
) -> LRSchedule:
    """A schedule over the optimizer's groups (each keeps its own base lr, so LLRD ratios survive)."""
    if name not in SCHEDULERS:
        raise ParameterError(f"`scheduler` {name!r} is not a schedule: use one of {', '.join(SCHEDULERS)}")
    check_warmup_steps(warmup_steps)
    if name == "plateau":
        return PlateauSchedule(optimizer, warmup_steps, plateau or PlateauConfig())
    if name != "constant" and warmup_steps > total_steps:
        raise ConfigError(
            f"`warmup_steps` {warmup_steps} exceeds the {total_steps} training steps: warm up less or train longer"
        )
    return LRSchedule(optimizer, lambda step: schedule_multiplier(name, step, total_steps, warmup_steps))
