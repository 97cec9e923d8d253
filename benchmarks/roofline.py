#!/usr/bin/env python
"""Roofline: what this machine can do per thread, what a training step needs, and how close each stack comes.

    OMP_NUM_THREADS=1 python -m benchmarks.roofline                 # MiniLM and xlm-roberta-base shapes, ~6 min
    OMP_NUM_THREADS=1 python -m benchmarks.roofline --quick         # tiny shapes, seconds (tested)

1. GEMM peak: torch.mm at the shapes a step multiplies (forward, gradient of the input, gradient of the weight for
   every per-token linear layer, with the batch's tokens as M), in fp32 and bf16, one thread. The peak is the best
   shape; "at model shapes" is the whole set's FLOPs over its whole time, the rate a step's GEMMs could reach.
2. Training FLOPs of a step, from the shapes: 6 x (per-token linear weights) x real tokens, 6 x (pooler and head
   weights) x sequences, and attention's two batched products, 4 x H x sum(L^2) per layer forward, x3 for training.
   Embedding lookups, norms, softmax, dropout and the optimizer add time but no matmul FLOPs.
3. Each stack's train steps (forward, loss, backward, clipping, AdamW) on the very same batches of token ids, with
   random weights of the shape: minitune's models and transformers' (sdpa), fp32 and bf16 autocast. The fraction of
   peak is the step's real-token FLOPs over its time over the bf16 or fp32 peak of (1). Batches are 32 (MiniLM) or 8
   (xlm-roberta-base) sequences whose lengths follow humor's training set (benchmarks/lengths.json): "bucketed"
   (sorted runs of similar lengths, as minitune's --padding bucketed and the Trainer's group_by_length) and
   "random" (minitune pads them and, past its padding share, unpads: per-sequence attention on CPU).
4. Attention alone, forward and backward, for the same random batches: one SDPA call per sequence on its own
   tokens (minitune's unpadded CPU path) against one masked call over the padded batch, and against one call over
   length-grouped batches of the same sequences.
Results: benchmarks/results/roofline.json and markdown tables on stdout. benchmarks/gpu.py imports (1)-(3) to report
the fraction of a CUDA device's peak the same way.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LENGTHS = ROOT / "benchmarks" / "lengths.json"
# config.json shapes (random weights; the speed does not depend on them)
MINILM = dict(
    model_type="bert",
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    type_vocab_size=2,
    pad_token_id=0,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
XLMR_BASE = dict(
    model_type="xlm-roberta",
    vocab_size=250002,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    layer_norm_eps=1e-5,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
SHAPES = {"minilm": (MINILM, 32), "xlm-roberta-base": (XLMR_BASE, 8)}  # shape, sequences per batch
TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
PER_SEQUENCE = ("pooler", "classifier", "score", "head")  # linear layers applied once per sequence, not per token


# ---------------------------------------------------------------------------------------------- models


def build_minitune(hub: dict, num_labels: int) -> torch.nn.Module:
    from minitune.models import family_for

    family = family_for(hub["model_type"], "benchmark shape")
    return family.build(family.config_from_hf(dict(hub)), "sequence", num_labels)


def build_transformers(hub: dict, num_labels: int) -> tuple[torch.nn.Module, str]:
    """transformers' classifier with sdpa attention where the family has it (DeBERTa-v2 has only eager)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    d = {k: v for k, v in hub.items() if k != "model_type"}
    for impl in ("sdpa", "eager"):
        cfg = AutoConfig.for_model(hub["model_type"], num_labels=num_labels, **d)
        try:
            return AutoModelForSequenceClassification.from_config(cfg, attn_implementation=impl), impl
        except (ValueError, ImportError):
            continue
    raise RuntimeError(f"no attention implementation for {hub['model_type']}")


