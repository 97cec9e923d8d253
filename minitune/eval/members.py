"""Scoring saved models on examples: one model directory, or the members of an ensemble, a cv run or Recipe-MPR's
folds (checkpoints/rundir.py `member_model_dirs`), whose probabilities are averaged. Each member is scored with its
own tokenizer, and the max_length and precision its run trained with; members are loaded one at a time, so an
ensemble need not fit in memory. Used by predict, distillation's teacher and the experiments' tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from minitune.checkpoints.load import load_model, load_tokenizer
from minitune.checkpoints.rundir import trained_max_length, trained_precision
from minitune.data.batching import make_collate
from minitune.data.features import tokenize
from minitune.data.kinds import MULTIPLE_CHOICE
from minitune.data.long_text import chunk_overlap_of
from minitune.data.tasks import Example
from minitune.eval.scoring import predict_scores


@dataclass
class Member:
    """A saved model ready to score: the model, its tokenizer, and the max_length and precision its run trained
    with."""

    model: nn.Module
    tokenizer: object
    max_length: int
    precision: str = "fp32"


def load_member(
    model_dir: Path, kind: str, device, max_length: int | None = None, precision: str | None = None
) -> Member:
    head = "multiple_choice" if kind == MULTIPLE_CHOICE else "sequence"
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.set_pad_to_eos()
    model = load_model(model_dir, head=head).to(device)
    length, precision = max_length or trained_max_length(model_dir), precision or trained_precision(model_dir)
    return Member(model, tokenizer, length, precision)


def member_scores(member: Member, examples: list[Example], kind: str, batch_size: int, device) -> np.ndarray:
    """One model's probabilities (N, C) on examples, with its own tokenizer and max_length. Multiple-choice items
    with different numbers of options cannot share a batch: each count is scored apart, and an item's columns past
    its own options are NaN."""
    counts = [len(ex.choices or ()) for ex in examples] if kind == MULTIPLE_CHOICE else []
    if len(set(counts)) > 1:
        out = np.full((len(examples), max(counts)), np.nan)
        for c in sorted(set(counts)):
            rows = [i for i, n in enumerate(counts) if n == c]
            out[rows, :c] = member_scores(member, [examples[i] for i in rows], kind, batch_size, device)
        return out
    bi = getattr(member.model, "choice_scorer", None) == "bi"  # a bi-encoder embeds query and options alone
    windows = chunk_overlap_of(member.model.hf_config)  # trained on windows of long texts: read the same
    features = tokenize(examples, member.tokenizer, kind, member.max_length, bi, windows)
    collate_fn = make_collate("dynamic", member.max_length, member.tokenizer.pad_token_id)
    return predict_scores(member.model, features, collate_fn, kind, batch_size, device, member.precision)


def ensemble_scores(
    model_dirs: list[Path],
    examples: list[Example],
    kind: str,
    batch_size: int,
    device,
    max_length: int | None = None,
    precision: str | None = None,
) -> tuple[np.ndarray, list[str] | None]:
    """The mean probabilities of the models (an ensemble's or cv run's members), with a progress bar per member;
    each member at its own run's max_length and precision unless given."""
    scores, names = [], None
    for d in tqdm(model_dirs, desc="members", disable=len(model_dirs) < 2, leave=False):
        member = load_member(
            d, kind, device, max_length, precision
        )  # one at a time: an ensemble need not fit in memory
        scores.append(member_scores(member, examples, kind, batch_size, device))
        names = member.model.label_names
    return np.mean(scores, axis=0), names
