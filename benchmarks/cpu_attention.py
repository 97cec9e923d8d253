#!/usr/bin/env python
"""Attention under CPU bf16 autocast: torch's bf16 kernel against the same attention computed in fp32 (q, k, v cast
up, autocast off inside, the output cast back to bf16). Tried in issue 28 as a way past the bf16 attention kernel's
slowness on a CPU without AMX, and not kept: see benchmarks/README.md, "Attention in fp32 under bf16 autocast".

    OMP_NUM_THREADS=1 python -m benchmarks.cpu_attention                 # ~3 min
    OMP_NUM_THREADS=1 python -m benchmarks.cpu_attention --scale 4       # texts four times humor's length
    OMP_NUM_THREADS=1 python -m benchmarks.cpu_attention --quick         # seconds (tested)

1. The kernel alone, forward and backward, no dropout, at MiniLM's heads (12 x 32) over 32 sequences of 32, 64 and
   128 tokens.
2. MiniLM-shaped training steps (random weights, roofline.py's builders and timing, MiniLM's attention dropout 0.1)
   and inference forwards (eval mode, batches of 64) on bucketed batches of humor's lengths, bf16 autocast, with
   minitune's attention in bf16 and in fp32, rounds alternating so that drift in the machine's speed falls on both;
   transformers' model (sdpa) on the same training batches for reference.
Results: benchmarks/results/cpu_attention.json (--out) and markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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

ROOT = Path(__file__).resolve().parents[1]
KERNEL = F.scaled_dot_product_attention
ROWS = (
    "train, attention bf16",
    "train, attention fp32",
    "train, transformers",
    "infer, attention bf16",
    "infer, attention fp32",
)


def in_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """The kernel on fp32 copies of q, k, v with autocast off, the output in bf16 (what autocast would return)."""
    if not torch.is_autocast_enabled("cpu"):
        return KERNEL(q, k, v, **kw)
    mask = kw.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        kw["attn_mask"] = mask.float()
    with torch.autocast("cpu", enabled=False):
        return KERNEL(q.float(), k.float(), v.float(), **kw).to(torch.bfloat16)


@contextlib.contextmanager
def attention_in(precision: str):
    """Every scaled_dot_product_attention call inside computes in `precision` (bf16: torch's kernel as it is)."""
    F.scaled_dot_product_attention = in_fp32 if precision == "fp32" else KERNEL
    try:
        yield
    finally:
        F.scaled_dot_product_attention = KERNEL


def kernel_seconds(t: int, precision: str, repeats: int, batch: int = 32, heads: int = 12, dim: int = 32) -> float:
    """Best seconds of one forward + backward of attention over (batch, heads, t, dim) under bf16 autocast."""
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(batch, heads, t, dim, generator=g).requires_grad_() for _ in range(3))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with attention_in(precision), torch.autocast("cpu", dtype=torch.bfloat16):
            y = F.scaled_dot_product_attention(q, k, v)
        y.float().sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def forward_seconds(model, batches: list[dict]) -> float:
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for b in batches:
            model(b["input_ids"], b["attention_mask"])
    return (time.perf_counter() - t0) / len(batches)


def batches_of(args, batch: int, n: int, seed: int) -> list[dict]:
    lens = batch_lengths(humor_lengths(), "bucketed", n, batch, seed=seed)
    lens = [[min(512, max(2, int(x * args.scale) // args.shrink)) for x in ls] for ls in lens]
    return [make_batch(ls, MINILM["vocab_size"], (2, "single"), torch.device("cpu"), i) for i, ls in enumerate(lens)]


def model_rows(args) -> dict:
    train = batches_of(args, args.batch, args.warmup + args.steps, seed=1)
    infer = batches_of(args, 2 * args.batch, args.steps, seed=2)
    torch.manual_seed(0)
    ours, theirs = build_minitune(MINILM, 2), build_transformers(MINILM, 2)[0]
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    for _ in range(args.rounds):
        for name in times:
            precision = "fp32" if name.endswith("fp32") else "bf16"
            with attention_in(precision):
                if name.startswith("infer"):
                    times[name].append(forward_seconds(ours, infer))
                    continue
                model, stack = (theirs, "transformers") if name.endswith("transformers") else (ours, "minitune")
                r = time_train_steps(model, stack, train, torch.bfloat16, args.warmup, torch.device("cpu"))
                times[name].append(r["total_s"] / r["steps"])
    return {
        name: {"seconds_per_round": [round(x, 4) for x in ts], "median_s": statistics.median(ts)}
        for name, ts in times.items()
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short sequences and few steps: seconds, a check of the code")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--scale", type=float, default=1.0, help="stretch humor's lengths (longer texts)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.shrink, lengths, repeats = (8, [8, 16], 2) if args.quick else (1, [32, 64, 128], 5)
    if args.quick:
        args.rounds, args.steps, args.batch = 1, 1, 4
    kernel = {t: {p: kernel_seconds(t, p, repeats) for p in ("bf16", "fp32")} for t in lengths}
    models = model_rows(args)
    doc = {
        "machine": machine(),
        "kernel_fwd_bwd_s": {str(t): r | {"bf16_over_fp32": r["bf16"] / r["fp32"]} for t, r in kernel.items()},
        "model_s": models,
        "fp32_speedup": {
            what: models[f"{what}, attention bf16"]["median_s"] / models[f"{what}, attention fp32"]["median_s"]
            for what in ("train", "infer")
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    lines = ["| tokens per sequence | bf16 kernel s | fp32 s | bf16 / fp32 |", "|---:|---:|---:|---:|"]
    lines += [f"| {t} | {r['bf16']:.4f} | {r['fp32']:.4f} | {r['bf16'] / r['fp32']:.2f}x |" for t, r in kernel.items()]
    lines += ["", f"| MiniLM, bf16 autocast, humor's lengths x{args.scale:g} | median s per batch |", "|---|---:|"]
    lines += [f"| {k} | {v['median_s']:.3f} |" for k, v in models.items()]
    lines += [
        "",
        "fp32 attention speed-up: " + ", ".join(f"{k} {v:.2f}x" for k, v in doc["fp32_speedup"].items()),
    ]
    print("\n".join(lines))
    name = "cpu_attention.quick.json" if args.quick else "cpu_attention.json"
    out = args.out or ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    main()
