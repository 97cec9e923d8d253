#!/usr/bin/env python
"""End-to-end benchmark: `run.py` (minitune) against `hf_trainer_baseline.py` (transformers.Trainer), on CPU.

    python benchmarks/e2e.py --quick                        # smoke run: 64 train / 64 dev examples, 1 epoch
    python benchmarks/e2e.py                                # humor (2 epochs) + semeval (5), 2000 train ex., full dev
    python benchmarks/e2e.py --seeds 1 2 3                  # the comparison repeated over seeds, summarised
    python benchmarks/e2e.py --mode recipe-mpr goemotions   # minitune-only runs

Modes:
- compare: for each task (humor, semeval) both stacks as subprocesses, back to back, with the same flags;
  each run's wall time is measured from process start to its results.json being written (file mtime), and
  also to process exit; CPU seconds and peak RSS come from os.wait4. Dev scores are read from each results.json
  (both are scored by minitune.eval.metrics). --order abba runs minitune first on the first task and the
  Trainer first on the second, so a drift in machine load does not favour one stack.
- recipe-mpr: minitune's 5-fold protocol; test accuracy over all folds, per query type, and the
  always-first-option baseline, from results.json ("test", "baseline_first_option").
- goemotions: minitune only; dev macro-F1 at the fixed threshold (the task default 0.3) and at tuned
  per-label thresholds.
Results go to benchmarks/results/e2e.json (e2e_quick.json for --quick); each mode's section is replaced, others
kept; a replaced "compare" section moves to "compare_history".
Threads: OMP_NUM_THREADS (and MKL_NUM_THREADS) = --threads for every subprocess.
minitune runs at its defaults of the day unless flags after `--` say otherwise: the runs logged in E2E.md before
issue 28 had fp32 and random batches run unpadded; since then `precision` auto (bf16 on a CPU with native bf16) and
bucketed batches (pass `-- --precision fp32 --padding dynamic` to repeat them). Full-size runs: fullsize.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Every stack runs under benchmarks/phases.py, which splits its time into phases the same way for all of them.
PHASES = str(ROOT / "benchmarks" / "phases.py")
STACKS = {
    "minitune": [PHASES, "minitune", "--"],
    "hf_trainer": [PHASES, "hf_trainer", "--"],
    "hf_trainer_gbl": [PHASES, "hf_trainer", "--", "--group-by-length"],
}
STACK_NAMES = {"minitune": "minitune", "hf_trainer": "Trainer", "hf_trainer_gbl": "Trainer group_by_length"}
PHASE_ORDER = ("startup", "tokenize", "train", "evaluate", "save")
HEADLINES = {
    "humor": ("accuracy", "binary_f1", "macro_f1"),
    "semeval": ("jaccard", "macro_f1", "micro_f1", "tuned.jaccard", "tuned.macro_f1"),
}
# Epochs per compared task: SemEval's BCE head needs more steps before any score passes 0.5 (with 2 epochs of
# 2000 examples, 126 steps, both stacks still predicted no label at all on dev).
COMPARE_EPOCHS = {"humor": 2, "semeval": 5}


def source_fingerprint() -> dict:
    """Which minitune code a run measured: git HEAD, and a hash of run.py + minitune/**/*.py as they are on disk
    (the checkout is shared and may hold uncommitted edits)."""
    digest = hashlib.sha256()
    for path in [ROOT / "run.py", *sorted((ROOT / "minitune").rglob("*.py"))]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "run.py", "minitune"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "git_head": head.stdout.strip() or None,
        "uncommitted_files": len(dirty.stdout.splitlines()),
        "source_sha256": digest.hexdigest()[:16],
    }


def run_process(cmd: list[str], out_dir: Path, threads: int, run_dir: Path | None = None) -> dict:
    """Run one training process; wall time to results.json and to exit, CPU time and peak RSS of the child. The log
    goes to out_dir; results.json is read from run_dir (default out_dir): a minitune run owns its folder whole
    (checkpoints/runlock.py), so its log cannot sit inside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = (run_dir or out_dir) / "results.json"
    if results.exists():
        results.unlink()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    load_before, source = os.getloadavg(), source_fingerprint()
    with open(out_dir / "log.txt", "w", encoding="utf-8") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    record = {
        "cmd": cmd,
        "returncode": proc.returncode,
        "wall_to_exit_s": round(end - start, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "log": str(out_dir / "log.txt"),
        "source": source,
    }
    if proc.returncode != 0 or not results.exists():
        tail = (out_dir / "log.txt").read_text(encoding="utf-8", errors="replace")[-2000:]
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {proc.returncode}); log {out_dir / 'log.txt'}:\n{tail}")
    record["wall_to_results_s"] = round(results.stat().st_mtime - start, 2)
    record["results"] = json.loads(results.read_text(encoding="utf-8"))
    return record


