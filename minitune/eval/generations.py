"""Generated answers -> labels, and the count of answers that name no label, so a model that "does not generate
labels" shows at once in the report.

Free (unconstrained) text is parsed leniently: an exact label (case, surrounding quotes and punctuation ignored);
for multi-label, a list split on commas, semicolons, slashes, "and" or new lines; for multiple choice, an option
letter at the start ("B", "(B)", "B.", "Answer: B"). Failing that, the labels named anywhere in the text as whole
words (single-label and multiple choice: the first one named).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from minitune.data.kinds import MULTI_LABEL, MULTIPLE_CHOICE

_STRIP = " \t\n\"'`*.:;!?()[]{}"
_SPLIT = re.compile(r"\s*(?:,|;|/|\band\b|\n)\s*", re.IGNORECASE)
_LETTER = re.compile(r"^(?:the\s+)?(?:answer|option)?\s*(?:is)?\s*:?\s*\(?([A-Z])\)?(?:[.):\s]|$)", re.IGNORECASE)


def _norm(s: str) -> str:
    return " ".join(s.strip(_STRIP).lower().split())


def parse_answer(text: str, names: Sequence[str], kind: str) -> list[int]:
    """Label indices a free answer names (in the order named; empty when it names none)."""
    norm = {_norm(n): i for i, n in enumerate(names)}
    t = text.strip()
    if not t:
        return []
    if kind == MULTIPLE_CHOICE:
        m = _LETTER.match(t)
        if m and m.group(1).upper() in norm.keys() | {n.upper() for n in names}:
            return [norm[_norm(m.group(1))]]
    if _norm(t) in norm:
        return [norm[_norm(t)]]
    if kind == MULTI_LABEL:
        parts = [norm[_norm(p)] for p in _SPLIT.split(t) if _norm(p) in norm]
        if parts:
            return list(dict.fromkeys(parts))
    if kind == MULTIPLE_CHOICE:  # a bare letter inside prose is too weak a signal
        return []
    found = []
    for n, i in norm.items():
        m = re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", t.lower())
        if m:
            found.append((m.start(), i))
    found.sort()
    picked = [i for _, i in found]
    return picked if kind == MULTI_LABEL else picked[:1]


def one_hot(chosen: Sequence[Sequence[int]], n_labels: int) -> np.ndarray:
    """(N, C) scores of generated answers: 1 for each label named, 0 elsewhere (a row naming none is all 0)."""
    out = np.zeros((len(chosen), n_labels), dtype=np.float32)
    for r, labels in enumerate(chosen):
        out[r, list(labels)] = 1.0
    return out


def generation_stats(texts: Sequence[str], chosen: Sequence[Sequence[int]], gold: Sequence[str], show: int = 5) -> dict:
    """How many answers were empty or named no label, and the first few of them beside the expected answer."""
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    invalid = [i for i, (t, c) in enumerate(zip(texts, chosen)) if t.strip() and not c]
    bad = sorted(empty + invalid)[:show]
    return {
        "n": len(texts),
        "empty": len(empty),
        "invalid": len(invalid),
        "examples": [{"generated": texts[i], "expected": gold[i]} for i in bad],
    }


def format_generation_notes(stats: dict) -> list[str]:
    """Report lines for a split's generation stats."""
    lines = [f"generations: {stats['invalid']} name no label, {stats['empty']} empty, of {stats['n']}"]
    for e in stats["examples"]:
        lines.append(f"  e.g. {e['generated']!r} (expected {e['expected']!r})")
    return lines
