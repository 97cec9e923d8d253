"""minitune against transformers on the same checkpoint, the same batches and the same optimizer.

For each model (all-MiniLM-L6-v2, and random weights of the xlm-roberta-base / -large and deberta-v3-base /
-large shapes) one Hub-layout
checkpoint with a classification head is written by transformers; both stacks load that very file. The
batches are real HaHackathon (humor) training texts tokenized by all-MiniLM's tokenizer, bucketed
(BucketedBatchSampler, batch 32; 8 for large; `--batching random`: random batches, as the Trainer draws them,
which transformers computes padded and minitune unpads), padded with the model's own pad id; the same few
batches, picked at evenly spaced quantiles of their size, feed both stacks. One training step = forward +
cross-entropy + backward + AdamW step (minitune's build_optimizer for both: lr 2e-5, weight decay 0.01 on
matrices, the fused kernel on CPU and CUDA). fp32 on CPU; bf16 autocast on CUDA.

Stacks:
- transformers: AutoModelForSequenceClassification.from_pretrained(dtype=float32), its default attention
  implementation (recorded in the output; "sdpa" for BERT and XLM-R in transformers 5);
- minitune: minitune.load_model as shipped (its encoders may unpad on their own above a pad share);
- minitune-unpadded: the same with model.set_unpadded(True) (opt-in with --stacks; needs the method).

Each (model, stack) runs in a fresh child process, round-robin over repeats; the script reports step time,
its split into forward / backward / optimizer, peak memory and the ratios minitune / transformers. Sanity: in
every child the loss of the first timed batch in eval mode (no dropout) is computed before training; the two
stacks must agree (printed; |diff| > 1e-4 is flagged).

References: transformers' modeling_bert.py / modeling_xlm_roberta.py / modeling_deberta_v2.py (the reference),
torch.optim.AdamW.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `minitune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

SCRIPT = "vs_transformers"
REFERENCE = "transformers"


# settings per model: batch size, timed steps, warmup steps (large on CPU: a few steps of batch 8 are enough)
MODELS: dict[str, dict[str, int]] = {
    "minilm": {"batch_size": 32, "steps": 8, "warmup": 2},
    "xlmr-base": {"batch_size": 32, "steps": 4, "warmup": 1},
    "xlmr-large": {"batch_size": 8, "steps": 2, "warmup": 1},
    "xlmr-tiny": {"batch_size": 8, "steps": 2, "warmup": 1},  # --quick only
    "deberta-v3-base": {"batch_size": 16, "steps": 3, "warmup": 1},
    "deberta-v3-large": {"batch_size": 8, "steps": 2, "warmup": 1},
    "deberta-tiny": {"batch_size": 8, "steps": 2, "warmup": 1},  # a quick check of the DeBERTa path
}
LOSS_TOLERANCE = 1e-4


def minitune_has_unpadded() -> bool:
    from minitune.models.heads import Classifier

    return hasattr(Classifier, "set_unpadded")


# ----------------------------------------------------------------------------------------------- data


def humor_features(data_dir: Path, max_length: int) -> list[dict]:
    import minitune
    from minitune.data.features import tokenize
    from minitune.data.tasks import load_task

    task = load_task("humor", data_dir)
    return tokenize(task.train, minitune.load_tokenizer(common.MINILM), task.kind, max_length)


def prepare_batches(features: list[dict], pad_id: int, settings: dict[str, int], args, path: Path) -> dict:
    """Humor batches for one model (bucketed, or random as the Trainer draws them): warmup, timed (quantile-picked)
    and the epoch's heaviest."""
    import torch

    from minitune.data.batching import BucketedBatchSampler, RandomBatchSampler, collate, length_of

    lengths = [length_of(f) for f in features]
    if args.batching == "random":
        batches = RandomBatchSampler(lengths, settings["batch_size"], shuffle=True, seed=args.seed).batches(0)
    else:
        batches = BucketedBatchSampler(lengths, settings["batch_size"], seed=args.seed).batches(0)
    slots = lambda b: (max(lengths[i] for i in b) * len(b), sum(lengths[i] for i in b))
    timed = common.pick_batches(batches, slots, settings["steps"])
    make = lambda b: collate([features[i] for i in b], pad_id, "dynamic")
    torch.save(
        {
            "warmup": [make(timed[len(timed) // 2])] * settings["warmup"],
            "timed": [make(b) for b in timed],
            "worst": make(max(batches, key=slots)) if args.worst else None,
        },
        path,
    )
    real = sum(sum(lengths[i] for i in b) for b in timed)
    padded = sum(slots(b)[0] for b in timed)
    return {"timed_real_tokens": real, "timed_pad_share": 1 - real / padded, "batch_size": settings["batch_size"]}


# ----------------------------------------------------------------------------------------------- child


def load_stack(stack: str, checkpoint: str):
    """(model, forward(batch) -> logits, description) for one stack."""
    import torch

    if stack == REFERENCE:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(checkpoint, dtype=torch.float32)
        forward = lambda b: (
            model(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b.get("token_type_ids")
            ).logits
        )
        return model, forward, {"class": type(model).__name__, "attn_implementation": model.config._attn_implementation}
    import minitune

    model = minitune.load_model(checkpoint)
    if stack == "minitune-unpadded":
        model.set_unpadded(True)
    forward = lambda b: model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
    return (
        model,
        forward,
        {"class": type(model).__name__, "unpadded": "forced on" if stack == "minitune-unpadded" else "default"},
    )


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from minitune.train.amp import autocast_context
    from minitune.train.loop import sparse_embedding_grads, zero_grads
    from minitune.train.optim import build_optimizer

    device, precision = spec["device"], spec["precision"]
    model, forward, described = load_stack(spec["stack"], spec["checkpoint"])
    model.to(device)
    optimizer = build_optimizer(model, lr=2e-5, weight_decay=0.01)
    # minitune's loop keeps the word-embedding gradient as a buffer filled by sparse rows on CPU; the
    # transformers stack keeps torch's dense embedding backward, as the Trainer runs it.
    own = spec["stack"] != "transformers" and device == "cpu"
    kept = sparse_embedding_grads(model) if own else []
    data = torch.load(spec["batches_file"])
    to_device = lambda b: {k: v.to(device) for k, v in b.items()}

    model.eval()
    with torch.no_grad(), autocast_context(precision, device):
        first = to_device(data["timed"][0])
        first_loss = float(F.cross_entropy(forward(first).float(), first["labels"]))
    model.train()
    phases: list[tuple[float, float, float]] = []

    def step(batch: dict) -> int:
        t0 = time.perf_counter()
        batch = to_device(batch)
        with autocast_context(precision, device):
            logits = forward(batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        common.sync(device)
        t1 = time.perf_counter()
        loss.backward()
        common.sync(device)
        t2 = time.perf_counter()
        optimizer.step()
        zero_grads(optimizer, kept)
        common.sync(device)
        phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return int(batch["attention_mask"].sum())

    result = common.measure_training(step, data["warmup"], data["timed"], data["worst"], device)
    timed = phases[len(data["warmup"]) : len(data["warmup"]) + len(data["timed"])]
    for i, name in enumerate(("forward_s", "backward_s", "optimizer_s")):
        result[name] = sum(p[i] for p in timed) / len(timed)
    params = sum(p.numel() for p in model.parameters())
    return {**result, **described, "first_loss": first_loss, "parameters": params}


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(p)
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(MODELS),
        help="default: minilm xlmr-base (quick: minilm xlmr-tiny); add xlmr-large where memory allows",
    )
    p.add_argument(
        "--stacks",
        nargs="+",
        default=[REFERENCE, "minitune"],
        choices=[REFERENCE, "minitune", "minitune-unpadded"],
        help="transformers is always run",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per child (default: per model)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per batch (default: per model)")
    p.add_argument(
        "--no-worst",
        dest="worst",
        action="store_false",
        help="skip the epoch's heaviest batch (peak memory then covers the timed batches only)",
    )
    p.add_argument("--precision", default=None, help="fp32 (default on cpu) or bf16 (default on cuda)")
    p.add_argument(
        "--batching",
        choices=["bucketed", "random"],
        default="bucketed",
        help="bucketed humor batches (equal work for both stacks), or random ones as the Trainer draws "
        "them (transformers computes their padding; minitune unpads them above 15%% padding)",
    )
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=common.REPO.parent / "shared" / "data")
    args = p.parse_args(argv)
    if args.child is None:
        common.resolve_common(args, SCRIPT)
        args.models = args.models or (["minilm", "xlmr-tiny"] if args.quick else ["minilm", "xlmr-base"])
        if args.quick:
            args.worst = False
    return args


def settings_for(name: str, args) -> dict[str, int]:
    s = dict(MODELS[name])
    if args.quick:
        s.update(batch_size=8, steps=2, warmup=1)
    if args.steps:
        s["steps"] = args.steps
    if args.batch_size:
        s["batch_size"] = args.batch_size
    return s


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for stack, rs in runs.items():
        row = {
            k: common.median([r[k] for r in rs])
            for k in (
                "mean_step_s",
                "tokens_per_s",
                "forward_s",
                "backward_s",
                "optimizer_s",
                "peak_mem_bytes",
                "peak_typical_mem_bytes",
                "mem_before_train_bytes",
            )
        }
        if "peak_reserved_bytes" in rs[0]:
            row["peak_reserved_bytes"] = common.median([r["peak_reserved_bytes"] for r in rs])
        row["train_mem_delta_bytes"] = row["peak_mem_bytes"] - row["mem_before_train_bytes"]
        row.update(
            first_loss=rs[0]["first_loss"],
            parameters=rs[0]["parameters"],
            repeats=len(rs),
            step_s_repeats=[r["mean_step_s"] for r in rs],
            hwm_reset=all(r["hwm_reset"] for r in rs),
            **{k: rs[0][k] for k in ("class", "attn_implementation", "unpadded") if k in rs[0]},
        )
        rows[stack] = row
    ref = rows[REFERENCE]
    for stack, row in rows.items():
        row["step_time_vs_transformers"] = common.ratio(row["mean_step_s"], ref["mean_step_s"])
        row["step_time_vs_transformers_per_round"] = [
            a["mean_step_s"] / b["mean_step_s"] for a, b in zip(runs[stack], runs[REFERENCE])
        ]
        for key in (
            "forward_s",
            "backward_s",
            "optimizer_s",
            "peak_mem_bytes",
            "train_mem_delta_bytes",
            "peak_reserved_bytes",
        ):
            if key in row:
                row[f"{key}_vs_transformers"] = common.ratio(row[key], ref.get(key))
        row["first_loss_abs_diff_vs_transformers"] = abs(row["first_loss"] - ref["first_loss"])
    return rows


def table_rows(report: dict[str, dict]) -> list[dict[str, str]]:
    out = []
    for model, entry in report.items():
        for stack, r in entry["stacks"].items():
            per_round = r["step_time_vs_transformers_per_round"]
            out.append(
                {
                    "model": model,
                    "stack": stack,
                    "step s": common.fmt(r["mean_step_s"], ".3f"),
                    "x tf": common.fmt(r["step_time_vs_transformers"]),
                    "round range": f"{min(per_round):.2f}-{max(per_round):.2f}",
                    "fwd x tf": common.fmt(r["forward_s_vs_transformers"]),
                    "bwd x tf": common.fmt(r["backward_s_vs_transformers"]),
                    "opt x tf": common.fmt(r["optimizer_s_vs_transformers"]),
                    "peak mem": common.fmt_bytes(r["peak_mem_bytes"]),
                    "mem x tf": common.fmt(r["peak_mem_bytes_vs_transformers"]),
                    "train delta": common.fmt_bytes(r["train_mem_delta_bytes"]),
                    "delta x tf": common.fmt(r["train_mem_delta_bytes_vs_transformers"]),
                    "first loss": f"{r['first_loss']:.6f}",
                }
            )
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        common.child_main(args.child, child)
        return {}
    stacks = [REFERENCE] + [s for s in dict.fromkeys(args.stacks) if s != REFERENCE]
    if "minitune-unpadded" in stacks and not minitune_has_unpadded():
        print("minitune-unpadded: n/a (minitune's classifiers have no set_unpadded yet)")
        stacks.remove("minitune-unpadded")
    meta = common.run_meta(args, stacks=stacks)
    features = humor_features(args.data_dir, args.max_length)
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="minitune-bench-") as tmp:
        work = Path(tmp)
        specs = {}
        for name in args.models:
            ckpt = common.make_checkpoint_in_child(name, work / name, args.threads, work)
            settings = settings_for(name, args)
            batches = work / f"{name}-batches.pt"
            report[name] = {
                "settings": settings,
                **prepare_batches(features, common.pad_id_for(ckpt), settings, args, batches),
            }
            specs[name] = {
                "device": args.device,
                "precision": args.precision,
                "checkpoint": str(ckpt),
                "batches_file": str(batches),
                "seed": args.seed,
            }
            print(f"{name}: checkpoint and batches ready", flush=True)
        runs = {name: {s: [] for s in stacks} for name in args.models}
        for round_no in range(args.repeats):
            for name in args.models:
                for stack in stacks[round_no % len(stacks) :] + stacks[: round_no % len(stacks)]:
                    r = common.run_child(
                        SCRIPT, {**specs[name], "name": f"{name}/{stack}", "stack": stack}, args.threads, work
                    )
                    runs[name][stack].append(r)
                    print(
                        f"  round {round_no + 1}/{args.repeats} {name:10s} {stack:17s} step {r['mean_step_s']:.3f}"
                        f" s, peak {common.fmt_bytes(r['peak_mem_bytes'])}, loss {r['first_loss']:.6f}",
                        flush=True,
                    )
        for name in args.models:
            report[name]["stacks"] = summarise(runs[name])
    print_sanity(report)
    columns = [
        "model",
        "stack",
        "step s",
        "x tf",
        "round range",
        "fwd x tf",
        "bwd x tf",
        "opt x tf",
        "peak mem",
        "mem x tf",
        "train delta",
        "delta x tf",
        "first loss",
    ]
    print(common.table(table_rows(report), columns))
    path = common.write_json(args.out, {**report, "_meta": dict.fromkeys(report, meta)}, merge=True)
    print(f"wrote {path}")
    return report


def print_sanity(report: dict[str, dict]) -> None:
    for model, entry in report.items():
        for stack, r in entry["stacks"].items():
            if stack == REFERENCE:
                continue
            diff = r["first_loss_abs_diff_vs_transformers"]
            flag = "ok" if diff <= LOSS_TOLERANCE else "MISMATCH"
            print(
                f"sanity {model}: first-batch loss (eval mode) {stack} {r['first_loss']:.6f} vs transformers "
                f"{entry['stacks'][REFERENCE]['first_loss']:.6f}: |diff| {diff:.2e} {flag}"
            )
        attn = entry["stacks"][REFERENCE].get("attn_implementation")
        print(f"  transformers attention implementation for {model}: {attn}")


if __name__ == "__main__":
    main()
