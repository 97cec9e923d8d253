#!/usr/bin/env python
"""GPU training-step benchmark: minitune against transformers (sdpa) on the same batches, bf16, and QLoRA vs LoRA.

    python -m benchmarks.gpu                  # on a CUDA device: the whole set, a few minutes (budget: under 8)
    python -m benchmarks.gpu --dry-run        # the same code paths at tiny shapes on CPU, seconds (tested)
    python -m benchmarks.gpu --write-lengths  # re-derive benchmarks/lengths.json from the data (CPU, once)

What it measures, per model shape (random weights), length distribution, batching and stack:
- step time: forward, loss, backward, fused AdamW step, under bf16 autocast (run.py's --precision bf16), median over
  the timed steps after warm-up; each step ends with torch.cuda.synchronize;
- real tokens/s: the batches' non-pad tokens over the timed steps' total time;
- fraction of the measured peak: the step's FLOPs counted from its shapes (benchmarks/roofline.step_flops, attention
  included) over the bf16 GEMM rate this device reaches at the shape's own products (roofline.gemm_peak, at
  32 tokens a sequence). The count takes attention as full: it overcounts ModernBERT's windowed layers (two in
  three see 128 keys; roughly a third too many FLOPs on the 4096-token batches) and leaves out DeBERTa's
  relative-position products, so read those two shapes' fractions as bounds, not figures;
- MFU: 6 x parameters x real tokens / time / the device's dense bf16 peak (PEAK_BF16, source printed). Parameters
  are those that multiply each token (every weight outside the embedding tables: the lookups cost no FLOPs), so
  the count is honest for a 250k-row vocabulary; the JSON also has the figure over all parameters;
- peak memory allocated and reserved (torch.cuda.max_memory_*), per stack and batch set.
Shapes: xlm-roberta-large (24 x 1024, vocab 250002), deberta-v3-large (24 x 1024, vocab 128100, relative
attention) and modernbert-large (28 x 1024, vocab 50368, GeGLU, a global layer every 3 and 128-token windows in the
others: FlashAttention's variable-length kernel with its window). Batches of 32 sequences whose lengths are drawn
from the humor and goemotions training sets (token counts from MiniLM's WordPiece tokenizer, capped at 128, saved in
benchmarks/lengths.json): "random" batches pad to their
longest member, as the Trainer's default; "bucketed" batches take sorted runs of similar lengths. Both stacks run the
very same id tensors. Attention dropout: as configured (0.1) and off; FlashAttention's variable-length kernel has no
dropout, so minitune's unpadded path uses it only in the second setting (the first re-pads around attention).
QLoRA vs LoRA: a Llama-3.2-1B shape (16 x 2048, GQA 32/8), r=16 on every block linear, NF4 base for QLoRA.
Results: benchmarks/results/gpu.json (gpu.dry-run.json for --dry-run) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.adapters import SHAPES as ADAPTER_SHAPES  # noqa: E402
from benchmarks.roofline import (  # noqa: E402
    XLMR_BASE,
    batch_lengths,
    build_minitune,
    build_transformers,
    gemm_peak,
    make_batch,
    matmul_parameters,
    step_flops,
    time_train_steps,
)

LENGTHS = ROOT / "benchmarks" / "lengths.json"
# Dense bf16 tensor-core peaks, FLOP/s; NVIDIA quotes the sparse (2:4) figure first, twice these.
PEAK_BF16 = {
    "H200 NVL": (835e12, "NVIDIA H200 datasheet: H200 NVL BF16 Tensor Core 1,671 TFLOPS with sparsity -> 835 dense"),
    "H200": (989e12, "NVIDIA H200 datasheet: H200 SXM BF16 Tensor Core 1,979 TFLOPS with sparsity -> 989 dense"),
    "H100 PCIe": (756e12, "NVIDIA H100 datasheet: H100 PCIe BF16 1,513 TFLOPS with sparsity -> 756 dense"),
    "H100": (989e12, "NVIDIA H100 datasheet: H100 SXM BF16 1,979 TFLOPS with sparsity -> 989 dense"),
    "A100": (312e12, "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS dense"),
}
XLMR_LARGE = dict(XLMR_BASE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
DEBERTA_V3_LARGE = dict(
    model_type="deberta-v2",
    vocab_size=128100,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=512,
    type_vocab_size=0,
    relative_attention=True,
    position_buckets=256,
    max_relative_positions=-1,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    pos_att_type=["p2c", "c2p"],
    position_biased_input=False,
    layer_norm_eps=1e-7,
    pad_token_id=0,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
# answerdotai/ModernBERT-large's config: a global layer every 3, the others a window of 128 tokens.
MODERNBERT_LARGE = dict(
    model_type="modernbert",
    vocab_size=50368,
    hidden_size=1024,
    num_hidden_layers=28,
    num_attention_heads=16,
    intermediate_size=2624,
    max_position_embeddings=8192,
    global_attn_every_n_layers=3,
    local_attention=128,
    pad_token_id=50283,
    attention_dropout=0.0,
)
# ModernBERT also runs long inputs (texts x tokens, no padding; --dry-run: a sixteenth of the length).
LONG_BATCHES = {"long-1024": (8, 1024), "long-4096": (2, 4096)}
DROPOUT_KEY = {"modernbert": "attention_dropout"}  # the attention-dropout setting's name, where not BERT's
TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
# The 1B decoder of benchmarks/adapters.py, as a config.json.
LLAMA_1B = dict(
    model_type="llama",
    **ADAPTER_SHAPES["llama-3.2-1b"][1],
    max_position_embeddings=4096,
    rope_theta=500000.0,
    pad_token_id=0,
)
TASK_LABELS = {"humor": (2, "single"), "goemotions": (28, "multi")}


# ---------------------------------------------------------------------------------------------- batches


def write_lengths(data_dir: str | None) -> dict:
    """Token counts of the humor and goemotions training texts (MiniLM's tokenizer, max length 128) as a histogram."""
    from minitune import load_tokenizer
    from minitune.data.features import tokenize
    from minitune.data.tasks import load_task, resolve_data_dir

    tok, out = load_tokenizer("minilm"), {}
    for name in TASK_LABELS:
        task = load_task(name, resolve_data_dir(data_dir), seed=42)
        counts: dict[int, int] = {}
        for f in tokenize(task.train, tok, task.kind, 128):
            counts[len(f["input_ids"])] = counts.get(len(f["input_ids"]), 0) + 1
        out[name] = {str(k): counts[k] for k in sorted(counts)}
    doc = {"tokenizer": "minilm (all-MiniLM-L6-v2, WordPiece)", "max_length": 128, "histograms": out}
    LENGTHS.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


# ---------------------------------------------------------------------------------------------- models


# ---------------------------------------------------------------------------------------------- timing


SHAPES = {"xlm-roberta-large": XLMR_LARGE, "deberta-v3-large": DEBERTA_V3_LARGE, "modernbert-large": MODERNBERT_LARGE}


def shape_config(shape_name: str, attn_dropout: float, dry_run: bool) -> dict:
    """The shape's config.json with this attention dropout; --dry-run: the tiny sizes."""
    key = DROPOUT_KEY.get(SHAPES[shape_name]["model_type"], "attention_probs_dropout_prob")
    hub = dict(SHAPES[shape_name], **{key: attn_dropout})
    if dry_run:
        hub.update(TINY, **({"position_buckets": 16} if "deberta" in shape_name else {}))
        hub.update({"pad_token_id": 0} if "modernbert" in shape_name else {})  # inside the tiny vocabulary
    return hub


def lengths_for(args, hist: dict, task: str, batching: str) -> list[list[int]]:
    """Each batch's lengths: drawn from the task's histogram, or a long-input set (LONG_BATCHES)."""
    n = args.warmup + args.steps
    if batching in LONG_BATCHES:  # long inputs, where the sliding window matters
        count, length = LONG_BATCHES[batching]
        return [[length // (16 if args.dry_run else 1)] * count] * n
    return batch_lengths(hist[task], batching, n, args.batch, seed=1)


def encoder_rows(args, device: torch.device, peak: float) -> list[dict]:
    hist = json.loads(LENGTHS.read_text(encoding="utf-8"))["histograms"]
    rows = []
    for shape_name in args.shapes:
        # The device's bf16 GEMM rate at this shape's products (benchmarks/roofline.py), for the fraction of the
        # measured peak beside the datasheet's
        shape_hub = shape_config(shape_name, 0.0, args.dry_run)
        tokens = args.batch * 32
        measured = gemm_peak(shape_hub, tokens, torch.bfloat16, device, min_s=0.01 if args.dry_run else 0.2)
        measured_peak = measured["peak_gflops"] * 1e9
        for attn_dropout in (0.1, 0.0):
            hub = shape_config(shape_name, attn_dropout, args.dry_run)
            for stack in args.stacks:
                torch.manual_seed(0)
                with torch.device(device):
                    if stack == "minitune":
                        model, impl = build_minitune(hub, 28), "minitune"
                    else:
                        model, impl = build_transformers(hub, 28)
                matmul, total = matmul_parameters(model)
                for task, (n_labels, kind) in TASK_LABELS.items():
                    long = tuple(LONG_BATCHES) if "modernbert" in shape_name and task == "humor" else ()
                    for batching in ("bucketed", "random", *long):
                        lens = lengths_for(args, hist, task, batching)
                        # The same ids for both stacks. One 28-wide head serves both tasks: humor's labels are
                        # 0 or 1 under cross-entropy over its logits (the head's width costs nothing measurable).
                        vocab = hub["vocab_size"]
                        batches = [make_batch(ls, vocab, (n_labels, kind), device, i) for i, ls in enumerate(lens)]
                        r = time_train_steps(model, stack, batches, torch.bfloat16, args.warmup, device, kind, True)
                        tps = r["real_tokens"] / r["total_s"]
                        flops = sum(step_flops(model, hub, ls) for ls in lens[args.warmup :]) / r["total_s"]
                        slots = sum(len(ls) * max(ls) for ls in lens[args.warmup :])
                        row = dict(
                            shape=shape_name,
                            attn_dropout=attn_dropout,
                            stack=stack,
                            attention=impl,
                            task=task,
                            batching=batching,
                            pad_share=round(1 - r["real_tokens"] / slots, 3),
                            tokens_per_s=round(tps),
                            # 4 significant digits, not 4 decimals: on a slow CPU against a nominal peak the
                            # fraction is tiny, and a fixed number of decimals would round it to 0
                            mfu=float(f"{6 * matmul * tps / peak:.4g}"),
                            mfu_all_params=float(f"{6 * total * tps / peak:.4g}"),
                            # the step's FLOPs counted from its shapes (attention included) over the bf16 GEMM peak
                            # this device reached at the shape's products
                            shape_tflops=float(f"{flops / 1e12:.4g}"),
                            measured_gemm_peak_tflops=float(f"{measured_peak / 1e12:.4g}"),
                            fraction_of_measured_peak=float(f"{flops / measured_peak:.4g}"),
                            matmul_params=matmul,
                            params=total,
                            **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()},
                        )
                        rows.append(row)
                        print(_row_line(row), flush=True)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def _row_line(r: dict) -> str:
    mem = f"  alloc {r['max_allocated_gib']:.1f} GiB" if "max_allocated_gib" in r else ""
    return (
        f"{r['shape']:18s} attn-drop {r['attn_dropout']:.1f} {r['stack']:12s} {r['task']:10s} {r['batching']:8s} "
        f"step {1000 * r['step_s']:7.1f} ms  {r['tokens_per_s']:>9,d} tok/s  MFU {100 * r['mfu']:5.1f}%  "
        f"of measured GEMM peak {100 * r['fraction_of_measured_peak']:5.1f}%{mem}"
    )


def adapter_rows(args, device: torch.device) -> list[dict]:
    """LoRA and QLoRA train steps on a Llama-3.2-1B shape: fp32 base (LoRA) or NF4 base (QLoRA), r=16 adapters on
    every block linear, bf16 autocast, batches of `--batch` sequences of the humor lengths (bucketed)."""
    from minitune.adapters.lora import apply_adapters
    from minitune.adapters.nf4 import quantize_model_
    from minitune.config.sections import AdapterSettings

    hist = json.loads(LENGTHS.read_text(encoding="utf-8"))["histograms"]["humor"]
    hub = dict(LLAMA_1B, **(dict(TINY, num_key_value_heads=2, head_dim=16) if args.dry_run else {}))
    n = args.warmup + args.steps
    lens = batch_lengths(hist, "bucketed", n, args.batch, seed=2)
    batches = [make_batch(ls, hub["vocab_size"], (2, "single"), device, i) for i, ls in enumerate(lens)]
    rows = []
    for config in ("lora", "qlora"):
        torch.manual_seed(0)
        with torch.device(device):
            model = build_minitune(hub, 2)
        if config == "qlora":
            quantize_model_(model)
        _, trainable, total = apply_adapters(model, AdapterSettings(lora_r=16, lora_alpha=32.0, lora_dropout=0.0))
        r = time_train_steps(model.to(device), "minitune", batches, torch.bfloat16, args.warmup, device, fused=True)
        row = dict(shape="llama-3.2-1b", config=config, trainable=trainable, params=total)
        row.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})
        row["tokens_per_s"] = round(r["real_tokens"] / r["total_s"])
        rows.append(row)
        print(f"llama-3.2-1b {config:6s} step {1000 * r['step_s']:7.1f} ms  {row['tokens_per_s']:,d} tok/s", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def device_peak(device: torch.device, override: float | None) -> tuple[float, str]:
    if override:
        return override * 1e12, f"--peak-tflops {override}"
    if device.type != "cuda":
        return 1e12, "dry run: a nominal 1 TFLOP/s, so the MFU arithmetic runs; the figure means nothing"
    name = torch.cuda.get_device_name(device)
    for key, (peak, source) in PEAK_BF16.items():  # longest names first: "H200 NVL" before "H200"
        if key in name:
            return peak, source
    raise SystemExit(f"error: no bf16 peak known for {name!r}; pass --peak-tflops from its datasheet")


def markdown(doc: dict) -> str:
    lines = [
        "| shape | attention dropout | task | batching | pad share | minitune step (ms) | transformers step (ms) "
        "| ×transformers | minitune tokens/s | minitune MFU | transformers MFU | minitune / transformers, of "
        "the measured GEMM peak | peak alloc / reserved GiB (minitune; transformers) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = doc["encoders"]
    for r in (x for x in rows if x["stack"] == "minitune"):
        ref = next((x for x in rows if x["stack"] == "transformers" and all(x[k] == r[k] for k in KEYS)), None)
        mem = _memory(r) + (f"; {_memory(ref)}" if ref else "")
        lines.append(
            f"| {r['shape']} | {r['attn_dropout']} | {r['task']} | {r['batching']} | {r['pad_share']:.2f} "
            f"| {1000 * r['step_s']:.1f} | {1000 * ref['step_s']:.1f} | {r['step_s'] / ref['step_s']:.2f} "
            f"| {r['tokens_per_s']:,d} | {100 * r['mfu']:.1f}% | {100 * ref['mfu']:.1f}% "
            f"| {100 * r['fraction_of_measured_peak']:.1f}% / {100 * ref['fraction_of_measured_peak']:.1f}% | {mem} |"
            if ref
            else f"| {r['shape']} | {r['attn_dropout']} | {r['task']} | {r['batching']} | {r['pad_share']:.2f} "
            f"| {1000 * r['step_s']:.1f} | - | - | {r['tokens_per_s']:,d} | {100 * r['mfu']:.1f}% | - "
            f"| {100 * r['fraction_of_measured_peak']:.1f}% | {mem} |"
        )
    ad = {r["config"]: r for r in doc.get("adapters", [])}
    if {"lora", "qlora"} <= ad.keys():
        lines.append(
            f"\nQLoRA / LoRA step time, Llama-3.2-1B shape: {ad['qlora']['step_s'] / ad['lora']['step_s']:.2f}x "
            f"({1000 * ad['qlora']['step_s']:.1f} ms vs {1000 * ad['lora']['step_s']:.1f} ms); peak allocated / "
            f"reserved GiB {_memory(ad['qlora'])} vs {_memory(ad['lora'])}"
        )
    return "\n".join(lines)


KEYS = ("shape", "attn_dropout", "task", "batching")


def _memory(r: dict) -> str:
    return f"{r['max_allocated_gib']:.1f} / {r['max_reserved_gib']:.1f}" if "max_allocated_gib" in r else "-"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU, 1 warm-up + 2 timed steps: seconds")
    p.add_argument("--device", default=None, help="default cuda (cpu for --dry-run)")
    p.add_argument("--shapes", nargs="+", default=["xlm-roberta-large", "deberta-v3-large", "modernbert-large"])
    p.add_argument("--stacks", nargs="+", default=["minitune", "transformers"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--no-adapters", action="store_true", help="skip QLoRA vs LoRA")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not in PEAK_BF16")
    p.add_argument("--write-lengths", action="store_true", help="recompute benchmarks/lengths.json and stop")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.write_lengths:
        return write_lengths(args.data_dir)
    if args.dry_run:
        args.batch, args.warmup, args.steps = 4, 1, 2
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; use --dry-run to check the script on CPU")
    peak, source = device_peak(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name}; bf16 peak {peak / 1e12:.0f} TFLOP/s ({source})", flush=True)
    t0 = time.perf_counter()
    doc = {
        "_meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "device": name,
            "peak_bf16_flops": peak,
            "peak_source": source,
            "torch": torch.__version__,
            "batch": args.batch,
            "warmup": args.warmup,
            "steps": args.steps,
            "lengths": "benchmarks/lengths.json (MiniLM WordPiece token counts, max 128)",
            "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
        },
        "encoders": encoder_rows(args, device, peak),
    }
    if not args.no_adapters:
        doc["adapters"] = adapter_rows(args, device)
    doc["_meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    table = markdown(doc)
    print("\n" + table)
    out = args.out or ROOT / "benchmarks" / "results" / ("gpu.dry-run.json" if args.dry_run else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({doc['_meta']['seconds']} s)")
    return doc


if __name__ == "__main__":
    main()
