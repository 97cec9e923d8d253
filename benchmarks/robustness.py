"""Issue 30: adversarial training, augmentation and adaptive loss weights against the same run without them, with
paired seeds, on humor and SemEval-2018 E-c with MiniLM; and a typo probe: the best model's score on the dev set
with typos injected at a fixed rate (evaluated as `--test-file`).

    OMP_NUM_THREADS=1 python -m benchmarks.robustness --data-dir ../shared/data --runs runs/robustness \
        [--worker 0/2] [--seeds 42 43 44] [--out benchmarks/results/robustness.json]

Every run is a CLI run (`python run.py ...`) in its own process with one thread, in RUNS/<task>-<variant>-s<seed>;
finished runs are read back, so the script can be stopped and rerun, and `--worker i/n` runs every n-th job (one
process per core). Jobs go seed by seed, so a stopped measurement still has every variant at the first seeds.
The table is written from whatever has finished: per variant, the dev score's mean and standard deviation over
seeds, the paired difference to the base run at the same seed (mean, and how many seeds it is positive), the typo
score and what typos cost (dev - typo dev) against what they cost the base, and the fit's seconds (training plus
the two dev evaluations every variant makes) relative to the base's at the same seed. Those seconds come from two
workers sharing two cores with other work: ratios, not absolute times, and noisy ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--model", "minilm", "--epochs", "1", "--lr", "1e-4", "--batch-size", "32", "--max-train-samples", "4000"]
COMMON += ["--explain-errors", "0", "--no-checkpoint"]
TASKS = {
    "humor": {"dev": "hahackathon/dev.csv", "text": "text", "delimiter": ",", "quoting": csv.QUOTE_MINIMAL},
    "semeval": {
        "dev": "semeval2018_ec/2018-E-c-En-dev.txt",
        "text": "Tweet",
        "delimiter": "\t",
        "quoting": csv.QUOTE_NONE,
    },
}
VARIANTS = {  # name -> (flags, tasks)
    "base": ([], ("humor", "semeval")),
    "fgm": (["--adversarial", "fgm"], ("humor", "semeval")),
    "awp": (["--adversarial", "awp"], ("humor", "semeval")),
    "tokens": (["--augment", "tokens"], ("humor", "semeval")),
    "sum-fixed": (["--loss", "bce:0.5+asl:0.5"], ("semeval",)),
    "sum-uncertainty": (["--loss", "bce:0.5+asl:0.5", "--loss-weighting", "uncertainty"], ("semeval",)),
    "sum-schedule": (
        ["--loss", "bce:0.5+asl:0.5", "--loss-weighting", "schedule", "--loss-weights-end", "0.1,0.9"],
        ("semeval",),
    ),
    # the same number of optimizer steps as one copy per example: is augmentation more than more training?
    "base-2ep": (["--epochs", "2"], ("humor", "semeval")),
    "pgd": (["--adversarial", "pgd"], ("humor",)),  # it costs adv_steps + 1 passes
    "fgm-eps1": (["--adversarial", "fgm", "--adv-eps", "1.0"], ("humor",)),  # 10x the default (the first default)
}
LATE = ("base-2ep", "pgd", "fgm-eps1")  # run after the others, in this order
ONE_SEED = ("fgm-eps1",)  # the first seed only: it failed by 0.3
BASELINE = {"sum-uncertainty": "sum-fixed", "sum-schedule": "sum-fixed"}  # else "base"
ALSO = [("tokens", "base-2ep")]  # augmentation against training as many steps without it
TYPO_RATE = 0.1  # each word's chance of one typo


def typo(word: str, rng: random.Random) -> str:
    """One character deleted, doubled, swapped with the next or replaced by a random letter."""
    if len(word) < 2:
        return word
    i = rng.randrange(len(word) - 1)
    op = rng.randrange(4)
    if op == 0:
        return word[:i] + word[i + 1 :]
    if op == 1:
        return word[: i + 1] + word[i] + word[i + 1 :]
    if op == 2:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i + 1 :]


def typo_file(data_dir: Path, task: str, runs: Path) -> Path:
    """The task's dev file with typos in TYPO_RATE of the words of its text column (seeded), in the same format."""
    spec = TASKS[task]
    out = runs / f"{task}-dev-typos{Path(spec['dev']).suffix}"
    if out.exists():
        return out
    rng = random.Random(0)
    with open(data_dir / spec["dev"], newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=spec["delimiter"], quoting=spec["quoting"]))
    col = rows[0].index(spec["text"])
    for row in rows[1:]:
        row[col] = " ".join(typo(w, rng) if rng.random() < TYPO_RATE else w for w in row[col].split(" "))
    tmp = out.with_suffix(f".{os.getpid()}.tmp")  # the workers may write it at the same time
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=spec["delimiter"], quoting=spec["quoting"], lineterminator="\n").writerows(rows)
    tmp.replace(out)
    return out


def jobs(seeds: list[int]) -> list[tuple[str, str, int]]:
    every = [(t, v, s) for s in seeds for t in TASKS for v, (_, tasks) in VARIANTS.items() if t in tasks]
    every = [j for j in every if j[1] not in ONE_SEED or j[2] == seeds[0]]
    return [j for j in every if j[1] not in LATE] + sorted(
        (j for j in every if j[1] in LATE), key=lambda j: LATE.index(j[1])
    )


