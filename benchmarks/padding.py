"""How much of each batch is padding under four schemes, and what that costs in training speed and memory.

For each data set (humor, semeval, goemotions, recipe-mpr; recipe-mpr items are 5 (query, option) pairs, all
padded to the item batch's longest pair) with the real all-MiniLM-L6-v2 tokenizer, batch 32, max length 128:

- fixed:    random batches padded to 128;
- dynamic:  the same random batches padded to their longest sequence;
- bucketed: BucketedBatchSampler batches as run.py makes them (sorted within windows of 100 batches, the
            default), padded to their longest; for recipe-mpr also `item_floor_pad_share`, each item padded alone,
            the least padding any batching of whole items can reach;
- unpadded: the random batches again, with `model.set_unpadded(True)` so per-token layers see real tokens
  only: 0% padding by construction. Timed only when minitune's classifier has `set_unpadded` ("n/a" before).
  The three padded schemes call `set_unpadded(False)` where it exists: the encoders otherwise unpad on their
  own above a pad share, and a padded row must measure padded execution.

Pad share and token counts cover the whole first epoch (exact, no model). Training throughput (real tokens/s)
and peak memory come from minitune's `accumulate_gradients` + AdamW step on all-MiniLM-L6-v2 over a few batches
picked at evenly spaced quantiles of their size (benchmarks/common.py: pick_batches), each scheme in its own
child process, repeated round-robin; the epoch's heaviest batch runs last, untimed, to read the memory a full
epoch needs. The DESIGN.md anchors (fixed 77-85%, random dynamic 42-54%, bucketed 2-3% on hahackathon and
goemotions) are what the pad shares should reproduce.

References: length bucketing as in fairseq's and AllenNLP's bucket iterators; unpadding as in FlashAttention's
variable-length interface (Dao et al., 2022) and NVIDIA's BERT "unpad" training (per-token layers on real tokens).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` and `minitune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

DATASETS = ("humor", "semeval", "goemotions", "recipe-mpr")
SCHEMES = ("fixed", "dynamic", "bucketed", "unpadded")
SCRIPT = "padding"


# ----------------------------------------------------------------------------------------------- data


def load_features(task_name: str, data_dir: Path, max_length: int) -> tuple[list[dict], str, int]:
    """Tokenized training examples of a task with the all-MiniLM tokenizer: (features, kind, num_labels)."""
    import minitune
    from minitune.data.features import tokenize
    from minitune.data.tasks import load_task

    task = load_task(task_name, data_dir)
    tokenizer = minitune.load_tokenizer(common.MINILM)
    return tokenize(task.train, tokenizer, task.kind, max_length), task.kind, task.num_labels


def sequence_lengths(feature: dict) -> list[int]:
    """Lengths of the sequences an example contributes: one, or one per choice."""
    ids = feature["input_ids"]
    return [len(c) for c in ids] if ids and isinstance(ids[0], list) else [len(ids)]


def batch_counts(lengths: list[list[int]], batch: list[int], scheme: str, max_length: int) -> tuple[int, int]:
    """(real tokens, token slots) of one batch under a scheme."""
    seqs = [n for i in batch for n in lengths[i]]
    real = sum(seqs)
    if scheme == "unpadded":
        return real, real
    width = max_length if scheme == "fixed" else max(seqs)
    return real, width * len(seqs)


def epoch_batches(features: list[dict], scheme: str, batch_size: int, seed: int) -> list[list[int]]:
    from minitune.data.batching import BucketedBatchSampler, RandomBatchSampler, length_of

    lengths = [length_of(f) for f in features]
    if scheme == "bucketed":
        return BucketedBatchSampler(lengths, batch_size, shuffle=True, seed=seed).batches(0)
    return RandomBatchSampler(lengths, batch_size, shuffle=True, seed=seed).batches(0)


def epoch_stats(lengths: list[list[int]], batches: list[list[int]], scheme: str, max_length: int) -> dict:
    real = slots = 0
    for batch in batches:
        r, s = batch_counts(lengths, batch, scheme, max_length)
        real, slots = real + r, slots + s
    stats = {"pad_share": 1.0 - real / slots, "real_tokens": real, "slots": slots, "batches": len(batches)}
    if scheme == "bucketed" and any(len(seqs) > 1 for seqs in lengths):
        stats["item_floor_pad_share"] = item_floor_pad_share(lengths)
    return stats


def item_floor_pad_share(lengths: list[list[int]]) -> float:
    """Multiple choice: the pad share with every item padded alone, to its own longest choice.

    A padded block holds whole items (the choices of an item are scored against each other), so no batching
    or sorting of items can go below this; only unpadded execution does.
    """
    real = sum(sum(seqs) for seqs in lengths)
    return 1.0 - real / sum(max(seqs) * len(seqs) for seqs in lengths)


def check_against_padding_stats(features, batches, scheme: str, max_length: int, stats: dict) -> None:
    """Single-text data sets: our counts must equal minitune's own padding_stats (a cross-check of both)."""
    from minitune.data.batching import length_of, padding_stats

    if scheme == "unpadded" or isinstance(features[0]["input_ids"][0], list):
        return
    theirs = padding_stats(
        [length_of(f) for f in features], batches, "fixed" if scheme == "fixed" else "dynamic", max_length
    )
    if (theirs["real"], theirs["slots"]) != (stats["real_tokens"], stats["slots"]):
        raise AssertionError(f"{scheme}: padding_stats gives {theirs}, this script {stats}")


