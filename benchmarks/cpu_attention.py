#!/usr/bin/env python
"""Attention under CPU bf16 autocast: torch's bf16 kernel against the same attention computed in fp32
(models/attention.sdpa, what minitune does on a CPU without AMX tiles).

    OMP_NUM_THREADS=1 python -m benchmarks.cpu_attention            # ~3 min
    OMP_NUM_THREADS=1 python -m benchmarks.cpu_attention --quick    # seconds (tested)

1. The kernel alone, forward and backward, at MiniLM's heads (12 x 32) over 32 sequences of 32, 64 and 128 tokens.
2. MiniLM-shaped training steps (random weights, roofline.py's builders and timing) on the same bucketed batches of
   humor's lengths, bf16 autocast, with attention in bf16 and in fp32, rounds alternating so that drift in the
   machine's speed falls on both; transformers' model (sdpa) on the same batches for reference.
Results: benchmarks/results/cpu_attention.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roofline import (  # noqa: E402
    MINILM,
    batch_lengths,
    build_minitune,
    build_transformers,
    humor_lengths,
    machine,
    make_batch,
    time_train_steps,
)

from minitune.models import attention  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def kernel_row(t: int, in_fp32: bool, repeats: int, batch: int = 32, heads: int = 12, dim: int = 32) -> float:
    """Best seconds of one forward + backward of attention over (batch, heads, t, dim) under bf16 autocast."""
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(batch, heads, t, dim, generator=g).requires_grad_() for _ in range(3))
    attention.cpu_attention_in_fp32 = lambda: in_fp32
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = attention.sdpa(q, k, v)
        y.float().sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def step_rows(args) -> dict:
    lens = batch_lengths(humor_lengths(), "bucketed", args.warmup + args.steps, args.batch, seed=1)
    lens = [[max(2, x // args.shrink) for x in ls] for ls in lens]
    batches = [make_batch(ls, MINILM["vocab_size"], (2, "single"), torch.device("cpu"), i) for i, ls in enumerate(lens)]
    torch.manual_seed(0)
    ours, theirs = build_minitune(MINILM, 2), build_transformers(MINILM, 2)[0]
    times: dict[str, list[float]] = {"minitune, attention bf16": [], "minitune, attention fp32": [], "transformers": []}
    for _ in range(args.rounds):
        for name in times:
            attention.cpu_attention_in_fp32 = lambda name=name: name.endswith("fp32")
            model, stack = (theirs, "transformers") if name == "transformers" else (ours, "minitune")
            r = time_train_steps(model, stack, batches, torch.bfloat16, args.warmup, torch.device("cpu"))
            times[name].append(r["total_s"] / r["steps"])
    return {
        name: {"step_s_per_round": [round(x, 4) for x in ts], "median_step_s": statistics.median(ts)}
        for name, ts in times.items()
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short sequences and few steps: seconds, a check of the code")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.shrink, lengths, repeats = (8, [8, 16], 2) if args.quick else (1, [32, 64, 128], 5)
    if args.quick:
        args.rounds, args.steps, args.batch = 1, 1, 4
    rule = attention.cpu_attention_in_fp32
    try:  # each row sets the rule; the module's own comes back after
        kernel = {t: {p: kernel_row(t, p == "fp32", repeats) for p in ("bf16", "fp32")} for t in lengths}
        steps = step_rows(args)
    finally:
        attention.cpu_attention_in_fp32 = rule
    base = steps["minitune, attention bf16"]["median_step_s"]
    doc = {
        "machine": machine(),
        "kernel_fwd_bwd_s": {str(t): r | {"bf16_over_fp32": r["bf16"] / r["fp32"]} for t, r in kernel.items()},
        "steps": {k: v | {"vs_attention_bf16": base / v["median_step_s"]} for k, v in steps.items()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    lines = ["| tokens per sequence | bf16 kernel s | fp32 s | bf16 / fp32 |", "|---:|---:|---:|---:|"]
    lines += [f"| {t} | {r['bf16']:.4f} | {r['fp32']:.4f} | {r['bf16'] / r['fp32']:.2f}x |" for t, r in kernel.items()]
    lines += ["", "| MiniLM train step, bf16 autocast, bucketed humor batches | median s | speed vs attention bf16 |"]
    lines += ["|---|---:|---:|"]
    lines += [f"| {k} | {v['median_step_s']:.3f} | {v['vs_attention_bf16']:.2f}x |" for k, v in doc["steps"].items()]
    print("\n".join(lines))
    out = args.out or ROOT / "benchmarks" / "results" / (
        "cpu_attention.quick.json" if args.quick else "cpu_attention.json"
    )
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    main()