def common_flags(args: argparse.Namespace, task: str, out_dir: Path) -> list[str]:
    flags = [
        "--task",
        task,
        "--model",
        args.model,
        "--data-dir",
        str(args.data_dir),
        "--output-dir",
        str(out_dir),
        "--device",
        "cpu",
    ]
    epochs = args.epochs or COMPARE_EPOCHS.get(task)  # else the task's default
    if epochs:
        flags += ["--epochs", str(epochs)]
    if args.train_samples:
        flags += ["--max-train-samples", str(args.train_samples)]
    if args.eval_samples:
        flags += ["--max-eval-samples", str(args.eval_samples)]
    return flags + list(args.extra)


def pick(report: dict, key: str):
    for part in key.split("."):
        report = report.get(part, {}) if isinstance(report, dict) else {}
    return report if isinstance(report, (int, float)) else None


def selected_step(train: dict) -> int | None:
    """The optimizer step whose weights were kept: minitune's best_step, the Trainer's best checkpoint number."""
    if "best_step" in train:
        return train["best_step"]
    name = train.get("best_checkpoint") or ""
    return int(name.rsplit("-", 1)[1]) if "-" in name else None


def phase_split(record: dict, out_dir: Path) -> dict:
    """Seconds per phase from the run's phases.json (benchmarks/phases.py); start-up is the process's wall time to
    results.json less every timed phase (interpreter start, imports, model and data load, the report)."""
    path = out_dir / "phases.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {
        "wall": _split(doc["seconds"], record["wall_to_results_s"]),
        "cpu": _split(doc.get("cpu_seconds", {}), record["cpu_s"]) if "cpu_seconds" in doc else None,
    }


def _split(timed: dict, total: float) -> dict:
    """Phase seconds with start-up as the rest of `total`; load (model and data) is inside start-up."""
    split = {k: timed.get(k, 0.0) for k in ("tokenize", "train", "evaluate", "save")}
    split["startup"] = round(total - sum(split.values()), 2)
    split["load"] = timed.get("load", 0.0)
    return {k: split[k] for k in (*PHASE_ORDER, "load")}


def compare_task(args: argparse.Namespace, task: str, rotation: int) -> dict:
    """Every stack of args.stacks on one task, back to back; `rotation` shifts which goes first."""
    order = args.stacks[rotation % len(args.stacks) :] + args.stacks[: rotation % len(args.stacks)]
    runs = {}
    for stack in order:
        out_dir = args.work_dir / f"{task}-{stack}"
        cmd = [PYTHON, *STACKS[stack], *common_flags(args, task, out_dir)]
        if stack == "minitune":  # like for like: the Trainer's BertForSequenceClassification reads the [CLS] pooler
            cmd += ["--pooling", "cls"]
        if stack != "minitune" and args.no_llrd:
            cmd.append("--no-llrd")
        elif stack == "minitune" and args.no_llrd:
            cmd += ["--llrd", "1"]
        print(f"[{time.strftime('%H:%M:%S')}] {task} / {stack}: {' '.join(cmd[1:])}", flush=True)
        record = run_process(cmd, out_dir, args.threads)
        res = record.pop("results")
        record["dev"] = {k: pick(res["dev"], k) for k in HEADLINES[task]}
        record["train"] = {k: v for k, v in res["train"].items() if k not in ("folds",)}
        record["n_dev"] = res["dev"].get("n_examples")
        record["selected_step"] = selected_step(res["train"])
        record["phases_s"] = phase_split(record, out_dir)
        runs[stack] = record
        print(
            f"    wall {record['wall_to_results_s']:.1f}s  cpu {record['cpu_s']:.1f}s  "
            f"rss {record['peak_rss_mb']:.0f} MB  phases {record['phases_s']}  dev {record['dev']}",
            flush=True,
        )
    entry = {"epochs": args.epochs or COMPARE_EPOCHS.get(task), "order": order, "runs": runs}
    if "minitune" in runs:
        for stack in runs:
            if stack != "minitune":  # kept under its old name for the default Trainer
                key = "wall_ratio_hf_over_minitune" + ("" if stack == "hf_trainer" else f"_{stack}")
                entry[key] = round(runs[stack]["wall_to_results_s"] / runs["minitune"]["wall_to_results_s"], 3)
    return entry