def matmul_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters outside embedding tables, all parameters)."""
    emb = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    params = list(model.parameters())
    return sum(p.numel() for p in params if id(p) not in emb), sum(p.numel() for p in params)


# ---------------------------------------------------------------------------------------------- FLOPs


def linear_weights(model: torch.nn.Module) -> tuple[int, int]:
    """(weights of the linear layers every token passes, those applied once per sequence: pooler and head)."""
    per_token = per_seq = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "LoRALinear":
            weight = getattr(m, "weight", None)
            if weight is None:
                continue
            if any(part in name for part in PER_SEQUENCE):
                per_seq += weight.numel()
            else:
                per_token += weight.numel()
    return per_token, per_seq


def step_flops(model: torch.nn.Module, hub: dict, lengths: list[int], padded: bool = False) -> float:
    """Training FLOPs (forward + backward) of one batch of sequences of these lengths: on the real tokens, or
    (`padded`) on the batch padded to its longest. Attention's products counted as full (no window)."""
    per_token, per_seq = linear_weights(model)
    if padded:
        lengths = [max(lengths)] * len(lengths)
    tokens, squares = sum(lengths), sum(n * n for n in lengths)
    attention = 4 * hub["hidden_size"] * squares * hub["num_hidden_layers"]
    return 3 * (2 * per_token * tokens + 2 * per_seq * len(lengths) + attention)


