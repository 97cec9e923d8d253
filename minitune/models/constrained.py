"""Answers restricted to a label set: constrained decoding over a token trie, and label scoring by likelihood.

Constrained decoding: every label (a class name, or an option letter for multiple choice) is tokenized as the
tokenizer splits it right after the prompt, and the label sequences form a trie. At each step only the tokens that
continue some label are allowed (the others get -inf), so greedy or sampled output is always a valid answer. A
label ends with the eos token; multi-label answers may instead go on with a separator and another, not yet chosen
label (its tokens as split after a label and the separator), so the output is a list of distinct labels.

Label scoring: the log-likelihood of each label's tokens (and the eos that ends the answer, for single answers)
after the prompt, all labels of a batch of prompts in one pass: the prompts are prefilled once into a KV cache,
which is then repeated for each label. softmax over the labels gives probabilities, so thresholds, metrics and
ensembles work as for a classification head. Checked against per-token log-probs from transformers
(tests/test_constrained.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from minitune.models.generate import KVCache, left_pad, positions


def continuation(tokenizer, context: str, text: str) -> list[int]:
    """The ids of `text` as the tokenizer splits it after `context` (BPE merges may cross the boundary: then the
    text's own ids, which the model can still produce)."""
    before = tokenizer.encode_text(context)
    both = tokenizer.encode_text(context + text)
    if both[: len(before)] == before and len(both) > len(before):
        return both[len(before) :]
    return tokenizer.encode_text(text)


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    labels: set[int] = field(default_factory=set)  # labels whose sequence passes through here
    end: int | None = None  # the label whose sequence ends here


class Trie:
    """Token sequences of labels (label i: seqs[i]); a node knows which labels lie below it."""

    def __init__(self, seqs: Sequence[Sequence[int]]):
        self.root = _Node()
        for i, seq in enumerate(seqs):
            node = self.root
            node.labels.add(i)
            for tok in seq:
                node = node.children.setdefault(tok, _Node())
                node.labels.add(i)
            node.end = i


class LabelConstraint:
    """The automaton of valid answers, as a `logits_processor` for generate() and a parser of its output.

    first: labels as split after the prompt; then (multi-label only): separator + label as split after a label;
    eos: the token that ends an answer.
    """

    def __init__(self, first: Sequence[Sequence[int]], eos: int, then: Sequence[Sequence[int]] | None = None):
        self.first, self.then, self.eos = Trie(first), Trie(then) if then is not None else None, eos

    def walk(self, tokens: Sequence[int]) -> tuple[set[int], list[int], bool]:
        """(the tokens allowed next, the labels chosen so far, whether the answer is complete)."""
        used: list[int] = []
        node = self.first.root
        for tok in tokens:
            if tok in self._children(node, used):
                node = node.children[tok]
                continue
            if node.end is None or node.end in used:  # not a valid answer: nothing more is allowed
                return set(), used, True
            used.append(node.end)
            if tok == self.eos or self.then is None:
                return set(), used, True
            node = self.then.root
            if tok not in self._children(node, used):
                return set(), used, True
            node = node.children[tok]
        allowed = set(self._children(node, used))
        if node.end is not None and node.end not in used:
            allowed.add(self.eos)
            if self.then is not None:
                allowed |= set(self._children(self.then.root, [*used, node.end]))
        return allowed, used, False

    @staticmethod
    def _children(node: _Node, used: list[int]) -> dict[int, _Node]:
        return {t: c for t, c in node.children.items() if c.labels - set(used)}

    def labels(self, tokens: Sequence[int]) -> list[int]:
        """The distinct labels an answer names (a label cut short by max_new_tokens counts when it is complete)."""
        allowed, used, done = self.walk(tokens)
        if not done and self.eos in allowed:  # stopped right after a complete label
            _, used, _ = self.walk([*tokens, self.eos])
        return used

    def __call__(self, logits: torch.Tensor, new: list[list[int]]) -> torch.Tensor:
        """Mask (B, V) logits to the tokens that keep each row's answer valid."""
        keep = torch.zeros_like(logits, dtype=torch.bool)
        for i, toks in enumerate(new):
            allowed, _, done = self.walk(toks)
            keep[i, sorted(allowed) if not done else [self.eos]] = True
        return logits.masked_fill(~keep, float("-inf"))

    def max_tokens(self) -> int:
        """Enough new tokens for the longest valid answer."""

        def depth(node: _Node) -> int:
            return 1 + max((depth(c) for c in node.children.values()), default=0)

        one = depth(self.first.root)
        if self.then is None:
            return one
        return one + (depth(self.then.root) - 1) * len(self.first.root.labels) + 1


@torch.no_grad()
def score_labels(model, prompts: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """(B, L) log-likelihood of each label's tokens after each prompt, in one pass: the left-padded prompts are
    prefilled once, the cache repeated L times, and all labels (right-padded) run as one batch of B * L rows."""
    model.eval()
    device = next(model.parameters()).device
    b, n = len(prompts), len(labels)
    ids, mask = left_pad(prompts, pad_id, device)
    cache = KVCache(model.cfg.num_hidden_layers)
    first = model(ids, mask, positions(mask), cache, keep_last=1)[:, -1].log_softmax(-1)  # (B, V)
    m = max(len(seq) for seq in labels)
    lab = torch.full((n, m), pad_id, dtype=torch.long, device=device)
    lab_mask = torch.zeros(n, m, dtype=torch.long, device=device)
    for j, seq in enumerate(labels):
        lab[j, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        lab_mask[j, : len(seq)] = 1
    rows = torch.arange(b, device=device).repeat_interleave(n)  # (B * L,) prompt of each row
    cache.take(rows)
    full_mask = torch.cat((mask[rows], lab_mask.repeat(b, 1)), dim=1)  # (B * L, T + M)
    pos = positions(full_mask)[:, -m:]
    # Right pads of a label follow its real tokens, so causal attention keeps them out of the real ones' view.
    logits = model(lab.repeat(b, 1), full_mask, pos, cache).log_softmax(-1)  # (B * L, M, V)
    lab_b = lab.repeat(b, 1)
    token_lp = torch.cat(
        (first[rows].gather(1, lab_b[:, :1]), logits[:, :-1].gather(2, lab_b[:, 1:, None])[..., 0]), dim=1
    )  # (B * L, M): log p(label token j | prompt, earlier label tokens)
    return (token_lp * lab_mask.repeat(b, 1)).sum(1).view(b, n)
