"""Token attributions by integrated gradients (IG), with respect to the output of the word-embedding table.

Reference: M. Sundararajan, A. Taly, Q. Yan, "Axiomatic Attribution for Deep Networks", ICML 2017
(arXiv:1703.01365), equation 1 and its Riemann-sum approximation (section 6), whose rule is replaced here by
Gauss-Legendre quadrature.

F is the logit of one class, the target (by default the predicted class; multi-label: one label's logit). x is what
the word-embedding table gives for a text, (T, H), and x' a baseline of the same shape: `pad` is the same sequence
with every token but the special ones ([CLS], [SEP], <s>, </s>, BOS, EOS) replaced by the pad token, `zero` is all
zeros (special tokens included). The attribution of token t is

    IG_t = sum_h (x - x')[t, h] * integral_0^1 dF/dx[t, h] at x' + a (x - x') da,

the integral taken with `steps`-point Gauss-Legendre quadrature on [0, 1] (numpy's `leggauss` nodes and weights,
mapped from [-1, 1]): exact for a path polynomial of degree up to 2 steps - 1, where the left Riemann rule of
the paper is only first order.

What must hold: completeness (the paper's proposition 1), sum_t IG_t = F(x) - F(x'). The quadrature makes it
approximate, so every result carries both sides and their gap, which shrinks as `steps` grows
(tests/test_attributions.py checks it on tiny random BERT, Llama, Qwen2 and Gemma, and IG = (x - x') . w exactly on a
model linear in its embeddings; on a MiniLM humor classifier the largest gap over 8 dev texts was 1.3e-3 at 32 points
and 3e-5 at 64, pad baseline). The zero baseline is degenerate where a norm reads the word embeddings alone (decoders,
ModernBERT, DeBERTa-v3): scale-invariant, the model jumps at the zero end of the path and the gap stays large (a
warning says so); the pad baseline has no such jump unless the pad row of the table is zero.

How. Only the word-embedding output moves along the path: a forward hook on that nn.Embedding replaces its output
with the path points, so positions, token types, the attention mask and every model signature stay as they are,
and the hook goes when the computation ends. The model is called as predict calls it,
`model(input_ids, attention_mask, token_type_ids)`, in eval mode with autocast off (fp32 weights stay fp32), one
text at a time with its path points batched: no row has a pad, so an encoder's unpadded path and a decoder score
head's last-token read see the text alone. A LoRA model's frozen table is no obstacle: the hooked output is a leaf
that requires grad, and only its gradient is taken (no parameter's .grad is touched).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from minitune.checkpoints.atomic import atomic_write_text
from minitune.checkpoints.rundir import read_jsonl
from minitune.data.features import tokenize
from minitune.data.kinds import MULTIPLE_CHOICE, SINGLE_LABEL
from minitune.data.tasks import Example
from minitune.errors import ParameterError
from minitune.models import word_embedding

log = logging.getLogger("minitune")
BASELINES = ("pad", "zero")
KEPT_SPECIALS = ("bos", "eos", "cls", "sep", "pad")  # the pad baseline keeps these tokens; [UNK] stands for a word
ATTRIBUTIONS_FILE = "attributions_dev.jsonl"  # a run's explained dev errors, which report.html highlights
GAP_WARN, GAP_FLOOR = 0.01, 1e-3  # a gap above 1% of the logit change (and above 1e-3) is worth a warning


@dataclass
class Attribution:
    """One text explained: its token ids, one score per token, and the two sides of completeness."""

    ids: list[int]
    scores: np.ndarray  # (T,) IG per token
    target: int  # the class whose logit is explained
    logits: np.ndarray  # (C,) F at the input, every class
    baseline_logit: float  # the target's logit at the baseline
    tokens: list[str] | None = None  # the ids as the tokenizer writes them (explain_texts fills them)
    special: list[bool] | None = None

    @property
    def attribution_sum(self) -> float:
        return float(self.scores.sum())

    @property
    def logit_difference(self) -> float:
        """F(x) - F(x'), what the scores must add up to."""
        return float(self.logits[self.target]) - self.baseline_logit

    @property
    def gap(self) -> float:
        return abs(self.attribution_sum - self.logit_difference)


@contextmanager
def embeddings_replaced(table: nn.Module, replacement: torch.Tensor):
    """Within the block, `table`'s output is `replacement` (cast to the output's dtype); unhooked on leaving."""

    def hook(module, args, output):
        if output.shape != replacement.shape:  # a model that embeds twice per call (a bi-encoder) would land here
            raise RuntimeError(f"word embeddings of shape {tuple(output.shape)}, path of {tuple(replacement.shape)}")
        return replacement.to(output.dtype)

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def quadrature(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1]: `steps` path points and how much each counts."""
    check_steps(steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return torch.from_numpy((nodes + 1) / 2).float(), torch.from_numpy(weights / 2).float()


def check_steps(steps: int, batch_size: int = 1) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParameterError(f"`steps` must be a positive integer (path points, e.g. 32), got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"`batch_size` must be a positive integer (path points per pass), got {batch_size!r}")


def baseline_ids(ids: Sequence[int], pad_id: int, keep: set[int]) -> list[int]:
    """The pad baseline's ids: every token but those in `keep` (the special ones) replaced by the pad token."""
    return [i if i in keep else pad_id for i in ids]


def special_ids(tokenizer) -> set[int]:
    """The ids the pad baseline keeps in place (KEPT_SPECIALS that this tokenizer has)."""
    tokens = (tokenizer.special_tokens.get(name) for name in KEPT_SPECIALS)
    return {tokenizer.token_to_id(t) for t in tokens if t is not None} - {None}


def _logits(model: nn.Module, table: nn.Module, ids, types, embedded: torch.Tensor) -> torch.Tensor:
    """The model's logits (B, C) with `embedded` (B, T, H) in place of the table's output for `ids` (1, T)."""
    b = embedded.shape[0]
    ids, mask = ids.repeat(b, 1), torch.ones_like(ids).repeat(b, 1)  # (B, T): no pad anywhere
    with embeddings_replaced(table, embedded):
        return model(ids, mask, None if types is None else types.repeat(b, 1)).float()


def integrated_gradients(
    model: nn.Module,
    input_ids: Sequence[int],
    token_type_ids: Sequence[int] | None = None,
    *,
    target: int | None = None,
    steps: int = 32,
    baseline: str = "pad",
    pad_id: int | None = None,
    keep: set[int] = frozenset(),
    batch_size: int = 32,
) -> Attribution:
    """IG of one text (see the module docstring). `keep`: ids the pad baseline leaves in place (special_ids);
    `pad_id`: the pad token (default: the model's config); `batch_size`: path points per forward pass."""
    check_steps(steps, batch_size)
    if baseline not in BASELINES:
        raise ParameterError(f"`baseline` {baseline!r}: use one of {', '.join(BASELINES)}")
    if getattr(model, "task_head", None) == MULTIPLE_CHOICE:
        raise ParameterError(
            "`model` scores questions with options: integrated gradients here explain one text's class logit; "
            "pass a sequence classifier"
        )
    table = word_embedding(model)
    device = table.weight.device
    ids = torch.as_tensor(list(input_ids), dtype=torch.long, device=device)[None]  # (1, T)
    types = None if token_type_ids is None else torch.as_tensor(list(token_type_ids), device=device)[None]
    training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            return _integrate(model, table, ids, types, target, steps, baseline, pad_id, keep, batch_size)
    finally:
        model.train(training)


def _integrate(model, table, ids, types, target, steps, baseline, pad_id, keep, batch_size) -> Attribution:
    with torch.no_grad():
        x = table(ids).float()  # (1, T, H)
        if baseline == "zero":
            x0 = torch.zeros_like(x)
        else:
            pad = pad_id if pad_id is not None else getattr(model, "hf_config", {}).get("pad_token_id")
            if pad is None:
                raise ParameterError("`baseline` pad needs the pad token: pass `pad_id`, or use baseline zero")
            x0 = table(torch.tensor([baseline_ids(ids[0].tolist(), pad, set(keep))], device=ids.device)).float()
        ends = _logits(model, table, ids, types, torch.cat([x0, x]))  # (2, C): F(x'), F(x)
    classes = ends.shape[1]
    target = int(ends[1].argmax()) if target is None else target
    if not 0 <= target < classes:
        raise ParameterError(f"`target` {target} is not a class of this model (0 to {classes - 1})")
    alphas, weights = quadrature(steps)
    delta = x - x0  # (1, T, H)
    grads = torch.zeros_like(x[0])  # (T, H): the weighted sum of the path's gradients
    for start in range(0, steps, batch_size):
        a = alphas[start : start + batch_size].to(x.device)[:, None, None]  # (b, 1, 1)
        path = (x0 + a * delta).requires_grad_()  # (b, T, H)
        with torch.enable_grad():
            out = _logits(model, table, ids, types, path)
            (g,) = torch.autograd.grad(out[:, target].sum(), path)  # rows are independent: one backward for all
        grads += (weights[start : start + batch_size].to(x.device)[:, None, None] * g).sum(0)
    scores = (delta[0] * grads).sum(-1)  # (T,)
    return Attribution(
        ids[0].tolist(), scores.cpu().double().numpy(), target, ends[1].cpu().numpy(), float(ends[0, target])
    )


def explain_texts(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    *,
    max_length: int,
    targets: Sequence[int | None] | None = None,
    steps: int = 32,
    baseline: str = "pad",
    batch_size: int = 32,
    progress: bool = False,
) -> list[Attribution]:
    """IG for each example (text, and pair if any), truncated to max_length as predict reads it (a model trained on
    windows of long texts: the first window). `targets`: one class per example (None: the predicted one)."""
    check_steps(steps, batch_size)
    features = tokenize(list(examples), tokenizer, SINGLE_LABEL, max_length)
    keep, pad = special_ids(tokenizer), tokenizer.pad_token_id
    targets = targets if targets is not None else [None] * len(features)
    out = []
    for f, target in zip(tqdm(features, desc="explain", unit="text", disable=not progress), targets):
        ig = dict(target=target, steps=steps, baseline=baseline, pad_id=pad, keep=keep, batch_size=batch_size)
        a = integrated_gradients(model, f["input_ids"], f.get("token_type_ids"), **ig)
        a.tokens = [tokenizer.decode([i]) for i in a.ids]
        a.special = [i in keep for i in a.ids]
        out.append(a)
    _warn_on_gaps(out, steps, baseline)
    return out


def _warn_on_gaps(done: list[Attribution], steps: int, baseline: str) -> None:
    """Say so when the scores miss the logit change by more than GAP_WARN of it: too few steps, or a zero baseline
    where a norm reads the word embeddings alone (decoders' RMSNorm, ModernBERT's and DeBERTa-v3's LayerNorm): being
    scale-invariant, such a model jumps at the zero end of the path, a step no quadrature resolves."""
    off = [a for a in done if a.gap > max(GAP_FLOOR, GAP_WARN * abs(a.logit_difference))]
    if off:
        fix = "use baseline pad" if baseline == "zero" else f"raise steps above {steps}"
        worst = max(a.gap for a in off)
        log.warning("%d of %d texts: completeness gap up to %.3g: %s", len(off), len(done), worst, fix)


def attribution_record(a: Attribution, label_names: Sequence[str], steps: int, baseline: str) -> dict:
    """The JSON fields of one explained text (explain's output lines, attributions_dev.jsonl)."""
    return {
        "target": label_names[a.target],
        "tokens": a.tokens,
        "scores": [round(float(s), 6) for s in a.scores],
        "special": a.special,
        "attribution_sum": round(a.attribution_sum, 6),
        "logit_difference": round(a.logit_difference, 6),
        "completeness_gap": round(a.gap, 6),
        "steps": steps,
        "baseline": baseline,
    }


def top_tokens(record: dict, n: int = 5) -> str:
    """The n tokens of a record with the largest |score|, special tokens left out: `funny +0.412  not -0.120`."""
    rows = [(s, t) for t, s, sp in zip(record["tokens"], record["scores"], record["special"]) if not sp]
    rows = sorted(rows, key=lambda r: -abs(r[0]))[:n]
    return "  ".join(f"{t.strip() or repr(t)} {s:+.3f}" for s, t in rows)


def explain_errors(model: nn.Module, tokenizer, errors: list[dict], label_names, path: Path, **ig) -> Path:
    """IG of a run's most confident errors (eval/html.confident_errors, each with its `target` class), written to
    `path` (ATTRIBUTIONS_FILE in the run folder) for report.html. `ig`: explain_texts' max_length, steps,
    baseline."""
    t0 = time.perf_counter()
    examples = [Example(text=e["record"]["text"], pair=e["record"].get("pair")) for e in errors]
    done = explain_texts(model, tokenizer, examples, targets=[e["target"] for e in errors], **ig)
    lines = []
    for e, a in zip(errors, done):
        r = e["record"]
        head = {"text": r["text"]} | ({"pair": r["pair"]} if r.get("pair") else {})
        head |= {"gold": e["gold"], "predicted": e["predicted"], "confidence": round(e["confidence"], 6)}
        rec = head | attribution_record(a, label_names, ig["steps"], ig["baseline"])
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))
    if errors:
        log.info("explained the %d surest dev errors in %.1fs: %s", len(errors), time.perf_counter() - t0, path)
    return path


def read_attributions(run_dir: Path) -> list[dict] | None:
    """A run's explained errors (explain_errors), or None when it kept none."""
    path = Path(run_dir) / ATTRIBUTIONS_FILE
    return read_jsonl(path) if path.is_file() else None
