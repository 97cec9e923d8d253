"""Training losses for classification heads; `build_loss` turns a loss spec into one, `loss_for` a run's loss settings.

Shapes: single-label and multiple-choice logits are (B, C) with int64 targets (B,); multi-label logits are
(B, L) with float 0/1 targets (B, L). Every loss computes in fp32 (logits are upcast), so a bf16/fp16 forward
pass does not lose the small log-probabilities of confident predictions.

References and what must match:
- Cross-entropy: equals `torch.nn.functional.cross_entropy(logits, targets, weight=w, label_smoothing=eps)`
  exactly. Its "mean" with class weights is torch's *weighted* mean, sum_i w[y_i] l_i / sum_i w[y_i]; with
  smoothing the smoothing term is divided by the same sum (torch's convention, kept).
- BCE: equals `binary_cross_entropy_with_logits(..., pos_weight=p)`, mean over all B*L elements.
- Focal loss, Lin et al. 2017 ("Focal Loss for Dense Object Detection"): FL = -alpha_t (1 - p_t)^gamma log p_t,
  softmax form for single-label, sigmoid form for multi-label; gamma = 0 without alpha gives CE / BCE.
  The modulating factor keeps its gradient, as in the paper.
- Asymmetric loss, Ridnik et al. 2021 ("Asymmetric Loss For Multi-Label Classification"), reference
  implementation Alibaba-MIIL/ASL `AsymmetricLoss`: probability shifting p_m = max(p - clip, 0) for negatives,
  separate focusing exponents gamma_pos / gamma_neg, eps clamping inside the logs, summed.
- Class balancing: `balanced_class_weights` is sklearn's "balanced" rule n / (C * count);
  `balanced_pos_weight` is the per-label neg/pos ratio that BCE's pos_weight expects. The multi-label focal and
  asymmetric losses take the same pos_weight the way BCE does: each positive element's loss times its label's
  weight, so with gamma = 0 (and clip = 0 for ASL) they equal BCE with that pos_weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minitune.config.sections import LossSettings
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE, SINGLE_LABEL, normalize_kind
from minitune.errors import ParameterError

LOSS_NAMES = ("ce", "bce", "focal", "asl")


def _optional_buffer(module: nn.Module, name: str, value: torch.Tensor | Sequence[float] | None) -> None:
    # A buffer (not a parameter) so `.to(device)` moves it with the loss; not persistent because a loss
    # is rebuilt from the config, never loaded from a checkpoint.
    tensor = None if value is None else torch.as_tensor(value, dtype=torch.float32)
    module.register_buffer(name, tensor, persistent=False)


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy for (B, C) logits and int64 (B,) targets; mean (weighted mean with class weights)."""

    def __init__(self, class_weights: torch.Tensor | Sequence[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ParameterError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}; use e.g. 0.1")
        _optional_buffer(self, "class_weights", class_weights)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), targets.long(), weight=self.class_weights, label_smoothing=self.label_smoothing
        )


