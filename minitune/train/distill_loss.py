"""Knowledge distillation's loss: the teacher's probabilities as soft targets beside the gold labels (the
`minitune distill` command, experiments/distill.py). Tested against hand computations in tests/test_losses.py."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitune.errors import ParameterError


class DistillLoss(nn.Module):
    """Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network"):
    alpha * soft + (1 - alpha) * the task loss on gold labels.

    targets (B, G + C): the gold labels (G = 1, the class id as a float; or the L multi-hot columns), then the
    teacher's probabilities (C columns), so they travel through batching as one float label tensor.
    - single-label and multiple choice: soft = T^2 * KL(softmax(log p_teacher / T) || softmax(logits / T)), mean
      over the batch (torch's kl_div "batchmean"); T^2 keeps its gradient's scale as T changes.
    - multi-label: soft = per-label binary KL(p_teacher || sigmoid(logits)), mean over B * L: binary cross-entropy
      on the soft targets minus the teacher's own entropy, so its gradient is that of BCE on soft targets and it is
      0 where student and teacher agree. The temperature does not apply.
    """

    def __init__(self, task: nn.Module, multi_label: bool, alpha: float, temperature: float):
        super().__init__()
        check_distill_args(alpha, temperature)
        self.task, self.multi_label, self.alpha, self.temperature = task, multi_label, alpha, temperature

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        n = logits.shape[-1]
        gold, teacher = targets[:, :-n], targets[:, -n:].float()
        gold = gold.float() if self.multi_label else gold[:, 0].long()
        task = self.task(logits, gold)
        soft = self.soft_loss(logits, teacher)
        return self.alpha * soft + (1.0 - self.alpha) * task

    def soft_loss(self, logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            bce = F.binary_cross_entropy_with_logits(logits, teacher)
            entropy = -(torch.xlogy(teacher, teacher) + torch.xlogy(1 - teacher, 1 - teacher)).mean()
            return bce - entropy
        t = self.temperature
        target = torch.softmax(torch.log(teacher.clamp_min(1e-12)) / t, dim=-1)
        return F.kl_div(torch.log_softmax(logits / t, dim=-1), target, reduction="batchmean") * t * t


def check_distill_args(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"`distill_alpha` must be in [0, 1] (0: gold labels only), got {alpha}")
    if not temperature > 0:
        raise ParameterError(f"`temperature` must be positive (1: the teacher's own probabilities), got {temperature}")


def with_soft_targets(label, teacher_probs) -> list[float]:
    """One example's label joined to its teacher probabilities: DistillLoss's target row."""
    gold = [float(v) for v in label] if isinstance(label, (list, tuple)) else [float(label)]
    return gold + [float(p) for p in teacher_probs]
