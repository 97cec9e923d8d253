#!/usr/bin/env python
"""Full-size runs, two at a time side by side (one thread each): minitune's precisions and batchings, and the
Trainer at its best setting (group_by_length, bf16), on whole training and dev sets, over seeds.

    python benchmarks/fullsize.py --tasks humor semeval --seeds 1 2 3 \
        --pairs mt_fp32_bucketed:mt_bf16_dynamic mt_default:trainer_gbl_bf16
    python benchmarks/fullsize.py --tasks goemotions --train-samples 6000 --eval-samples 1000 --seeds 1 2 3 --lr 1e-4 \
        --pairs mt_bf16_bucketed:mt_fp32_bucketed --pooling model --out benchmarks/results/fullsize_goemotions.json
    python benchmarks/fullsize.py --summarize

Every run has the same schedule: 2 epochs, batch 32, lr 5e-5, no accumulation, minitune's [CLS] pooler (like the
Trainer's BertForSequenceClassification; `--pooling model` for the checkpoint's own), the task's other defaults.
The two runs of a pair start together and share the 2-core machine, so their wall-time ratio is fair; ratios
between runs of different pairs use CPU seconds (os.wait4), which sharing inflates less. Each run's phases come
from benchmarks/phases.py, as in e2e.py.
Results accumulate in benchmarks/results/fullsize.json, one record per (task, seed, arm), replaced when rerun.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import PYTHON, STACKS, phase_split, pick, run_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fullsize.json"
SCHEDULE = ["--epochs", "2", "--batch-size", "32", "--lr", "5e-5", "--grad-accum", "1"]
# arm -> (stack, flags); mt_default gives no precision or padding flag: what minitune picks by itself.
ARMS = {
    "mt_default": ("minitune", []),
    "mt_bf16_bucketed": ("minitune", ["--precision", "bf16", "--padding", "bucketed"]),
    "mt_fp32_bucketed": ("minitune", ["--precision", "fp32", "--padding", "bucketed"]),
    "mt_bf16_dynamic": ("minitune", ["--precision", "bf16", "--padding", "dynamic"]),
    "mt_fp32_dynamic": ("minitune", ["--precision", "fp32", "--padding", "dynamic"]),
    "trainer_gbl_bf16": ("hf_trainer_gbl", ["--precision", "bf16"]),
    "trainer_gbl_fp32": ("hf_trainer_gbl", ["--precision", "fp32"]),
}
SCORES = {
    "humor": ("accuracy", "macro_f1"),
    "semeval": ("jaccard", "macro_f1", "tuned.jaccard"),
    "goemotions": ("macro_f1", "micro_f1", "tuned.macro_f1"),
}


def arm_command(args: argparse.Namespace, task: str, seed: int, arm: str, out_dir: Path) -> list[str]:
    stack, flags = ARMS[arm]
    cmd = [PYTHON, *STACKS[stack], "--task", task, "--model", args.model, "--data-dir", str(args.data_dir)]
    schedule = [*SCHEDULE[:5], str(args.lr), *SCHEDULE[6:]] if args.lr else SCHEDULE
    cmd += ["--output-dir", str(out_dir), "--device", "cpu", "--seed", str(seed), *schedule, *flags]
    if args.train_samples:
        cmd += ["--max-train-samples", str(args.train_samples)]
    if args.eval_samples:
        cmd += ["--max-eval-samples", str(args.eval_samples)]
    if stack == "minitune":
        cmd += [] if args.pooling == "model" else ["--pooling", args.pooling]
        cmd += ["--no-checkpoint"] if args.no_checkpoint else []
    return cmd


def run_arm(args, task: str, seed: int, arm: str, partner: str, sink: dict) -> None:
    out_dir = args.work_dir / f"{task}-s{seed}-{arm}"
    run_dir = out_dir / "run"  # the run owns its folder; the log sits beside it
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = arm_command(args, task, seed, arm, run_dir)
    try:
        record = run_process(cmd, out_dir, threads=1, run_dir=run_dir)
    except SystemExit as err:  # a failed run is recorded, not fatal to its partner
        sink[arm] = {"error": str(err)[-1500:]}
        return
    res = record.pop("results")
    record["dev"] = {k: pick(res["dev"], k) for k in SCORES[task]}
    record["train"] = {k: v for k, v in res["train"].items() if k != "folds"}
    record["config"] = {k: res.get("config", {}).get(k) for k in ("precision", "padding", "batch_size", "lr")}
    record["precision_choice"] = res.get("precision")
    record["phases_s"] = phase_split(record, run_dir)
    record["partner"], record["finished_at"] = partner, time.strftime("%Y-%m-%d %H:%M:%S")
    sink[arm] = record


def run_pair(args, task: str, seed: int, pair: list[str]) -> dict:
    sink: dict = {}
    threads = [
        threading.Thread(target=run_arm, args=(args, task, seed, arm, pair[1 - i] if len(pair) == 2 else "", sink))
        for i, arm in enumerate(pair)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sink


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"runs": {}}


def save(path: Path, doc: dict) -> None:
    doc["summary"] = summarize(doc["runs"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def summarize(runs: dict) -> dict:
    """Per task and arm: mean and sample std of each score and of wall / CPU seconds; per pair of arms that ran
    side by side, the median wall ratio; per arm against mt_fp32_bucketed and trainer_gbl_bf16, paired
    differences over the seeds both have."""
    summary: dict = {}
    for task, seeds in runs.items():
        arms: dict = {}
        for by_arm in seeds.values():
            for arm, r in by_arm.items():
                if "error" not in r:
                    arms.setdefault(arm, {})[r["seed"]] = r
        entry = {}
        for arm, by_seed in arms.items():
            recs = list(by_seed.values())
            stats = {"seeds": sorted(by_seed)}
            for key in SCORES[task]:
                vals = [r["dev"][key] for r in recs if r["dev"].get(key) is not None]
                stats[key] = _mean_std(vals)
            stats["wall_s"] = _mean_std([r["wall_to_results_s"] for r in recs])
            stats["cpu_s"] = _mean_std([r["cpu_s"] for r in recs])
            stats["peak_rss_mb"] = _mean_std([r["peak_rss_mb"] for r in recs])
            stats["phases_wall_s"] = _mean_phases([r["phases_s"].get("wall") for r in recs])
            stats["phases_cpu_s"] = _mean_phases([r["phases_s"].get("cpu") for r in recs])
            for ref in ("mt_fp32_bucketed", "mt_bf16_bucketed", "trainer_gbl_bf16"):
                if ref == arm or ref not in arms:
                    continue
                common = sorted(set(by_seed) & set(arms[ref]))
                if not common:
                    continue
                diffs = {
                    key: [by_seed[s]["dev"][key] - arms[ref][s]["dev"][key] for s in common] for key in SCORES[task]
                }
                side = [s for s in common if by_seed[s]["partner"] == ref]
                stats[f"vs_{ref}"] = {
                    "seeds": common,
                    **{f"diff_{k}": _mean_std(v) for k, v in diffs.items()},
                    "cpu_ratio_ref_over_arm": [round(arms[ref][s]["cpu_s"] / by_seed[s]["cpu_s"], 3) for s in common],
                    "wall_ratio_ref_over_arm_side_by_side": [
                        round(arms[ref][s]["wall_to_results_s"] / by_seed[s]["wall_to_results_s"], 3) for s in side
                    ],
                }
            entry[arm] = stats
        summary[task] = entry
    return summary


def _mean_std(vals: list[float]) -> dict | None:
    if not vals:
        return None
    return {
        "mean": round(statistics.fmean(vals), 4),
        "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def _mean_phases(splits: list[dict | None]) -> dict | None:
    splits = [s for s in splits if s]
    if not splits:
        return None
    return {k: round(statistics.fmean(s[k] for s in splits), 1) for k in splits[0]}


def print_summary(summary: dict) -> None:
    for task, arms in summary.items():
        keys = SCORES[task]
        print(f"\n{task}")
        print("| arm | seeds | " + " | ".join(keys) + " | wall (s) | CPU (s) | RSS (MB) |")
        print("|---|---|" + "---|" * len(keys) + "---:|---:|---:|")
        for arm, s in arms.items():
            cells = " | ".join(f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" if s[k] else "-" for k in keys)
            print(
                f"| {arm} | {s['seeds']} | {cells} | {s['wall_s']['mean']:.0f} | {s['cpu_s']['mean']:.0f} "
                f"| {s['peak_rss_mb']['mean']:.0f} |"
            )
        for arm, s in arms.items():
            for ref_key in (k for k in s if k.startswith("vs_")):
                v = s[ref_key]
                diffs = "  ".join(
                    f"{k[5:]} {d['mean']:+.4f}±{d['std']:.4f}" for k, d in v.items() if "diff_" in k and d
                )
                print(
                    f"  {arm} {ref_key}: {diffs}  CPU ratio {v['cpu_ratio_ref_over_arm']}"
                    f"  wall ratio side by side {v['wall_ratio_ref_over_arm_side_by_side']}"
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["humor", "semeval"], choices=list(SCORES))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--pairs", nargs="+", default=["mt_default:trainer_gbl_bf16"], help="ARM:ARM run side by side")
    p.add_argument("--train-samples", type=int, default=0, help="a subset (labelled as such in the results)")
    p.add_argument("--eval-samples", type=int, default=0)
    p.add_argument("--no-checkpoint", action="store_true", help="minitune arms write no resumable checkpoints")
    p.add_argument("--lr", type=float, default=None, help="another peak learning rate than 5e-5, for every arm")
    p.add_argument(
        "--pooling",
        default="cls",
        help="minitune's --pooling: cls, the Trainer's [CLS] pooler head (like for like), or model: the checkpoint's "
        "own (MiniLM: mean), for minitune-only comparisons where the [CLS] head learns too slowly (GoEmotions)",
    )
    p.add_argument("--model", default="minilm")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/minitune-fullsize"))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--summarize", action="store_true", help="only print the summary of --out")
    args = p.parse_args(argv)
    doc = load(args.out)
    if args.summarize:
        save(args.out, doc)
        print_summary(doc["summary"])
        return 0
    for pair_text in args.pairs:
        pair = pair_text.split(":")
        if any(a not in ARMS for a in pair) or not 1 <= len(pair) <= 2:
            p.error(f"--pairs {pair_text}: arms are {', '.join(ARMS)}, one or two joined by ':'")
    for seed in args.seeds:
        for task in args.tasks:
            for pair_text in args.pairs:
                pair = pair_text.split(":")
                print(f"[{time.strftime('%H:%M:%S')}] {task} seed {seed}: {' | '.join(pair)}", flush=True)
                done = run_pair(args, task, seed, pair)
                doc = load(args.out)  # another invocation may have added runs meanwhile
                slot = doc["runs"].setdefault(task, {}).setdefault(str(seed), {})
                for arm, record in done.items():
                    record.update(seed=seed, train_samples=args.train_samples or None)
                    record["eval_samples"] = args.eval_samples or None
                    slot[arm] = record
                    print(
                        f"    {arm}: {record.get('dev') or record.get('error')}  wall {record.get('wall_to_results_s')}"
                    )
                save(args.out, doc)
    print_summary(load(args.out).get("summary") or summarize(load(args.out)["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