def summarize_seeds(per_seed: dict) -> dict:
    """Per task and per Trainer setting: each stack's mean and sample std of every dev score over the seeds, the
    paired difference (minitune - Trainer, same seed and so the same training subset), the median wall ratio and
    the mean seconds of each phase."""
    import statistics

    summary = {}
    for task in next(iter(per_seed.values())):
        entries = [tasks[task] for tasks in per_seed.values()]
        stacks = list(entries[0]["runs"])
        per_stack = {}
        for other in (s for s in stacks if s != "minitune" and "minitune" in stacks):  # pairs need minitune
            scores = {}
            for key in HEADLINES[task]:
                values = {st: [e["runs"][st]["dev"][key] for e in entries] for st in ("minitune", other)}
                diffs = [a - b for a, b in zip(values["minitune"], values[other])]
                scores[key] = {
                    **{
                        st: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                        for st, v in values.items()
                    },
                    "diff_mean": statistics.fmean(diffs),
                    "diff_se": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None,
                    "diff_min": min(diffs),
                    "diff_max": max(diffs),
                }
            ratios = [
                e["runs"][other]["wall_to_results_s"] / e["runs"]["minitune"]["wall_to_results_s"] for e in entries
            ]
            cpu = [e["runs"][other]["cpu_s"] / e["runs"]["minitune"]["cpu_s"] for e in entries]
            per_stack[other] = {
                "scores": scores,
                "wall_ratio_median": round(statistics.median(ratios), 3),
                "wall_ratios": [round(r, 3) for r in ratios],
                "cpu_ratio_median": round(statistics.median(cpu), 3),
            }
        phases = {
            clock: {
                st: {
                    ph: round(statistics.fmean(e["runs"][st]["phases_s"][clock][ph] for e in entries), 2)
                    for ph in PHASE_ORDER
                }
                for st in stacks
                if all((e["runs"][st].get("phases_s") or {}).get(clock) for e in entries)
            }
            for clock in ("wall", "cpu")
        }
        summary[task] = {"seeds": len(entries), "vs": per_stack, "phases_mean_s": phases}
    return summary


def print_seed_summary(summary: dict) -> None:
    for task, entry in summary.items():
        print(f"\n{task}, {entry['seeds']} seeds: minitune - Trainer, paired over seeds")
        print(
            "| Trainer setting | dev score | minitune mean ± std | Trainer mean ± std | paired diff ± se (min, max) |"
        )
        print("|---|---|---|---|---|")
        for other, vs in entry["vs"].items():
            for key, s in vs["scores"].items():
                m, h = s["minitune"], s[other]
                se = "-" if s["diff_se"] is None else f"{s['diff_se']:.4f}"
                print(
                    f"| {STACK_NAMES[other]} | {key} | {m['mean']:.4f} ± {m['std']:.4f} | {h['mean']:.4f} ± "
                    f"{h['std']:.4f} | {s['diff_mean']:+.4f} ± {se} ({s['diff_min']:+.4f}, {s['diff_max']:+.4f}) |"
                )
            print(
                f"| {STACK_NAMES[other]} | Trainer / minitune wall, median | {vs['wall_ratio_median']:.2f}x "
                f"| CPU {vs['cpu_ratio_median']:.2f}x | {vs['wall_ratios']} |"
            )
        for clock, phases in entry["phases_mean_s"].items():
            print_phases(phases, f"{clock} seconds, mean over seeds")


def print_phases(phases: dict, note: str) -> None:
    print(f"\n| stack ({note}) | " + " | ".join(f"{p} (s)" for p in PHASE_ORDER) + " | total (s) |")
    print("|---|" + "---:|" * (len(PHASE_ORDER) + 1))
    for stack, split in phases.items():
        cells = " | ".join(f"{split.get(p, 0.0):.1f}" for p in PHASE_ORDER)
        print(f"| {STACK_NAMES[stack]} | {cells} | {sum(split.get(p, 0.0) for p in PHASE_ORDER):.1f} |")


def minitune_only(args: argparse.Namespace, task: str, flags: list[str]) -> dict:
    out_dir = args.work_dir / f"{task}-minitune"
    cmd = [PYTHON, *STACKS["minitune"], *common_flags(args, task, out_dir), *flags]
    print(f"[{time.strftime('%H:%M:%S')}] {task} / minitune: {' '.join(cmd[1:])}", flush=True)
    record = run_process(cmd, out_dir, args.threads)
    return record


