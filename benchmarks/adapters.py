"""Full fine-tuning vs LoRA vs QLoRA: peak memory and step time on a decoder shape, each in a fresh process.

The default shape is Qwen2.5-0.5B (24 layers, hidden 896, 14 heads / 2 KV heads, intermediate 4864, vocab
151936, tied embeddings; random weights: only memory and speed matter). Each configuration runs in its own child
process, loads the checkpoint with minitune.load_model (QLoRA: quantize="nf4", NF4 while loading), wraps it
(LoRA r=16 on q/k/v/o/gate/up/down, classification head trainable), builds AdamW over the trainable parameters
and runs `--steps` timed steps after one warmup step on batches of `--batch` x `--seq-len` tokens.

CPU memory: the child's peak RSS (ru_maxrss). GPU: max_memory_allocated / max_memory_reserved.
Next to the measurements, the formulas: full = 16 B/param (fp32 weights, grads, two Adam moments);
LoRA = 4 B/param for the frozen fp32 base + 16 B per trainable parameter; QLoRA = ~0.516 B per quantized
parameter (4.127 bits) + 4 B per unquantized one (embeddings, norms, head) + 16 B per trainable parameter.
Activations come on top of each.

    OMP_NUM_THREADS=1 python -m benchmarks.adapters             # Qwen2.5-0.5B shape, CPU
    python -m benchmarks.adapters --quick                        # a tiny shape, seconds
    python -m benchmarks.adapters --device cuda --shape llama-3.2-1b llama-3.2-3b   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "qwen2.5-0.5b": (
        "qwen2",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-3b": (
        "llama",
        dict(
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),
    "tiny": (
        "qwen2",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            tie_word_embeddings=True,
        ),
    ),
}
CONFIGS = ("full", "lora", "qlora")


def make_checkpoint(shape: str, out: Path) -> None:
    import transformers

    model_type, dims = SHAPES[shape]
    cls = transformers.Qwen2Config if model_type == "qwen2" else transformers.LlamaConfig
    cfg = cls(**dims, max_position_embeddings=4096, pad_token_id=0, num_labels=2)
    with torch.device("meta"):
        model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    model = model.to_empty(device="cpu")
    for p in model.parameters():  # random, small: what the weights hold does not change time or memory
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(out)


def child(spec: dict) -> dict:
    import minitune
    from minitune.adapters.lora import apply_adapters
    from minitune.config.sections import AdapterSettings
    from minitune.train.optim import build_optimizer

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    name = spec["config"]
    model = minitune.load_model(spec["checkpoint"], num_labels=2, quantize="nf4" if name == "qlora" else None)
    if name != "full":
        apply_adapters(model, AdapterSettings(lora_r=16, lora_alpha=32.0, lora_dropout=0.0))
    model.to(device).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = build_optimizer(model, 1e-4)
    vocab = model.cfg.vocab_size
    ids = torch.randint(1, vocab, (spec["batch"], spec["seq_len"]), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (spec["batch"],), device=device)
    precision = torch.bfloat16 if device.type == "cuda" else None
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(spec["steps"] + 1):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            loss = torch.nn.functional.cross_entropy(model(ids, mask).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step is warmup: allocations, optimizer state
            times.append(time.perf_counter() - t)
    out = {
        "config": name,
        "trainable": trainable,
        "step_s": statistics.median(times),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if device.type == "cuda":
        out["max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return out


def estimate(config: str, total: int, embed: int, trainable: int) -> int:
    if config == "full":
        return 16 * total
    if config == "lora":
        return 4 * total + 16 * trainable
    quantized = total - embed - trainable  # linears of the blocks; embeddings/norms/head stay fp32
    return int(4.127 / 8 * quantized) + 4 * embed + 16 * trainable


def run(args) -> dict:
    results = {}
    for shape in args.shape:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / shape
            make_checkpoint(shape, ckpt)
            rows = {}
            for config in args.configs:
                spec = dict(
                    checkpoint=str(ckpt),
                    config=config,
                    device=args.device,
                    batch=args.batch,
                    seq_len=args.seq_len,
                    steps=args.steps,
                )
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.adapters", "--child", json.dumps(spec)],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:
                    raise SystemExit(f"{shape}/{config} failed:\n{proc.stderr[-2000:]}")
                rows[config] = json.loads(proc.stdout.strip().splitlines()[-1])
            from minitune.checkpoints.load import read_config

            hf = read_config(ckpt)
            total = _param_count(ckpt)
            embed = hf["vocab_size"] * hf["hidden_size"]
            for config, row in rows.items():
                row["estimate_bytes"] = estimate(config, total, embed, row["trainable"])
            results[shape] = {"parameters": total, "rows": rows}
    return results


def _param_count(ckpt: Path) -> int:
    from minitune.checkpoints.weights import index_checkpoint

    return sum(math.prod(shape) for shape in index_checkpoint(ckpt).shapes.values())


def print_table(results: dict) -> None:
    gib = 2**30
    for shape, r in results.items():
        full = r["rows"].get("full")
        print(f"\n{shape}: {r['parameters']:,} parameters")
        print(
            f"{'config':8s} {'trainable':>12s} {'peak GiB':>9s} {'x full':>7s} {'formula GiB':>12s} "
            f"{'step s':>8s} {'x full':>7s}"
        )
        for name, row in r["rows"].items():
            peak = row.get("max_allocated_bytes", row["peak_rss_bytes"])
            base = full.get("max_allocated_bytes", full["peak_rss_bytes"]) if full else None
            print(
                f"{name:8s} {row['trainable']:12,d} {peak / gib:9.2f} "
                f"{(peak / base if base else float('nan')):7.2f} {row['estimate_bytes'] / gib:12.2f} "
                f"{row['step_s']:8.2f} {(row['step_s'] / full['step_s'] if full else float('nan')):7.2f}"
            )
        if "lora" in r["rows"] and "qlora" in r["rows"]:
            print(f"QLoRA / LoRA step time: {r['rows']['qlora']['step_s'] / r['rows']['lora']['step_s']:.2f}x")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--shape", nargs="+", default=None, choices=list(SHAPES))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny shape, for checking the script works")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/adapters[.quick].json)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    args.shape = args.shape or (["tiny"] if args.quick else ["qwen2.5-0.5b"])
    results = run(args)
    print_table(results)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "command": "python -m benchmarks.adapters " + " ".join(argv or sys.argv[1:]),
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"adapters{'.quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"_meta": meta, **results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
