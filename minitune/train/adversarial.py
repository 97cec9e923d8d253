"""Adversarial training: each micro-batch is trained on as it is and once more under a small worst-case
perturbation, and the two gradients add up (the loss trained is L(x) + L(x + r)).

References and what must hold:
- FGM, Miyato, Dai and Goodfellow 2017 ("Adversarial Training Methods for Semi-Supervised Text Classification"):
  the perturbation is on the word embeddings e (the token-embedding module's output), one step along the gradient,
  normalised per example: r_i = eps * g_i / ||g_i||_2 with g_i = dL/de_i over all of example i's positions. An
  "example" is a row the model embeds: a multiple-choice item's options and a long text's windows are rows each.
- PGD, Madry et al. 2018 ("Towards Deep Learning Models Resistant to Adversarial Attacks"), on embeddings as in
  FreeLB (Zhu et al. 2020): `adv_steps` steps of L2 size `adv_alpha` along the normalised gradient, each projected
  back into the ball ||r_i|| <= eps; the last perturbation is trained on.
- AWP, Wu, Xia and Wang 2020 ("Adversarial Weight Perturbation Helps Robust Generalization"): once per
  accumulation window, after every micro-batch's clean backward, each trainable weight matrix W moves by
  eps * ||W|| * G / ||G|| (G its gradient over the window), every micro-batch's perturbed loss is backpropagated, and
  W is restored. So the step does not depend on how the window is cut into micro-batches (tested); under DDP each
  rank perturbs by its own shard's gradient (the perturbed gradients are then all-reduced as usual).

Nothing is changed for good: FGM and PGD perturb an activation through a forward hook and never touch a weight,
and AWP copies each weight back from a saved copy, so the weights after a step are bit for bit those the optimizer
then updates (tested). The perturbations follow the gradient whatever its scale, so the fp16 loss scaler's factor
cancels in the normalisation; a non-finite gradient makes the step's gradient non-finite too, and the loop skips
the step as it skips any other. Frozen embeddings (LoRA) still get a gradient: the hooked output is made a leaf
that requires one. Under DDP the clean and inner passes accumulate locally and the adversarial backward of a
window's last micro-batch synchronises, so each step still all-reduces once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from minitune.config.sections import AdversarySettings
from minitune.models import word_embedding

DEFAULT_EPS = {"fgm": 0.1, "pgd": 0.1, "awp": 0.001}


def per_example_unit(g: torch.Tensor) -> torch.Tensor:
    """g / ||g||_2 per example (row of the first dimension); a zero gradient stays zero."""
    norm = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))  # (N, 1, ..., 1)
    return g / norm.clamp_min(1e-12)


def fgm_perturbation(g: torch.Tensor, eps: float) -> torch.Tensor:
    """FGM: r_i = eps * g_i / ||g_i||_2."""
    return eps * per_example_unit(g)


def project(r: torch.Tensor, eps: float) -> torch.Tensor:
    """r with every example's L2 norm clipped to eps (the projection onto the eps ball)."""
    norm = r.flatten(1).norm(dim=1).view(-1, *([1] * (r.dim() - 1)))
    return r * (eps / norm.clamp_min(eps))


class Adversary:
    """One run's adversarial training: FGM and PGD `attack` after each micro-batch's clean backward, AWP trains the
    window again inside `weights_perturbed` (train/gradients.py)."""

    def __init__(self, model: nn.Module, settings: AdversarySettings):
        self.kind, self.start_epoch = settings.adversarial, settings.adv_start_epoch
        self.eps = settings.adv_eps if settings.adv_eps is not None else DEFAULT_EPS[self.kind]
        self.steps = settings.adv_steps
        self.alpha = settings.adv_alpha if settings.adv_alpha is not None else 0.3 * self.eps
        if self.kind == "awp":  # matrices only: biases and norm scales are left alone, as in the paper
            self.weights = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        else:
            self.embedding = word_embedding(model)
        self.seen: list[torch.Tensor] = []  # the word vectors of the clean pass, one tensor per embedding call
        self.loss = 0.0  # the last window's perturbed loss (as the loop weights micro-batches), for the log

    def active(self, epoch: int) -> bool:
        """Whether epoch `epoch` (0-based) trains adversarially."""
        return epoch + 1 >= self.start_epoch

    def watch(self) -> AbstractContextManager:
        """Around the clean forward and backward: keep the word vectors and their gradient (FGM, PGD)."""
        if self.kind == "awp":
            return nullcontext()
        self.seen = []

        def keep(module, args, out):
            if not out.requires_grad:  # frozen embeddings (LoRA): a leaf of its own, so it gets a gradient
                out = out.detach().requires_grad_()
            out.retain_grad()
            self.seen.append(out)
            return out

        return _hooked(self.embedding, keep)

    def attack(self, loss_of: Callable[[], torch.Tensor], scale, sync: AbstractContextManager, local) -> float:
        """FGM, PGD: backpropagate the perturbed loss (into the gradients the clean pass left) and return it.

        `loss_of()` runs the micro-batch's forward and returns its mean loss; `scale(loss)` weights it as the loop
        weights the clean loss (window share, loss scaler); `sync` is the context of the backward that may
        all-reduce, `local()` a context that never does (PGD's inner steps)."""
        grads = [v.grad for v in self.seen]
        if self.kind == "fgm":
            deltas = [fgm_perturbation(g, self.eps) for g in grads]
        else:
            deltas = self._pgd(loss_of, scale, grads, local)
        with sync, _hooked(self.embedding, _adding(deltas)):
            loss = loss_of()
            scale(loss).backward()
        self.seen = []
        return float(loss.detach())

    def _pgd(self, loss_of, scale, grads: list[torch.Tensor], local) -> list[torch.Tensor]:
        """The PGD perturbation after `steps` projected steps (the inner steps' gradients reach no weight)."""
        deltas = [torch.zeros_like(g) for g in grads]
        for k in range(self.steps):
            deltas = [project(d + self.alpha * per_example_unit(g), self.eps) for d, g in zip(deltas, grads)]
            if k == self.steps - 1:
                break
            deltas = [d.detach().requires_grad_() for d in deltas]
            with local(), _hooked(self.embedding, _adding(deltas)):
                grads = list(torch.autograd.grad(scale(loss_of()), deltas))
        return [d.detach() for d in deltas]

    @contextmanager
    def weights_perturbed(self):
        """AWP: within the block every weight matrix is moved along its gradient so far (the window's clean one);
        on leaving it is copied back, bit for bit."""
        saved = [p.detach().clone() for p in self.weights]
        try:
            with torch.no_grad():
                for p in self.weights:
                    if p.grad is not None:
                        p.add_(self.eps * p.norm() * p.grad / p.grad.norm().clamp_min(1e-12))
            yield
        finally:
            with torch.no_grad():  # copied back, not subtracted: bit for bit the weights before the attack
                for p, kept in zip(self.weights, saved):
                    p.copy_(kept)


def _adding(deltas: list[torch.Tensor]):
    """A forward hook adding deltas[k] to the k-th output of the embedding in this forward pass."""
    calls = iter(deltas)
    return lambda module, args, out: out + next(calls)


@contextmanager
def _hooked(module: nn.Module, hook):
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
