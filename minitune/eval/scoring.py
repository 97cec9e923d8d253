"""Scores for a set of features: the model's probabilities, and the metrics report for a task's examples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from minitune.data.batching import length_of
from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE
from minitune.data.long_text import pool_windows
from minitune.data.tasks import Example, TaskData, label_array
from minitune.eval.metrics import classification_report
from minitune.train.amp import autocast_context
from minitune.train.distributed import is_main


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    features: Sequence[dict],
    collate_fn: Callable[[list[dict]], dict],
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    desc: str = "score",
) -> np.ndarray:
    """Logits (N, C) in fp32, in the features' order; batches are sorted by length so padding stays small."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: length_of(features[i]))
    out = [None] * len(features)
    starts = range(0, len(order), batch_size)
    for start in tqdm(
        starts, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=len(starts) < 2 or not is_main()
    ):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_fn([features[i] for i in idx]).items()}
        with autocast_context(precision, device.type):
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).float()
        logits = pool_windows(logits, batch)  # a long text's windows -> one row per text (data/long_text.py)
        for i, row in zip(idx, logits.cpu().numpy()):
            out[i] = row
    return np.stack(out)


def probabilities(logits: np.ndarray, kind: str) -> np.ndarray:
    """Sigmoid per label for multi-label, softmax over classes (or options) otherwise."""
    t = torch.from_numpy(logits)
    return (torch.sigmoid(t) if kind == MULTI_LABEL else torch.softmax(t, dim=-1)).numpy()


def predict_scores(
    model: nn.Module,
    features: Sequence[dict],
    collate_fn: Callable[[list[dict]], dict],
    kind: str,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """Probabilities (N, C) in the features' order."""
    return probabilities(predict_logits(model, features, collate_fn, batch_size, device, precision), kind)


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
