"""Peak memory of full fine-tuning of the xlm-roberta-large shape, per training configuration.

One optimizer step on a batch of 32 sequences of --seq-len real tokens (HaHackathon training texts tokenized
by all-MiniLM's tokenizer, packed into full rows so no padding and no unpadding is involved), on random weights
of the xlm-roberta-large shape (24 layers, hidden 1024, 16 heads, intermediate 4096, vocab 250002; 560M
parameters) loaded by minitune.load_model. Configurations (`--configs`, table CONFIGS):

- fp32:           fp32 weights and activations, batch 32 in one pass;
- bf16:           bf16 autocast (weights, gradients and AdamW state stay fp32);
- fp32-ckpt:      gradient checkpointing (`gradient_checkpointing = True` on every module that has it);
- fp32-accum4x8:  the same 32 examples as 4 micro-batches of 8 (minitune's accumulate_gradients);
- bf16-ckpt:      both savings together (not in the default list);
- fp32-fused-adamw / fp32-forloop-adamw: fp32 with torch's fused / single-tensor AdamW kernel instead of
  build_optimizer's choice (foreach on CPU), same parameter groups: the optimizer step's own temporaries.

Each configuration runs in its own child process. AdamW state is created first by a step with zero gradients
(the peak of a real first step lacks the optimizer state that every later step carries); then the peak-memory
window is reset and one real training step is measured; the peak is also read after the backward pass, before
the optimizer step ("fwd+bwd peak"), to show which phase sets it. Beside the measurement: the usual full fine-tuning
estimate of 16 bytes per parameter with AdamW (weights 4 + gradients 4 + two moments 8), activations excluded.
On CPU the reading is the child's ru_maxrss, minus the RSS of the bare interpreter with torch and minitune
imported for the "over baseline" column; on GPU torch.cuda.max_memory_allocated and max_memory_reserved.

Full fine-tuning vs LoRA vs QLoRA on decoder shapes (Qwen2.5-0.5B, Llama-3.2-1B/3B) is measured by
benchmarks/adapters.py, with the same child-process method.

References: Rajbhandari et al., 2020 (ZeRO), whose accounting of Adam training state per parameter this follows
(their mixed-precision 2 + 2 + 12 bytes; plain fp32 here: 4 + 4 + 8, also 16); Chen et al., 2016 (gradient
checkpointing) and torch.utils.checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `minitune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

SCRIPT = "memory"
BYTES_PER_PARAM_ADAMW = 16  # fp32 weights 4 + gradients 4 + Adam first and second moments 8


@dataclass(frozen=True)
class MemConfig:
    description: str
    precision: str = "fp32"
    checkpointing: bool = False
    micro_batch: int = 32
    accum_steps: int = 1
    optimizer: str = "minitune"  # minitune's build_optimizer, or torch AdamW "fused" / "forloop" on its groups


CONFIGS: dict[str, MemConfig] = {
    "fp32": MemConfig("fp32, batch 32 in one pass"),
    "bf16": MemConfig("bf16 autocast, batch 32 in one pass", precision="bf16"),
    "fp32-ckpt": MemConfig("fp32 + gradient checkpointing, batch 32", checkpointing=True),
    "fp32-accum4x8": MemConfig("fp32, batch 32 as 4 micro-batches of 8", micro_batch=8, accum_steps=4),
    "bf16-ckpt": MemConfig("bf16 autocast + gradient checkpointing, batch 32", precision="bf16", checkpointing=True),
    "fp32-fused-adamw": MemConfig("fp32, batch 32, torch AdamW(fused=True) on the same groups", optimizer="fused"),
    "fp32-forloop-adamw": MemConfig(
        "fp32, batch 32, torch AdamW(foreach=False) on the same groups", optimizer="forloop"
    ),
}
DEFAULT_CONFIGS = ["fp32", "bf16", "fp32-ckpt", "fp32-accum4x8", "fp32-fused-adamw"]


def make_optimizer(model, kind: str):
    """AdamW with minitune's groups (lr 2e-5, decay 0.01 on matrices); only the kernel differs between kinds."""
    import torch

    from minitune.train.optim import build_optimizer, param_groups

    if kind == "minitune":
        return build_optimizer(model, lr=2e-5, weight_decay=0.01)
    kernel = {"fused": {"fused": True}, "forloop": {"foreach": False}}[kind]
    return torch.optim.AdamW(param_groups(model, 2e-5, 0.01), lr=2e-5, weight_decay=0.01, **kernel)


# ----------------------------------------------------------------------------------------------- data


