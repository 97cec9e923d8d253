"""Augmented copies of training examples, added to the training split only (dev, test and predict files are never
augmented). Each copy keeps its example's label(s), second segment and meta (with `augmented` set to its copy number).

- tokens: the word operations of EDA (Wei and Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting
  Performance on Text Classification Tasks"): random deletion, random swap with the next word and random insertion,
  on whitespace words. Each word takes each chosen operation with probability `augment_prob`. Inserted words are
  drawn from the training texts' own words, so every inserted word is in the data's vocabulary and no word list
  ships with the package. A text keeps at least one word.
- paraphrase: an instruct decoder rewrites the text (data/paraphrase.py, cached to a file).

Which examples: every one, or with `augment_rare` N those carrying a label that fewer than N training examples
carry (multi-label: any of its labels; single-label: its class), so rare labels get varied copies instead of only
repeats. Seeded per copy: copy k of a text draws from a generator seeded by (seed, k, the text), so a copy does not
change when other examples are added, removed or reordered.
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace

import numpy as np
import torch

from minitune.config.sections import AugmentSettings
from minitune.data.examples import Example
from minitune.data.kinds import MULTI_LABEL
from minitune.data.paraphrase import paraphrases
from minitune.errors import ConfigError
from minitune.train.distributed import barrier, is_main

log = logging.getLogger("minitune")

OPS = ("delete", "swap", "insert")


def check_ops(text: str) -> list[str]:
    """`augment_ops` as a list of operation names, every one known."""
    ops = [op.strip() for op in text.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if not ops or unknown:
        raise ConfigError(f"`augment_ops` {text!r}: choose from {', '.join(OPS)}, comma-separated (e.g. delete,swap)")
    return ops


def word_ops(text: str, ops: list[str], p: float, rng: random.Random, vocab: list[str]) -> str:
    """One augmented text: deletion, then swaps, then insertions, each word with probability p per operation."""
    words = text.split()
    if "delete" in ops and len(words) > 1:
        kept = [w for w in words if rng.random() >= p]
        words = kept or [rng.choice(words)]
    if "swap" in ops:
        for i in range(len(words) - 1):
            if rng.random() < p:
                words[i], words[i + 1] = words[i + 1], words[i]
    if "insert" in ops and vocab:
        out = []
        for w in words:
            out.append(w)
            if rng.random() < p:
                out.append(rng.choice(vocab))
        words = out
    return " ".join(words)


def chosen_rows(kind: str, labels: np.ndarray, rare: int) -> np.ndarray:
    """The indices of the examples to augment: all, or those with a label fewer than `rare` examples carry."""
    if not rare:
        return np.arange(len(labels))
    if kind == MULTI_LABEL:
        counts = labels.sum(axis=0)
        return np.flatnonzero((labels[:, counts < rare] > 0).any(axis=1))
    counts = np.bincount(labels, minlength=int(labels.max(initial=0)) + 1)
    return np.flatnonzero(counts[labels] < rare)


def _paraphrased(texts: list[str], model: str, copies: int, seed: int, cache: str | None, device) -> list[list[str]]:
    """data/paraphrase.py's paraphrases; under torch.distributed rank 0 writes them, then the others read its cache
    (one writer per cache file)."""
    if not is_main():
        barrier()
    out = paraphrases(texts, model, copies, seed, cache, device)
    if is_main():
        barrier()
    return out


def augmented_copies(
    s: AugmentSettings, kind: str, examples: list[Example], labels: np.ndarray, seed: int, device: torch.device
) -> list[Example]:
    """The copies to add to `examples` (`labels`: their label array, data/tasks.label_array), as `s` says."""
    if not s.augment:
        return []
    rows = chosen_rows(kind, labels, s.augment_rare)
    if s.augment == "paraphrase":
        texts = _paraphrased(
            [examples[i].text for i in rows], s.paraphrase_model, s.augment_copies, seed, s.paraphrase_cache, device
        )
    else:
        ops, vocab = check_ops(s.augment_ops), sorted({w for ex in examples for w in ex.text.split()})
        texts = [
            [
                word_ops(examples[i].text, ops, s.augment_prob, random.Random(f"{seed}:{k}:{examples[i].text}"), vocab)
                for k in range(s.augment_copies)
            ]
            for i in rows
        ]
    copies = [
        replace(examples[i], text=text, meta=examples[i].meta | {"augmented": k + 1})
        for i, versions in zip(rows, texts)
        for k, text in enumerate(versions)
    ]
    log.info("augment %s: %d copies of %d of %d training examples", s.augment, len(copies), len(rows), len(examples))
    return copies
