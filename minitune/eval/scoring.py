"""Scores for a set of features: the model's probabilities, and the metrics report for a task's examples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from minitune.data.batching import length_of
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.tasks import Example, TaskData, label_array
from minitune.eval.metrics import classification_report
from minitune.train.amp import autocast_context


@torch.no_grad()
def predict_scores(
    model: nn.Module,
    features: Sequence[dict],
    collate_fn: Callable[[list[dict]], dict],
    kind: str,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """Probabilities (N, C) in the features' order (sigmoid for multi-label, else softmax); batches are sorted by
    length so padding stays small."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: length_of(features[i]))
    out = [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_fn([features[i] for i in idx]).items()}
        with autocast_context(precision, device.type):
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).float()
        probs = torch.sigmoid(logits) if kind == MULTI_LABEL else torch.softmax(logits, dim=-1)
        for i, p in zip(idx, probs.cpu().numpy()):
            out[i] = p
    return np.stack(out)


def task_report(
    task: TaskData,
    examples: Sequence[Example],
    scores: np.ndarray,
    threshold: float = 0.5,
    tuned_thresholds: np.ndarray | None = None,
) -> dict:
    """classification_report for a task's examples: its label names (choice_i for multiple choice), and accuracy by
    query type for multiple choice."""
    groups = [ex.meta.get("query_types", []) for ex in examples] if task.kind == MULTIPLE_CHOICE else None
    names = task.label_names if task.kind != MULTIPLE_CHOICE else [f"choice_{i}" for i in range(scores.shape[1])]
    return classification_report(
        task.kind,
        label_array(task, examples),
        scores,
        names,
        threshold=threshold,
        tuned_thresholds=tuned_thresholds,
        groups=groups,
    )
