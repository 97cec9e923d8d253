#!/usr/bin/env python
"""ModernBERT training steps, minitune against transformers (sdpa), on short batches and on long inputs.

    python -m benchmarks.modernbert            # tiny and base shapes, short and long batches (CPU: about 30 min)
    python -m benchmarks.modernbert --quick    # tiny shape only, one repeat (under 2 minutes)

What it measures: one training step (forward, cross-entropy, backward, AdamW step) of a sequence classifier with
random weights, in fp32, per (shape, batch set, stack), each in its own child process (benchmarks/common.py): the
mean time of the timed steps after one warm-up step, and the peak resident memory during them (ru_maxrss after a
reset), beside the weights' and AdamW state's share. Both stacks get the very same id tensors.
- Shapes: `tiny` (4 layers, hidden 64) and `base`, answerdotai/ModernBERT-base's (22 layers, hidden 768, 12
  heads, GeGLU 1152, vocab 50368); both with the published attention layout: a global layer every 3, the others a
  window of 128 tokens (64 each side), so from 1,024 tokens on most layers see a small part of the sequence.
- Batch sets: `short`, 32 texts at HaHackathon's MiniLM token lengths (benchmarks/lengths.json, ragged, padded to
  the longest: minitune unpads it); `long-1024`, 4 texts of 1,024, 900, 700 and 400 tokens; `long-4096`, one text
  of 4,096 tokens (no padding at all: the window alone separates the stacks).
- transformers runs ModernBertForSequenceClassification with attn_implementation="sdpa" (its CPU path: padded,
  with the boolean sliding-window mask of T x T). minitune runs models/modernbert.py: unpadded when 15% of the
  batch is padding, sliding layers block by block on CPU (models/attention.py `banded_attention`).
Results: benchmarks/results/modernbert.json and a Markdown table; the README quotes it with the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

SCRIPT = "modernbert"
SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96, vocab_size=50368),
    "base": dict(
        hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152, vocab_size=50368
    ),
}
LAYOUT = dict(global_attn_every_n_layers=3, local_attention=128, max_position_embeddings=8192, pad_token_id=50283)
BATCH_SETS = {"short": None, "long-1024": [1024, 900, 700, 400], "long-4096": [4096]}
STACKS = ("minitune", "transformers")


def lengths_of(batch_set: str, seed: int) -> list[int]:
    if BATCH_SETS[batch_set] is not None:
        return list(BATCH_SETS[batch_set])
    hist = json.loads((common.REPO / "benchmarks" / "lengths.json").read_text())["histograms"]["humor"]
    population = [int(k) for k, n in hist.items() for _ in range(n)]
    return random.Random(seed).sample(population, 32)


def build(stack: str, shape: str):
    """A 2-label classifier of the shape, random weights (transformers' init for both: minitune copies them)."""
    import torch
    import transformers

    hub = {**SHAPES[shape], **LAYOUT}
    torch.manual_seed(0)
    ref = transformers.ModernBertForSequenceClassification(
        transformers.ModernBertConfig(**hub, num_labels=2, attn_implementation="sdpa")
    )
    if stack == "transformers":
        return ref, lambda ids, mask: ref(input_ids=ids, attention_mask=mask).logits
    from minitune.models import modernbert

    ours = modernbert.build(modernbert.config_from_hf({**hub, "model_type": "modernbert"}), "sequence", 2)
    ours.load_state_dict(ref.state_dict())
    return ours, lambda ids, mask: ours(ids, mask)


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    model, forward = build(spec["stack"], spec["shape"])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    g = torch.Generator().manual_seed(1)
    lengths = spec["lengths"]
    ids = torch.full((len(lengths), max(lengths)), LAYOUT["pad_token_id"])
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, 50000, (n,), generator=g)
        mask[i, :n] = 1
    labels = torch.randint(0, 2, (len(lengths),), generator=g)

    def step(_batch) -> int:
        loss = torch.nn.functional.cross_entropy(forward(ids, mask), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int(mask.sum())

    state = sum(p.numel() for p in model.parameters()) * 4 * 4  # weights, gradients and AdamW's two moments, fp32
    out = common.measure_training(step, [None], [None] * spec["steps"], None, "cpu")
    return {**out, "train_state_bytes": state}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES))
    p.add_argument("--batch-sets", nargs="+", default=list(BATCH_SETS), choices=list(BATCH_SETS))
    p.add_argument("--steps", type=int, default=2, help="timed steps per child")
    args = p.parse_args(argv)
    if args.child:
        common.child_main(args.child, _child)
        return {}
    common.resolve_common(args, SCRIPT)
    args.shapes = args.shapes or (["tiny"] if args.quick else list(SHAPES))
    with tempfile.TemporaryDirectory(prefix="bench-modernbert-") as tmp:
        rows = _rows(args, Path(tmp))
    doc = {"_meta": common.run_meta(args), "rows": rows}
    common.write_json(args.out, doc)
    print(markdown(rows))
    return doc


def _rows(args, workdir: Path) -> list[dict]:
    """Every (shape, batch set): both stacks round-robin, each configuration in its own child process."""
    rows = []
    for shape in args.shapes:
        for batch_set in args.batch_sets:
            lengths = lengths_of(batch_set, seed=0)
            runs: dict[str, list[dict]] = {s: [] for s in STACKS}
            for _ in range(args.repeats):  # round-robin: load from other users hits both stacks alike
                for stack in STACKS:
                    spec = dict(stack=stack, shape=shape, lengths=lengths, steps=args.steps, name=f"{shape}/{stack}")
                    runs[stack].append(common.run_child(SCRIPT, spec, args.threads, workdir, timeout=3600))
            for stack in STACKS:
                r = runs[stack]
                rows.append(
                    dict(
                        shape=shape,
                        batch_set=batch_set,
                        stack=stack,
                        texts=len(lengths),
                        real_tokens=sum(lengths),
                        padded_slots=len(lengths) * max(lengths),
                        step_s=common.median([x["mean_step_s"] for x in r]),
                        peak_rss_bytes=common.median([x["peak_mem_bytes"] for x in r]),
                        train_state_bytes=r[0]["train_state_bytes"],
                        hwm_reset=all(x["hwm_reset"] for x in r),
                    )
                )
                print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    peak = common.fmt_bytes(r["peak_rss_bytes"])
    return f"{r['shape']:5} {r['batch_set']:10} {r['stack']:12} {r['step_s']:.3f} s  {peak}"


def markdown(rows: list[dict]) -> str:
    """One line per (shape, batch set): both stacks' step time and peak memory, and minitune's ratios."""
    out = []
    for r in (x for x in rows if x["stack"] == "minitune"):
        ref = next(
            x
            for x in rows
            if x["stack"] == "transformers" and (x["shape"], x["batch_set"]) == (r["shape"], r["batch_set"])
        )
        out.append(
            {
                "shape": r["shape"],
                "batch": f"{r['batch_set']} ({r['texts']} x <= {r['padded_slots'] // r['texts']}, "
                f"{r['real_tokens']} real)",
                "transformers step": f"{ref['step_s']:.3f} s",
                "minitune step": f"{r['step_s']:.3f} s",
                "speed-up": f"{ref['step_s'] / r['step_s']:.2f}x",
                "transformers peak": common.fmt_bytes(ref["peak_rss_bytes"]),
                "minitune peak": common.fmt_bytes(r["peak_rss_bytes"]),
                "weights + AdamW": common.fmt_bytes(r["train_state_bytes"]),
            }
        )
    return common.table(out, list(out[0]) if out else [])


if __name__ == "__main__":
    main()
