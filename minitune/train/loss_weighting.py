"""Adaptive weights for a summed loss such as `bce:0.5+asl:0.5`: learned, or moved along a schedule over training.

- uncertainty (Kendall, Gal and Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
  Geometry and Semantics"): each term k has a learned log-variance s_k (starting at 0) and the training loss is

      sum_k  w_k exp(-s_k) L_k  +  s_k / 2

  where w_k is the weight the spec gives. Minimising over s_k sets exp(-s_k) = 1 / (2 w_k L_k): a term whose loss is
  large is trusted less, and the regulariser s_k / 2 (the paper's log sigma_k) keeps the weights from collapsing to
  0. The effective weight w_k exp(-s_k) is logged. The s_k get an AdamW group of their own (`loss_weight_lr`, no
  weight decay): at a fine-tuning learning rate (2e-5) they would barely move in a few thousand steps.
- schedule: the weights move linearly from the spec's to `loss_weights_end` as training progresses (optimizer step
  over planned steps), e.g. from BCE towards ASL.

Dev loss stays the spec's fixed sum (the loss the user wrote), so dev losses compare across weightings. The loop
calls `set_progress` before each optimizer step and saves `state()` with its checkpoints, so a resumed run continues
with the same weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from minitune.config.sections import LossSettings
from minitune.errors import ConfigError
from minitune.train.losses import parse_loss_spec

WEIGHTINGS = ("fixed", "uncertainty", "schedule")


def _end_weights(text: str) -> list[float]:
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"`loss_weights_end` {text!r}: write numbers separated by commas, e.g. 0.2,0.8") from None
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
        raise ConfigError(f"`loss_weights_end` {text!r}: every weight must be a finite number >= 0, and one above 0")
    return weights


def check_weighting(loss: str | None, weighting: str, end: str | None, lr: float) -> None:
    """The weighting settings against the loss spec (config/validate.py calls this before anything is written)."""
    terms = parse_loss_spec(loss) if loss and loss.strip() else []
    if weighting != "fixed" and len(terms) < 2:
        raise ConfigError(
            f"`loss_weighting` {weighting} weighs the terms of a summed loss; `loss` is {loss or 'the default'}: "
            "give a sum such as bce:0.5+asl:0.5, or drop `loss_weighting`"
        )
    if (end is not None) != (weighting == "schedule"):
        raise ConfigError("`loss_weights_end` goes with `loss_weighting` schedule, and schedule needs it: e.g. 0.2,0.8")
    if end is not None and len(_end_weights(end)) != len(terms):
        raise ConfigError(
            f"`loss_weights_end` {end!r} gives {len(_end_weights(end))} weights for the {len(terms)} terms of "
            f"`loss` {loss}: give one each"
        )
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"`loss_weight_lr` must be a positive number, got {lr}")


class AdaptiveLoss(nn.Module):
    """A CombinedLoss's terms with weights that change during training (see the module docstring)."""

    def __init__(
        self, combined: nn.Module, names: list[str], weighting: str, end: list[float] | None = None, lr: float = 0.01
    ):
        super().__init__()
        self.lr = lr  # the learning rate of log_vars (their own AdamW group, train/loop.py)
        self.losses, self.start = combined.losses, torch.tensor(combined.weights, dtype=torch.float32)
        self.names, self.weighting = names, weighting
        self.end = torch.tensor(end if end is not None else combined.weights, dtype=torch.float32)
        self.progress = 0.0
        # A parameter of the loss, not of the model: it is saved in the loop's checkpoints, not in model/.
        self.log_vars = nn.Parameter(torch.zeros(len(names)), requires_grad=weighting == "uncertainty")

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1]: the optimizer steps done over the steps planned."""
        self.progress = float(progress)

    def weights(self) -> torch.Tensor:
        """The effective weight of each term now, (K,)."""
        if self.weighting == "schedule":
            return self.start + (self.end - self.start) * self.progress
        return self.start * torch.exp(-self.log_vars.detach().cpu())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        terms = torch.stack([loss(logits, targets) for loss in self.losses])  # (K,)
        if self.weighting == "schedule":
            return (self.weights().to(terms.device) * terms).sum()
        s = self.log_vars
        return (self.start.to(terms.device) * torch.exp(-s) * terms + s / 2).sum()

    def logged(self) -> dict[str, float]:
        """The weights as a metrics.jsonl train record carries them: loss_weight_<term>."""
        return {f"loss_weight_{name}": round(float(w), 6) for name, w in zip(self.names, self.weights())}

    def state(self) -> list[float]:
        return [float(v) for v in self.log_vars.detach().cpu()]

    def load_state(self, values: list[float]) -> None:
        with torch.no_grad():
            self.log_vars.copy_(torch.tensor(values, dtype=torch.float32))


def adaptive_loss(settings: LossSettings, loss_fn: nn.Module) -> nn.Module:
    """The training loss: `loss_fn` itself with fixed weights, else an AdaptiveLoss over its terms."""
    if settings.loss_weighting == "fixed":
        return loss_fn
    names = [name for name, _ in parse_loss_spec(settings.loss)]
    # a term named twice (focal:0.5+focal:0.5 is allowed) is logged under its position too
    names = [f"{n}{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    end = _end_weights(settings.loss_weights_end) if settings.loss_weights_end else None
    return AdaptiveLoss(loss_fn, names, settings.loss_weighting, end, settings.loss_weight_lr)