def recipe_mpr(args: argparse.Namespace) -> dict:
    flags = ["--max-folds", str(args.max_folds)] if args.max_folds else []
    record = minitune_only(args, "recipe-mpr", flags)
    res = record.pop("results")
    groups = dict(res["test"]["by_group"])
    base = res["baseline_first_option"]["by_group"]
    record["test_accuracy"] = res["test"]["accuracy"]
    record["baseline_first_option_accuracy"] = res["baseline_first_option"]["accuracy"]
    record["by_query_type"] = {
        k: {"n": v["n"], "accuracy": v["accuracy"], "baseline_first": base[k]["accuracy"]} for k, v in groups.items()
    }
    record["folds"] = [
        {k: f[k] for k in ("fold", "step", "best", "test_accuracy", "seconds")} for f in res["train"]["folds"]
    ]
    return record


def goemotions(args: argparse.Namespace) -> dict:
    record = minitune_only(args, "goemotions", [])
    res = record.pop("results")
    dev = res["dev"]
    record["dev"] = {
        "threshold": dev["threshold"],
        "macro_f1_fixed": pick(dev, "macro_f1"),
        "macro_f1_tuned": pick(dev, "tuned.macro_f1"),
        "micro_f1_fixed": pick(dev, "micro_f1"),
        "micro_f1_tuned": pick(dev, "tuned.micro_f1"),
        "jaccard_fixed": pick(dev, "jaccard"),
        "n_examples": dev["n_examples"],
    }
    record["train"] = res["train"]
    return record


def fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def print_compare(section: dict) -> None:
    print(
        "\n| task | stack | wall to results (s) | wall to exit (s) | CPU (s) | peak RSS (MB) | steps (kept) "
        "| dev scores |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for task, entry in section["tasks"].items():
        for stack, r in entry["runs"].items():
            scores = "  ".join(f"{k} {fmt(v)}" for k, v in r["dev"].items())
            print(
                f"| {task} | {stack} | {r['wall_to_results_s']:.1f} | {r['wall_to_exit_s']:.1f} | {r['cpu_s']:.1f} "
                f"| {r['peak_rss_mb']:.0f} | {r['train'].get('step')} ({r['selected_step']}) | {scores} |"
            )
        for key, ratio in entry.items():
            if key.startswith("wall_ratio"):
                print(f"| {task} | {key} | {ratio:.2f}x | | | | | |")
        for clock in ("wall", "cpu"):
            phases = {k: r["phases_s"][clock] for k, r in entry["runs"].items() if (r.get("phases_s") or {}).get(clock)}
            print_phases(phases, f"{task}, {clock} seconds")


def print_minitune_only(name: str, r: dict) -> None:
    print(f"\n{name}: wall {r['wall_to_results_s']:.1f}s  cpu {r['cpu_s']:.1f}s  rss {r['peak_rss_mb']:.0f} MB")
    if name == "recipe-mpr":
        print(
            f"  test accuracy {r['test_accuracy']:.4f}  always-first baseline {r['baseline_first_option_accuracy']:.4f}"
        )
        for k, v in r["by_query_type"].items():
            print(f"  {k:12s} n={v['n']:3d}  accuracy {v['accuracy']:.4f}  first-option {v['baseline_first']:.4f}")
    else:
        d = r["dev"]
        print(
            f"  dev macro-F1 at {d['threshold']}: {fmt(d['macro_f1_fixed'])}  tuned: {fmt(d['macro_f1_tuned'])}  "
            f"(micro-F1 {fmt(d['micro_f1_fixed'])} / {fmt(d['micro_f1_tuned'])}, n={d['n_examples']})"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--mode", nargs="+", default=["compare"], choices=["compare", "recipe-mpr", "goemotions"])
    p.add_argument("--tasks", nargs="+", default=["humor", "semeval"], choices=["humor", "semeval"])
    p.add_argument("--quick", action="store_true", help="smoke run: 64 train / 64 dev examples, 1 epoch")
    p.add_argument("--train-samples", type=int, default=2000, help="--max-train-samples for every run (0 = all)")
    p.add_argument("--eval-samples", type=int, default=0, help="--max-eval-samples (0 = the whole dev set)")
    p.add_argument(
        "--epochs",
        type=int,
        default=0,
        help=f"epochs for every run (0 = {COMPARE_EPOCHS} for compare, "
        "the task default for recipe-mpr (5) and goemotions (4))",
    )
    p.add_argument("--max-folds", type=int, default=0, help="recipe-mpr: run only the first N folds (0 = all 5)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="compare: repeat for each seed (run.py's "
        "--seed, which also picks the training subset) and summarise mean, std and paired differences "
        "into the 'compare_seeds' section",
    )
    p.add_argument(
        "--stacks",
        nargs="+",
        default=list(STACKS),
        choices=list(STACKS),
        help="compare: which stacks (hf_trainer_gbl: the Trainer with train_sampling_strategy='group_by_length')",
    )
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every subprocess")
    p.add_argument(
        "--order",
        choices=["ab", "ba", "abba"],
        default="abba",
        help="ab: the stacks in --stacks order on every task; ba: rotated by one; abba: rotated by one more per "
        "task (and per seed), so each stack goes first equally often",
    )
    p.add_argument(
        "--no-llrd",
        action="store_true",
        help="compare without layer-wise LR decay (humor's default "
        "0.95 otherwise; the Trainer baseline then gets LLRD parameter groups)",
    )
    p.add_argument("--model", default="minilm")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/minitune-e2e"), help="run outputs (checkpoints)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/e2e[_quick].json)")
    p.add_argument("extra", nargs="*", help="after --: further run.py flags given to every run")
    args = p.parse_args(argv)
    if args.quick:
        args.train_samples, args.eval_samples, args.epochs = 64, 64, 1
        args.max_folds = args.max_folds or 1
    args.out = args.out or ROOT / "benchmarks" / "results" / ("e2e_quick.json" if args.quick else "e2e.json")
    args.work_dir = args.work_dir / ("quick" if args.quick else "full")
    return args


def resummarize(path: Path) -> None:
    """Re-read every run's phases.json (beside its log) into a finished compare_seeds section and re-summarise."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    section = doc["compare_seeds"]
    for tasks in section["per_seed"].values():
        for entry in tasks.values():
            for record in entry["runs"].values():
                record["phases_s"] = phase_split(record, Path(record["log"]).parent)
    section["summary"] = summarize_seeds(section["per_seed"])
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print_seed_summary(section["summary"])


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--resummarize"] or (argv or [])[:1] == ["--resummarize"]:
        resummarize(Path((argv or sys.argv[1:])[1]))
        return 0
    args = parse_args(argv)
    doc = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    settings = {
        "train_samples": args.train_samples or None,
        "eval_samples": args.eval_samples or None,
        "epochs": args.epochs or None,
        "compare_epochs": args.epochs or COMPARE_EPOCHS,
        "threads": args.threads,
        "model": args.model,
        "no_llrd": args.no_llrd,
        "stacks": args.stacks,
        "extra_flags": list(args.extra),
        "cpu_count": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_at_start": list(os.getloadavg()),
    }
    if "compare" in args.mode and args.seeds:
        per_seed, base_extra, base_work = {}, list(args.extra), args.work_dir
        for n, seed in enumerate(args.seeds):
            args.extra, args.work_dir = [*base_extra, "--seed", str(seed)], base_work / f"seed{seed}"
            # abba across seeds too: each stack goes first equally often on each task
            per_seed[str(seed)] = {task: compare_task(args, task, i + n) for i, task in enumerate(args.tasks)}
            doc["compare_seeds"] = {
                "settings": {**settings, "seeds": args.seeds},
                "per_seed": per_seed,
                "summary": summarize_seeds(per_seed),
            }
            args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")  # keep finished seeds
        args.extra, args.work_dir = base_extra, base_work
        print_seed_summary(doc["compare_seeds"]["summary"])
    elif "compare" in args.mode:
        tasks = {}
        for i, task in enumerate(args.tasks):
            rotation = {"ab": 0, "ba": 1, "abba": i}[args.order]
            tasks[task] = compare_task(args, task, rotation)
        if "compare" in doc:  # keep earlier measurements: the latest is "compare", older ones "compare_history"
            doc.setdefault("compare_history", []).append(doc["compare"])
        doc["compare"] = {"settings": {**settings, "order": args.order}, "tasks": tasks}
        print_compare(doc["compare"])
    if "recipe-mpr" in args.mode:
        doc["recipe-mpr"] = {"settings": {**settings, "folds": args.max_folds or 5}, **recipe_mpr(args)}
        print_minitune_only("recipe-mpr", doc["recipe-mpr"])
    if "goemotions" in args.mode:
        doc["goemotions"] = {"settings": settings, **goemotions(args)}
        print_minitune_only("goemotions", doc["goemotions"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