def run_job(task: str, variant: str, seed: int, data_dir: Path, runs: Path) -> None:
    out = runs / f"{task}-{variant}-s{seed}"
    log = runs / f"{out.name}.log"
    if (
        out / "results.json"
    ).exists() or log.exists():  # done, or under way in another worker (delete a failed one's log)
        return
    flags = ["--task", task, "--data-dir", str(data_dir), "--seed", str(seed), "--output-dir", str(out), "--overwrite"]
    flags += ["--test-file", str(typo_file(data_dir, task, runs))] + COMMON + VARIANTS[variant][0]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "x") as f:
        done = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *flags], env=env, stdout=f, stderr=subprocess.STDOUT
        )
    if done.returncode:
        raise SystemExit(f"{out.name} failed (exit {done.returncode}): see {log}")


def read_run(path: Path) -> dict | None:
    """A finished run's selection metric on dev and on the dev set with typos (at the 0.5 threshold for multi-label),
    and its fit's seconds."""
    if not (path / "results.json").exists():
        return None
    r = json.loads((path / "results.json").read_text())
    metric = r["train"]["metric"]
    return {"metric": metric, "dev": r["dev"][metric], "typos": r["test"][metric], "seconds": r["train"]["seconds"]}


def summary(runs: Path, seeds: list[int]) -> dict:
    """Every variant against its baseline (BASELINE, else base), and the extra pairs of ALSO, at the seeds both ran."""
    table = {}
    for task in TASKS:
        pairs = [(v, BASELINE.get(v, "base")) for v, (_, tasks) in VARIANTS.items() if task in tasks and v != "base"]
        for variant, base in pairs + [p for p in ALSO if task in VARIANTS[p[0]][1]]:
            row = compared(runs, task, variant, base, seeds)
            if row:
                name = f"{task}/{variant}" + (f" vs {base}" if (variant, base) in ALSO else "")
                table[name] = row
    return table


def compared(runs: Path, task: str, variant: str, base: str, seeds: list[int]) -> dict | None:
    rows = {s: read_run(runs / f"{task}-{variant}-s{s}") for s in seeds}
    bases = {s: read_run(runs / f"{task}-{base}-s{s}") for s in seeds}
    paired = [s for s in seeds if rows[s] and bases[s]]
    if not paired:
        return None
    dev = [rows[s]["dev"] for s in paired]
    diff = [rows[s]["dev"] - bases[s]["dev"] for s in paired]
    # what typos cost each model (dev - typo dev), against what they cost the base run at the same seed:
    # below 0, the variant loses less to typos (robustness, apart from any gain on clean text)
    drop = [rows[s]["dev"] - rows[s]["typos"] for s in paired]
    drop_diff = [d - (bases[s]["dev"] - bases[s]["typos"]) for d, s in zip(drop, paired)]
    return {
        "metric": rows[paired[0]]["metric"],
        "seeds": paired,
        "dev": dev,
        "dev_mean": statistics.mean(dev),
        "dev_std": statistics.stdev(dev) if len(dev) > 1 else None,
        "vs": base,
        "vs_dev_mean": statistics.mean(bases[s]["dev"] for s in paired),
        "diff_mean": statistics.mean(diff),
        "diff_std": statistics.stdev(diff) if len(diff) > 1 else None,
        "diff_positive": sum(d > 0 for d in diff),
        "typo_score": [rows[s]["typos"] for s in paired],
        "typo_drop_mean": statistics.mean(drop),
        "typo_drop_diff_mean": statistics.mean(drop_diff),
        "time_ratio": statistics.mean(rows[s]["seconds"] / bases[s]["seconds"] for s in paired),
    }


def markdown(table: dict) -> str:
    lines = [
        "| task / variant | metric | dev mean ± std | vs (its mean) | paired diff ± std (seeds up) | typo dev "
        "| typo drop | drop vs base | time × |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in table.items():
        std = f"{r['dev_std']:.4f}" if r["dev_std"] is not None else "-"
        typo_cell = f"{statistics.mean(r['typo_score']):.4f}"
        dstd = f" ± {r['diff_std']:.4f}" if r["diff_std"] is not None else ""
        lines.append(
            f"| {name} | {r['metric']} | {r['dev_mean']:.4f} ± {std} | {r['vs']} ({r['vs_dev_mean']:.4f}) "
            f"| {r['diff_mean']:+.4f}{dstd} "
            f"({r['diff_positive']}/{len(r['seeds'])}) | {typo_cell} | {r['typo_drop_mean']:.4f} "
            f"| {r['typo_drop_diff_mean']:+.4f} | {r['time_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/robustness"))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--worker", default="0/1", help="i/n: run every n-th job from the i-th")
    p.add_argument("--report-only", action="store_true", help="write the table from the finished runs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/robustness.json")
    args = p.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    i, n = map(int, args.worker.split("/"))
    if not args.report_only:
        for task, variant, seed in jobs(args.seeds)[i::n]:
            print(f"{task} {variant} seed {seed}", flush=True)
            run_job(task, variant, seed, args.data_dir.resolve(), args.runs.resolve())
    table = summary(args.runs, args.seeds)
    setup = {"common_flags": COMMON, "typo_rate": TYPO_RATE, "variants": {k: v[0] for k, v in VARIANTS.items()}}
    setup |= {"machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}"}
    args.out.write_text(json.dumps({"setup": setup, "results": table}, indent=1) + "\n")
    print(markdown(table))


if __name__ == "__main__":
    main()