class BCEWithLogitsLoss(nn.Module):
    """Sigmoid BCE for (B, L) logits and 0/1 float targets; optional pos_weight (L,); mean over all elements."""

    def __init__(self, pos_weight: torch.Tensor | Sequence[float] | None = None):
        super().__init__()
        _optional_buffer(self, "pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight)


class SoftmaxFocalLoss(nn.Module):
    """Focal loss over a softmax, single-label / multiple choice: mean_i -alpha[y_i] (1 - p_i)^gamma log p_i.

    p_i is the softmax probability of the true class. `alpha` is an optional per-class weight (C,); unlike
    CE's weighted mean the reduction is a plain mean over examples, as the paper normalises by example count.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | Sequence[float] | None = None):
        super().__init__()
        if gamma < 0:
            raise ParameterError(f"`gamma` must be >= 0, got {gamma} (2.0 is the paper's value)")
        self.gamma = float(gamma)
        _optional_buffer(self, "alpha", alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.long()
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)  # (B,)
        focus = (1.0 - log_p.exp()).clamp(min=0.0) ** self.gamma
        loss = -focus * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[targets]
        return loss.mean()


class SigmoidFocalLoss(nn.Module):
    """Focal loss over independent sigmoids, multi-label: mean over B*L of -alpha_t (1 - p_t)^gamma log p_t.

    p_t = p for a positive and 1 - p for a negative; alpha_t = alpha for positives and 1 - alpha for negatives
    (the paper's alpha-balanced form). alpha=None means no balancing, so gamma = 0 gives plain BCE.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: float | None = None, pos_weight: torch.Tensor | Sequence[float] | None = None
    ):
        super().__init__()
        if gamma < 0:
            raise ParameterError(f"`gamma` must be >= 0, got {gamma} (2.0 is the paper's value)")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha {alpha} must be in [0, 1]")
        self.gamma = float(gamma)
        self.alpha = alpha
        _optional_buffer(self, "pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, y = logits.float(), targets.float()
        # BCE-with-logits is the stable -log p_t; p_t is recovered from it so both agree exactly.
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p = torch.sigmoid(x)
        p_t = p * y + (1.0 - p) * (1.0 - y)
        loss = (1.0 - p_t).clamp(min=0.0) ** self.gamma * ce
        if self.alpha is not None:
            loss = loss * (self.alpha * y + (1.0 - self.alpha) * (1.0 - y))
        return _weigh_positives(loss, y, self.pos_weight).mean()


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (ASL) for multi-label (B, L) logits and 0/1 targets, Ridnik et al. 2021.

    With p = sigmoid(x) and the shifted negative probability p_m = max(p - clip, 0) (the reference writes it
    as p_neg = min(1 - p + clip, 1), so 1 - p_neg = p_m), each element contributes
        -[ y (1 - p)^gamma_pos log p + (1 - y) p_m^gamma_neg log(1 - p_m) ]
    with both logs taken of values clamped to at least `eps`. Probability shifting zeroes the loss (and the
    gradient) of easy negatives with p < clip, which is what lets ASL cope with many negatives per example.

    The focusing weight is detached (`detach_focus=True`): it scales the per-element log-loss but receives no
    gradient, matching the reference's `disable_torch_grad_focal_loss` option. It is done with `.detach()` on
    the weight tensor, never by switching global grad mode, so nothing outside this module is affected.
    `detach_focus=False` differentiates through the weight (the reference's class as published by default).

    Reduction: "sum" (the default, the reference's behaviour) sums over all B*L elements, so the loss and
    its gradient grow with the batch size. "mean" divides that sum by B (a per-example mean of the per-label
    sum; the per-label balance of the reference is unchanged). Our training loop averages over examples so
    that the learning rate means the same thing for every batch size and accumulation setting; `build_loss`
    therefore asks for "mean", which is the reference's sum divided by the batch size. "none" returns (B, L).
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        reduction: str = "sum",
        detach_focus: bool = True,
        pos_weight: torch.Tensor | Sequence[float] | None = None,
    ):
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ParameterError(f"`gamma_neg` {gamma_neg} and `gamma_pos` {gamma_pos} must be >= 0 (defaults 4 and 1)")
        if not 0.0 <= clip < 1.0:
            raise ParameterError(f"`clip` must be in [0, 1), got {clip} (default 0.05)")
        if reduction not in ("sum", "mean", "none"):
            raise ValueError(f"ASL reduction {reduction!r} must be 'sum', 'mean' or 'none'")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps
        self.reduction = reduction
        self.detach_focus = detach_focus
        _optional_buffer(self, "pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, y = logits.float(), targets.float()
        p = torch.sigmoid(x)
        p_neg = (1.0 - p + self.clip).clamp(max=1.0) if self.clip > 0 else 1.0 - p
        log_lik = y * torch.log(p.clamp(min=self.eps)) + (1.0 - y) * torch.log(p_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            p_t = p * y + p_neg * (1.0 - y)
            weight = torch.pow(1.0 - p_t, self.gamma_pos * y + self.gamma_neg * (1.0 - y))
            log_lik = log_lik * (weight.detach() if self.detach_focus else weight)
        loss = _weigh_positives(-log_lik, y, self.pos_weight)  # (B, L)
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction == "mean":
            return loss.sum() / loss.shape[0]
        return loss


def _weigh_positives(loss: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """Each positive element's loss times its label's pos_weight (L,), as BCE's pos_weight does."""
    return loss if pos_weight is None else loss * (1.0 + (pos_weight - 1.0) * y)


class CombinedLoss(nn.Module):
    """Weighted sum of losses that share (logits, targets): sum_k w_k * loss_k(logits, targets)."""

    def __init__(self, terms: Sequence[tuple[nn.Module, float]]):
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one (loss, weight) pair")
        if any(w < 0 for _, w in terms):
            raise ValueError(f"CombinedLoss weights must be >= 0, got {[w for _, w in terms]}")
        self.losses = nn.ModuleList(loss for loss, _ in terms)
        self.weights = [float(w) for _, w in terms]

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for loss, weight in zip(self.losses, self.weights):
            total = total + weight * loss(logits, targets)
        return total


def parse_loss_spec(loss: str) -> list[tuple[str, float]]:
    """ "bce" -> [("bce", 1.0)]; "bce+asl" -> equal weights 1/n; "bce:0.3+asl:0.7" -> explicit weights.

    Equal weights are 1/n so that a combination stays on the scale of a single loss ("bce+asl" is the same as
    "bce:0.5+asl:0.5"). Mixing explicit and implicit weights is an error, to avoid guessing.
    """
    spec, choices = loss, ", ".join(LOSS_NAMES)
    parts = [part.strip() for part in spec.strip().lower().split("+")]
    if not spec.strip() or any(not part for part in parts):
        raise ParameterError(
            f"`loss` {spec!r} is empty or has an empty term; use one of {choices}, "
            "or a combination such as bce+asl or bce:0.5+asl:0.5"
        )
    names, weights = [], []
    for part in parts:
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in LOSS_NAMES:
            raise ParameterError(
                f"`loss`: unknown loss {name!r} in {spec!r}; choose from {choices} "
                "(combine with '+', weight with ':', e.g. bce:0.5+asl:0.5)"
            )
        names.append(name)
        weights.append(_parse_weight(weight.strip(), spec) if weight.strip() else None)
    if all(w is None for w in weights):
        return [(name, 1.0 / len(names)) for name in names]
    if any(w is None for w in weights):
        raise ParameterError(
            f"`loss` {spec!r} gives weights to some terms only; give every term a weight "
            "(bce:0.5+asl:0.5) or none (bce+asl)"
        )
    return list(zip(names, weights))


def _parse_weight(text: str, spec: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise ParameterError(f"`loss` {spec!r}: weight {text!r} is not a number; write e.g. bce:0.5+asl:0.5") from None
    if not np.isfinite(weight) or weight < 0:
        raise ParameterError(f"`loss` {spec!r}: weight {text!r} must be a finite number >= 0")
    return weight


def build_loss(
    loss: str,
    kind: str,
    num_labels: int,
    *,
    class_weights=None,
    label_smoothing: float = 0.0,
    pos_weight=None,
    focal_gamma: float = 2.0,
    asl_gamma_neg: float = 4.0,
    asl_gamma_pos: float = 1.0,
    asl_clip: float = 0.05,
) -> nn.Module:
    """The loss module for a loss spec ("ce", "focal", "bce:0.5+asl:0.5") and a task kind; an empty spec gives the
    kind's default.

    Defaults: "ce" for single-label and multiple choice, "bce" for multi-label. "ce" is single-label only;
    "bce" and "asl" are multi-label only; "focal" picks its softmax or sigmoid form from the kind.
    `class_weights` (C,) go to "ce" and to softmax "focal" (as alpha); `pos_weight` (L,) to multi-label "bce",
    "focal" and "asl";
    `label_smoothing` to "ce"; `focal_gamma` to "focal"; `asl_gamma_neg`, `asl_gamma_pos`, `asl_clip` to "asl". A
    setting that no chosen loss uses is a ParameterError.
    A single term returns the bare loss module; several return a CombinedLoss.
    """
    kind = normalize_kind(kind)
    multi = kind == MULTI_LABEL
    spec = loss.strip() if loss and loss.strip() else ("bce" if multi else "ce")
    terms = parse_loss_spec(spec)
    _check_terms(spec, [name for name, _ in terms], kind, num_labels, class_weights, pos_weight, label_smoothing)

    def make(loss_name: str) -> nn.Module:
        if loss_name == "ce":
            return CrossEntropyLoss(class_weights, label_smoothing)
        if loss_name == "bce":
            return BCEWithLogitsLoss(pos_weight)
        if loss_name == "focal":
            if multi:
                return SigmoidFocalLoss(focal_gamma, pos_weight=pos_weight)
            return SoftmaxFocalLoss(focal_gamma, class_weights)
        return AsymmetricLoss(asl_gamma_neg, asl_gamma_pos, asl_clip, reduction="mean", pos_weight=pos_weight)

    if len(terms) == 1:
        return make(terms[0][0])
    return CombinedLoss([(make(loss_name), weight) for loss_name, weight in terms])


def _check_terms(spec: str, names: list[str], kind: str, num_labels: int, class_weights, pos_weight, smoothing) -> None:
    """The terms of `spec` fit the task kind, and every weight or smoothing given goes to one of them."""
    multi, used = kind == MULTI_LABEL, set(names)
    for loss_name in names:
        if loss_name == "ce" and multi:
            raise ParameterError("`loss` ce is for single-label tasks; for multi-label use bce, focal or asl")
        if loss_name in ("bce", "asl") and not multi:
            raise ParameterError(f"`loss` {loss_name} is for multi-label tasks; for {kind} use ce or focal")
    _check_vector("class_weights", class_weights, num_labels)
    _check_vector("pos_weight", pos_weight, num_labels)
    if class_weights is not None and not (used & {"ce", "focal"} and not multi):
        raise ParameterError(
            f"`class_weights` apply to ce or single-label focal, not `loss` {spec} on a {kind} task; leave them out"
        )
    if pos_weight is not None and not (used & {"bce", "focal", "asl"} and multi):
        raise ParameterError(f"`pos_weight` applies to multi-label bce, focal or asl, not `loss` {spec}; leave it out")
    if smoothing and "ce" not in used:
        raise ParameterError(f"`label_smoothing` applies to ce only, not `loss` {spec}; set it to 0")


def _check_vector(param: str, value, num_labels: int) -> None:
    if value is not None and torch.as_tensor(value).shape != (num_labels,):
        shape = tuple(torch.as_tensor(value).shape)
        raise ParameterError(f"`{param}` has shape {shape}; give one value per label ({num_labels})")


def balanced_class_weights(labels, num_classes: int) -> torch.Tensor:
    """sklearn's "balanced" class weights n / (C * count_c), float32 (C,).

    A class absent from `labels` gets weight 1.0: it never occurs as a target, so any value is inert for
    training, and 1.0 keeps a dev loss that does contain it from being dominated by an arbitrary large weight.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    weights = np.ones(num_classes, dtype=np.float64)
    seen = counts > 0
    weights[seen] = y.size / (num_classes * counts[seen])
    return torch.tensor(weights, dtype=torch.float32)


def balanced_pos_weight(label_matrix) -> torch.Tensor:
    """Per-label pos_weight = negatives / positives for a 0/1 (N, L) matrix, float32 (L,).

    A label with no positives, or no negatives, gets 1.0: its ratio is undefined or 0, and 0 would silently
    switch off the positive term of BCE for that label.
    """
    y = np.asarray(label_matrix, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"label matrix must be (N, L), got shape {y.shape}")
    pos = y.sum(axis=0)
    neg = y.shape[0] - pos
    weights = np.ones(y.shape[1], dtype=np.float64)
    ok = (pos > 0) & (neg > 0)
    weights[ok] = neg[ok] / pos[ok]
    return torch.tensor(weights, dtype=torch.float32)


def loss_for(settings: LossSettings, kind: str, num_labels: int, train_labels=None) -> nn.Module:
    """A run's loss from its loss settings: `build_loss`, with `class_weights` balanced computed from the training
    labels (class ids, or a multi-hot matrix for multi-label: then as BCE's pos_weight). Multiple choice scores its
    options with single-label cross-entropy."""
    weights = pos_weight = None
    kind = normalize_kind(kind)
    if settings.class_weights == "balanced":
        if kind == MULTI_LABEL:
            pos_weight = balanced_pos_weight(train_labels)
        else:
            weights = balanced_class_weights(train_labels, num_labels)
    return build_loss(
        settings.loss or "",
        SINGLE_LABEL if kind == MULTIPLE_CHOICE else kind,
        num_labels,
        class_weights=weights,
        pos_weight=pos_weight,
        label_smoothing=settings.label_smoothing,
        focal_gamma=settings.focal_gamma,
        asl_gamma_neg=settings.asl_gamma_neg,
        asl_gamma_pos=settings.asl_gamma_pos,
        asl_clip=settings.asl_clip,
    )