def packed_batch(data_dir: Path, rows: int, seq_len: int, path: Path) -> None:
    """`rows` full sequences of humor text tokens, [CLS] ... [SEP], no padding; saved for the children."""
    import torch

    import minitune
    from minitune.data.tasks import load_task

    tokenizer = minitune.load_tokenizer(common.MINILM)
    task = load_task("humor", data_dir)
    body = seq_len - 2
    stream: list[int] = []
    for example in task.train:
        stream += tokenizer.encode(example.text)[1:-1]  # drop the per-text [CLS]/[SEP]
        if len(stream) >= rows * body:
            break
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    ids = [[cls] + stream[i * body : (i + 1) * body] + [sep] for i in range(rows)]
    labels = [ex.label for ex in task.train[:rows]]
    torch.save(
        {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.ones(rows, seq_len, dtype=torch.long),
            "labels": torch.tensor(labels),
        },
        path,
    )


# ----------------------------------------------------------------------------------------------- child


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    import minitune
    from minitune.train.amp import DynamicLossScaler
    from minitune.train.embedding_grads import sparse_embedding_grads, zero_grads
    from minitune.train.gradients import accumulate_gradients
    from minitune.train.losses import build_loss

    config, device = MemConfig(**spec["config"]), spec["device"]
    baseline = common.current_memory(device)  # interpreter + torch + minitune, no model yet
    model = minitune.load_model(spec["checkpoint"]).to(device)
    if config.checkpointing:
        for module in model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True
    model.train()
    optimizer = make_optimizer(model, config.optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    kept = sparse_embedding_grads(model) if device == "cpu" else []  # as minitune's loop does
    for p in params:  # create AdamW's state as every step after the first has it
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
    optimizer.step()
    zero_grads(optimizer, kept)
    batch = torch.load(spec["batch_file"])
    micro = [
        {k: v[i : i + config.micro_batch] for k, v in batch.items()}
        for i in range(0, len(batch["labels"]), config.micro_batch)
    ]
    loss_fn = build_loss("", "single_label", 2).to(device)
    scaler = DynamicLossScaler(enabled=False)
    before = common.current_memory(device)
    hwm_reset = common.reset_peak(device)
    t0 = time.perf_counter()
    loss, tokens = accumulate_gradients(model, loss_fn, micro, config.precision, torch.device(device), scaler)
    fwd_bwd = {k.replace("peak_", "peak_fwd_bwd_"): v for k, v in common.peak_memory(device).items()}
    optimizer.step()
    zero_grads(optimizer, kept)
    common.sync(device)
    seconds = time.perf_counter() - t0
    return {
        **common.peak_memory(device),
        **fwd_bwd,
        "baseline_bytes": baseline,
        "mem_before_step_bytes": before,
        "hwm_reset": hwm_reset,
        "step_s": seconds,
        "loss": loss,
        "tokens": tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params),
    }


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(p)
    p.add_argument(
        "--configs", nargs="+", default=None, choices=list(CONFIGS), help=f"default: {' '.join(DEFAULT_CONFIGS)}"
    )
    p.add_argument(
        "--shape",
        default=None,
        choices=list(common.XLMR_SHAPES),
        help="model shape (default xlmr-large; quick: xlmr-tiny)",
    )
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: 128 cuda, 32 cpu)")
    p.add_argument("--batch", type=int, default=32, help="sequences per optimizer step")
    p.add_argument(
        "--min-free-factor",
        type=float,
        default=1.3,
        help="skip a config when free memory < factor x the 16 B/param estimate (shared machines)",
    )
    p.add_argument("--data-dir", type=Path, default=common.REPO.parent / "shared" / "data")
    args = p.parse_args(argv)
    if args.child is None:
        repeats_given = args.repeats is not None
        common.resolve_common(args, SCRIPT)
        if not repeats_given:
            args.repeats = 1  # memory readings repeat to the allocator's noise; time is not the figure here
        args.configs = args.configs or list(DEFAULT_CONFIGS)
        args.shape = args.shape or ("xlmr-tiny" if args.quick else "xlmr-large")
        args.seq_len = args.seq_len or (16 if args.quick else 128 if args.device.startswith("cuda") else 32)
    return args


def shape_parameters(shape: str, num_labels: int = 2) -> int:
    """Parameter count of an XLM-R sequence classifier of this shape (embeddings, 514 positions, 1 type, head)."""
    s = common.XLMR_SHAPES[shape]
    h, i, n = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    embeddings = (s["vocab_size"] + 514 + 1) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
    return embeddings + n * layer + (h * h + h) + (h * num_labels + num_labels)