def gemm_shapes(hub: dict, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of every product a step's per-token linear layers make: forward x W (tokens, in) @ (in, out),
    the input's gradient (tokens, out) @ (out, in), the weight's gradient (in, tokens) @ (tokens, out)."""
    h, i = hub["hidden_size"], hub["intermediate_size"]
    shapes = []
    for k, n in ((h, h), (h, i), (i, h)):
        shapes += [(tokens, k, n), (tokens, n, k), (k, tokens, n)]
    return shapes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, min_s: float) -> float:
    """FLOP/s of torch.mm (m, k) @ (k, n), the best of repeated timings of at least `min_s` seconds each."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    torch.mm(a, b)
    reps, best = 1, float("inf")
    while True:  # enough repetitions to fill min_s
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        took = time.perf_counter() - t0
        if took >= min_s:
            break
        reps *= 2
    best = took / reps
    for _ in range(2):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * m * k * n / best


def gemm_peak(hub: dict, tokens: int, dtype: torch.dtype, device: torch.device, min_s: float = 0.2) -> dict:
    """The GEMM rates at a step's shapes (see gemm_shapes): per shape, the best, and the whole set's FLOPs over its
    time ("at_model_shapes": what a step's GEMMs could reach on this device)."""
    rows, flops, seconds = [], 0.0, 0.0
    for m, k, n in gemm_shapes(hub, tokens):
        rate = gemm_rate(m, k, n, dtype, device, min_s)
        rows.append({"m": m, "k": k, "n": n, "gflops": round(rate / 1e9, 2)})
        flops += 2 * m * k * n
        seconds += 2 * m * k * n / rate
    return {
        "tokens": tokens,
        "per_shape": rows,
        "peak_gflops": max(r["gflops"] for r in rows),
        "at_model_shapes_gflops": round(flops / seconds / 1e9, 2),
    }


# ---------------------------------------------------------------------------------------------- batches


def humor_lengths() -> dict[str, int]:
    return json.loads(LENGTHS.read_text(encoding="utf-8"))["histograms"]["humor"]


def mean_length(hist: dict[str, int]) -> float:
    return sum(int(k) * v for k, v in hist.items()) / sum(hist.values())


def batch_lengths(hist: dict[str, int], batching: str, n_batches: int, batch: int, seed: int) -> list[list[int]]:
    """Lengths of n_batches batches: random draws from the histogram, or (bucketed) sorted runs of a larger pool,
    batch order shuffled."""
    rng = random.Random(seed)
    values, weights = [int(k) for k in hist], list(hist.values())
    if batching == "random":
        return [rng.choices(values, weights, k=batch) for _ in range(n_batches)]
    pool = sorted(rng.choices(values, weights, k=batch * n_batches * 8))
    runs = [pool[i : i + batch] for i in range(0, len(pool), batch)]
    return rng.sample(runs, n_batches)


def make_batch(lengths: list[int], vocab: int, labels: tuple[int, str], device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).long()  # (B, T), right padding
    ids = torch.randint(5, vocab, mask.shape, generator=g) * mask
    n, kind = labels
    y = torch.randint(0, n, (len(lengths),), generator=g)
    if kind == "multi":
        y = F.one_hot(y, n).float()
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": y.to(device)}


# ---------------------------------------------------------------------------------------------- steps


def time_train_steps(
    model,
    stack: str,
    batches: list[dict],
    dtype: torch.dtype,
    warmup: int,
    device: torch.device,
    kind: str = "single",
    fused: bool | None = None,
) -> dict:
    """Train steps over `batches` (the first `warmup` untimed) under autocast to `dtype` (fp32: none): seconds per
    timed step (median and total), real tokens, and on CUDA peak memory. `fused`: AdamW's fused kernel."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=fused)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, real = [], 0
    for i, b in enumerate(batches):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if stack == "minitune":
                logits = model(b["input_ids"], b["attention_mask"])
            else:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits = logits.float()
        if kind == "multi":
            loss = F.binary_cross_entropy_with_logits(logits, b["labels"])
        else:
            loss = F.cross_entropy(logits, b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            real += int(b["attention_mask"].sum())
    out = {"step_s": statistics.median(times), "total_s": sum(times), "real_tokens": real, "steps": len(times)}
    if device.type == "cuda":
        out["max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["max_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    del opt
    return out


def stack_rows(args, hub: dict, batch: int, peaks: dict, device: torch.device) -> list[dict]:
    """Each stack x precision x batching: step time, tokens/s, and the fraction of the GEMM peak."""
    hist, rows = humor_lengths(), []
    n = args.warmup + args.steps
    for stack in ("minitune", "transformers"):
        torch.manual_seed(0)
        model = build_minitune(hub, 2) if stack == "minitune" else build_transformers(hub, 2)[0]
        for batching in ("bucketed", "random"):
            lens = batch_lengths(hist, batching, n, batch, seed=1)
            lens = [[max(2, x // args.shrink) for x in ls] for ls in lens]
            batches = [make_batch(ls, hub["vocab_size"], (2, "single"), device, i) for i, ls in enumerate(lens)]
            timed = lens[args.warmup :]
            flops = sum(step_flops(model, hub, ls) for ls in timed)
            padded = sum(step_flops(model, hub, ls, padded=True) for ls in timed)
            for precision, dtype in DTYPES.items():
                r = time_train_steps(model, stack, batches, dtype, args.warmup, device)
                rate = flops / r["total_s"]
                row = {
                    "stack": stack,
                    "batching": batching,
                    "precision": precision,
                    "step_s": round(r["step_s"], 4),
                    "tokens_per_s": round(r["real_tokens"] / r["total_s"], 1),
                    "real_gflop_per_step": round(flops / len(timed) / 1e9, 3),
                    "padded_gflop_per_step": round(padded / len(timed) / 1e9, 3),
                    "achieved_gflops": round(rate / 1e9, 2),
                    "fraction_of_peak": round(rate / (peaks[precision]["peak_gflops"] * 1e9), 4),
                    "fraction_of_model_shape_rate": round(rate / (peaks[precision]["at_model_shapes_gflops"] * 1e9), 4),
                }
                rows.append(row)
                print(
                    f"  {stack:12s} {batching:8s} {precision}: {row['step_s']:.3f} s/step, "
                    f"{row['achieved_gflops']:.1f} GFLOP/s = {100 * row['fraction_of_peak']:.1f}% of peak",
                    flush=True,
                )
        del model
    return rows


def attention_rows(args, hub: dict, batch: int, device: torch.device) -> list[dict]:
    """SDPA forward + backward for one layer's heads over the same sequences: per sequence (minitune's unpadded CPU
    path), one masked call over each random batch padded to its longest, one call over length-grouped batches."""
    heads, dim = hub["num_attention_heads"], hub["hidden_size"] // hub["num_attention_heads"]
    random_batches = batch_lengths(humor_lengths(), "random", args.attention_batches, batch, seed=2)
    random_batches = [[max(2, x // args.shrink) for x in ls] for ls in random_batches]
    every = sorted(x for ls in random_batches for x in ls)
    grouped = [every[i : i + batch] for i in range(0, len(every), batch)]  # the same sequences, length-sorted
    rows = []
    for precision, dtype in DTYPES.items():
        shape = (heads, dim, dtype, device)
        row = {
            "precision": precision,
            "sequences": len(every),
            "per_sequence_s": round(_timed(_per_sequence, random_batches, shape), 4),
            "padded_random_s": round(_timed(_padded, random_batches, shape), 4),
            "padded_length_groups_s": round(_timed(_padded, grouped, shape), 4),
        }
        rows.append(row)
        print(f"  attention {precision}: {row}", flush=True)
    return rows


def _qkv(b: int, t: int, heads: int, dim: int, dtype, device) -> list[torch.Tensor]:
    return [torch.randn(b, heads, t, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]


def _per_sequence(lengths: list[int], shape) -> None:
    for n in lengths:  # (1, heads, n, dim) each: no mask, no pad
        q, k, v = _qkv(1, n, *shape)
        F.scaled_dot_product_attention(q, k, v).sum().backward()


def _padded(lengths: list[int], shape) -> None:
    t = max(lengths)
    q, k, v = _qkv(len(lengths), t, *shape)  # (B, heads, T, dim)
    device = shape[-1]
    mask = torch.arange(t, device=device)[None] < torch.tensor(lengths, device=device)[:, None]  # (B, T)
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :]).sum().backward()


def _timed(fn, batches: list[list[int]], shape) -> float:
    fn(batches[0], shape)  # warm-up
    sync(shape[-1])
    t0 = time.perf_counter()
    for lengths in batches:
        fn(lengths, shape)
    sync(shape[-1])
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- the machine


def machine() -> dict:
    from minitune.train.amp import cpu_flags, native_bf16

    flags = cpu_flags()
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": name,
        "flags": [f for f in CPU_FLAGS if f in flags],
        "native_bf16": native_bf16("cpu")[1],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mkldnn_bf16": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()),
    }


def markdown(doc: dict) -> str:
    lines = [
        f"machine: {doc['machine']['cpu']}, flags {' '.join(doc['machine']['flags'])}, "
        f"{doc['machine']['threads']} thread(s), torch {doc['machine']['torch']}",
        "",
    ]
    lines += [
        "| shape | GEMM peak fp32 (GFLOP/s) | at model shapes fp32 | peak bf16 | at model shapes bf16 |",
        "|---|---:|---:|---:|---:|",
    ]
    for shape, s in doc["shapes"].items():
        p = s["gemm"]
        lines.append(
            f"| {shape} ({p['fp32']['tokens']} tokens) | {p['fp32']['peak_gflops']:.1f} | "
            f"{p['fp32']['at_model_shapes_gflops']:.1f} | {p['bf16']['peak_gflops']:.1f} | "
            f"{p['bf16']['at_model_shapes_gflops']:.1f} |"
        )
    lines += [
        "",
        "| shape | stack | batches | precision | s/step | real GFLOP/step (padded) | GFLOP/s | % of peak |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for shape, s in doc["shapes"].items():
        for r in s["steps"]:
            lines.append(
                f"| {shape} | {r['stack']} | {r['batching']} | {r['precision']} | {r['step_s']:.3f} | "
                f"{r['real_gflop_per_step']:.1f} ({r['padded_gflop_per_step']:.1f}) | {r['achieved_gflops']:.1f} | "
                f"{100 * r['fraction_of_peak']:.1f} |"
            )
    lines += [
        "",
        "| shape | precision | sequences | per sequence (s) | padded random batches (s) | length groups (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for shape, s in doc["shapes"].items():
        for r in s["attention"]:
            lines.append(
                f"| {shape} | {r['precision']} | {r['sequences']} | {r['per_sequence_s']:.3f} | "
                f"{r['padded_random_s']:.3f} | {r['padded_length_groups_s']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes and few steps: seconds, a check of the code")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--attention-batches", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the peak and the steps are per thread)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.shrink = 1
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.attention_batches, args.shrink = 1, 2, 4
    device = torch.device(args.device)
    t0 = time.perf_counter()
    doc = {"machine": machine(), "command": "python -m benchmarks.roofline " + " ".join(argv or sys.argv[1:])}
    doc["shapes"] = {}
    print(f"machine: {doc['machine']}", flush=True)
    for shape in args.shapes:
        hub, batch = SHAPES[shape]
        hub = dict(hub, **TINY) if args.quick else hub
        batch = 4 if args.quick else batch
        tokens = round(batch * mean_length(humor_lengths()) / args.shrink)  # a humor batch's real tokens
        print(f"{shape}: GEMM peak at {tokens} tokens", flush=True)
        min_s = 0.02 if args.quick else 0.2
        gemm = {name: gemm_peak(hub, tokens, dtype, device, min_s) for name, dtype in DTYPES.items()}
        for name, g in gemm.items():
            print(f"  {name}: peak {g['peak_gflops']} GFLOP/s, at model shapes {g['at_model_shapes_gflops']}")
        doc["shapes"][shape] = {
            "batch": batch,
            "gemm": gemm,
            "steps": stack_rows(args, hub, batch, gemm, device),
            "attention": attention_rows(args, hub, batch, device),
        }
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    print("\n" + markdown(doc))
    out = args.out or ROOT / "benchmarks" / "results" / ("roofline.quick.json" if args.quick else "roofline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({doc['seconds']} s)")
    return doc


if __name__ == "__main__":
    main()