def prepare(features: list[dict], pad_id: int, args, workdir: Path, name: str) -> dict[str, dict]:
    """Epoch statistics of every scheme, and the collated warmup / timed / heaviest batches saved per scheme."""
    import torch

    from minitune.data.batching import collate

    lengths = [sequence_lengths(f) for f in features]
    out: dict[str, dict] = {}
    for scheme in SCHEMES:
        batches = epoch_batches(features, scheme, args.batch_size, args.seed)
        stats = epoch_stats(lengths, batches, scheme, args.max_length)
        check_against_padding_stats(features, batches, scheme, args.max_length, stats)
        # fixed, dynamic and unpadded share the random batches, hence one selection (by dynamic slots) for all.
        family = "bucketed" if scheme == "bucketed" else "dynamic"
        size = lambda b, fam=family: batch_counts(lengths, b, fam, args.max_length)[::-1]
        timed = common.pick_batches(batches, size, args.steps)
        worst = max(batches, key=lambda b: batch_counts(lengths, b, scheme, args.max_length)[::-1])
        padding = "fixed" if scheme == "fixed" else "dynamic"
        make = lambda b, pad=padding: collate([features[i] for i in b], pad_id, pad, args.max_length)
        path = workdir / f"{name}-{scheme}.pt"
        torch.save(
            {
                "warmup": [make(timed[len(timed) // 2])] * args.warmup,
                "timed": [make(b) for b in timed],
                "worst": make(worst) if args.worst else None,
            },
            path,
        )
        out[scheme] = {"stats": stats, "batches_file": str(path)}
    return out


# ----------------------------------------------------------------------------------------------- child


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One scheme on one data set: train minilm on the saved batches, report speed and peak memory."""
    import torch

    import minitune
    from minitune.train.amp import DynamicLossScaler
    from minitune.train.embedding_grads import sparse_embedding_grads, zero_grads
    from minitune.train.gradients import accumulate_gradients
    from minitune.train.losses import build_loss
    from minitune.train.optim import build_optimizer

    device = torch.device(spec["device"])
    model = minitune.load_model(common.MINILM, num_labels=spec["num_labels"], head=spec["head"]).to(device)
    # Force the execution each scheme names: the encoders may otherwise unpad on their own above some pad share.
    unpadded = spec["scheme"] == "unpadded"
    if hasattr(model, "set_unpadded"):
        model.set_unpadded(unpadded)
    elif unpadded:
        return {"supported": False}
    model.train()
    loss_kind = "single_label" if spec["head"] == "multiple_choice" else spec["kind"]
    loss_fn = build_loss("", loss_kind, spec["num_labels"]).to(device)
    optimizer = build_optimizer(model, lr=2e-5, weight_decay=0.01)
    kept = sparse_embedding_grads(model) if device.type == "cpu" else []  # as minitune's loop does
    scaler = DynamicLossScaler(enabled=False)
    data = torch.load(spec["batches_file"])

    def step(batch: dict) -> int:
        _, tokens = accumulate_gradients(model, loss_fn, [batch], spec["precision"], device, scaler)
        optimizer.step()
        zero_grads(optimizer, kept)
        return tokens

    return {
        "supported": True,
        "execution": "unpadded"
        if unpadded
        else "padded"
        if hasattr(model, "set_unpadded")
        else "padded (model has no set_unpadded)",
        **common.measure_training(step, data["warmup"], data["timed"], data["worst"], spec["device"]),
    }


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(p)
    p.add_argument(
        "--datasets", nargs="+", default=None, choices=DATASETS, help="default: all four (quick: humor and recipe-mpr)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="examples per batch (default 32, quick 8)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="timed steps per child (default 4, quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument(
        "--no-worst",
        dest="worst",
        action="store_false",
        help="skip the epoch's heaviest batch (peak memory then covers the timed batches only)",
    )
    p.add_argument("--precision", default=None, help="fp32 (default on cpu) or bf16 (default on cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=common.REPO.parent / "shared" / "data")
    args = p.parse_args(argv)
    if args.child is None:
        common.resolve_common(args, SCRIPT)
        args.batch_size = args.batch_size or (8 if args.quick else 32)
        args.steps = args.steps or (1 if args.quick else 4)
        args.datasets = args.datasets or (["humor", "recipe-mpr"] if args.quick else list(DATASETS))
        if args.quick:
            args.worst = False
    return args


def summarise(stats: dict, runs: list[dict]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("supported")]
    row: dict[str, Any] = {**stats, "supported": bool(ok)}
    if not ok:
        row.update(tokens_per_s=None, peak_mem_bytes=None)
        return row
    row["tokens_per_s"] = common.median([r["tokens_per_s"] for r in ok])
    row["mean_step_s"] = common.median([r["mean_step_s"] for r in ok])
    row["est_epoch_s"] = stats["real_tokens"] / row["tokens_per_s"]
    for key in ("peak_mem_bytes", "peak_reserved_bytes", "peak_typical_mem_bytes", "mem_before_train_bytes"):
        if key in ok[0]:
            row[key] = common.median([r[key] for r in ok])
    row["tokens_per_s_repeats"] = [r["tokens_per_s"] for r in ok]
    row["timed_tokens"] = ok[0]["timed_tokens"]
    row["hwm_reset"] = all(r["hwm_reset"] for r in ok)
    row["execution"] = ok[0]["execution"]
    return row


def run_dataset_round(
    name: str, prep: dict, spec_base: dict, args, workdir: Path, round_no: int, results: dict[str, list]
) -> None:
    order = SCHEMES[round_no % len(SCHEMES) :] + SCHEMES[: round_no % len(SCHEMES)]  # rotate: no fixed position
    for scheme in order:
        if results[scheme] and not results[scheme][0].get("supported"):
            continue  # unpadded execution not available: one probe is enough
        spec = {**spec_base, "name": f"{name}/{scheme}", "scheme": scheme, "batches_file": prep[scheme]["batches_file"]}
        results[scheme].append(common.run_child(SCRIPT, spec, args.threads, workdir))
        r = results[scheme][-1]
        shown = (
            f"{r['tokens_per_s']:.0f} tok/s, peak {common.fmt_bytes(r['peak_mem_bytes'])}"
            if r.get("supported")
            else "n/a (no set_unpadded)"
        )
        print(f"  round {round_no + 1}/{args.repeats} {name:10s} {scheme:8s} {shown}", flush=True)


def add_ratios(rows: dict[str, dict], results: dict[str, list]) -> None:
    base = rows["fixed"]
    for scheme, row in rows.items():
        row["speedup_vs_fixed"] = common.ratio(row.get("tokens_per_s"), base.get("tokens_per_s"))
        row["mem_vs_fixed"] = common.ratio(row.get("peak_mem_bytes"), base.get("peak_mem_bytes"))
        paired = [
            a["tokens_per_s"] / b["tokens_per_s"]
            for a, b in zip(results[scheme], results["fixed"])
            if a.get("supported")
        ]
        row["speedup_vs_fixed_per_round"] = paired


def table_rows(report: dict[str, dict]) -> list[dict[str, str]]:
    rows = []
    for name, schemes in report.items():
        for scheme, r in schemes.items():
            rows.append(
                {
                    "data set": name,
                    "scheme": scheme,
                    "pad share": f"{100 * r['pad_share']:.1f}%",
                    "slots": f"{r['slots']:,}",
                    "real tokens": f"{r['real_tokens']:,}",
                    "tokens/s": common.fmt(r.get("tokens_per_s"), ",.0f"),
                    "x fixed": common.fmt(r.get("speedup_vs_fixed")),
                    "round range": _range(r.get("speedup_vs_fixed_per_round")),
                    "peak mem": common.fmt_bytes(r.get("peak_mem_bytes")),
                    "mem x fixed": common.fmt(r.get("mem_vs_fixed")),
                    "epoch est.": common.fmt(r.get("est_epoch_s"), ",.0f") + (" s" if r.get("est_epoch_s") else ""),
                }
            )
    return rows


def _range(values: list[float] | None) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "n/a"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        common.child_main(args.child, child)
        return {}
    from minitune.data.tasks import MULTIPLE_CHOICE

    meta = common.run_meta(args)
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="minitune-bench-") as tmp:
        workdir = Path(tmp)
        preps, bases = {}, {}
        for name in args.datasets:
            features, kind, num_labels = load_features(name, args.data_dir, args.max_length)
            preps[name] = prepare(features, 0, args, workdir, name)
            bases[name] = {
                "device": args.device,
                "precision": args.precision,
                "kind": kind,
                "num_labels": num_labels,
                "head": "multiple_choice" if kind == MULTIPLE_CHOICE else "sequence",
                "seed": args.seed,
            }
            print(f"{name}: {len(features)} examples tokenized", flush=True)
        results = {name: {s: [] for s in SCHEMES} for name in args.datasets}
        for round_no in range(args.repeats):
            for name in args.datasets:
                run_dataset_round(name, preps[name], bases[name], args, workdir, round_no, results[name])
        for name in args.datasets:
            rows = {s: summarise(preps[name][s]["stats"], results[name][s]) for s in SCHEMES}
            add_ratios(rows, results[name])
            report[name] = rows
    columns = [
        "data set",
        "scheme",
        "pad share",
        "slots",
        "real tokens",
        "tokens/s",
        "x fixed",
        "round range",
        "peak mem",
        "mem x fixed",
        "epoch est.",
    ]
    print(common.table(table_rows(report), columns))
    for name, rows in report.items():
        if "item_floor_pad_share" in rows["bucketed"]:
            print(
                f"{name}: padding each item alone to its longest choice leaves "
                f"{100 * rows['bucketed']['item_floor_pad_share']:.1f}% padding, the floor for any padded batching"
            )
    path = common.write_json(args.out, {**report, "_meta": dict.fromkeys(report, meta)}, merge=True)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