def has_room(estimate: int, factor: float, device: str) -> bool:
    if device.startswith("cuda"):
        return True
    free = common._meminfo("MemAvailable")
    return free is None or free >= factor * estimate


def summarise(name: str, runs: list[dict], estimate: int) -> dict[str, Any]:
    row: dict[str, Any] = {"config": asdict(CONFIGS[name])}
    if not runs:
        row["skipped"] = "not enough free memory"
        return row
    for key in (
        "peak_mem_bytes",
        "peak_reserved_bytes",
        "peak_fwd_bwd_mem_bytes",
        "peak_fwd_bwd_reserved_bytes",
        "baseline_bytes",
        "mem_before_step_bytes",
        "step_s",
    ):
        if key in runs[0]:
            row[key] = common.median([r[key] for r in runs])
    row["over_baseline_bytes"] = row["peak_mem_bytes"] - row["baseline_bytes"]
    row["estimate_16B_per_param_bytes"] = estimate
    row["over_baseline_vs_estimate"] = row["over_baseline_bytes"] / estimate
    row.update(
        parameters=runs[0]["parameters"],
        trainable=runs[0]["trainable"],
        loss=runs[0]["loss"],
        hwm_reset=all(r["hwm_reset"] for r in runs),
        repeats=len(runs),
    )
    return row


def table_rows(rows: dict[str, dict], baseline_name: str) -> list[dict[str, str]]:
    base = rows.get(baseline_name, {}).get("peak_mem_bytes")
    out = []
    for name, r in rows.items():
        if "skipped" in r:
            out.append({"config": name, "peak": f"skipped: {r['skipped']}"})
            continue
        out.append(
            {
                "config": name,
                "what": r["config"]["description"],
                "peak": common.fmt_bytes(r["peak_mem_bytes"]),
                "reserved": common.fmt_bytes(r.get("peak_reserved_bytes")),
                "fwd+bwd peak": common.fmt_bytes(r.get("peak_fwd_bwd_mem_bytes")),
                "over baseline": common.fmt_bytes(r["over_baseline_bytes"]),
                "16 B/param": common.fmt_bytes(r["estimate_16B_per_param_bytes"]),
                "x estimate": common.fmt(r["over_baseline_vs_estimate"]),
                f"x {baseline_name}": common.fmt(common.ratio(r["peak_mem_bytes"], base)),
                "step s": common.fmt(r["step_s"], ".1f"),
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        common.child_main(args.child, child)
        return {}
    estimate = BYTES_PER_PARAM_ADAMW * shape_parameters(args.shape)
    meta = common.run_meta(args)
    runs: dict[str, list[dict]] = {name: [] for name in args.configs}
    with tempfile.TemporaryDirectory(prefix="minitune-bench-") as tmp:
        work = Path(tmp)
        packed_batch(args.data_dir, args.batch, args.seq_len, work / "batch.pt")
        ckpt = common.make_checkpoint_in_child(args.shape, work / args.shape, args.threads, work)
        for round_no in range(args.repeats):
            for name in args.configs:
                if not has_room(estimate, args.min_free_factor, args.device):
                    print(
                        f"  {name}: skipped, MemAvailable below {args.min_free_factor} x {common.fmt_bytes(estimate)}",
                        flush=True,
                    )
                    continue
                spec = {
                    "name": name,
                    "config": asdict(CONFIGS[name]),
                    "device": args.device,
                    "checkpoint": str(ckpt),
                    "batch_file": str(work / "batch.pt"),
                }
                r = common.run_child(SCRIPT, spec, args.threads, work)
                runs[name].append(r)
                print(
                    f"  round {round_no + 1}/{args.repeats} {name:14s} peak {common.fmt_bytes(r['peak_mem_bytes'])}"
                    f" step {r['step_s']:.1f} s",
                    flush=True,
                )
    rows = {name: summarise(name, runs[name], estimate) for name in args.configs}
    report = {
        "shape": args.shape,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "parameters": shape_parameters(args.shape),
        "configs": rows,
        "_meta": meta,
    }
    print(
        f"{args.shape}: {report['parameters']:,} parameters; 16 B/param AdamW estimate "
        f"{common.fmt_bytes(estimate)}; batch {args.batch} x {args.seq_len} tokens"
    )
    columns = [
        "config",
        "what",
        "peak",
        "reserved",
        "fwd+bwd peak",
        "over baseline",
        "16 B/param",
        "x estimate",
        f"x {args.configs[0]}",
        "step s",
    ]
    print(common.table(table_rows(rows, args.configs[0]), columns))
    path = common.write_json(args.out, report)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
